"""What every reader shares: the split it reads, the log of what happened, the batch builder.

A reader turns one :class:`InputSplit` into Arrow record batches of good documents
(columns ``id``, ``text``, ``source`` and the spec's ``keep_fields``, built by
:class:`Batcher`) and records everything else in a :class:`ReadLog`: rejected records with
their reason and first bytes, and file errors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

__all__ = ["InputSplit", "ReadLog", "Batcher", "as_str", "BATCH_BYTES", "BATCH_ROWS", "HEAD_BYTES"]

BATCH_BYTES = 16 * 2**20     # emit a batch when this much text has accumulated (bounds clean memory)
BATCH_ROWS = 16384
HEAD_BYTES = 200             # how much of a rejected record is kept for inspection


@dataclass(frozen=True)
class InputSplit:
    """A piece of one input file: a byte range of a JSONL file, some Parquet row groups,
    or the whole file. ``rel`` is the file's path relative to its input pattern's folder
    and prefixes generated ids."""

    uri: str
    rel: str
    format: str                         # jsonl | parquet | text | arrow
    compression: str | None = None      # gzip | zstd | None
    bytes: int = 0
    start: int = 0                      # byte range [start, end) for uncompressed JSONL
    end: int | None = None
    row_groups: tuple[int, ...] | None = None
    row_offset: int = 0                 # rows before the first row group (generated ids)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> InputSplit:
        """A split from all its fields in order (``row_groups`` a tuple or None), without the
        frozen dataclass's keyword constructor: about 5x faster, which a plan of a million
        files notices (its listing, and each worker reading its shard's file list)."""
        s = object.__new__(cls)
        s.__dict__.update(zip(_SPLIT_FIELDS, row))
        return s

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["row_groups"] = list(self.row_groups) if self.row_groups is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputSplit:
        d = dict(d)
        if d.get("row_groups") is not None:
            d["row_groups"] = tuple(d["row_groups"])
        return cls(**d)


_SPLIT_FIELDS = tuple(InputSplit.__dataclass_fields__)


@dataclass
class ReadLog:
    """What happened while reading: counts, rejected records, file errors."""

    read: int = 0                       # records seen (accepted + rejected), blank lines excluded
    blank_lines: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    file_errors: list[dict[str, Any]] = field(default_factory=list)
    # Rows the split being read holds, when its format says so up front (Parquet metadata):
    # what a file error mid-read leaves unread is then counted, not lost.
    split_rows: int | None = None

    def reject(self, split: InputSplit, location: str, reason: str, head: bytes | str) -> None:
        self.read += 1
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if isinstance(head, bytes):
            head = head[:HEAD_BYTES].decode("utf-8", "backslashreplace")
        else:
            head = head[:HEAD_BYTES].encode("utf-8", "backslashreplace").decode("utf-8")
        self.rejects.append({"file": split.uri, "location": location, "reason": reason, "head": head})

    def reject_rows(self, split: InputSplit, location: str, reason: str, n: int) -> None:
        """Count ``n`` rows that could not be read at all (one record stands for them all)."""
        self.read += n
        self.rejected[reason] = self.rejected.get(reason, 0) + n
        self.rejects.append({"file": split.uri, "location": location, "reason": reason, "head": ""})

    def file_error(self, split: InputSplit, error: str, detail: str, **extra: Any) -> None:
        self.file_errors.append({"file": split.uri, "error": error, "detail": detail, **extra})


class Batcher:
    """Accumulates good records into Arrow batches with a fixed schema."""

    def __init__(self, keep_fields: list[str], max_bytes: int = BATCH_BYTES):
        self.keep_fields = keep_fields
        self.max_bytes = max_bytes
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.sources: list[str] = []
        self.extra: dict[str, list[str | None]] = {k: [] for k in self.keep_fields}
        self.nbytes = 0

    def add(self, id_: str, text: str, source: str, extra: dict[str, str | None]) -> None:
        self.ids.append(id_)
        self.texts.append(text)
        self.sources.append(source)
        for k in self.keep_fields:
            self.extra[k].append(extra.get(k))
        self.nbytes += len(text)

    def full(self) -> bool:
        return len(self.ids) >= BATCH_ROWS or self.nbytes >= self.max_bytes

    def flush(self) -> pa.RecordBatch | None:
        if not self.ids:
            return None
        arrays = [pa.array(self.ids, pa.string()), pa.array(self.texts, pa.string()),
                  pa.array(self.sources, pa.string())]
        arrays += [pa.array(self.extra[k], pa.string()) for k in self.keep_fields]
        batch = pa.RecordBatch.from_arrays(arrays, names=["id", "text", "source", *self.keep_fields])
        self._reset()
        return batch


def as_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):        # a binary Parquet column
        return v.decode("utf-8", "replace")
    return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)
