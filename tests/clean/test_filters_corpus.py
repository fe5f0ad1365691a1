"""The quality filters on the shared real-text corpus (../shared/data/corpus).

* language ID names each document's labelled language (``source`` = collection/language)
  for at least 95% of the natural-language documents;
* the default steps keep books, Wikipedia, the Bible and man pages mostly intact, leave
  code alone, and drop junk;
* the vectorized repetition statistics equal a plain-Python reading of their definitions;
* the unicode step's RE2 prefilter changes nothing: its output equals ftfy on every text.
"""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import orjson
import pyarrow as pa
import pytest

from preproc.clean.steps import CleanPipeline, build_steps


@pytest.fixture(scope="module")
def table(corpus) -> pa.Table:
    rows = []
    for f in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(f, "rb") as fh:
            rows.extend(orjson.loads(line) for line in fh)
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def cleaned(table):
    """The default clean pipeline over the whole corpus: (kept table, removed table)."""
    pipe = CleanPipeline(build_steps(True), keep_removed=True)
    kept, removed = [], []
    for b in table.to_batches(max_chunksize=1024):
        res = pipe(b)
        kept.append(res.kept)
        if res.removed is not None:
            removed.append(res.removed)
    return pa.Table.from_batches(kept), pa.concat_tables(removed)


def base_language(source: str) -> str:
    return source.split("/", 1)[1].split("_")[0]         # pt_BR → pt, zh_CN → zh


def test_langid_finds_the_labelled_language(cleaned, table):
    kept, removed = cleaned
    # Defaults only annotate: nothing is dropped for its language.
    assert not any(r.startswith("langid") for r in removed.column("reason").to_pylist())
    langs = dict(zip(kept.column("id").to_pylist(), kept.column("language").to_pylist()))
    hits, total, misses = 0, 0, Counter()
    for i, src in zip(table.column("id").to_pylist(), table.column("source").to_pylist()):
        if i not in langs:
            continue
        if src.startswith("code/"):
            assert langs[i] is None                      # code is not language-identified
            continue
        total += 1
        if langs[i] == base_language(src):
            hits += 1
        else:
            misses[src] += 1
    assert total > 2900
    assert hits / total >= 0.95, (hits / total, misses.most_common(10))
    # every natural-language collection is mostly right, not only the big ones
    for coll in ("wikipedia", "gutenberg", "bible-kjv", "wikitext-2"):
        n = sum(1 for s in table.column("source").to_pylist() if s.startswith(coll + "/"))
        assert sum(v for s, v in misses.items() if s.startswith(coll + "/")) <= 0.03 * n


def test_defaults_keep_books_wikipedia_manpages(cleaned, table):
    kept, removed = cleaned
    docs = Counter(table.column("source").to_pylist())
    gone = Counter(removed.column("source").to_pylist())
    for src in ("gutenberg/en", "wikitext-2/en", "bible-kjv/en", "manpages/en"):
        assert gone[src] <= 0.10 * docs[src], (src, gone[src], docs[src])
    # the other languages of each collection (some have a handful of documents: pooled)
    pooled_docs, pooled_gone = Counter(), Counter()
    for src, n in docs.items():
        pooled_docs[src.split("/")[0]] += n
        pooled_gone[src.split("/")[0]] += gone[src]
    for coll, n in pooled_docs.items():
        assert pooled_gone[coll] <= 0.10 * n, (coll, pooled_gone[coll], n)
    assert pooled_gone["code"] == 0
    # no single rule takes more than 7% of any English collection
    by_rule = Counter(zip(removed.column("source").to_pylist(),
                          removed.column("reason").to_pylist()))
    for (src, rule), k in by_rule.items():
        if src.endswith("/en"):
            assert k <= 0.07 * docs[src], (src, rule, k)


def test_defaults_drop_junk(table):
    prose = table.filter(pa.compute.equal(table.column("source"), "gutenberg/en")) \
        .column("text")[3].as_py()[:3000]
    junk = [
        "Home | About | Contact | Login\n" * 40,                               # menus
        " ".join(["cheap flights best price cheap flights"] * 120),            # spam
        "#sale #deal #promo #buy #now " * 60,                                  # hashtags
        "\n".join(f"{i}. ${i * 3}.99" for i in range(200)),                    # price list
        "click here...\n" * 50 + prose[:200],                                  # teasers
        prose + "\n\n" + "\n\n".join([prose[:600]] * 6),                       # pasted twice
    ]
    pipe = CleanPipeline(build_steps(True), keep_removed=True)
    res = pipe(pa.RecordBatch.from_pydict({"id": [f"j{i}" for i in range(len(junk))] + ["ok"],
                                           "text": junk + [prose], "source": ["web/en"] * 7}))
    assert res.kept.column("id").to_pylist() == ["ok"]
    assert len(set(res.removed.column("reason").to_pylist())) >= 4     # for several reasons


# -- the vectorized statistics against plain Python --------------------------------------
def reference_stats(text: str) -> dict:
    lines = text.split("\n")
    words_by_line = [ln.split() for ln in lines]
    words = [w for ws in words_by_line for w in ws]
    total = len(text) or 1
    out = {}
    seen, rep, rep_chars, nonblank = set(), 0, 0, 0
    for ln, ws in zip(lines, words_by_line):
        if not ws:
            continue
        nonblank += 1
        key = tuple(ws)
        if key in seen:
            rep += 1
            rep_chars += len(ln)
        seen.add(key)
    out["dup_line_frac"] = rep / nonblank if nonblank else 0.0
    out["dup_line_char_frac"] = rep_chars / len(text) if text else 0.0
    paras, cur = [], []
    for ln, ws in zip(lines, words_by_line):
        if ws:
            cur.append((ln, ws))
        elif cur:
            paras.append(cur)
            cur = []
    if cur:
        paras.append(cur)
    seen, rep, rep_chars = set(), 0, 0
    for p in paras:
        key = tuple(w for _, ws in p for w in ws)
        if key in seen:
            rep += 1
            rep_chars += sum(len(ln) for ln, _ in p) + len(p) - 1
        seen.add(key)
    out["dup_para_frac"] = rep / len(paras) if paras else 0.0
    out["dup_para_char_frac"] = rep_chars / len(text) if text else 0.0
    for n in (2, 3, 4):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        best = (0, 0)
        for g, c in grams.items():
            if c >= 2:
                best = max(best, (c, len(" ".join(g))))
        out[f"top_{n}"] = best[0] * best[1] / total
    for n in (5, 6, 7, 8, 9, 10):
        seen, covered = set(), np.zeros(len(words), dtype=bool)
        for i in range(len(words) - n + 1):
            g = tuple(words[i:i + n])
            if g in seen:
                covered[i:i + n] = True
            seen.add(g)
        # each maximal run of covered words, as its words joined by single spaces
        chars, run = 0, []
        for w, c in zip(words + [""], list(covered) + [False]):
            if c:
                run.append(w)
            elif run:
                chars += len(" ".join(run))
                run = []
        out[f"dup_{n}"] = chars / total
    return out


def test_repetition_statistics_match_a_python_reading(table):
    from preproc.clean.filters._dups import LineStats, ngram_fractions
    from preproc.clean.filters._text import TextView
    from preproc.clean.filters.gopher import _DUP_NGRAMS, _TOP_NGRAMS

    rng = np.random.default_rng(7)
    idx = np.sort(rng.choice(table.num_rows, size=160, replace=False))
    sample = table.take(pa.array(idx))
    normalize = build_steps({"normalize": True})[0]
    text = normalize.map(sample.to_batches()[0], {}).column("text")
    texts = [t[:20_000] for t in text.to_pylist()]            # keep the Python side quick
    texts += ["a b c d e f g a b c d e f g a b c", "x\n\nx\n\nx y\n\nx y", "", "one"]
    view = TextView(pa.array(texts))
    ls = LineStats(view)
    paras, rep_paras, rep_para_chars = ls.paragraphs()
    top, dup = ngram_fractions(view, np.ones(view.n_docs, dtype=bool), _TOP_NGRAMS, _DUP_NGRAMS)
    for i, t in enumerate(texts):
        ref = reference_stats(t)
        nb = ls.nonblank_lines[i]
        assert ref["dup_line_frac"] == pytest.approx(ls.repeated_lines[i] / nb if nb else 0.0)
        assert ref["dup_line_char_frac"] == pytest.approx(
            ls.repeated_line_chars[i] / len(t) if t else 0.0)
        assert ref["dup_para_frac"] == pytest.approx(rep_paras[i] / paras[i] if paras[i] else 0.0)
        assert ref["dup_para_char_frac"] == pytest.approx(
            rep_para_chars[i] / len(t) if t else 0.0)
        for n in (2, 3, 4):
            assert top[n][i] == pytest.approx(ref[f"top_{n}"]), (i, n)
        assert dup[5][i] == pytest.approx(ref["dup_5"]), i
        for n in (6, 7, 8, 9, 10):
            # later sizes are only followed while they can still fail: same verdict
            assert (dup[n][i] > _DUP_NGRAMS[n]) == (ref[f"dup_{n}"] > _DUP_NGRAMS[n]), (i, n)


def test_unicode_prefilter_changes_nothing_ftfy_would_not(table):
    """Running ftfy only on RE2-flagged documents gives what ftfy on every document gives."""
    ftfy = pytest.importorskip("ftfy")
    step = build_steps({"unicode": {"skip_sources": [], "normalization": "none"}, "normalize": False,
                        "length": False, "langid": False, "gopher_quality": False,
                        "gopher_repetition": False, "pii": False})[0]
    step.setup()
    rng = np.random.default_rng(3)
    idx = rng.choice(table.num_rows, size=300, replace=False)
    texts = [t[:3000] for t in table.take(pa.array(idx)).column("text").to_pylist()]
    # and damaged copies: UTF-8 read as Windows-1252 / Latin-1, HTML-escaped
    for t in texts[:60]:
        texts.append(t.encode("utf-8").decode("cp1252", errors="replace"))
        texts.append(t.encode("utf-8").decode("latin-1"))
        texts.append(t.replace("&", "&amp;").replace("<", "&lt;"))
    got = step.map(pa.RecordBatch.from_pydict({"text": texts, "source": ["x/y"] * len(texts)}),
                   counters := {}).column("text").to_pylist()
    want = [ftfy.fix_text(t, step._config) for t in texts]
    assert got == want
    assert counters["unicode_v1:docs_fixed"] >= 40       # the damaged non-ASCII copies


# -- the v2 line rules on books -----------------------------------------------------------
@pytest.fixture(scope="module")
def normalized(table):
    """English books, Wikipedia and the Bible, normalized (what the filters see)."""
    keep = pa.compute.is_in(table.column("source"), value_set=pa.array(
        ["gutenberg/en", "wikitext-2/en", "bible-kjv/en"]))
    sub = table.filter(keep)
    norm = CleanPipeline(build_steps({"defaults": False, "normalize": True}))
    return [norm(b).kept for b in sub.to_batches(max_chunksize=512)]


@pytest.mark.parametrize("step", ["c4_v2", "fineweb_v2"])
def test_v2_line_rules_keep_books_wikipedia_and_the_bible(normalized, step):
    """At least 90% of each collection's documents, and for C4 (which removes lines) of
    its characters, survive; v1 of the same rules loses most of the books."""
    def kept_fracs(name, only=None):
        spec = {"defaults": False, name: True}
        pipe = CleanPipeline(build_steps(spec), keep_removed=True)
        docs, kept, chars_in, chars_kept = Counter(), Counter(), Counter(), Counter()
        for b in normalized:
            if only is not None:     # the steps judge each document alone: a subset gets the same verdicts
                b = b.filter(pa.compute.equal(b.column("source"), only))
            res = pipe(b)
            for src, t in zip(b.column("source").to_pylist(), b.column("text").to_pylist()):
                docs[src] += 1
                chars_in[src] += len(t)
            for src, t in zip(res.kept.column("source").to_pylist(),
                              res.kept.column("text").to_pylist()):
                kept[src] += 1
                chars_kept[src] += len(t)
        return ({s: kept[s] / docs[s] for s in docs}, {s: chars_kept[s] / chars_in[s] for s in docs})
    doc_frac, char_frac = kept_fracs(step)
    for src in ("gutenberg/en", "wikitext-2/en", "bible-kjv/en"):
        assert doc_frac[src] >= 0.90, (step, src, doc_frac[src])
        assert char_frac[src] >= 0.90, (step, src, char_frac[src])
    v1_docs, v1_chars = kept_fracs(step.replace("_v2", "_v1"), only="gutenberg/en")
    assert min(v1_docs["gutenberg/en"], v1_chars["gutenberg/en"]) < 0.6


# -- reference values counted by hand from the papers' definitions -------------------------
# For real documents of the corpus, statistics counted by reading the text (not computed):
# gopher_words = whitespace tokens with a letter or digit (Gopher app. A; "-" and "..." are
# no words); stop_words = distinct words of the eight (Gopher: "at least two of");
# punct_lines = non-blank lines ending in a terminal mark of the script / non-blank lines
# (FineWeb); sentences = sentences of the lines C4 keeps (C4 §2.2; "Job 25" and verse 1,
# which ends in a comma and goes on in verse 2, count as one sentence with it).
HAND = {
    # Job 25: 7 non-blank lines, 5 end in . or ?; 98 words; the be to of and that with
    # (not have); sentences: v1+2 1, v3 2, v4 2, v5 1, v6 2 = 8.
    "kjv-job-25": {"gopher_words": 98, "stop_words": 7, "punct_lines": (5, 7), "sentences": 8},
    # zstdless(1): 11 non-blank lines, one ends in "." (the paragraph's second line);
    # 40 words; one stop word (with).
    "man-en-zstdless.1@zstd": {"gopher_words": 40, "stop_words": 1, "punct_lines": (1, 11)},
    # Bengali Wikipedia: title + 3 paragraphs ending in । (3 of 4 lines); sentences 3+2+1.
    "wikipedia-bn-1089": {"punct_lines": (3, 4), "sentences": 6},
    # Japanese Wikipedia disambiguation page: 16 of its 32 non-blank lines end in 。
    "wikipedia-ja-14": {"punct_lines": (16, 32)},
    # Gutenberg en, The Yellow Wallpaper (end): 29 non-blank lines, 20 end in . ! or !”
    # (the 9 others end mid-sentence: "night," "as I" "green" "in" "front" "plantain"
    # "said" "came" "path"); 307 words (15+4+16+1+14+13+3+15+12+6+10+6+6+11+15+5+7+10+15
    # +1+14+18+7+13+15+13+14+15+13 per line; "said—very" is one token); stop words: have
    # to the and that be of = 7 (no "with").
    "gutenberg-pg1952-section001": {"gopher_words": 307, "stop_words": 7,
                                    "punct_lines": (20, 29)},
    # WikiText-2: 2 lines, neither ends in a mark ("=", "L"); 8 + 13 = 21 words ("=", "/",
    # "." and "@-@" are no words; "<unk>" is); stop words: and with = 2.
    "wikitext2-test-029": {"gopher_words": 21, "stop_words": 2, "punct_lines": (0, 2)},
    # Gutenberg fr, Nietzsche, aphorisms 43-48: 39 non-blank lines; 16 end in "." or "!"
    # (the six numbers "43." .. "48.", "même." "prévoir_!" "désir." '"prochain".' "haut."
    # "etc." "tout-puissants." "épicuriens_." "temps." "amour."); ":" and "," are not
    # terminal.
    "gutenberg-pg5258-chapter069": {"punct_lines": (16, 39)},
    # Gutenberg es, Silas Marner ch. XV: 43 non-blank lines (title "XV" and 42 wrapped
    # lines); 5 end in "." ("lujo." "placer..." "acariciado." "niños." "padre.").
    "gutenberg-pg24823-chapter014": {"punct_lines": (5, 43)},
    # Armenian Wikipedia: title + one paragraph ending in "." (1 of 2 lines); C4 keeps the
    # paragraph: 5 sentences end in the Armenian full stop ։, then "... են. A.I.M., ...
    # Gabien." is 2 as written ("են." is followed by a space and a capital; the periods of
    # "A.I.M.," are not followed by a space) = 7.
    "wikipedia-hy-1032": {"punct_lines": (1, 2), "sentences": 7},
    # Marathi Wikipedia disambiguation page: 6 non-blank lines, 3 end in "." (the title
    # ends in ")", the intro in ":", one list item in no mark); C4 keeps those 3 lines (8
    # tokens and more each): 1 + 1 + 2 sentences = 4 ("इ.स.पू." and "इ.स." are the
    # abbreviations BCE/CE, not sentence ends).
    "wikipedia-mr-859": {"punct_lines": (3, 6), "sentences": 4},
    # Ukrainian Wikipedia: 10 non-blank lines (title, 3 paragraphs, 5 headings, "Український
    # правопис 2015"), 3 end in "." (the paragraphs; "Див. також" ends in a word); C4
    # keeps the 3 paragraphs: 2 + 1 + 1 = 4 sentences ("23.345" and "1.3" are numbers).
    "wikipedia-uk-603": {"punct_lines": (3, 10), "sentences": 4},
    # zh_TW groupdel(8): 21 non-blank lines, 3 end in 。 ("在。" "組ID。" "群組。"); the
    # others end in a word, ")" or ",".
    "man-zh_TW-groupdel.8@passwd": {"punct_lines": (3, 21)},
}


# Where the code disagrees with the hand count, the hand count stands and the entry is an
# expected failure (strict: fixing the code makes it pass and flags the mark for removal).
DISAGREE = {
    "wikipedia-mr-859": "c4_v2 counts 7 sentences, not 4: its sentence splitter ends a "
                        "sentence after the Devanagari abbreviations इ.स.पू. / इ.स. (BCE/CE), "
                        "its initial/abbreviation rule knowing only Latin, Greek and Cyrillic "
                        "capitals and English abbreviations",
}


@pytest.mark.parametrize("doc_id", [
    pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=DISAGREE[k]))
    if k in DISAGREE else k for k in HAND])
def test_v2_statistics_equal_values_counted_by_hand(table, doc_id):
    """Each statistic is checked through the step's verdict at the threshold just at and
    just past the hand-counted value (the comparison the reference code makes)."""
    from tests.clean.test_filters_scripts import run as run_step

    ids = table.column("id").to_pylist()
    texts = {i: t for i, t in zip(ids, table.column("text").to_pylist()) if i in HAND}
    norm = build_steps({"defaults": False, "normalize": True})[0]
    want = HAND[doc_id]
    raw = pa.RecordBatch.from_pydict({"text": [texts[doc_id]]})
    text = norm.map(raw, {}).column("text")[0].as_py()
    lang = ["en"]
    if "gopher_words" in want:
        n = want["gopher_words"]
        base = {"max_words": None, "min_mean_word_length": None, "max_mean_word_length": None,
                "max_hash_word_ratio": None, "max_ellipsis_word_ratio": None,
                "max_bullet_lines_ratio": None, "max_ellipsis_lines_ratio": None,
                "min_alpha_words_ratio": None, "min_stop_words": None}
        got = [run_step("gopher_quality_v2", [text], {**base, "min_words": m},
                        language=lang)[0][0] for m in (n, n + 1)]
        assert got == ["keep", "gopher_quality_v2:min_words"], doc_id
    if "stop_words" in want:
        k = want["stop_words"]
        base = {"min_words": None, "max_words": None, "min_mean_word_length": None,
                "max_mean_word_length": None, "min_alpha_words_ratio": None}
        got = [run_step("gopher_quality_v2", [text], {**base, "min_stop_words": m},
                        language=lang)[0][0] for m in (k, k + 1)]
        assert got == ["keep", "gopher_quality_v2:stop_words"], doc_id
    if "punct_lines" in want:
        a, b = want["punct_lines"]
        opts = {"short_line_thr": None, "char_duplicates_ratio": None, "new_line_ratio": None,
                "line_units": "lines"}      # the paper's lines (auto joins Job 25:1-2)
        # ratio <= thr drops: at thr = a/b it drops, just below it keeps (for a = 0 the
        # drop at thr = 0 alone pins the ratio: only a ratio of 0 is <= 0)
        ths = (a / b, a / b - 1e-9) if a else (0.0,)
        got = [run_step("fineweb_v2", [text], {**opts, "line_punct_thr": th})[0][0]
               for th in ths]
        assert got == ["fineweb_v2:line_punct_ratio", "keep"][:len(ths)], doc_id
    if "sentences" in want:
        s = want["sentences"]
        got = [run_step("c4_v2", [text], {"min_sentences": m, "curly_bracket": False})[0][0]
               for m in (s, s + 1)]
        assert got == ["keep", "c4_v2:too_few_sentences"], doc_id
