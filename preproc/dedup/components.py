"""Connected components of a graph spread over many partitions, in numpy.

Near-duplicate candidate pairs form a graph whose components are the clusters. No single
machine may hold the whole graph, so components are found by rounds of *large-star* and
*small-star* (Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014):
each round is a map over nodes, where a node sees only its own adjacency list, so the
edges can be partitioned by node (:func:`node_partition`) and every partition handled by
another worker. The number of edges never grows from one round to the next, and the
rounds end in a unique state whatever the partitioning: every component a star whose
centre is its smallest node. That makes the result (and every output derived from it)
independent of the number of partitions and of workers.

Every operation here works on whole edge arrays, never a Python loop per node or edge:

* :func:`unique_edges` sorts and deduplicates directed edges ``src → dst``.
* :func:`star_step` runs one large-star or small-star step on the adjacency of the nodes
  of one partition and says how many of them are not yet in their final star.
* :func:`local_components` is an in-memory hook-and-compress (Shiloach–Vishkin style) for
  edges that fit in one worker: it contracts each partition's edges before the rounds,
  and is the reference the tests compare the rounds with.
* :func:`star_clusters` reads the members of each finished star and picks its keeper.

Each node carries a ``prio`` (smaller is better) through the rounds so that the keeper of a
cluster can be chosen by a priority (e.g. the longest document) and, on ties, the smallest
node id, without another lookup.
"""

from __future__ import annotations

import numpy as np

__all__ = ["node_partition", "unique_edges", "star_step", "local_components", "star_clusters",
           "components_by_rounds"]

U64 = np.uint64
_SALT = U64(0x6E6561722D636370)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> U64(33))
    x = x * U64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> U64(33))
    x = x * U64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> U64(33))


def node_partition(nodes: np.ndarray, parts: int) -> np.ndarray:
    """The partition (0..parts-1, uint32) that owns each node's adjacency list."""
    return (_mix(np.asarray(nodes, dtype=U64) ^ _SALT) % U64(parts)).astype(np.uint32)


def unique_edges(src: np.ndarray, dst: np.ndarray, *attrs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Edges sorted by ``(src, dst)``, duplicates and self-loops removed; ``attrs`` follow."""
    keep = src != dst
    src, dst = src[keep], dst[keep]
    attrs = tuple(a[keep] for a in attrs)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    attrs = tuple(a[order] for a in attrs)
    if len(src) > 1:
        new = np.ones(len(src), dtype=bool)
        new[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
        src, dst = src[new], dst[new]
        attrs = tuple(a[new] for a in attrs)
    return (src, dst, *attrs)


def _groups(src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    counts = np.diff(np.r_[starts, len(src)])
    return starts, counts


def star_step(src: np.ndarray, dst: np.ndarray, sprio: np.ndarray, dprio: np.ndarray, *,
              large: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One large-star (``large=True``) or small-star step over the nodes whose adjacency
    ``src → dst`` is given (sorted and unique, as :func:`unique_edges` returns).

    Returns the undirected edges it emits ``(x, y, xprio, yprio)`` and how many of these
    nodes are not yet in their final star (a node is final when it has no smaller
    neighbour, or exactly one neighbour and that one is smaller). When that count is 0
    over all partitions, the input graph is a set of stars centred on each component's
    smallest node, and both steps return it unchanged.

    * large-star: ``m(u) = min(N(u) ∪ {u})``; emit ``(v, m(u))`` for every neighbour
      ``v > u``.
    * small-star: for ``u`` with smaller neighbours, ``m(u) = min N(u)``; emit
      ``(v, m(u))`` for every smaller neighbour ``v``, and ``(u, m(u))``.
    """
    if len(src) == 0:
        e = np.empty(0, U64)
        return e, e, e, e, 0
    starts, counts = _groups(src)
    u = src[starts]
    mn = dst[starts]                      # adjacency is sorted: the smallest neighbour
    smaller = mn < u
    unconverged = int((smaller & (counts > 1)).sum())
    m = np.where(smaller, mn, u)
    mp = np.where(smaller, dprio[starts], sprio[starts])
    m_e = np.repeat(m, counts)
    mp_e = np.repeat(mp, counts)
    if large:
        sel = dst > src
        return dst[sel], m_e[sel], dprio[sel], mp_e[sel], unconverged
    sel = (dst < src) & (dst != m_e)
    x = np.concatenate([dst[sel], u[smaller]])
    y = np.concatenate([m_e[sel], m[smaller]])
    xp = np.concatenate([dprio[sel], sprio[starts][smaller]])
    yp = np.concatenate([mp_e[sel], mp[smaller]])
    return x, y, xp, yp, unconverged


def local_components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(nodes, roots)``: every node of the edges ``a–b`` and the smallest node of its
    component. Hook-and-compress on dense labels: O(log n) vectorized iterations."""
    a = np.asarray(a, dtype=U64)
    b = np.asarray(b, dtype=U64)
    if len(a) == 0:
        e = np.empty(0, U64)
        return e, e
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ai, bi = inv[:len(a)], inv[len(a):]
    label = np.arange(len(nodes), dtype=np.int64)
    while True:
        la, lb = label[ai], label[bi]
        diff = la != lb
        if not diff.any():
            break
        la, lb = la[diff], lb[diff]
        lo = np.minimum(la, lb)
        # la, lb are roots (labels are fully compressed): hook each to the smaller root.
        np.minimum.at(label, la, lo)
        np.minimum.at(label, lb, lo)
        while True:
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
    return nodes, nodes[label]


def star_clusters(src: np.ndarray, dst: np.ndarray, sprio: np.ndarray,
                  dprio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(members, keepers)`` of the finished stars centred in this partition.

    ``src → dst`` must be converged (:func:`star_step` reported 0) and sorted unique. A
    centre is a node whose neighbours are all larger; its cluster is itself and them. The
    keeper is the member with the smallest ``(prio, node)``. Sorted by member.
    """
    if len(src) == 0:
        e = np.empty(0, U64)
        return e, e
    starts, counts = _groups(src)
    u = src[starts]
    centre = dst[starts] > u
    c_idx = np.flatnonzero(centre)
    on_edge = np.repeat(centre, counts)
    grp_of_edge = np.repeat(np.cumsum(centre) - 1, counts)[on_edge]
    members = np.concatenate([u[c_idx], dst[on_edge]])
    if len(members) == 0:          # edges here, but every star is centred elsewhere
        e = np.empty(0, U64)
        return e, e
    prio = np.concatenate([sprio[starts][c_idx], dprio[on_edge]])
    grp = np.concatenate([np.arange(len(c_idx)), grp_of_edge])
    order = np.lexsort((members, prio, grp))
    first = np.r_[True, grp[order][1:] != grp[order][:-1]]
    keeper_of_grp = members[order][first]
    keepers = keeper_of_grp[grp]
    order = np.argsort(members, kind="stable")
    return members[order], keepers[order]


def components_by_rounds(a: np.ndarray, b: np.ndarray, prio_a: np.ndarray, prio_b: np.ndarray, *,
                         parts: int, max_rounds: int = 64) -> tuple[np.ndarray, np.ndarray, int]:
    """The distributed algorithm run in one process (for tests and small inputs):
    ``(members, keepers, rounds)`` where ``rounds`` counts the steps that did work."""
    x, y, xp, yp = (np.asarray(v, dtype=U64) for v in (a, b, prio_a, prio_b))
    for k in range(max_rounds):
        src, dst, sp, dp = unique_edges(np.concatenate([x, y]), np.concatenate([y, x]),
                                        np.concatenate([xp, yp]), np.concatenate([yp, xp]))
        part = node_partition(src, parts)
        outs, unconverged = [], 0
        for p in range(parts):
            s = part == p
            o = star_step(src[s], dst[s], sp[s], dp[s], large=k % 2 == 0)
            unconverged += o[4]
            outs.append(o[:4])
        if unconverged == 0:
            return (*star_clusters(src, dst, sp, dp), k + 1)
        x, y, xp, yp = (np.concatenate([o[i] for o in outs]) for i in range(4))
    raise RuntimeError(f"not converged after {max_rounds} rounds")
