"""Stages ``near_clusters`` (one index per bucket) and ``near_drops`` (one per group of
shards, ``Plan.shards_of``): the
final stars → one keeper per cluster → each shard's drop list; and :func:`read_clusters`,
the clusters of a finished run for users (with ``dedup.near.keep_clusters``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from preproc.dedup.components import star_clusters, star_step
from preproc.dedup.drops import write_drops
from preproc.dedup.near.common import DROPS, ROW_MASK, U64, node, options, paths, sum_stats
from preproc.dedup.near.history import write_segment
from preproc.dedup.near.io import CLUSTERS_SCHEMA, MEMBERS_SCHEMA, read_edges, read_parts
from preproc.dedup.near.rounds import edges_index, final_source
from preproc.errors import ConfigError
from preproc.io.exchange import prefetched, write_partitioned
from preproc.io.layout import PLAN, NearPaths, clean_part
from preproc.io.store import Store
from preproc.spec.load import load_spec

if TYPE_CHECKING:
    from preproc.engine.plan import Plan


def run_clusters(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """The stars centred in this partition → members and their keeper, sent to the
    member's shard."""
    cfg = options(plan)
    source = final_source(plan, store)
    src, dst, sp, dp = read_edges(store, edges_index(plan, store, source), index)
    unconverged = star_step(src, dst, sp, dp, large=True)[4]
    if unconverged:
        raise ConfigError(f"dedup.near.max_rounds: the duplicate clusters did not converge in "
                          f"{cfg.max_rounds} round(s) ({unconverged} documents left in partition {index}); "
                          "raise it and rerun with --force")
    members, keepers = star_clusters(src, dst, sp, dp)
    shard = (members >> U64(32)).astype(np.uint32)
    order = np.argsort(shard, kind="stable")
    table = pa.table({"shard": shard[order], "row": (members[order] & ROW_MASK).astype(np.uint32),
                      "kept_shard": (keepers[order] >> U64(32)).astype(np.uint32),
                      "kept_row": (keepers[order] & ROW_MASK).astype(np.uint32)}, schema=MEMBERS_SCHEMA)
    write_partitioned(store, paths(plan).members, index, table)
    kept = int(np.count_nonzero(members == keepers))
    return {"clusters": kept, "members": int(len(members)), "removed": int(len(members) - kept),
            "source": source}


def run_drops(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """The drop list of this index's group of shards (:func:`_shard_drops`), one file."""
    group = plan.shards_of(DROPS, index)
    keys: dict[int, pa.Table] = {}     # a refresh's segments: each signatures file read once
    with prefetched(store, [paths(plan).members], group):
        done = [_shard_drops(plan, shard, store, keys) for shard in group]
    write_drops(store, DROPS, index, np.concatenate([np.full(len(d[0]), s, np.uint32) for s, d in zip(group, done)]),
                np.concatenate([d[0] for d in done]))
    return sum_stats([d[1] for d in done], group)


def _shard_drops(plan: Plan, index: int, store: Store,
                 keys: dict[int, pa.Table]) -> tuple[np.ndarray, dict[str, Any]]:
    """Shard ``index``'s cluster members that are not their cluster's keeper (its rows to
    drop), and the counts."""
    cfg = options(plan)
    where = paths(plan)
    d = read_parts(store, where.members, index, ["row", "kept_shard", "kept_row"], [pa.uint32()] * 3)
    order = np.argsort(d["row"], kind="stable")
    row, ks, kr = d["row"][order], d["kept_shard"][order], d["kept_row"][order]
    kept = (ks == index) & (kr == row)
    drop = row[~kept]
    if plan.refresh and plan.refresh.near_segment_out:
        write_segment(plan, store, index, drop, keys)
    if cfg.keep_clusters:
        with store.open(clean_part(index)) as f:
            ids = pq.read_table(f, columns=["id"]).column("id")
        table = pa.table({"kept_shard": ks, "kept_row": kr, "shard": np.full(len(row), index, np.uint32),
                          "row": row, "id": ids.take(pa.array(row.astype(np.int64))).combine_chunks(),
                          "kept": kept}, schema=CLUSTERS_SCHEMA)
        with store.open_atomic(where.clusters_file(index)) as f:
            pq.write_table(table, f, compression="zstd")
    return drop, {"duplicates": int(len(drop)), "members": int(len(row)), "kept": int(kept.sum())}


def read_clusters(output: str) -> pa.Table:
    """The clusters of a run with ``dedup.near.keep_clusters``: one row per cluster with
    ``kept_id`` and ``ids`` (all members, kept first, then in input order). In a refresh
    generation, a cluster whose keeper an earlier generation published has ``kept_id``
    None and only this generation's (dropped) members in ``ids``.

    >>> read_clusters("out/").to_pylist()[0]      # doctest: +SKIP
    {'kept_id': 'doc-17', 'ids': ['doc-17', 'doc-942'], 'size': 2}
    """
    spec = load_spec(Store(output).read_json(PLAN)["spec"])
    if spec.dedup.near is None:
        raise ConfigError("dedup.near is off in this plan")
    where = NearPaths(spec.dedup.near.canonical)
    store = Store(output, spec.storage)
    tables = []
    for name in store.ls(where.clusters):
        if name.endswith(".parquet") and not name.startswith("."):
            with store.open(f"{where.clusters}/{name}") as f:
                tables.append(pq.read_table(f))
    if not tables:
        return pa.table({"kept_id": pa.array([], pa.string()), "ids": pa.array([], pa.list_(pa.string())),
                         "size": pa.array([], pa.int64())})
    t = pa.concat_tables(tables)
    order = np.lexsort((t.column("row").to_numpy(), t.column("shard").to_numpy(),
                        ~t.column("kept").to_numpy(), t.column("kept_row").to_numpy(),
                        t.column("kept_shard").to_numpy()))
    t = t.take(pa.array(order))
    cluster = node(t.column("kept_shard").to_numpy(), t.column("kept_row").to_numpy())
    starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1]]) if len(cluster) else np.empty(0, np.int64)
    ids = t.column("id").combine_chunks()
    offsets = np.r_[starts, len(cluster)].astype(np.int32)
    kept_here = pa.array(t.column("kept").to_numpy()[starts] if len(starts) else np.empty(0, bool))
    kept_id = pc.if_else(kept_here, ids.take(pa.array(starts)), pa.nulls(len(starts), pa.string()))
    return pa.table({"kept_id": kept_id,
                     "ids": pa.ListArray.from_arrays(pa.array(offsets), ids),
                     "size": pa.array(np.diff(offsets).astype(np.int64))})
