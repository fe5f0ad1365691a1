"""Near-duplicate removal: MinHash LSH across all shards, as fan-out stages.

``dedup.near`` turns it on (``true`` for the defaults, or a mapping, see
:mod:`preproc.spec.near`)::

    dedup:
      exact: true
      near: true                      # = {threshold: 0.8}: 16 bands x 6 rows, verified
      # near: {bands: 14, rows: 8}    # datatrove's 14 x 8, every candidate a duplicate

By default a pair of documents counts as near duplicates only when the exact Jaccard of
their word 5-gram sets reaches 0.8: the band keys only propose candidates (bands and
rows chosen by :func:`~preproc.dedup.minhash.lsh_params` to find a pair at the threshold with
probability >= 0.99), and ``near_shingles`` + ``near_verify`` check each one. On
``../shared/data/neardup`` that removes with precision 1.000 and recall 0.997, where the
unverified 14 x 8 (datatrove's defaults) gives 0.754 / 0.986. ``verify: false`` (or
``bands`` and ``rows`` without a ``threshold``) skips the check.

The stages, in order (``N`` shards, ``B`` = ``dedup.near.buckets``, default one per 128 MB
of input: the data volume, not the shard count). Every hand-over between two stages is an
exchange (:mod:`preproc.io.exchange`): one file per producer, one merged index per folder,
each consumer reads only its byte ranges. All
intermediates live under ``near/<canonical config>/`` (e.g. ``near/minhash-5g-16b6r-s1-v0.8``),
so changing a knob never reuses stale results:

=================  =======  ==================================================================
stage              fan-out  reads → writes
=================  =======  ==================================================================
near_signatures    N        ``clean/part-i`` minus the exact-dedup drops → ``keys/part-i``:
                            one 64-bit key per band per document, one row group per bucket
near_pairs         B        bucket ``j`` of every shard's keys → documents sharing a key:
                            without verification, edges contracted to stars
                            (``cc/00/part-j``); with it, candidate pairs (``cand/part-j``)
near_shingles      N        (verify) candidate partners in shard ``i`` → their shingle sets,
                            one row group per shard of the other document (``shingles/``)
near_verify        N        (verify) pairs whose first document is in shard ``i``: exact
                            Jaccard of the shingle sets; pairs >= threshold → ``cc/00/``
near_components    1        when the ``cc/00`` edges fit ``local_max_edges``: all components
                            in memory (:func:`~preproc.dedup.components.local_components`) →
                            converged stars in ``cc/local``, and every round below is only
                            a marker; otherwise only a marker (``TRIVIAL``: no dispatch)
near_cc_00..R-1    B        connected components, one large-star or small-star step per
                            round (:mod:`preproc.dedup.components`) → ``cc/<k+1>/``; once the
                            graph has converged the remaining rounds only write a marker,
                            and the runner does that in the coordinator (``TRIVIAL``)
near_clusters      B        the final stars → one keeper per cluster → ``members/part-j``
near_drops         N        members in shard ``i`` → ``near_drops/drops/part-i.parquet``
                            (what tokenize drops) and, with ``keep_clusters``,
                            ``clusters/part-i.parquet``
=================  =======  ==================================================================

A document is a node ``shard << 32 | row``: its row in ``clean/part-i.parquet``, so the
smallest node is the first in input order. Every stage's output is a pure function of
the plan and the data, and the components end in a unique state (a star around each
cluster's smallest node), so drop lists and token files are byte-identical whatever the
number of workers or buckets. Near dedup sees only the documents exact dedup kept; each
document it removes is counted once, in the ``near_drops`` marker of its shard.

In an incremental refresh (:mod:`preproc.engine.refresh`) each generation's band keys are
joined with those earlier generations kept (:mod:`preproc.dedup.near.history`).

The modules: ``common`` (stage names, the plan's options, node ids), ``io`` (schemas, edge
files, clean parts), ``signatures``, ``pairs``, ``verify`` (shingles + verification),
``rounds`` (near_components and the rounds), ``clusters`` (clusters, drops,
:func:`read_clusters`), ``history`` (refresh segments, compaction), ``summary``. This face
holds what the engine asks for: :func:`stages`, :data:`RUNNERS`, :data:`TRIVIAL`,
:func:`prepare`, :data:`DROP_STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from preproc.dedup.near.clusters import read_clusters, run_clusters, run_drops
from preproc.dedup.near.common import (
    CLUSTERS,
    COMPONENTS,
    DROP_STAGES,
    DROPS,
    INPUT_BYTES_PER_BUCKET,
    PAIRS,
    ROUND_PREFIX,
    SHINGLES,
    SIGNATURES,
    VERIFY,
    buckets,
    buckets_for,
    paths,
    round_name,
)
from preproc.dedup.near.history import compact_segments
from preproc.dedup.near.pairs import run_pairs
from preproc.dedup.near.rounds import (
    components_trivial,
    converged_source,
    edges_index,
    final_source,
    round_runner,
    round_trivial,
    run_components,
)
from preproc.dedup.near.signatures import run_signatures
from preproc.dedup.near.summary import summary
from preproc.dedup.near.verify import run_shingles, run_verify
from preproc.io.exchange import build_index
from preproc.io.layout import cc_round
from preproc.spec.near import MAX_ROUNDS, NearOptions

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["stages", "RUNNERS", "TRIVIAL", "DROP_STAGES", "prepare", "read_clusters", "summary",
           "compact_segments", "round_name", "buckets_for", "INPUT_BYTES_PER_BUCKET"]


def stages(cfg: NearOptions | None, groups: int, input_bytes: int = 0) -> list[tuple[str, int]]:
    """The near-dedup stages of a plan, in order, as ``(name, fan_out)``. The per-shard
    stages (signatures, shingles, verify, drops) have ``groups`` indices, each over a group
    of consecutive shards (``Plan.shards_of``); the bucket stages follow ``input_bytes``."""
    if cfg is None:
        return []
    b = cfg.buckets or buckets_for(input_bytes)
    out = [(SIGNATURES, groups), (PAIRS, b)]
    if cfg.verify:
        out += [(SHINGLES, groups), (VERIFY, groups)]
    out += [(COMPONENTS, 1)]
    out += [(round_name(k), b) for k in range(cfg.max_rounds)]
    out += [(CLUSTERS, b), (DROPS, groups)]
    return out


RUNNERS: dict[str, Callable[[Plan, int, Store], dict[str, Any]]] = {
    SIGNATURES: run_signatures, PAIRS: run_pairs, SHINGLES: run_shingles, VERIFY: run_verify,
    COMPONENTS: run_components,
    **{round_name(k): round_runner(k) for k in range(MAX_ROUNDS)},
    CLUSTERS: run_clusters, DROPS: run_drops}
# Stages whose every index is, given what the store holds, only a marker: the runner runs
# them in the coordinator instead of dispatching them (see preproc.engine.stages.trivial).
TRIVIAL: dict[str, Callable[[Plan, Store], bool]] = {
    COMPONENTS: components_trivial, **{round_name(k): round_trivial(k) for k in range(MAX_ROUNDS)}}


def prepare(plan: Plan, stage: str, store: Store) -> None:
    """Merge the exchange indexes ``stage`` reads, in the coordinator, before dispatch."""
    where = paths(plan)
    b, n = buckets(plan), plan.num_shards
    if stage == PAIRS:
        build_index(store, where.keys, plan.stage(SIGNATURES).fan_out, b)
    elif stage in (SHINGLES, VERIFY):
        build_index(store, where.cand, b, n)
        if stage == VERIFY:
            build_index(store, where.shingles, plan.stage(SHINGLES).fan_out, n)
    elif stage == COMPONENTS:
        edges_index(plan, store, cc_round(0))
    elif stage.startswith(ROUND_PREFIX):
        k = int(stage.rsplit("_", 1)[1])
        if converged_source(plan, k, store) is None:
            edges_index(plan, store, cc_round(k))
    elif stage == CLUSTERS:
        edges_index(plan, store, final_source(plan, store))
    elif stage == DROPS:
        build_index(store, where.members, plan.stage(CLUSTERS).fan_out, n)
