"""What the quality filters share: which documents they apply to, and the bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from preproc.clean.filters._text import TextView, derive_view, in_scope, view_of
from preproc.clean.steps import Filter, StepOptions

# Source code follows none of the natural-language statistics these rules measure (a
# Python file has few stop words, many `#`, curly brackets, short lines), so the quality
# filters leave it alone unless told otherwise. Patterns are globs on the `source` column.
CODE_SOURCES = ("code/*",)


def check_languages(v: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A ``languages`` option: null (every language) or a non-empty list."""
    if v is not None and not v:
        raise ValueError("must be null (every language) or a non-empty list")
    return v


class ScopeOptions(StepOptions):
    # Rows whose `source` matches one of these globs pass the step untouched.
    skip_sources: tuple[str, ...] = Field(default=CODE_SOURCES)
    # Apply only to documents whose `language` (set by the `langid` step) is one of these;
    # null = every language. Without a `language` column (langid off) every row is in scope.
    languages: tuple[str, ...] | None = None

    @field_validator("languages")
    @classmethod
    def _langs(cls, v):
        return check_languages(v)


class ScopedFilter(Filter):
    """A filter over a :class:`TextView`, applied to the rows in scope only.

    Subclasses set ``REASONS`` and implement :meth:`evaluate`, which returns one code per
    row of the view (0 = keep, ``k`` = ``REASONS[k-1]``; ``batch`` holds the view's rows);
    rows out of scope are kept whatever it says. The view of the surviving rows is
    registered for the next step.
    """

    REASONS: ClassVar[Sequence[str]] = ()

    def evaluate(self, view: TextView, scope: np.ndarray, batch: pa.RecordBatch) -> np.ndarray:
        raise NotImplementedError

    def reasons(self, batch: pa.RecordBatch):
        o = self.options
        n = batch.num_rows
        scope = in_scope(batch, o.skip_sources, o.languages)  # type: ignore[attr-defined]
        codes = np.zeros(n, dtype=np.uint8)
        if n and scope.any():
            text = batch.column("text")
            codes = np.asarray(self.evaluate(view_of(text), scope, batch), dtype=np.uint8)
            codes[~scope] = 0
            if codes.any():
                derive_view(text, codes == 0)
        return codes, tuple(self.REASONS)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out
