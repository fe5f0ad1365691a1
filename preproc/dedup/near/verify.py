"""Stages ``near_shingles`` and ``near_verify`` (one index per group of shards,
``Plan.shards_of``; with verification): each candidate pair's exact Jaccard of word (or
char) n-gram sets against the threshold.

``near_shingles`` sends the shingle set of every pair's second document to the shard of
its first; ``near_verify`` compares them there and writes the verified pairs' edges to
``cc/00``; an index works shard by shard and writes one exchange file for its group. In a
refresh the second document may be one an earlier generation published: its set comes from
that generation's ``clean/`` part (:mod:`preproc.dedup.near.history`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from preproc.dedup.components import unique_edges
from preproc.dedup.minhash import jaccard, shingle_sets
from preproc.dedup.near.common import (
    ROW_MASK,
    SHINGLES,
    U64,
    VERIFY,
    buckets,
    node,
    options,
    paths,
    priority,
    sum_stats,
    unique_rows,
)
from preproc.dedup.near.history import EARLIER, earlier_part
from preproc.dedup.near.io import SHINGLES_SCHEMA, contract, iter_rows, read_parts, write_edges
from preproc.io.exchange import prefetched, read_partition, write_partitioned
from preproc.io.layout import cc_round, clean_part
from preproc.spec.near import NearOptions

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store


def _no_sets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.uint32), np.zeros(1, np.int64), np.empty(0, U64)


def sets_for_rows(cfg: NearOptions, store: Store, shard: int | str, rows: np.ndarray, *,
                  prio_offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shingle sets and prio of ``rows`` (sorted unique) of a shard (or part file), in that
    order. ``prio_offset``: 1 in a refresh (see :func:`~preproc.dedup.near.signatures.run_signatures`)."""
    vals, lens, prios, got = [], [], [], []
    where = shard if isinstance(shard, str) else clean_part(shard)
    if not len(rows):
        return _no_sets()
    try:
        for r, text in iter_rows(store, shard, rows, cfg.batch_size):
            v, off = shingle_sets(text, unit=cfg.minhash.unit, ngram=cfg.minhash.ngram)
            vals.append(v)
            lens.append(np.diff(off))
            prios.append(priority(cfg, text) + U64(prio_offset))
            got.append(r)
    except FileNotFoundError:
        raise RuntimeError(f"{store.url(where)}: missing; near-dup verification reads the documents of "
                           "candidate pairs from it (a refreshed dataset needs its generations' clean/ "
                           "parts)") from None
    if not got:
        return _no_sets()
    got_rows = np.concatenate(got)
    if len(got_rows) != len(rows) or not np.array_equal(got_rows, rows):
        raise RuntimeError(f"{where}: rows missing for near-dup verification")
    ln = np.concatenate(lens)
    off = np.zeros(len(ln) + 1, np.int64)
    np.cumsum(ln, out=off[1:])
    return np.concatenate(vals), off, np.concatenate(prios)


def run_shingles(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """The shingle sets of each shard of this index's group (:func:`_shard_shingles`), in
    one exchange file sorted by the shard they are sent to."""
    group = plan.shards_of(SHINGLES, index)
    with prefetched(store, [paths(plan).cand], group):
        done = [_shard_shingles(plan, shard, store) for shard in group]
    tables = [t for t, _ in done]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()
    if len(tables) > 1:
        table = table.take(np.lexsort((table.column("b").to_numpy(), table.column("shard").to_numpy())))
    write_partitioned(store, paths(plan).shingles, index, table)
    return sum_stats([st for _, st in done], group)


def _shard_shingles(plan: Plan, index: int, store: Store) -> tuple[pa.Table, dict[str, Any]]:
    """Shingle sets of the documents of shard ``index`` that are the *second* of a candidate
    pair, to send to the shard of the first (where the pair is verified). In a refresh, also
    those of the earlier generations' documents whose global shard maps to this shard,
    read from that generation's ``clean/`` part."""
    cfg = options(plan)
    where = paths(plan)
    d = read_parts(store, where.cand, index, ["role", "a", "b"], [pa.uint8(), pa.uint64(), pa.uint64()])
    sel = d["role"] == 1
    a, b = d["a"][sel], d["b"][sel]
    # One copy of b's set per shard of its partners.
    dest, b = unique_rows((a >> U64(32)).astype(U64), b)
    dest = dest.astype(np.uint32)
    old = (b & EARLIER) != 0
    # Every set needed, as (sorted node ids, values, offsets, prio): this shard's first,
    # then each earlier part (their nodes sort after this generation's, by global shard).
    rows = np.unique((b[~old] & ROW_MASK).astype(np.int64))
    sets = [(node(index, rows), *sets_for_rows(cfg, store, index, rows, prio_offset=1 if plan.refresh else 0))]
    earlier_parts = 0
    if old.any():
        root = plan.refresh_root()
        ob = np.unique(b[old])
        gshard = ((ob >> U64(32)) & U64(0x7FFFFFFF)).astype(np.int64)
        for g in np.unique(gshard).tolist():
            nodes = ob[gshard == g]
            rel, _ = earlier_part(plan, g)
            vals, off, _prio_e = sets_for_rows(cfg, root, rel, (nodes & ROW_MASK).astype(np.int64))
            sets.append((nodes, vals, off, np.zeros(len(nodes), U64)))     # published: priority 0
            earlier_parts += 1
    ids = np.concatenate([x[0] for x in sets])
    prio = np.concatenate([x[3] for x in sets])
    vals = np.concatenate([x[1] for x in sets])
    lens = np.concatenate([np.diff(x[2]) for x in sets])
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    k = np.searchsorted(ids, b)
    lens = off[k + 1] - off[k]
    first = np.cumsum(lens) - lens
    pos = np.repeat(off[k] - first, lens) + np.arange(int(lens.sum()), dtype=np.int64)
    offsets = np.zeros(len(k) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(vals[pos], pa.uint32()))
    table = pa.table({"shard": pa.array(dest, pa.uint32()), "b": pa.array(b, pa.uint64()),
                      "prio": pa.array(prio[k], pa.uint64()), "shingles": lists}, schema=SHINGLES_SCHEMA)
    stats = {"partners": int(len(ids)), "sent": int(len(b)), "shingles_sent": int(lens.sum())}
    if plan.refresh:
        stats["earlier_partners"] = int(len(ids) - len(rows))
        stats["earlier_parts"] = earlier_parts
    return table, stats


def _partner_sets(store: Store, folder: str, index: int) -> tuple[np.ndarray, ...]:
    """``(ids, prio, values, offsets)`` of the partners' sets sent to shard ``index``,
    sorted by id."""
    st = read_partition(store, folder, index, ["b", "prio", "shingles"])
    if st is None:
        return np.empty(0, U64), np.empty(0, U64), np.empty(0, np.uint32), np.zeros(1, np.int64)
    b_ids = st.column("b").to_numpy()
    b_prio = st.column("prio").to_numpy()
    lists = st.column("shingles").combine_chunks()
    b_vals = lists.values.to_numpy()
    b_off = lists.offsets.to_numpy().astype(np.int64)
    order = np.argsort(b_ids)
    b_ids, b_prio = b_ids[order], b_prio[order]
    lens = (b_off[1:] - b_off[:-1])[order]
    first = np.cumsum(lens) - lens
    b_vals = b_vals[np.repeat(b_off[:-1][order] - first, lens) + np.arange(int(lens.sum()), dtype=np.int64)]
    b_off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=b_off[1:])
    return b_ids, b_prio, b_vals, b_off


def run_verify(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """The verified pairs of each shard of this index's group (:func:`_shard_verify`), as
    one exchange file of edges."""
    group = plan.shards_of(VERIFY, index)
    with prefetched(store, [paths(plan).cand, paths(plan).shingles], group):
        done = [_shard_verify(plan, shard, store) for shard in group]
    x, y, xp, yp = (np.concatenate([d[0][c] for d in done]) for c in range(4))
    stats = sum_stats([d[1] for d in done], group)
    stats["edges"] = write_edges(store, paths(plan).cc(cc_round(0)), index, x, y, xp, yp, buckets(plan))
    return stats


def _shard_verify(plan: Plan, index: int, store: Store) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """Exact Jaccard of every candidate pair whose first document is in shard ``index``:
    the verified pairs contracted to stars ``(x, y, xp, yp)``, and the counts."""
    cfg = options(plan)
    where = paths(plan)
    assert cfg.threshold is not None
    d = read_parts(store, where.cand, index, ["role", "a", "b"], [pa.uint8(), pa.uint64(), pa.uint64()])
    sel = d["role"] == 0
    a, b = unique_edges(d["a"][sel], d["b"][sel])[:2] if sel.any() else (np.empty(0, U64), np.empty(0, U64))
    # The partners' sets, from every shard's near_shingles output.
    b_ids, b_prio, b_vals, b_off = _partner_sets(store, where.shingles, index)
    a_rows = np.unique((a & ROW_MASK).astype(np.int64))
    a_vals, a_off, a_prio = sets_for_rows(cfg, store, index, a_rows, prio_offset=1 if plan.refresh else 0)
    ai = np.searchsorted(a_rows, (a & ROW_MASK).astype(np.int64))
    bi = np.searchsorted(b_ids, b)
    if len(b) and not np.array_equal(b_ids[np.minimum(bi, len(b_ids) - 1)], b):
        raise RuntimeError(f"near_verify, shard {index}: shingle sets missing for some candidate partners")
    # A pair whose sizes alone rule the threshold out needs no set comparison.
    la, lb = a_off[ai + 1] - a_off[ai], b_off[bi + 1] - b_off[bi]
    possible = np.minimum(la, lb) >= cfg.threshold * np.maximum(la, lb)
    sim = np.zeros(len(a))
    sim[possible] = jaccard(a_vals, a_off, ai[possible], b_vals, b_off, bi[possible])
    ok = sim >= cfg.threshold
    ids = np.concatenate([node(index, a_rows), b_ids])
    prio = np.concatenate([a_prio, b_prio])
    order = np.argsort(ids)
    edges = contract(a[ok], b[ok], ids[order], prio[order])
    stats = {"candidates": int(len(a)), "compared": int(possible.sum()), "verified": int(ok.sum()),
             "dissimilar": int(len(a) - ok.sum())}
    if plan.refresh:
        # Pairs with a document an earlier generation published (it stays; this one goes).
        old = (b & EARLIER) != 0
        stats["earlier_candidates"] = int(old.sum())
        stats["earlier_verified"] = int((old & ok).sum())
    return edges, stats
