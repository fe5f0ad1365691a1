"""Drop lists: which rows of a shard's clean part the dedup stages removed.

Each dedup stage writes an exchange (:mod:`preproc.io.exchange`) in ``<stage>/drops/``: one
file per producing index with columns ``shard`` and ``row``, sorted, one batch per shard,
so the reader of shard ``i`` reads only its own byte ranges, found in the folder's index.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from preproc.io.exchange import build_index, read_partition, write_partitioned
from preproc.io.layout import drops_dir

if TYPE_CHECKING:
    from preproc.io.store import Store

DROPS_SCHEMA = pa.schema([("shard", pa.uint32()), ("row", pa.uint32())])


def write_drops(store: Store, stage: str, producer: int, shard: np.ndarray, row: np.ndarray) -> None:
    """Producer ``producer`` of ``stage`` drops these ``(shard, row)``."""
    order = np.lexsort((row, shard))
    shard, row = shard[order].astype(np.uint32), row[order].astype(np.uint32)
    write_partitioned(store, drops_dir(stage), producer,
                      pa.table({"shard": shard, "row": row}, schema=DROPS_SCHEMA))


def index_drops(store: Store, stage: str, producers: int, shards: int) -> None:
    """Merge the drop lists' index of ``stage`` (the coordinator does it once)."""
    build_index(store, drops_dir(stage), producers, shards)


def read_drops(store: Store, stages: Iterable[str], shard: int) -> np.ndarray:
    """Sorted unique rows of ``shard`` dropped by any of ``stages``."""
    parts = []
    for stage in stages:
        t = read_partition(store, drops_dir(stage), shard, ["row"])
        if t is not None:
            parts.append(t.column("row").to_numpy())
    if not parts:
        return np.empty(0, dtype=np.uint32)
    return np.unique(np.concatenate(parts))
