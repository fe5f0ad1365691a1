"""Stage ``near_pairs`` (one index per bucket): documents that share a band key.

Without verification every band group is a cluster: its edges, contracted to stars, go
straight to the component stages (``cc/00``). With it, the groups yield candidate pairs
(``cand/``) for ``near_shingles`` and ``near_verify``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from preproc.dedup.components import unique_edges
from preproc.dedup.near.common import ROW_MASK, U64, buckets, node, options, paths
from preproc.dedup.near.history import EARLIER, EARLIER_SHARD, earlier_docs, earlier_keys
from preproc.dedup.near.io import CAND_SCHEMA, contract, read_parts, write_edges
from preproc.io.exchange import write_partitioned
from preproc.io.layout import cc_round

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

# With verification, a band group of up to this many documents yields all its pairs;
# a larger one (thousands of pages with the same template) a star and a chain, so the
# candidates grow linearly with the group.
ALL_PAIRS_MAX_GROUP = 32


def band_groups(key: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (key, node); return the sorted nodes, each group's start and size (>= 2)."""
    order = np.lexsort((nodes, key))
    key, nodes = key[order], nodes[order]
    if not len(key):
        e = np.empty(0, np.int64)
        return nodes, e, e
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    multi = sizes >= 2
    return nodes, starts[multi], sizes[multi]


def candidate_pairs(nodes: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of each small group; star + chain of each large one; ``a < b``, unique."""
    small = sizes <= ALL_PAIRS_MAX_GROUP
    a_parts, b_parts = [], []
    # Positions in the sorted node array of the members of small groups.
    s_starts, s_sizes = starts[small], sizes[small]
    pos = np.repeat(s_starts, s_sizes) + (np.arange(int(s_sizes.sum())) - np.repeat(np.cumsum(s_sizes) - s_sizes, s_sizes))
    end = np.repeat(s_starts + s_sizes, s_sizes)
    for d in range(1, int(s_sizes.max(initial=1))):
        ok = pos + d < end
        a_parts.append(nodes[pos[ok]])
        b_parts.append(nodes[pos[ok] + d])
    l_starts, l_sizes = starts[~small], sizes[~small]
    if len(l_starts):
        lpos = np.repeat(l_starts, l_sizes) + (np.arange(int(l_sizes.sum())) - np.repeat(np.cumsum(l_sizes) - l_sizes, l_sizes))
        first = np.repeat(l_starts, l_sizes)
        nf = lpos != first
        a_parts += [nodes[first[nf]], nodes[lpos[nf] - 1]]
        b_parts += [nodes[lpos[nf]], nodes[lpos[nf]]]
    if not a_parts:
        e = np.empty(0, U64)
        return e, e
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    a, b = unique_edges(a, b)
    return a, b


def run_pairs(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """Bucket ``index`` of every shard's keys: documents that share a band key.

    A band key lives in exactly one bucket, so each bucket sees whole groups and the
    candidates do not depend on the number of buckets.
    """
    cfg = options(plan)
    where = paths(plan)
    # (keys written when each shard was its own producer have no shard column: the
    # producer is the shard)
    d = read_parts(store, where.keys, index, ["key", "row", "prio"],
                   [pa.uint64(), pa.uint32(), pa.uint64()], producer_column="shard")
    key, nodes, prio = d["key"], node(d["shard"], d["row"]), d["prio"]
    earlier = None if cfg.verify else earlier_keys(plan, index)
    n_earlier = 0
    if cfg.verify:
        # The earlier generations' kept documents with one of these keys join the groups as
        # themselves: each pair with one of them is verified like any other.
        e_key, e_node = earlier_docs(plan, index, key)
        n_earlier = len(e_key)
        key, nodes = np.concatenate([key, e_key]), np.concatenate([nodes, e_node])
        prio = np.concatenate([prio, np.zeros(n_earlier, U64)])
    if earlier is not None and len(key):
        # A band key that an earlier generation's kept document has: join its group through
        # a stand-in node of that generation (priority 0, a shard no index owns), so the
        # group's keeper is the published document and every new member is dropped.
        seen = np.unique(key[np.isin(key, earlier)])
        key = np.concatenate([key, seen])
        nodes = np.concatenate([nodes, node(EARLIER_SHARD, seen & ROW_MASK)])
        prio = np.concatenate([prio, np.zeros(len(seen), U64)])
    snode, starts, sizes = band_groups(key, nodes)
    stats: dict[str, Any] = {"band_keys": int(len(key)), "groups": int(len(starts)),
                             "grouped_docs": int(sizes.sum())}
    if cfg.verify:
        a, b = candidate_pairs(snode, starts, sizes)
        # Two earlier documents both stay whatever their similarity: no pair to check.
        # (Earlier nodes sort last, so ``a`` is one only when ``b`` is one too.)
        mine = (a & EARLIER) == 0
        a, b = a[mine], b[mine]
        shard_a, shard_b = (a >> U64(32)).astype(np.uint32), (b >> U64(32)).astype(np.uint32)
        # An earlier document's set is read by the near_shingles index its global shard
        # maps to: each earlier part is opened by one index.
        old_b = (b & EARLIER) != 0
        shard_b[old_b] = (((b[old_b] >> U64(32)) & U64(0x7FFFFFFF)) % U64(plan.num_shards)).astype(np.uint32)
        shard = np.concatenate([shard_a, shard_b])
        role = np.r_[np.zeros(len(a), np.uint8), np.ones(len(a), np.uint8)]
        aa, bb = np.concatenate([a, a]), np.concatenate([b, b])
        order = np.lexsort((bb, aa, role, shard))
        table = pa.table({"shard": shard[order], "role": role[order], "a": aa[order], "b": bb[order]},
                         schema=CAND_SCHEMA)
        write_partitioned(store, where.cand, index, table)
        stats["candidates"] = int(len(a))
        if plan.refresh:
            stats["earlier_docs"] = n_earlier
            stats["earlier_candidates"] = int(old_b.sum())
        return stats
    # Without verification every group is a cluster: a star from its smallest member,
    # contracted with the bucket's other groups to one star per local component.
    first = np.repeat(starts, sizes)
    pos = first + (np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    nf = pos != first
    a, b = snode[first[nf]], snode[pos[nf]]
    ids, idx = np.unique(nodes, return_index=True)
    x, y, xp, yp = contract(a, b, ids, prio[idx])
    stats["candidates"] = int(len(unique_edges(a, b)[0]))
    stats["edges"] = write_edges(store, where.cc(cc_round(0)), index, x, y, xp, yp, buckets(plan))
    return stats
