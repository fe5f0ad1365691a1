"""Hard-wrapped documents and the units line rules look at: lines, or paragraphs.

C4's and FineWeb's line rules assume one paragraph per line, which is what their HTML text
extractors emit. Books from Project Gutenberg, man pages, e-mail and other plain text are
hard-wrapped: a paragraph is broken into lines at a fixed width, so most lines end in the
middle of a sentence and fail "ends in terminal punctuation". :func:`wrapped_docs` detects
such documents and :func:`units_of` gives, per document, the units the line rules should
look at: the lines of an unwrapped document, the paragraphs (non-blank lines between blank
lines, joined by spaces) of a wrapped one.

A document is hard-wrapped when (all over its *inner* lines: non-blank lines followed by a
non-blank line of the same paragraph, i.e. lines where a break was chosen):

* at least 3 inner lines, and at least half its non-blank lines are inner (paragraphs of
  several lines);
* a wrap width ``W``, the 90th percentile of the inner lines' lengths, between 30 and 160
  characters;
* at least 60% of inner lines were *filled*: the next line's first word would not have fit
  (``len(line) + 1 + len(next first word) > W``), what greedy wrapping produces, and what
  lists of short items, menus and one-sentence-per-line text do not;
* at least 40% of inner lines do not end in a terminal mark (a line break inside a
  sentence) — verse-per-line text (the Bible) and lists of sentences stay line-based;
* (instead of the 60% filled) 25% filled when at least 80% of inner lines end inside a
  sentence: justified man pages, whose stretched spaces normalization collapses, and
  paragraphs mixed with code or option lists.

All vectorized over the lines of the batch (numpy, Arrow); no Python per document.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from preproc.clean.filters._punct import CONTINUATION_MARKS, LINE_END_MARKS, ends_with_mark
from preproc.clean.filters._text import TextView, segment_sums

MIN_INNER_LINES = 3
MIN_INNER_FRAC = 0.25
WIDTH_RANGE = (30, 160)
MIN_FILLED_FRAC = 0.6
MIN_OPEN_FRAC = 0.4
# Justified text (man pages: groff stretches spaces, which normalization collapses) and
# text with code or option lists among its paragraphs fill fewer lines; when nearly all
# breaks fall inside sentences, a quarter of filled lines is enough.
MIN_FILLED_FRAC_OPEN = 0.25
MIN_OPEN_FRAC_STRICT = 0.8


def _doc_quantile(values: np.ndarray, doc: np.ndarray, mask: np.ndarray, n_docs: int,
                  q: float) -> np.ndarray:
    """Per document, the ``q`` quantile (lower) of ``values[mask]``; 0 where none."""
    v, d = values[mask], doc[mask]
    out = np.zeros(n_docs, dtype=np.int64)
    if not len(v):
        return out
    order = np.lexsort((v, d))
    v, d = v[order], d[order]
    counts = np.bincount(d, minlength=n_docs)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    out[has] = v[start[has] + ((counts[has] - 1) * q).astype(np.int64)]
    return out


def wrapped_docs(view: TextView) -> np.ndarray:
    """Per document of ``view``: is it hard-wrapped (see the module docstring)?"""
    n = view.n_docs
    n_lines = len(view.line_chars)
    if n == 0 or n_lines == 0:
        return np.zeros(n, dtype=bool)
    line_doc = view.line_doc
    nonblank = view.line_words > 0
    nxt_same = np.zeros(n_lines, dtype=bool)
    nxt_same[:-1] = line_doc[1:] == line_doc[:-1]
    nxt_nonblank = np.zeros(n_lines, dtype=bool)
    nxt_nonblank[:-1] = nonblank[1:]
    inner = nonblank & nxt_same & nxt_nonblank
    chars = pc.utf8_length(view.stripped_lines).to_numpy(zero_copy_only=False).astype(np.int64)
    width = _doc_quantile(chars, line_doc, inner, n, 0.9)
    # length of the first word of each line (0 for blank lines)
    first_word = np.zeros(n_lines, dtype=np.int64)
    lws = view.line_word_start
    has_word = np.diff(lws) > 0
    first_word[has_word] = view.word_chars[lws[:-1][has_word]]
    nxt_first = np.zeros(n_lines, dtype=np.int64)
    nxt_first[:-1] = first_word[1:]
    filled = inner & (chars + 1 + nxt_first > width[line_doc])
    open_end = inner & ~ends_with_mark(view.stripped_lines, LINE_END_MARKS)
    n_inner = segment_sums(inner, view.doc_line_start)
    n_nonblank = segment_sums(nonblank, view.doc_line_start)
    n_filled = segment_sums(filled, view.doc_line_start)
    n_open = segment_sums(open_end, view.doc_line_start)
    safe = np.maximum(n_inner, 1)
    return ((n_inner >= MIN_INNER_LINES) & (n_inner >= MIN_INNER_FRAC * n_nonblank)
            & (width >= WIDTH_RANGE[0]) & (width <= WIDTH_RANGE[1])
            & (n_open >= MIN_OPEN_FRAC * safe)
            & ((n_filled >= MIN_FILLED_FRAC * safe)
               | ((n_filled >= MIN_FILLED_FRAC_OPEN * safe)
                  & (n_open >= MIN_OPEN_FRAC_STRICT * safe))))


@dataclass
class Units:
    """The units of every document: ``text`` has one unit per line (a paragraph of a
    wrapped document is its lines joined by spaces; blank lines stay blank units), so a
    :class:`TextView` of it sees units as lines. ``original`` holds each unit's stripped
    lines joined by ``\\n`` (what a rewriting rule puts back), ``doc_unit_start`` the CSR
    offsets of units per document, ``wrapped`` the per-document verdict."""

    text: pa.Array
    original: pa.Array
    doc_unit_start: np.ndarray
    wrapped: np.ndarray
    changed: bool = False          # some unit is more than one line


def units_of(view: TextView, mode: str = "auto") -> Units:
    """Line-rule units of ``view``'s documents. ``mode``: ``"lines"`` (every line a unit,
    the reference behaviour), ``"paragraphs"`` (every document as if wrapped) or ``"auto"``
    (paragraphs for the documents :func:`wrapped_docs` finds wrapped; in the others a line
    ending in a comma, semicolon or colon of any script continues on the next non-blank
    line, as verse-per-line text such as the Bible splits sentences at verse numbers)."""
    n = view.n_docs
    if mode == "lines":
        wrapped = np.zeros(n, dtype=bool)
    elif mode == "paragraphs":
        wrapped = np.ones(n, dtype=bool)
    else:
        wrapped = wrapped_docs(view)
    lines = view.stripped_lines
    dls = view.doc_line_start
    n_lines = len(lines)
    line_doc = view.line_doc
    nonblank = view.line_words > 0
    # A unit starts at every line of an unwrapped document, except after a line ending in
    # a continuation mark; in a wrapped one at its first line, at a blank line, and after
    # a blank line.
    start = ~wrapped[line_doc] | ~nonblank
    if mode == "auto" and n_lines > 1:
        cont = ends_with_mark(lines, CONTINUATION_MARKS) & nonblank
        start[1:] &= ~cont[:-1]
    start[1:] |= ~nonblank[:-1] | (line_doc[1:] != line_doc[:-1])
    start[dls[:-1][np.diff(dls) > 0]] = True
    if start.all():
        return Units(view.text, lines, dls, wrapped)
    unit_start = np.flatnonzero(start)
    offs = pa.array(np.append(unit_start, n_lines).astype(np.int32))
    grouped = pa.ListArray.from_arrays(offs, lines)
    joined = pc.binary_join(grouped, " ")
    original = pc.binary_join(grouped, "\n")
    unit_id = np.cumsum(start) - 1
    # Arrow gives every document at least one line (an empty one), so at least one unit.
    doc_unit_start = np.append(unit_id[dls[:-1]], len(unit_start))
    text = pc.binary_join(pa.ListArray.from_arrays(
        pa.array(doc_unit_start.astype(np.int32)), joined), "\n")
    return Units(text, original, doc_unit_start, wrapped, changed=True)
