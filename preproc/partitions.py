"""Partitioned Parquet files: how one stage's fan-out hands data to the next one's.

A producing index writes ONE file, sorted by its first column (the consuming index: a hash
bucket, a shard), with one row group per value. Consumer ``j`` reads only row group(s) whose
first-column statistics contain ``j`` from every producer's file. N producers × B consumers
cost N files and N·B small ranged reads, not N·B files (which object stores and inode
tables dislike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from .storage import Store

__all__ = ["write_partitioned", "read_partition"]


def write_partitioned(store: "Store", rel: str, table: pa.Table, metadata: dict[str, str] | None = None) -> None:
    """Write ``table`` (already sorted by its first column) with a row group per value."""
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with store.open_atomic(rel) as f:
        with pq.ParquetWriter(f, table.schema, compression="zstd") as w:
            col = table.column(0).to_numpy()
            cuts = np.flatnonzero(np.diff(col)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(col)]):
                if hi > lo:
                    w.write_table(table.slice(lo, hi - lo))
            if len(col) == 0:
                w.write_table(table)


def read_partition(store: "Store", rel: str, value: int, columns: list[str]) -> pa.Table | None:
    """The rows of ``rel`` whose first column equals ``value`` (only their row groups are
    read), as ``columns``; None when there are none."""
    with store.open(rel) as f:
        pf = pq.ParquetFile(f)
        first = pf.schema_arrow.names[0]
        groups = []
        for g in range(pf.num_row_groups):
            st = pf.metadata.row_group(g).column(0).statistics
            if st is None or not st.has_min_max or st.min <= value <= st.max:
                groups.append(g)
        if not groups:
            return None
        t = pf.read_row_groups(groups, columns=[first, *[c for c in columns if c != first]])
    t = t.filter(pc.equal(t.column(first), pa.scalar(value, t.schema.field(first).type)))
    return t.select(columns) if t.num_rows else None
