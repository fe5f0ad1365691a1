"""Stage ``exact_dedup``: global exact deduplication, one hash bucket per index.

Bucket ``j`` reads its byte range of every clean index's ``clean/keys`` file (the 128-bit
xxh3 of each cleaned text, with its shard and row), found in the exchange's index (:mod:`preproc.io.exchange`: no
footer per shard), and keeps, among documents with the same hash, the one that comes
first in input order (smallest ``(shard, row)``): deterministic whatever the worker or
bucket count. The others go to ``exact_dedup/drops/part-j.arrow``.

The bucket count follows the data volume (:func:`buckets_for`), not the shard count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from preproc.dedup.drops import write_drops
from preproc.io.exchange import build_index, read_partition
from preproc.io.layout import CLEAN_KEYS, segment_bucket

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store


# A bucket per this many input bytes (about 500,000 documents of 1 KB: 12 MB of keys).
INPUT_BYTES_PER_BUCKET = 512 * 2**20


def buckets_for(input_bytes: int) -> int:
    """The exact-dedup fan-out for this much input: a target of keys per bucket, so the
    count follows the data volume, never how finely the input is cut."""
    return max(1, -(-int(input_bytes) // INPUT_BYTES_PER_BUCKET))


def prepare(plan: Plan, store: Store) -> None:
    """Merge the exchange index of ``clean/keys`` (in the coordinator, once)."""
    build_index(store, CLEAN_KEYS, plan.stage("clean").fan_out, plan.stage("exact_dedup").fan_out)


def read_bucket(plan: Plan, store: Store, bucket: int) -> pa.Table:
    """Bucket ``bucket`` of every clean index's keys: ``h1, h2, row, shard`` (keys written
    when each shard was its own producer have no shard column: the producer is the shard)."""
    t = read_partition(store, CLEAN_KEYS, bucket, ["h1", "h2", "row"], producers=plan.stage("clean").fan_out,
                       consumers=plan.stage("exact_dedup").fan_out, producer_column="shard")
    if t is None:
        return pa.table({"h1": pa.array([], pa.uint64()), "h2": pa.array([], pa.uint64()),
                         "row": pa.array([], pa.uint32()), "shard": pa.array([], pa.uint32())})
    return t


def _fsb(h1: np.ndarray, h2: np.ndarray) -> pa.Array:
    """128-bit hashes as one fixed-size binary column (for set membership in Arrow)."""
    buf = np.ascontiguousarray(np.stack([h1, h2], axis=1)).tobytes()
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(h1), [None, pa.py_buffer(buf)])


def _prior_hashes(plan: Plan, index: int) -> pa.Array | None:
    """Bucket ``index`` of the exact index of earlier generations (incremental refresh)."""
    segs = plan.refresh.exact_segments if plan.refresh else ()
    if not segs:
        return None
    root = plan.refresh_root()
    parts = []
    for seg in segs:
        with root.open(segment_bucket(seg, index)) as f:
            t = pq.read_table(f)
        parts.append(_fsb(t.column("h1").to_numpy(), t.column("h2").to_numpy()))
    return pa.concat_arrays(parts) if parts else None


INDEX_SCHEMA = pa.schema([("h1", pa.uint64()), ("h2", pa.uint64())])


def run(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    t = read_bucket(plan, store, index)
    h1, h2 = t.column("h1").to_numpy(), t.column("h2").to_numpy()
    shard, row = t.column("shard").to_numpy(), t.column("row").to_numpy()
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
    write_drops(store, "exact_dedup", index, shard[dup], row[dup])
    if plan.refresh:
        # This generation's segment of the dataset's exact index: the hashes it keeps.
        out = pa.table({"h1": h1[~dup], "h2": h2[~dup]}, schema=INDEX_SCHEMA)
        with plan.refresh_root().open_atomic(segment_bucket(plan.refresh.exact_segment_out, index)) as f:
            pq.write_table(out, f, compression="zstd")
    return stats
