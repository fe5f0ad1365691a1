"""Balanced slices of the clean output: what each index of a later stage reads.

Clean fans out over the input's shards, and a compressed file is never cut, so 8 gzip files
of very different sizes make 8 very unequal clean parts. A later stage that read clean part
``i`` at index ``i`` would inherit that imbalance. Instead index ``j`` of such a stage reads
a contiguous slice of the *concatenated* clean output (part ``i`` rows ``a..b``, then part
``i+1`` rows ``0..c``, ...), cut at equal cumulative text bytes. The fan-out stays what the
plan says (the plan is made before anything runs); only what each index reads follows the
data. Concatenated in index order, the slices are the clean output in order, so the stage's
outputs, concatenated, are the same whatever the cut.

Where to cut comes from clean's markers: each records a :class:`TextProfile` of its part,
checkpoints ``[row, cumulative text bytes]`` about every ``1/MAX_CHECKPOINTS`` of the part
(always ending with ``[rows, text_bytes]``). :func:`balanced_slices` is a pure function of
those profiles and the fan-out; the coordinator computes it once before the stage
(:func:`write_slices`, N marker reads) and the indices read one small file
(:func:`read_slices`); an index that finds none computes the same slices itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from preproc.io import layout

if TYPE_CHECKING:
    from preproc.io.store import Store

__all__ = ["TextProfile", "Piece", "balanced_slices", "slices_from_markers", "write_slices", "read_slices",
           "MAX_CHECKPOINTS", "PROFILE_KEY", "PROFILES_KEY"]

# Checkpoints a profile keeps at most: cuts land within 1/MAX_CHECKPOINTS of a part of the
# ideal, and a marker grows by a few KB at most.
MAX_CHECKPOINTS = 128
# The first checkpoints' spacing in text bytes; doubled whenever the profile fills up.
FIRST_STEP_BYTES = 4096
# The key of the profile in clean's markers.
PROFILE_KEY = "text_profile"
# A marker of an index that wrote several parts (a group of shards, ``"shards": [lo, hi]``)
# holds one profile per part under this key instead.
PROFILES_KEY = "text_profiles"
SLICES_VERSION = 1


class TextProfile:
    """Cumulative text bytes of a part, sampled at rows as the part is written.

    A checkpoint is taken at the first row where the bytes since the last one reach
    ``step``; when there are :data:`MAX_CHECKPOINTS`, every other one is dropped and ``step``
    doubles, so the spacing follows the part's size. Deterministic: the same rows in the
    same batches give the same profile."""

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0
        self.step = FIRST_STEP_BYTES
        self.points: list[tuple[int, int]] = []
        self._next = self.step

    def add(self, lengths: np.ndarray) -> None:
        """The next rows' text lengths in bytes (in the order they are written)."""
        if not len(lengths):
            return
        cum = np.cumsum(lengths, dtype=np.int64) + self.bytes
        end = int(cum[-1])
        while end >= self._next:
            k = int(np.searchsorted(cum, self._next, side="left"))
            row, at = self.rows + k + 1, int(cum[k])
            self.points.append((row, at))
            if len(self.points) >= MAX_CHECKPOINTS:
                self.points = self.points[1::2]
                self.step *= 2
            self._next = at + self.step
        self.rows += len(lengths)
        self.bytes = end

    def to_json(self) -> list[list[int]]:
        pts = [p for p in self.points if p[0] < self.rows]
        return [[r, b] for r, b in pts] + [[self.rows, self.bytes]]


@dataclass(frozen=True)
class Piece:
    """Rows ``start..end`` (end excluded) of clean part ``part``."""

    part: int
    start: int
    end: int
    text_bytes: int

    def to_json(self) -> list[int]:
        return [self.part, self.start, self.end, self.text_bytes]

    @classmethod
    def from_json(cls, x: list[int]) -> Piece:
        return cls(*(int(v) for v in x))


def balanced_slices(profiles: list[list[list[int]]], n: int) -> list[list[Piece]]:
    """Cut the concatenated parts into ``n`` contiguous slices of about equal text bytes.

    ``profiles[i]``: part ``i``'s checkpoints (:class:`TextProfile`). The units between
    consecutive checkpoints are laid on one line of cumulative weight (text bytes plus one
    per row, so that parts of empty documents still spread); a unit goes to the slice its
    midpoint falls in, as :func:`preproc.engine.plan.plan_shards` places input splits. A
    slice may be empty (fewer units than slices)."""
    units: list[tuple[int, int, int, int]] = []     # part, row start, row end, text bytes
    for part, prof in enumerate(profiles):
        r0 = b0 = 0
        for r, b in prof:
            if r > r0:
                units.append((part, r0, int(r), int(b) - b0))
            r0, b0 = int(r), int(b)
    weights = [u[3] + (u[2] - u[1]) for u in units]
    total = sum(weights)
    out: list[list[Piece]] = [[] for _ in range(n)]
    cum = 0
    for (part, a, b, nbytes), w in zip(units, weights):
        k = min(n - 1, int((2 * cum + w) * n // (2 * total)))
        cum += w
        s = out[k]
        if s and s[-1].part == part and s[-1].end == a:
            s[-1] = Piece(part, s[-1].start, b, s[-1].text_bytes + nbytes)
        else:
            s.append(Piece(part, a, b, nbytes))
    return out


def _profile(m: dict[str, Any]) -> list[list[int]]:
    prof = m.get(PROFILE_KEY)
    if isinstance(prof, list) and prof:
        return [[int(r), int(b)] for r, b in prof]
    # A marker without a profile (written before profiles existed): the part is one unit.
    return [[int(m.get("docs", 0)), int(m.get("text_bytes", 0))]]


def part_profiles(markers: dict[int, dict[str, Any]]) -> dict[int, list[list[int]]]:
    """Each part's profile from the markers of the stage that wrote the parts: an index that
    wrote parts ``[lo, hi)`` (its ``"shards"``; part ``i`` for a marker without them) holds
    one profile, or one per part in a list."""
    out: dict[int, list[list[int]]] = {}
    for i, m in markers.items():
        group = m.get(PROFILES_KEY)
        lo = int(m["shards"][0]) if isinstance(m.get("shards"), list) else i
        if isinstance(group, list):
            for k, prof in enumerate(group):
                out[lo + k] = _profile({PROFILE_KEY: prof})
        else:
            out[lo] = _profile(m)
    return out


def slices_from_markers(store: Store, source: str, parts: int, n: int) -> list[list[Piece]]:
    """:func:`balanced_slices` of the ``parts`` parts whose markers ``source`` (the stage
    that wrote them) holds. Every marker must be there: a missing one is an error."""
    profiles = part_profiles(store.read_markers(source))
    missing = [i for i in range(parts) if i not in profiles]
    if missing:
        raise RuntimeError(f"stage {source!r}: no marker for part(s) {missing[:5]}; cannot cut slices")
    return balanced_slices([profiles[i] for i in range(parts)], n)


def write_slices(store: Store, stage: str, source: str, parts: int, n: int) -> list[list[Piece]]:
    """Compute ``stage``'s slices once (the coordinator, before dispatch) and store them."""
    sl = slices_from_markers(store, source, parts, n)
    store.write_json(layout.slices(stage), {"version": SLICES_VERSION, "source": source, "parts": parts,
                                            "slices": [[p.to_json() for p in s] for s in sl]})
    return sl


def read_slices(store: Store, stage: str, source: str, parts: int, n: int) -> list[list[Piece]]:
    """``stage``'s slices as the coordinator stored them, or, when there are none (a worker
    run by hand) or they are for another cut, computed here: the same pure function of the
    same markers."""
    try:
        d = store.read_json(layout.slices(stage))
    except (FileNotFoundError, ValueError):
        d = None
    if isinstance(d, dict) and d.get("version") == SLICES_VERSION and d.get("source") == source \
            and d.get("parts") == parts and len(d.get("slices") or []) == n:
        return [[Piece.from_json(p) for p in s] for s in d["slices"]]
    return slices_from_markers(store, source, parts, n)
