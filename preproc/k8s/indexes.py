"""The Job controller's compressed index sets: ``"0-2,5,7-9"`` <-> ``{0, 1, 2, 5, 7, 8, 9}``.

``status.completedIndexes`` and ``status.failedIndexes`` of an Indexed Job use this form:
sorted, comma-separated, runs of consecutive indices written ``first-last``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["parse_indexes", "format_indexes", "index_ranges"]


def index_ranges(text: str | None) -> list[tuple[int, int]]:
    """``"0-2,5"`` → ``[(0, 2), (5, 5)]``: the runs as written, without expanding them (a
    Job of 10,000 indices is one run, ``"0-9999"``, once it is done).

    >>> index_ranges("1,3-5")
    [(1, 1), (3, 5)]
    """
    out: list[tuple[int, int]] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        out.append((int(first), int(last) if sep else int(first)))
    return out


def parse_indexes(text: str | None) -> set[int]:
    """``"0-2,5"`` → ``{0, 1, 2, 5}``; ``None`` and ``""`` → empty.

    >>> sorted(parse_indexes("1,3-5"))
    [1, 3, 4, 5]
    """
    out: set[int] = set()
    for first, last in index_ranges(text):
        out.update(range(first, last + 1))
    return out


def format_indexes(indexes: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` → ``"0-2,5"`` (what the Job controller writes).

    >>> format_indexes([5, 0, 1, 2, 7, 8])
    '0-2,5,7-8'
    """
    runs: list[list[int]] = []
    for i in sorted(set(indexes)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
