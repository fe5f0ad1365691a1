"""Parquet: one row group at a time, so memory is bounded by the row group, not the file.

A split may be a run of row groups (:attr:`InputSplit.row_groups`); the footer says how many
rows the split holds, so rows a file error leaves unread are counted, not lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from preproc.io.readers.base import BATCH_ROWS, InputSplit, ReadLog
from preproc.io.readers.table import table_batches

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec

__all__ = ["read_parquet"]


def read_parquet(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        groups = list(split.row_groups) if split.row_groups is not None else list(range(pf.num_row_groups))
        log.split_rows = sum(pf.metadata.row_group(g).num_rows for g in groups)
        names = pf.schema_arrow.names
        wanted = [c for c in {spec.text_field, spec.id_field, spec.source_field, *spec.keep_fields} if c and c in names]
        row = split.row_offset
        for g in groups:
            # One row group at a time keeps memory bounded by the row group, not the file.
            it = pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], columns=wanted or None)
            yield from table_batches(it, row, split, spec, log)
            row += pf.metadata.row_group(g).num_rows
