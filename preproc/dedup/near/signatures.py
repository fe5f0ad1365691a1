"""Stage ``near_signatures`` (one index per group of shards, ``Plan.shards_of``): MinHash
band keys of the documents exact dedup kept, one exchange file per index (``shard`` and
``row`` name each document) with a batch per bucket of ``near_pairs``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from preproc.dedup.drops import read_drops
from preproc.dedup.minhash import MinHasher, shingle_hashes, unit_hashes
from preproc.dedup.near.common import SIGNATURES, U64, buckets, options, paths, priority, sum_stats
from preproc.dedup.near.io import KEYS_SCHEMA, iter_rows
from preproc.io.exchange import prefetched, write_partitioned
from preproc.io.layout import drops_dir
from preproc.spec.near import NearOptions

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store


def run_signatures(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """MinHash band keys of the documents that exact dedup kept, of each shard of this
    index's group, written as one exchange file (sorted by bucket, key, shard, row)."""
    cfg = options(plan)
    mh = MinHasher(cfg.minhash)
    group = plan.shards_of(SIGNATURES, index)
    tables: list[pa.Table] = []
    with prefetched(store, [drops_dir("exact_dedup")] if "exact_dedup" in plan.stage_names else [], group):
        stats = sum_stats([_shard_signatures(plan, shard, store, cfg, mh, tables) for shard in group], group)
    t = pa.concat_tables(tables) if tables else KEYS_SCHEMA.empty_table()
    order = np.lexsort([t.column(c).to_numpy() for c in ("row", "shard", "key", "bucket")])
    write_partitioned(store, paths(plan).keys, index, t.take(pa.array(order)))
    return stats


def _shard_signatures(plan: Plan, shard: int, store: Store, cfg: NearOptions, mh: MinHasher,
                      out: list[pa.Table]) -> dict[str, Any]:
    """One shard's keys, appended to ``out``. Text is read and hashed ``batch_size``
    documents at a time; the keys of the group (``bands`` x 28 bytes per document, a few
    percent of its text) are held to write them sorted into one batch per bucket, as
    ``clean/keys`` does for exact dedup."""
    p = cfg.minhash
    b = buckets(plan)
    exact = (read_drops(store, ["exact_dedup"], shard) if "exact_dedup" in plan.stage_names
             else np.empty(0, np.uint32)).astype(np.int64)
    keys, rows, prios = [], [], []
    docs = skipped = empty = shingles = text_bytes = 0
    for r, text in iter_rows(store, shard, None, cfg.batch_size):
        if len(exact):
            keep = ~np.isin(r, exact, assume_unique=True)
            skipped += int(len(r) - keep.sum())
            r, text = r[keep], text.filter(pa.array(keep))
        if not len(r):
            continue
        docs += len(r)
        text_bytes += int(pc.sum(pc.binary_length(text)).as_py() or 0)
        sh, per_doc = shingle_hashes(*unit_hashes(text, p.unit), p.ngram)
        shingles += len(sh)
        ok = per_doc > 0
        empty += int((~ok).sum())
        sig = mh.signatures(sh, per_doc)
        keys.append(mh.band_keys(sig)[:, ok])
        rows.append(r[ok])
        # In a refresh, priority 0 is reserved for documents of earlier generations (they
        # are always the keepers: what is published stays); this generation's start at 1.
        prios.append(priority(cfg, text)[ok] + U64(1 if plan.refresh else 0))
    key = np.concatenate(keys, axis=1).ravel() if keys else np.empty(0, U64)
    row = np.tile(np.concatenate(rows), p.bands) if rows else np.empty(0, np.int64)
    prio = np.tile(np.concatenate(prios), p.bands) if prios else np.empty(0, U64)
    bucket = (key % U64(b)).astype(np.uint32)
    out.append(pa.table({"bucket": bucket, "key": key, "shard": np.full(len(key), shard, np.uint32),
                         "row": row.astype(np.uint32), "prio": prio}, schema=KEYS_SCHEMA))
    return {"docs": docs, "skipped_exact": skipped, "no_shingles": empty, "shingles": shingles,
            "band_keys": int(len(key)), "text_bytes": text_bytes}
