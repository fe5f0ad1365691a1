"""Stage ``exact_dedup``: global exact deduplication, one hash bucket per index.

Bucket ``j`` reads row group ``j`` of every shard's ``clean/keys`` file (the 128-bit xxh3
of each cleaned text), and keeps, among documents with the same hash, the one that comes
first in input order (smallest ``(shard, row)``): deterministic whatever the worker or
bucket count. The others go to ``exact_dedup/drops/bucket-j.parquet``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..partitions import read_partition
from .drops import write_drops

if TYPE_CHECKING:
    from ..plan import Plan
    from ..storage import Store


def read_bucket(store: "Store", shard: int, bucket: int) -> pa.Table:
    t = read_partition(store, f"clean/keys/part-{shard:05d}.parquet", bucket, ["h1", "h2", "row"])
    if t is None:
        return pa.table({"h1": pa.array([], pa.uint64()), "h2": pa.array([], pa.uint64()),
                         "row": pa.array([], pa.uint32())})
    return t


def _fsb(h1: np.ndarray, h2: np.ndarray) -> pa.Array:
    """128-bit hashes as one fixed-size binary column (for set membership in Arrow)."""
    buf = np.ascontiguousarray(np.stack([h1, h2], axis=1)).tobytes()
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(h1), [None, pa.py_buffer(buf)])


def _prior_hashes(plan: "Plan", index: int) -> pa.Array | None:
    """Bucket ``index`` of the exact index of earlier generations (incremental refresh)."""
    segs = (plan.refresh or {}).get("exact_segments") or []
    if not segs:
        return None
    root = plan.refresh_root()
    parts = []
    for seg in segs:
        rel = f"{seg}/bucket-{index:05d}.parquet"
        with root.open(rel) as f:
            t = pq.read_table(f)
        parts.append(_fsb(t.column("h1").to_numpy(), t.column("h2").to_numpy()))
    return pa.concat_arrays(parts) if parts else None


INDEX_SCHEMA = pa.schema([("h1", pa.uint64()), ("h2", pa.uint64())])


def run(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    h1s, h2s, shards, rows = [], [], [], []
    for i in range(plan.num_shards):
        t = read_bucket(store, i, index)
        h1s.append(t.column("h1").to_numpy())
        h2s.append(t.column("h2").to_numpy())
        rows.append(t.column("row").to_numpy())
        shards.append(np.full(t.num_rows, i, dtype=np.uint32))
    h1, h2 = np.concatenate(h1s), np.concatenate(h2s)
    shard, row = np.concatenate(shards), np.concatenate(rows)
    order = np.lexsort((row, shard, h2, h1))
    h1, h2, shard, row = h1[order], h2[order], shard[order], row[order]
    dup = np.zeros(len(h1), dtype=bool)
    if len(h1) > 1:
        dup[1:] = (h1[1:] == h1[:-1]) & (h2[1:] == h2[:-1])
    first_of_group = np.zeros(len(h1), dtype=bool)
    if len(h1) > 1:
        first_of_group[:-1] = ~dup[:-1] & dup[1:]
    stats: dict[str, Any] = {"keys": int(len(h1)), "clusters": int(first_of_group.sum())}
    prior = _prior_hashes(plan, index)
    if prior is not None and len(h1):
        # Already kept by an earlier generation: every copy here is a duplicate.
        seen = pc.is_in(_fsb(h1, h2), value_set=prior).to_numpy(zero_copy_only=False)
        stats["duplicates_of_earlier"] = int((seen & ~dup).sum())
        dup |= seen
    stats["duplicates"] = int(dup.sum())
    write_drops(store, f"exact_dedup/drops/bucket-{index:05d}.parquet", shard[dup], row[dup])
    if plan.refresh:
        # This generation's segment of the dataset's exact index: the hashes it keeps.
        out = pa.table({"h1": h1[~dup], "h2": h2[~dup]}, schema=INDEX_SCHEMA)
        with plan.refresh_root().open_atomic(
                f"{plan.refresh['exact_segment_out']}/bucket-{index:05d}.parquet") as f:
            pq.write_table(out, f, compression="zstd")
    return stats
