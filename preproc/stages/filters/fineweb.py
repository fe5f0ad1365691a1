"""FineWeb's custom quality rules (Penedo et al. 2024, "The FineWeb Datasets: Decanting the
Web for the Finest Text Data at Scale", arXiv:2406.17557, the custom heuristic filters;
datatrove ``FineWebQualityFilter``).

FineWeb's input is text extracted from HTML with one paragraph per line. Hard-wrapped text
(Project Gutenberg, man pages rendered at 80 columns) has most lines ending mid-sentence and
fails ``line_punct_ratio``, which is why this step is off by default.

Lines are the non-blank lines of the document (FineWeb's extractor emits no blank lines;
our normalized text keeps one between paragraphs, which must not count as short lines).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from ...steps import register
from ._base import ScopedFilter, ScopeOptions, ratio
from ._dups import LineStats
from ._text import TextView, first_reason


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
        nonblank = view.line_words > 0
        n_lines = view.per_doc_line_sum(nonblank)
        checks: list = []
        if o.line_punct_thr is not None:
            lines = view.stripped_lines
            ends = np.zeros(len(lines), dtype=bool)
            for c in o.stop_chars:
                ends |= pc.ends_with(lines, c).to_numpy(zero_copy_only=False)
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
            checks.append((4, ratio(np.maximum(n_lines - 1, 0), view.doc_words) > o.new_line_ratio))
        return first_reason(view.n_docs, checks)
