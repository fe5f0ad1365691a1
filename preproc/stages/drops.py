"""Drop lists: which rows of a shard's clean part the dedup stages removed.

Each dedup stage writes ``<stage>/drops/*.parquet`` with columns ``shard`` and ``row``,
sorted, one row group per shard, so a reader of shard ``i`` touches only its row groups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np
import pyarrow as pa

from ..partitions import read_partition, write_partitioned

if TYPE_CHECKING:
    from ..storage import Store

DROPS_SCHEMA = pa.schema([("shard", pa.uint32()), ("row", pa.uint32())])


def write_drops(store: "Store", rel: str, shard: np.ndarray, row: np.ndarray) -> None:
    order = np.lexsort((row, shard))
    shard, row = shard[order].astype(np.uint32), row[order].astype(np.uint32)
    write_partitioned(store, rel, pa.table({"shard": shard, "row": row}, schema=DROPS_SCHEMA))


def read_drops(store: "Store", stages: Iterable[str], shard: int) -> np.ndarray:
    """Sorted unique rows of ``shard`` dropped by any of ``stages``."""
    parts = []
    for stage in stages:
        for name in store.ls(f"{stage}/drops"):
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            t = read_partition(store, f"{stage}/drops/{name}", shard, ["row"])
            if t is not None:
                parts.append(t.column("row").to_numpy())
    if not parts:
        return np.empty(0, dtype=np.uint32)
    return np.unique(np.concatenate(parts))
