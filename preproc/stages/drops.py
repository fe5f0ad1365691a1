"""Drop lists: which rows of a shard's clean part the dedup stages removed.

Each dedup stage writes ``<stage>/drops/*.parquet`` with columns ``shard`` and ``row``,
sorted, one row group per shard, so a reader of shard ``i`` touches only its row groups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from ..storage import Store

DROPS_SCHEMA = pa.schema([("shard", pa.uint32()), ("row", pa.uint32())])


def write_drops(store: "Store", rel: str, shard: np.ndarray, row: np.ndarray) -> None:
    order = np.lexsort((row, shard))
    shard, row = shard[order].astype(np.uint32), row[order].astype(np.uint32)
    table = pa.table({"shard": shard, "row": row}, schema=DROPS_SCHEMA)
    with store.open_atomic(rel) as f:
        with pq.ParquetWriter(f, DROPS_SCHEMA, compression="zstd") as w:
            cuts = np.flatnonzero(np.diff(shard)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(shard)]):
                if hi > lo:
                    w.write_table(table.slice(lo, hi - lo))
            if len(shard) == 0:
                w.write_table(table)


def read_drops(store: "Store", stages: Iterable[str], shard: int) -> np.ndarray:
    """Sorted unique rows of ``shard`` dropped by any of ``stages``."""
    parts = []
    for stage in stages:
        for name in store.ls(f"{stage}/drops"):
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            with store.open(f"{stage}/drops/{name}") as f:
                pf = pq.ParquetFile(f)
                groups = []
                for g in range(pf.num_row_groups):
                    st = pf.metadata.row_group(g).column(0).statistics
                    if st is None or not st.has_min_max or st.min <= shard <= st.max:
                        groups.append(g)
                if groups:
                    t = pf.read_row_groups(groups)
                    s = t.column("shard").to_numpy()
                    parts.append(t.column("row").to_numpy()[s == shard])
    if not parts:
        return np.empty(0, dtype=np.uint32)
    return np.unique(np.concatenate(parts))
