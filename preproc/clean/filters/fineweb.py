"""FineWeb's custom quality rules (Penedo et al. 2024, "The FineWeb Datasets: Decanting the
Web for the Finest Text Data at Scale", arXiv:2406.17557, the custom heuristic filters;
datatrove ``FineWebQualityFilter``).

FineWeb's input is text extracted from HTML with one paragraph per line. Hard-wrapped text
(Project Gutenberg, man pages rendered at 80 columns) has most lines ending mid-sentence and
fails v1's ``line_punct_ratio``; v2 judges the paragraphs of such documents (``_units``).

Lines are the non-blank lines of the document (FineWeb's extractor emits no blank lines;
our normalized text keeps one between paragraphs, which must not count as short lines).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from preproc.clean.filters._base import ScopedFilter, ScopeOptions, ratio
from preproc.clean.filters._dups import LineStats
from preproc.clean.filters._punct import LINE_END_MARKS, ends_with_mark
from preproc.clean.filters._text import TextView, derive_view, first_reason, in_scope, view_of
from preproc.clean.filters._units import units_of
from preproc.clean.filters.gopher import word_units as gopher_word_units
from preproc.clean.steps import register


class FineWebOptions(ScopeOptions):
    # FineWeb: drop if the fraction of lines ending in punctuation is <= 0.12.
    line_punct_thr: float | None = Field(default=0.12, ge=0, le=1)
    # FineWeb (datatrove `line_punct_exclude_zero`): do not drop docs with a ratio of 0.
    line_punct_exclude_zero: bool = False
    # FineWeb's stop characters (datatrove `stop_chars`).
    stop_chars: tuple[str, ...] = (".", "'", '"', "!", "?")
    # FineWeb: drop if >= 67% of the lines are at most 30 characters long.
    short_line_thr: float | None = Field(default=0.67, ge=0, le=1)
    short_line_length: int = Field(default=30, ge=0)
    # FineWeb: drop if >= 1% of the characters are in duplicated lines.
    char_duplicates_ratio: float | None = Field(default=0.01, ge=0, le=1)
    # FineWeb: drop if newlines / words > 0.3 (lists, menus).
    new_line_ratio: float | None = Field(default=0.3, ge=0)


def evaluate(view: TextView, o, stop_chars: str | None, ascii_stops: bool = False,
             word_units: bool = False) -> np.ndarray:
    """FineWeb's four rules over the lines of ``view`` (codes per document)."""
    nonblank = view.line_words > 0
    n_lines = view.per_doc_line_sum(nonblank)
    checks: list = []
    if o.line_punct_thr is not None:
        lines = view.stripped_lines
        if ascii_stops:                       # v1: each stop string, as datatrove's endswith
            ends = np.zeros(len(lines), dtype=bool)
            for c in o.stop_chars:
                ends |= pc.ends_with(lines, c).to_numpy(zero_copy_only=False)
        else:
            ends = ends_with_mark(lines, stop_chars or LINE_END_MARKS)
        r = ratio(view.per_doc_line_sum(ends & nonblank), n_lines)
        bad = r <= o.line_punct_thr
        if o.line_punct_exclude_zero:
            bad &= r > 0
        checks.append((1, bad))
    if o.short_line_thr is not None:
        short = view.line_chars <= o.short_line_length
        checks.append((2, ratio(view.per_doc_line_sum(short & nonblank), n_lines)
                       >= o.short_line_thr))
    if o.char_duplicates_ratio is not None:
        ls = view.memo("line_stats", lambda: LineStats(view))
        newlines = np.diff(view.doc_line_start) - 1
        chars = view.doc_chars - newlines
        checks.append((3, ratio(ls.repeated_line_chars, chars) >= o.char_duplicates_ratio))
    if o.new_line_ratio is not None:
        words = view.doc_words
        if word_units:                        # v2: Chinese, Japanese, Thai words counted too
            words = view.per_doc_sum(gopher_word_units(view)["units"][view.word_id])
        checks.append((4, ratio(np.maximum(n_lines - 1, 0), words) > o.new_line_ratio))
    return first_reason(view.n_docs, checks)


@register
class FineWebV1(ScopedFilter):
    """FineWeb's rules: ``line_punct_ratio``, ``short_line_ratio``, ``char_dup_ratio``,
    ``list_ratio`` (the reason names datatrove uses), checked in that order."""

    name = "fineweb_v1"
    family = "fineweb"
    order = 60
    default_on = False
    Options = FineWebOptions
    REASONS = ("line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio")

    def evaluate(self, view: TextView, scope: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
        o: FineWebOptions = self.options  # type: ignore[assignment]
        return evaluate(view, o, "".join(o.stop_chars), ascii_stops=True)


class FineWebV2Options(FineWebOptions):
    # v2: a line is punctuated when it ends in a terminal mark of any script (Unicode
    # Sentence_Terminal: 。 ։ । ۔ ؟ ！ ？ ...), an ellipsis or a closing quote (' " ’ ” » 」),
    # see _punct.py. Set to a string of characters to use only those.
    stop_chars: str | None = None  # type: ignore[assignment]
    # What the line rules count as a line: "auto" = the paragraphs (lines joined within a
    # paragraph) of documents detected as hard-wrapped (books, man pages; see _units.py),
    # the lines of every other document; "lines" = always lines (the reference behaviour).
    line_units: Literal["auto", "lines", "paragraphs"] = "auto"


@register
class FineWebV2(ScopedFilter):
    """FineWeb's rules as in v1, with terminal punctuation of every script and line rules
    applied to the paragraphs of hard-wrapped documents.

    Reference code: datatrove ``src/datatrove/pipeline/filters/fineweb_quality_filter.py``
    (``FineWebQualityFilter.filter``). The comparisons at the thresholds are the reference
    code's: ``line_punct_ratio <= 0.12`` drops (exactly 0.12 drops), ``short_line_ratio >=
    0.67`` drops, ``char_dup_ratio >= 0.01`` drops, ``newlines / words > 0.3`` drops
    (exactly 0.3 keeps). Where we differ on purpose, and why:

    * stop characters: the reference knows ``. ' " ! ?`` only, so lines of Japanese,
      Armenian, Bengali or Urdu ending in 。 ։ । ۔ count as unpunctuated (FineWeb applied
      the rule to English only; FineWeb-2 replaced it per language). We use the Unicode
      Sentence_Terminal set, the ellipsis and closing quotes of every typography;
    * ratios are over non-blank lines (the reference divides by all lines, blank ones
      included: its extractor emits none, our normalized text keeps one between
      paragraphs, which would count as short and unpunctuated lines);
    * words are whitespace-separated (``list_ratio``): the reference's NLTK tokens count
      punctuation as words, which lowers the ratio by about a fifth on prose; words of
      scripts without spaces are counted in word equivalents (Gopher v2's ``word_units``),
      as FineWeb-2 counts them with a segmenter per language;
    * hard-wrapped documents: the rules see paragraphs, not the wrapped lines (see
      ``line_units``); the reference would drop most books.
    """

    name = "fineweb_v2"
    family = "fineweb"
    order = 60
    default_on = False
    Options = FineWebV2Options
    REASONS = FineWebV1.REASONS

    def reasons(self, batch: pa.RecordBatch):
        o: FineWebV2Options = self.options  # type: ignore[assignment]
        n = batch.num_rows
        scope = in_scope(batch, o.skip_sources, o.languages)
        codes = np.zeros(n, dtype=np.uint8)
        if n and scope.any():
            text = batch.column("text")
            view = view_of(text)
            if o.line_units != "lines":
                units = units_of(view, o.line_units)
                if units.changed:
                    view = TextView(units.text)
            codes = evaluate(view, o, o.stop_chars, word_units=True)
            codes[~scope] = 0
            if codes.any():
                derive_view(text, codes == 0)
        return codes, self.REASONS
