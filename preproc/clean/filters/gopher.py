"""Gopher (MassiveText) quality and repetition rules.

Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
Gopher", arXiv:2112.11446, appendix A (the quality filters of MassiveText) and Table A1
(the repetition thresholds). FineWeb (Penedo et al. 2024) re-uses both with these thresholds
(datatrove's ``GopherQualityFilter`` / ``GopherRepetitionFilter``).

Words are whitespace-separated tokens; a token made only of punctuation or symbols (``-``,
``—``, ``@,@``) is not a word, and leading/trailing punctuation does not count towards a
word's length (as with the NLTK tokens of the reference implementation). Lines are the text
between newlines; blank lines are skipped by the line rules.
"""

from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from preproc.clean.filters._base import ScopedFilter, ScopeOptions, ratio
from preproc.clean.filters._dups import LineStats, ngram_fractions
from preproc.clean.filters._text import TextView, first_reason, in_scope
from preproc.clean.steps import register

# Gopher app. A: the eight English stop words of the stop-word filter.
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")

# Bullet characters at the start of a (stripped) line, or a Markdown-style "- " / "* ".
_BULLET = (r"^(?:[\x{2022}\x{2023}\x{2043}\x{2219}\x{25AA}\x{25AB}\x{25A0}\x{25A1}"
           r"\x{25CF}\x{25CB}\x{25E6}\x{25B8}\x{25BA}\x{27A2}\x{27A4}]|[-*+](?:\s|$))")
# Punctuation trimmed off the ends of a word before measuring it (ASCII punctuation and the
# common typographic and CJK marks); a token that is nothing else is not a word.
EDGE_PUNCT = (string.punctuation + "\u2018\u2019\u201a\u201c\u201d\u201e\u00ab\u00bb\u2039\u203a"
              "\u2010\u2011\u2012\u2013\u2014\u2015\u2026\u00b7\u2022\u00a1\u00bf\u2032\u2033"
              "\u00a7\u00b6\u2020\u2021\u00b0\u300c\u300d\u300e\u300f\u3010\u3011\u3008\u3009"
              "\u300a\u300b\u3014\u3015\uff08\uff09\uff3b\uff3d\uff5b\uff5d\u3001\u3002"
              "\uff0c\uff0e\uff01\uff1f\uff1a\uff1b\u30fb")


def word_features(view: TextView) -> dict[str, np.ndarray]:
    """Per-distinct-word features (computed once per batch on the dictionary)."""
    def build(d):
        core = pc.utf8_trim(d, EDGE_PUNCT)
        core_chars = pc.utf8_length(core).to_numpy(zero_copy_only=False).astype(np.int64)
        return {
            "is_word": core_chars > 0,
            "core_chars": core_chars,
            "has_alpha": pc.match_substring_regex(d, r"\pL").to_numpy(zero_copy_only=False),
            "lower_core": pc.utf8_lower(core),
            "hashes": pc.count_substring(d, "#").to_numpy(zero_copy_only=False),
            "ellipses": (pc.count_substring(d, "...").to_numpy(zero_copy_only=False)
                         + pc.count_substring(d, "\u2026").to_numpy(zero_copy_only=False)),
        }
    return view.dict_feature("gopher_words", build)  # type: ignore[return-value]


class GopherQualityOptions(ScopeOptions):
    # The word rules (word count, mean word length, stop words) are tuned on English, a
    # language with spaces between words and these stop words: they apply to documents
    # langid labels with one of these languages (null = every document). The other rules
    # (symbols, bullets, ellipses, alphabetic words) apply to every language, so junk that
    # is in no language is still caught. Without langid every rule applies to everything.
    word_rules_languages: tuple[str, ...] | None = ("en",)
    # Gopher app. A: drop documents with fewer than 50 or more than 100,000 words.
    min_words: int | None = Field(default=50, ge=0)
    max_words: int | None = Field(default=100_000, ge=1)
    # Gopher app. A: drop documents whose mean word length is outside 3..10 characters.
    min_mean_word_length: float | None = Field(default=3.0, ge=0)
    max_mean_word_length: float | None = Field(default=10.0, gt=0)
    # Gopher app. A: drop documents with a symbol-to-word ratio above 0.1 for the hash
    # symbol or for the ellipsis.
    max_hash_word_ratio: float | None = Field(default=0.1, ge=0)
    max_ellipsis_word_ratio: float | None = Field(default=0.1, ge=0)
    # Gopher app. A: drop documents with more than 90% of lines starting with a bullet.
    max_bullet_lines_ratio: float | None = Field(default=0.9, ge=0, le=1)
    # Gopher app. A: ... or more than 30% of lines ending with an ellipsis.
    max_ellipsis_lines_ratio: float | None = Field(default=0.3, ge=0, le=1)
    # Gopher app. A: at least 80% of the words must contain an alphabetic character.
    min_alpha_words_ratio: float | None = Field(default=0.8, ge=0, le=1)
    # Gopher app. A: the "stop word" filter, at least two of eight common English words
    # (counted as occurrences, case-insensitively; datatrove counts occurrences too).
    min_stop_words: int | None = Field(default=2, ge=0)
    stop_words: tuple[str, ...] = STOP_WORDS

    @model_validator(mode="after")
    def _bounds(self):
        for lo, hi in (("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is above {hi} ({b})")
        return self


@register
class GopherQualityV1(ScopedFilter):
    """Gopher's document quality rules (word count, word length, symbols, bullets,
    ellipses, alphabetic words, stop words; the word rules only for ``word_rules_languages``).
    Reasons, in the order checked:
    ``min_words``, ``max_words``, ``mean_word_length``, ``hash_ratio``, ``ellipsis_ratio``,
    ``bullet_lines``, ``ellipsis_lines``, ``alpha_words``, ``stop_words``."""

    name = "gopher_quality_v1"
    family = "gopher_quality"
    order = 40
    default_on = True
    Options = GopherQualityOptions
    REASONS = ("min_words", "max_words", "mean_word_length", "hash_ratio", "ellipsis_ratio",
               "bullet_lines", "ellipsis_lines", "alpha_words", "stop_words")

    def evaluate(self, view: TextView, scope: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
        o: GopherQualityOptions = self.options  # type: ignore[assignment]
        ws = in_scope(batch, (), o.word_rules_languages)   # where the word rules apply
        f = word_features(view)
        wid = view.word_id
        n_words = view.per_doc_sum(f["is_word"][wid])
        mean_len = ratio(view.per_doc_sum(f["core_chars"][wid]), n_words)
        checks = _word_checks(view, o, f, wid, ws, n_words, mean_len, ws) + _line_checks(view, o)
        if o.min_alpha_words_ratio is not None:
            alpha = ratio(view.per_doc_sum(f["has_alpha"][wid]), n_words)
            checks.append((8, (n_words > 0) & (alpha < o.min_alpha_words_ratio)))
        if o.min_stop_words is not None and o.min_stop_words > 0:
            key = "stop:" + "\x00".join(o.stop_words)
            stop = pc.utf8_lower(pa.array(list(o.stop_words), type=f["lower_core"].type))
            is_stop = view.dict_feature(key, lambda d: pc.is_in(
                f["lower_core"], value_set=stop).to_numpy(zero_copy_only=False))
            checks.append((9, ws & (view.per_doc_sum(is_stop[wid]) < o.min_stop_words)))
        return first_reason(view.n_docs, checks)


# Scripts written without spaces between words, and the characters per word that their
# segmenters find on average (FineWeb-2 tokenizes such languages with a per-language word
# segmenter and sets per-language thresholds; we ship no segmenter, so a run of these
# characters counts as ``chars / chars_per_word`` words). Chinese words average ~1.5
# characters (jieba on news text), Japanese ~2 (MeCab/Sudachi, kana particles being
# short), Thai, Lao, Khmer and Myanmar ~4.5 code points (vowel signs and tone marks are
# code points of their own).
NO_SPACE_SCRIPTS: dict[str, tuple[str, float]] = {
    "han": (r"\p{Han}", 1.5),
    "kana": (r"[\p{Hiragana}\p{Katakana}\x{30FC}]", 2.0),
    "sea": (r"[\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]", 4.5),
}

_ANY_NO_SPACE = "|".join(rx for rx, _ in NO_SPACE_SCRIPTS.values())


def word_units(view: TextView) -> dict[str, np.ndarray]:
    """Per distinct word: ``units`` (how many words it stands for: 1 for a word of a
    spaced script, ``chars / chars_per_word`` summed over the no-space-script characters
    otherwise, 0 for punctuation) and ``spaced`` (a word of a script with spaces)."""
    f = word_features(view)

    def build(d):
        units = np.zeros(len(d), dtype=np.float64)
        nospace = np.zeros(len(d), dtype=np.int64)
        # Only words with a character of these scripts need counting: find them with one
        # regex over the non-ASCII entries (most of a batch's dictionary is ASCII).
        idx = np.flatnonzero(~pc.string_is_ascii(d).to_numpy(zero_copy_only=False))
        if len(idx):
            sub = d.take(pa.array(idx))
            hit = pc.match_substring_regex(sub, _ANY_NO_SPACE).to_numpy(zero_copy_only=False)
            idx, sub = idx[hit], sub.filter(pa.array(hit))
        if len(idx):
            for rx, per_word in NO_SPACE_SCRIPTS.values():
                k = pc.count_substring_regex(sub, rx).to_numpy(zero_copy_only=False)
                units[idx] += k / per_word
                nospace[idx] += k
        spaced = f["is_word"] & (nospace == 0)
        # the rest of a mixed token (Latin letters, digits around CJK) is one more word
        rest = f["is_word"] & (nospace > 0) & (f["core_chars"] > nospace)
        units = np.where(spaced, 1.0, units + rest)
        return {"units": units, "spaced": spaced}
    return view.dict_feature("gopher_units", build)  # type: ignore[return-value]


class GopherQualityV2Options(GopherQualityOptions):
    # v2: the word rules apply to every language; words of scripts without spaces (Han,
    # kana, Thai, Lao, Khmer, Myanmar) are measured in word equivalents (NO_SPACE_SCRIPTS).
    word_rules_languages: tuple[str, ...] | None = None
    # The mean word length rule looks at space-separated words only, and only in documents
    # where they are at least this fraction of the words (in a Chinese document the mean
    # word length is 1.5 by construction and measures nothing).
    min_spaced_frac_for_length: float = Field(default=0.5, ge=0, le=1)
    # Gopher app. A: "at least two of the following English words": distinct words. The
    # list is English, so the rule applies to documents langid labels with one of these
    # languages (null = every document); give `stop_words` of your language and list it here.
    stop_words_languages: tuple[str, ...] | None = ("en",)


@register
class GopherQualityV2(ScopedFilter):
    """Gopher's quality rules as in v1, with the stop-word rule counting distinct words,
    and word rules for every script.

    Reference code: datatrove ``src/datatrove/pipeline/filters/gopher_quality_filter.py``
    (``GopherQualityFilter.filter``); comparisons at the thresholds follow it: fewer than
    50 or more than 100,000 words drop, a mean word length below 3 or above 10 drops,
    ``#`` or ellipses per word above 0.1 drop, above 90% bullet lines or 30% ellipsis lines
    drop, below 80% alphabetic words drops, fewer than 2 distinct stop words drop. Where we
    differ on purpose, and why:

    * words are whitespace-separated tokens, edge punctuation trimmed; a token of
      punctuation only is no word (datatrove uses spaCy/NLTK tokens, where "don't" is two
      words and "." one, which shortens the mean word length by ~0.4 on English prose);
    * stop words are matched case-insensitively ("The" counts; datatrove compares tokens
      as they are);
    * scripts without spaces: a per-script word measure (``word_units``) instead of a
      segmenter per language, so the word-count rules mean the same in Chinese as in
      English; the mean word length rule is skipped where it cannot mean anything.
    """

    name = "gopher_quality_v2"
    family = "gopher_quality"
    order = 40
    default_on = True
    Options = GopherQualityV2Options
    REASONS = GopherQualityV1.REASONS

    def evaluate(self, view: TextView, scope: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
        o: GopherQualityV2Options = self.options  # type: ignore[assignment]
        ws = in_scope(batch, (), o.word_rules_languages)
        f = word_features(view)
        u = word_units(view)
        wid = view.word_id
        n_words = view.per_doc_sum(u["units"][wid])
        spaced = u["spaced"][wid]
        n_spaced = view.per_doc_sum(spaced)
        mean_len = ratio(view.per_doc_sum(np.where(spaced, f["core_chars"][wid], 0)), n_spaced)
        length_applies = ws & (n_spaced > 0) & (n_spaced >= o.min_spaced_frac_for_length * n_words)
        checks = _word_checks(view, o, f, wid, ws, n_words, mean_len, length_applies) + _line_checks(view, o)
        if o.min_alpha_words_ratio is not None:
            alpha = ratio(view.per_doc_sum(np.where(f["has_alpha"][wid], u["units"][wid], 0)),
                          n_words)
            checks.append((8, (n_words > 0) & (alpha < o.min_alpha_words_ratio)))
        if o.min_stop_words is not None and o.min_stop_words > 0:
            sw = in_scope(batch, (), o.stop_words_languages)
            checks.append((9, sw & (distinct_stop_words(view, f, o.stop_words)
                                    < o.min_stop_words)))
        return first_reason(view.n_docs, checks)


def _word_checks(view: TextView, o, f, wid, ws, n_words, mean_len, length_mask) -> list:
    """The word-count, mean-word-length, hash and ellipsis word rules (codes 1-5), shared by v1
    and v2; ``length_mask`` says where the mean word length is judged (v2: spaced scripts only)."""
    checks: list = [
        (1, None if o.min_words is None else ws & (n_words < o.min_words)),
        (2, None if o.max_words is None else ws & (n_words > o.max_words)),
    ]
    if o.min_mean_word_length is not None:
        checks.append((3, length_mask & (mean_len < o.min_mean_word_length)))
    if o.max_mean_word_length is not None:
        checks.append((3, length_mask & (mean_len > o.max_mean_word_length)))
    if o.max_hash_word_ratio is not None:
        checks.append((4, ratio(view.per_doc_sum(f["hashes"][wid]), n_words) > o.max_hash_word_ratio))
    if o.max_ellipsis_word_ratio is not None:
        checks.append((5, ratio(view.per_doc_sum(f["ellipses"][wid]), n_words) > o.max_ellipsis_word_ratio))
    return checks


def _line_checks(view: TextView, o) -> list:
    """The bullet and ellipsis line rules (codes 6 and 7), as in v1."""
    checks: list = []
    if o.max_bullet_lines_ratio is None and o.max_ellipsis_lines_ratio is None:
        return checks
    lines = view.stripped_lines
    nonblank = view.line_words > 0
    n_lines = view.per_doc_line_sum(nonblank)
    if o.max_bullet_lines_ratio is not None:
        bullet = pc.match_substring_regex(lines, _BULLET).to_numpy(zero_copy_only=False)
        checks.append((6, ratio(view.per_doc_line_sum(bullet & nonblank), n_lines)
                       > o.max_bullet_lines_ratio))
    if o.max_ellipsis_lines_ratio is not None:
        ell = (pc.ends_with(lines, "...").to_numpy(zero_copy_only=False)
               | pc.ends_with(lines, "\u2026").to_numpy(zero_copy_only=False))
        checks.append((7, ratio(view.per_doc_line_sum(ell & nonblank), n_lines)
                       > o.max_ellipsis_lines_ratio))
    return checks


def distinct_stop_words(view: TextView, f: dict, stop_words: tuple[str, ...]) -> np.ndarray:
    """Per document, how many of ``stop_words`` occur in it (case-insensitively), each
    counted once: up to 63 stop words one bit each, OR-reduced over the document's words;
    longer lists through the distinct (document, stop word) pairs."""
    stops = sorted({w.lower() for w in stop_words})
    key = "stopidx:" + "\x00".join(stops)
    stop_arr = pa.array(stops, type=f["lower_core"].type)
    idx = view.dict_feature(key, lambda d: pc.fill_null(
        pc.index_in(f["lower_core"], value_set=stop_arr), -1).to_numpy(zero_copy_only=False))
    wi = idx[view.word_id].astype(np.int64)
    hit = wi >= 0
    doc = view.word_doc[hit]
    wi = wi[hit]
    if len(stops) > 63:
        pairs = np.unique(doc * len(stops) + wi)
        return np.bincount(pairs // len(stops), minlength=view.n_docs).astype(np.int64)
    acc = np.zeros(view.n_docs, dtype=np.uint64)
    np.bitwise_or.at(acc, doc, np.left_shift(np.uint64(1), wi.astype(np.uint64)))
    counts = np.zeros(view.n_docs, dtype=np.int64)
    for b in range(len(stops)):
        counts += ((acc >> np.uint64(b)) & np.uint64(1)).astype(np.int64)
    return counts


_TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
_DUP_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


class GopherRepetitionOptions(ScopeOptions):
    # Gopher Table A1: duplicate line fraction 0.30, duplicate paragraph fraction 0.30.
    max_dup_line_frac: float | None = Field(default=0.30, ge=0, le=1)
    max_dup_para_frac: float | None = Field(default=0.30, ge=0, le=1)
    # Gopher Table A1: duplicate line / paragraph character fraction 0.20.
    max_dup_line_char_frac: float | None = Field(default=0.20, ge=0, le=1)
    max_dup_para_char_frac: float | None = Field(default=0.20, ge=0, le=1)
    # Gopher Table A1: top 2-, 3-, 4-gram character fraction 0.20, 0.18, 0.16.
    max_top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: dict(_TOP_NGRAMS))
    # Gopher Table A1: duplicate 5..10-gram character fraction 0.15, 0.14, ..., 0.10.
    max_dup_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: dict(_DUP_NGRAMS))

    @field_validator("max_top_ngram_char_frac", "max_dup_ngram_char_frac")
    @classmethod
    def _ngrams(cls, v: dict[int, float]):
        for n, th in v.items():
            if not 2 <= n <= 32:
                raise ValueError(f"n-gram size {n} must be between 2 and 32")
            if not 0 <= th <= 1:
                raise ValueError(f"threshold {th} for {n}-grams must be between 0 and 1")
        return dict(sorted(v.items()))


@register
class GopherRepetitionV1(ScopedFilter):
    """Gopher's repetition rules: duplicate lines and paragraphs (by count and by
    characters), characters in the most frequent 2-4-grams and in repeated 5-10-grams.

    A duplicate line/paragraph is one whose word sequence already occurred earlier in the
    document (the first occurrence is not a duplicate); fractions by count are over
    non-blank lines/paragraphs, by characters over the document's characters. n-gram
    fractions are over the document's characters too (see
    :func:`~preproc.clean.filters._dups.ngram_fractions`; overlapping repeats are counted
    once, as the paper asks). Reasons, in the order checked: ``dup_para_frac``,
    ``dup_para_char_frac``, ``dup_line_frac``, ``dup_line_char_frac``, ``top_<n>_gram``,
    ``dup_<n>_gram``.
    """

    name = "gopher_repetition_v1"
    family = "gopher_repetition"
    order = 45
    default_on = True
    Options = GopherRepetitionOptions

    def __init__(self, options):
        super().__init__(options)
        o: GopherRepetitionOptions = options
        self.REASONS = (("dup_para_frac", "dup_para_char_frac", "dup_line_frac",
                         "dup_line_char_frac")
                        + tuple(f"top_{n}_gram" for n in o.max_top_ngram_char_frac)
                        + tuple(f"dup_{n}_gram" for n in o.max_dup_ngram_char_frac))

    def evaluate(self, view: TextView, scope: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
        o: GopherRepetitionOptions = self.options  # type: ignore[assignment]
        doc_chars = view.doc_chars
        ls = view.memo("line_stats", lambda: LineStats(view))
        checks: list = []
        if o.max_dup_para_frac is not None or o.max_dup_para_char_frac is not None:
            paras, rep_paras, rep_para_chars = ls.paragraphs()
            if o.max_dup_para_frac is not None:
                checks.append((1, ratio(rep_paras, paras) > o.max_dup_para_frac))
            if o.max_dup_para_char_frac is not None:
                checks.append((2, ratio(rep_para_chars, doc_chars) > o.max_dup_para_char_frac))
        if o.max_dup_line_frac is not None:
            checks.append((3, ratio(ls.repeated_lines, ls.nonblank_lines) > o.max_dup_line_frac))
        if o.max_dup_line_char_frac is not None:
            checks.append((4, ratio(ls.repeated_line_chars, doc_chars) > o.max_dup_line_char_frac))
        codes = first_reason(view.n_docs, checks)
        # The n-gram pass is the expensive part: only for documents still in the running.
        top, dup = o.max_top_ngram_char_frac, o.max_dup_ngram_char_frac
        top_frac, dup_frac = ngram_fractions(view, scope & (codes == 0), top, dup)
        code = 5
        ngram_checks = []
        for n, th in top.items():
            ngram_checks.append((code, top_frac[n] > th))
            code += 1
        for n, th in dup.items():
            ngram_checks.append((code, dup_frac[n] > th))
            code += 1
        later = first_reason(view.n_docs, ngram_checks)
        return np.where(codes == 0, later, codes)
