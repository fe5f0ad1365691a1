"""Connected components of the duplicate graph: stage ``near_components`` and the rounds
``near_cc_00..R-1``.

When the ``cc/00`` edges fit ``local_max_edges``, ``near_components`` finds every component
in memory (:func:`~preproc.dedup.components.local_components`) and writes the converged
stars to ``cc/local``; every round is then only a marker. Otherwise each round runs one
large-star or small-star step (:mod:`preproc.dedup.components`) over the buckets, ``cc/<k>``
→ ``cc/<k+1>``, until the graph has converged; the rounds after that only write a marker,
and the runner does that in the coordinator (:data:`~preproc.dedup.near.TRIVIAL`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from preproc.dedup.components import local_components, star_step
from preproc.dedup.near.common import COMPONENTS, VERIFY, buckets, options, paths, round_name
from preproc.dedup.near.io import EDGE_COLUMNS, EDGE_SCHEMA, read_edges, write_edges
from preproc.io.exchange import INDEX_NAME, build_index, index_info, read_all
from preproc.io.layout import CC_LOCAL, cc_round

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

StageRun = Callable[["Plan", int, "Store"], dict[str, Any]]


def producers(plan: Plan, source: str) -> int:
    """How many indices wrote the edges in ``source`` (a ``cc/`` folder name)."""
    if source == CC_LOCAL:
        return 1
    if source == cc_round(0):
        return plan.stage(VERIFY).fan_out if options(plan).verify else buckets(plan)
    return buckets(plan)


def edges_index(plan: Plan, store: Store, source: str) -> str:
    """The folder of ``source``'s edges, its exchange index built if nobody has yet."""
    folder = paths(plan).cc(source)
    if not store.exists(f"{folder}/{INDEX_NAME}"):
        build_index(store, folder, producers(plan, source), buckets(plan))
    return folder


def local_fits(plan: Plan, store: Store) -> tuple[bool, int]:
    """Whether the candidate graph's edges fit one worker's budget, and how many there are
    (from the exchange index of ``cc/00``: no edge is read)."""
    info = index_info(store, edges_index(plan, store, cc_round(0)))
    edges = int(info["rows"]) // 2          # each undirected edge is written both ways
    return edges <= options(plan).local_max_edges, edges


def run_components(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """All components in one stage, when the edges fit a worker (``local_max_edges``):
    every edge of ``cc/00`` in memory, :func:`~preproc.dedup.components.local_components`, and
    the converged stars (each component's smallest node at the centre, exactly what the
    rounds converge to) written to ``cc/local`` for ``near_clusters``; the rounds then
    have nothing to compute. Otherwise only a marker: the rounds do the work."""
    fits, edges = local_fits(plan, store)
    if not fits:
        return {"state": "rounds", "edges": edges}
    folder = edges_index(plan, store, cc_round(0))
    tables = [read_all(store, folder, p, EDGE_COLUMNS) for p in range(producers(plan, cc_round(0)))]
    t = pa.concat_tables(tables) if tables else EDGE_SCHEMA.empty_table().select(EDGE_COLUMNS)
    src, dst, sp = (t.column(c).to_numpy() for c in ("src", "dst", "sprio"))
    ids, first = np.unique(src, return_index=True)
    nodes, roots = local_components(src, dst)
    leaf = nodes != roots
    x, y = nodes[leaf], roots[leaf]
    prio = sp[first]
    out = write_edges(store, paths(plan).cc(CC_LOCAL), 0, x, y, prio[np.searchsorted(ids, x)],
                      prio[np.searchsorted(ids, y)], buckets(plan), unconverged=0)
    return {"state": "local", "source": CC_LOCAL, "edges": edges, "edges_out": out,
            "components": int(len(np.unique(roots)))}


def run_round(k: int, plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """Round ``k``: large-star (even) or small-star (odd) on this partition's nodes.

    Round ``k`` reads ``cc/<k>`` and writes ``cc/<k+1>``. Each output carries in the
    exchange index how many of its input nodes were not yet final; when the sum over round
    ``k-1``'s outputs is 0, its input had converged (and its output equals it), so this
    round and all later ones skip, pointing at that output. After the single-stage path
    (``near_components``) every round skips.
    """
    done = converged_source(plan, k, store)
    if done is not None:
        return {"state": "skip", "source": done}
    src, dst, sp, dp = read_edges(store, edges_index(plan, store, cc_round(k)), index)
    x, y, xp, yp, unconverged = star_step(src, dst, sp, dp, large=k % 2 == 0)
    out = cc_round(k + 1)
    edges = write_edges(store, paths(plan).cc(out), index, x, y, xp, yp, buckets(plan),
                        unconverged=unconverged)
    return {"state": "work", "source": out, "step": "large" if k % 2 == 0 else "small",
            "edges_in": int(len(src)), "edges_out": edges, "unconverged": unconverged}


def converged_source(plan: Plan, k: int, store: Store) -> str | None:
    """When the graph had converged before round ``k`` (found in one stage, an earlier
    round skipped, or round ``k-1``'s outputs hold no unconverged node), the ``cc/``
    folder round ``k`` and all later ones point at; else None. Reads only markers and one
    exchange index."""
    if k == 0:
        m = store.read_marker(COMPONENTS, 0) or {}
        return CC_LOCAL if m.get("state") == "local" else None
    prev = store.read_marker(round_name(k - 1), 0) or {}
    if prev.get("state") == "skip":
        return prev["source"]
    source = cc_round(k)
    info = index_info(store, edges_index(plan, store, source))
    if sum(int(m.get("unconverged", "1")) for m in info["metadata"]) == 0:
        return source
    return None


def final_source(plan: Plan, store: Store) -> str:
    """The ``cc/`` folder of the final stars: where the last round pointed."""
    rounds = options(plan).max_rounds
    last = store.read_marker(round_name(rounds - 1), 0) or {}
    return last.get("source", cc_round(rounds))


def components_trivial(plan: Plan, store: Store) -> bool:
    """``near_components`` only writes a marker: the edges do not fit one worker."""
    return not local_fits(plan, store)[0]


def round_trivial(k: int) -> Callable[[Plan, Store], bool]:
    """Round ``k`` only writes a marker: the graph converged before it."""
    def trivial(plan: Plan, store: Store) -> bool:
        return converged_source(plan, k, store) is not None

    return trivial


def round_runner(k: int) -> StageRun:
    """The stage runner of round ``k``."""
    def run(plan: Plan, index: int, store: Store) -> dict[str, Any]:
        return run_round(k, plan, index, store)

    run.__name__ = f"run_{round_name(k)}"
    return run
