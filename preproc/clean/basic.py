"""The first clean steps: unicode/whitespace normalization and length bounds.

Both are vectorized over the Arrow text column with Arrow compute (utf8proc for
normalization, RE2 for the regexes): no Python loop per document or character.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from preproc.clean.steps import Filter, Mapper, StepOptions, register, replace_text, word_counts

# C0 controls but \t \n \r, DEL, C1 controls (incl. NEL), and the BOM used as a zero-width
# no-break space inside text. \r is handled by the newline rule first.
_CONTROLS = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\x{FEFF}]"
# Unicode spaces that are not ASCII space: NBSP, en/em/thin spaces, ideographic space...
_SPACES = r"[\x{00A0}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}]"


def _replace(text: pa.Array, pattern: str, repl: str) -> pa.Array:
    """``replace_substring_regex`` applied only to the documents the pattern matches: RE2
    matching costs about half of replacing, and most rules match few documents."""
    hit = pc.match_substring_regex(text, pattern)
    n = pc.sum(hit).as_py() or 0
    if n == 0:
        return text
    if n == len(text):
        return pc.replace_substring_regex(text, pattern, repl)
    return pc.replace_with_mask(text, hit, pc.replace_substring_regex(text.filter(hit), pattern, repl))


def _normalize(text: pa.Array, form: str) -> pa.Array:
    """``utf8_normalize`` of the documents that need it. ASCII text is in every form; for the
    rest CPython's quick check (``unicodedata.is_normalized``) is ~3x cheaper than
    normalizing, and most text is already NFC."""
    idx = np.flatnonzero(~pc.string_is_ascii(text).to_numpy(zero_copy_only=False))
    if len(idx) == 0:
        return text
    sub = text.take(pa.array(idx))
    need = np.fromiter((not unicodedata.is_normalized(form, t) for t in sub.to_pylist()), dtype=bool, count=len(idx))
    if not need.any():
        return text
    mask = np.zeros(len(text), dtype=bool)
    mask[idx[need]] = True
    return pc.replace_with_mask(text, pa.array(mask), pc.utf8_normalize(sub.filter(pa.array(need)), form))


class NormalizeOptions(StepOptions):
    # Unicode normalization form; "none" leaves code points as they are.
    form: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"
    strip_controls: bool = True
    # \r\n, \r, U+2028 and U+2029 become \n; at most one blank line in a row.
    newlines: bool = True
    # Unicode spaces become ASCII spaces; runs of spaces after a non-space character become
    # one (leading indentation is kept, code stays valid); trailing spaces on lines go.
    spaces: bool = True
    strip: bool = True


@register
class NormalizeV1(Mapper):
    """Unicode normalization (NFC by default), control characters, newlines and spaces."""

    name = "normalize_v1"
    family = "normalize"
    order = 10
    default_on = True
    Options = NormalizeOptions

    def map(self, batch: pa.RecordBatch, counters: dict[str, int]) -> pa.RecordBatch:
        o: NormalizeOptions = self.options  # type: ignore[assignment]
        text = batch.column("text")
        if o.newlines:
            text = _replace(text, r"\r\n?|[\x{2028}\x{2029}]", "\n")
        if o.strip_controls:
            text = _replace(text, _CONTROLS, "")
        if o.form != "none":
            text = _normalize(text, o.form)
        if o.spaces:
            text = _replace(text, _SPACES, " ")
            text = _replace(text, r"[ \t]+\n", "\n")
            text = _replace(text, r"(\S) {2,}", r"\1 ")
        if o.newlines:
            text = _replace(text, r"\n{3,}", "\n\n")
        if o.strip:
            text = pc.utf8_trim_whitespace(text)
        return replace_text(batch, text)


class LengthOptions(StepOptions):
    # Bounds on the cleaned text; null means no bound. Characters are code points.
    min_chars: int | None = Field(default=1, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    min_words: int | None = Field(default=1, ge=0)
    max_words: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _order(self) -> LengthOptions:
        for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is above {hi} ({b})")
        return self


@register
class LengthV1(Filter):
    """Drops documents outside [min, max] characters and words (after normalization)."""

    name = "length_v1"
    family = "length"
    order = 20
    default_on = True
    Options = LengthOptions
    _NAMES = ("min_chars", "max_chars", "min_words", "max_words")

    def reasons(self, batch: pa.RecordBatch):
        o: LengthOptions = self.options  # type: ignore[assignment]
        text = batch.column("text")
        codes = np.zeros(batch.num_rows, dtype=np.uint8)
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False)
        words = word_counts(text) if (o.min_words is not None or o.max_words is not None) else None
        # Later rules only mark rows not yet marked, so each drop has exactly one reason.
        checks = [
            (1, o.min_chars is not None and chars < (o.min_chars or 0)),
            (2, o.max_chars is not None and chars > (o.max_chars or 0)),
            (3, o.min_words is not None and words < (o.min_words or 0)),
            (4, o.max_words is not None and words > (o.max_words or 0)),
        ]
        for code, mask in checks:
            if mask is not False:
                codes[(codes == 0) & mask] = code
        return codes, self._NAMES
