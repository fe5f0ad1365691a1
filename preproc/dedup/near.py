"""Near-duplicate removal: MinHash LSH across all shards, as fan-out stages.

``dedup.near`` turns it on (``true`` for the defaults, or a mapping, see
:class:`NearOptions`)::

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

In an incremental refresh (:mod:`preproc.engine.refresh`) each generation leaves the band keys of
the documents it kept under ``_state/near/``; ``near_pairs`` of a later generation joins
its band groups with them. Without verification a shared key is enough (a stand-in node
per key). With it, the segments also name each earlier document (generation, shard,
row), it becomes a node of the candidate graph (:data:`EARLIER` set, priority 0: the
published document is always the keeper), ``near_shingles`` reads its shingle set from
that generation's ``clean/`` part, and only a verified pair drops the new document.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from preproc.dedup.components import local_components, node_partition, star_clusters, star_step, unique_edges
from preproc.errors import ConfigError
from preproc.dedup.minhash import MinHasher, MinHashParams, jaccard, lsh_params, shingle_hashes, shingle_sets, unit_hashes
from preproc.io.exchange import (INDEX_NAME, build_index, index_info, read_all, read_partition, read_row_groups,
                          write_partitioned, write_row_groups)
from preproc.dedup.drops import read_drops, write_drops

if TYPE_CHECKING:
    from preproc.spec.model import Spec
    from preproc.engine.plan import Plan, StagePlan
    from preproc.io.store import Store

__all__ = ["NearOptions", "NearConfig", "near_config", "stages", "RUNNERS", "TRIVIAL", "DROP_STAGES",
           "read_clusters", "summary"]

U64 = np.uint64
ROW_MASK = U64(0xFFFFFFFF)
# The Jaccard threshold of ``dedup.near: true`` (and of any config that verifies without one).
DEFAULT_THRESHOLD = 0.8
# Upper bound of dedup.near.max_rounds: round stages are registered by name up front.
MAX_ROUNDS = 64
# With verification, a band group of up to this many documents yields all its pairs;
# a larger one (thousands of pages with the same template) a star and a chain, so the
# candidates grow linearly with the group.
ALL_PAIRS_MAX_GROUP = 32
SIGNATURES, PAIRS, SHINGLES, VERIFY = "near_signatures", "near_pairs", "near_shingles", "near_verify"
CLUSTERS, DROPS = "near_clusters", "near_drops"
COMPONENTS = "near_components"
# A near-dedup bucket per this many input bytes (at 1 KB per document and 16 bands, about
# 2 million band keys, 50 MB): the fan-out follows the data, not the shard count.
INPUT_BYTES_PER_BUCKET = 128 * 2**20
# Edges (undirected) up to which one worker finds the components in memory in one stage
# (about 200 bytes per edge at the peak of local_components: 1 GB).
LOCAL_MAX_EDGES = 5_000_000
DROP_STAGES = (DROPS,)


def round_name(k: int) -> str:
    return f"near_cc_{k:02d}"


# -- configuration -------------------------------------------------------------------------

class NearOptions(BaseModel):
    """``dedup.near``: what a user may set. Defaults: word 5-grams, Jaccard threshold 0.8
    with every candidate pair verified (16 bands x 6 rows of the 112 permutations), seed 1,
    keep the first. How a few mappings resolve (:func:`near_config`):

    ==============================  =====================================
    ``true`` / ``{}``               16 x 6, verified at 0.8 (``-v0.8``)
    ``{threshold: 0.7}``            bands x rows for 0.7, verified
    ``{bands: 14, rows: 8}``        14 x 8, every candidate a duplicate
    ``{verify: false}``             14 x 8, every candidate a duplicate
    ``{threshold: 0.8, verify: false}``  the balanced S-curve at 0.8
    ==============================  =====================================
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Shingles: runs of ``ngram`` words (``word``) or characters (``char``: languages
    # written without spaces); text lower-cased, punctuation and whitespace folded.
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(default=5, ge=1, le=64)
    # LSH: ``bands x rows`` permutations. Set both, or leave them to be chosen for the
    # threshold within ``num_perm`` permutations (unverified without a threshold: 14 x 8).
    bands: int | None = Field(default=None, ge=1, le=512)
    rows: int | None = Field(default=None, ge=1, le=64)
    # The Jaccard of word (or char) n-gram sets from which two documents are duplicates
    # (default 0.8 when verifying).
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    num_perm: int = Field(default=112, ge=1, le=1024)
    seed: int = Field(default=1, ge=0, lt=2**63)
    # Check each candidate pair's exact Jaccard against ``threshold`` before it counts.
    # Default: on, unless ``bands`` and ``rows`` are set without a ``threshold``.
    verify: bool | None = None
    # Which document of a cluster stays: the first in input order, or the longest.
    keep: Literal["first", "longest"] = "first"
    # Write the clusters (members and kept document) to near/<config>/clusters/.
    keep_clusters: bool = False
    # Fan-out of the pair, component and cluster stages (default: one per 128 MB of input).
    buckets: int | None = Field(default=None, ge=1)
    # Edges up to which the components are found in one stage by one worker, in memory;
    # beyond, rounds of large-/small-star over the buckets. 0: always rounds.
    local_max_edges: int = Field(default=LOCAL_MAX_EDGES, ge=0)
    # Planned component rounds; the rounds after convergence cost a marker read.
    max_rounds: int = Field(default=20, ge=1, le=MAX_ROUNDS)
    # Documents per signature batch (memory per worker grows with it).
    batch_size: int = Field(default=1024, ge=1)

    def problem(self) -> tuple[str, str] | None:
        """``(key, message)`` of the first inconsistency between options, if any."""
        if (self.bands is None) != (self.rows is None):
            missing = "rows" if self.rows is None else "bands"
            return missing, "set both bands and rows (or neither, to choose them from the threshold)"
        if self.bands is not None and self.rows is not None and self.bands * self.rows > 4096:
            return "bands", f"bands x rows must be at most 4096 permutations (got {self.bands * self.rows})"
        return None


def parse_options(value: bool | dict[str, Any]) -> NearOptions:
    """Validate ``dedup.near``; errors are one line naming ``dedup.near.<key>``."""
    if isinstance(value, bool):
        return NearOptions(enabled=value)
    if not isinstance(value, dict):
        raise ConfigError("dedup.near: must be true, false or a mapping of options")
    try:
        opts = NearOptions.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed: {', '.join(NearOptions.model_fields)}"
        elif err["type"] != "value_error" and "input" in err:
            msg = f"{msg} (got {err['input']!r:.80})"
        raise ConfigError(f"dedup.near{'.' + loc if loc else ''}: {msg}") from None
    bad = opts.problem()
    if bad:
        raise ConfigError(f"dedup.near.{bad[0]}: {bad[1]}")
    return opts


@dataclass(frozen=True)
class NearConfig:
    """``dedup.near`` resolved: the bands and rows chosen, verification decided."""

    minhash: MinHashParams
    threshold: float | None
    verify: bool
    keep: str
    keep_clusters: bool
    buckets: int | None
    max_rounds: int
    batch_size: int
    local_max_edges: int = LOCAL_MAX_EDGES

    @property
    def canonical(self) -> str:
        """``minhash-5g-14b8r-s1``, plus ``-v0.8`` when verifying at 0.8 and ``-longest``
        when keeping the longest document: every knob that changes a result."""
        s = self.minhash.canonical
        if self.verify:
            s += f"-v{self.threshold:g}"
        if self.keep != "first":
            s += f"-{self.keep}"
        return s

    @property
    def root(self) -> str:
        return f"near/{self.canonical}"


@functools.lru_cache(maxsize=64)
def _resolve(raw: str) -> NearConfig | None:
    o = parse_options(json.loads(raw))
    if not o.enabled:
        return None
    # Bands and rows without a threshold are an LSH-only config (as datatrove's 14 x 8);
    # everything else verifies, at 0.8 unless told otherwise.
    verify = o.verify if o.verify is not None else not (o.bands is not None and o.threshold is None)
    threshold = o.threshold if o.threshold is not None else (DEFAULT_THRESHOLD if verify else None)
    if o.bands is not None:
        bands, rows = o.bands, o.rows
    elif threshold is not None:
        bands, rows = lsh_params(threshold, o.num_perm, verify=verify)
    else:                       # verify: false alone: the unverified classic
        bands, rows = 14, 8
    mh = MinHashParams(ngram=o.ngram, unit=o.shingle, bands=bands, rows=rows, seed=o.seed)
    return NearConfig(minhash=mh, threshold=threshold, verify=verify, keep=o.keep,
                      keep_clusters=o.keep_clusters, buckets=o.buckets, max_rounds=o.max_rounds,
                      batch_size=o.batch_size, local_max_edges=o.local_max_edges)


def near_config(spec: "Spec") -> NearConfig | None:
    """The resolved near-dedup config of a spec (``None`` when off)."""
    raw = spec.dedup.near
    if raw is False:
        return None
    return _resolve(json.dumps(raw, sort_keys=True))


def buckets_for(input_bytes: int) -> int:
    """The default fan-out of the bucket stages for this much input."""
    return max(1, -(-int(input_bytes) // INPUT_BYTES_PER_BUCKET))


def stages(spec: "Spec", num_shards: int, input_bytes: int = 0) -> list["StagePlan"]:
    """The near-dedup stages of a plan, in order, with their fan-out."""
    from preproc.engine.plan import StagePlan

    cfg = near_config(spec)
    if cfg is None:
        return []
    b = cfg.buckets or buckets_for(input_bytes)
    out = [StagePlan(SIGNATURES, num_shards), StagePlan(PAIRS, b)]
    if cfg.verify:
        out += [StagePlan(SHINGLES, num_shards), StagePlan(VERIFY, num_shards)]
    out += [StagePlan(COMPONENTS, 1)]
    out += [StagePlan(round_name(k), b) for k in range(cfg.max_rounds)]
    out += [StagePlan(CLUSTERS, b), StagePlan(DROPS, num_shards)]
    return out


def _cfg(plan: "Plan") -> NearConfig:
    cfg = near_config(plan.spec)
    if cfg is None:  # pragma: no cover - the stages are only planned when on
        raise ConfigError("dedup.near is off in this plan")
    return cfg


def _buckets(plan: "Plan") -> int:
    return plan.stage(PAIRS).fan_out


def _part(i: int) -> str:
    return f"part-{i:05d}.parquet"


# -- exchanges (preproc.io.exchange) --------------------------------------------------------
# A file per producing index, sorted by its first column (the consumer's index), one batch
# per value, and one merged index per folder: consumer j reads only its byte ranges.
# The refresh segments (read one file at a time) stay Parquet with a row group per value.

_read_part = read_row_groups


def _read_parts(store: "Store", folder: str, part: int, columns: list[str],
                types: list[pa.DataType], producer_column: str | None = None) -> dict[str, np.ndarray]:
    t = read_partition(store, folder, part, columns, producer_column=producer_column)
    if t is None:
        cols = columns + ([producer_column] if producer_column else [])
        tys = types + ([pa.uint32()] if producer_column else [])
        return {c: np.empty(0, dtype=ty.to_pandas_dtype()) for c, ty in zip(cols, tys)}
    return {c: t.column(c).to_numpy() for c in t.column_names}


# -- documents -----------------------------------------------------------------------------

def _prio(cfg: NearConfig, text: pa.Array) -> np.ndarray:
    """Smaller is kept first: 0 for ``first``; for ``longest``, fewer characters rank later."""
    if cfg.keep == "longest":
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
        return (U64(2**32 - 1) - np.minimum(chars, 2**32 - 1).astype(U64)).astype(U64)
    return np.zeros(len(text), dtype=U64)


def _iter_rows(store: "Store", shard: int | str, rows: np.ndarray | None, batch_size: int):
    """``(rows, text)`` batches of ``clean/part-i`` (or of the part file ``shard`` names;
    only ``rows``, sorted, when given), skipping the row groups that hold none of them."""
    with store.open(shard if isinstance(shard, str) else f"clean/{_part(shard)}") as f:
        pf = pq.ParquetFile(f)
        starts = np.zeros(pf.num_row_groups + 1, dtype=np.int64)
        for g in range(pf.num_row_groups):
            starts[g + 1] = starts[g] + pf.metadata.row_group(g).num_rows
        for g in range(pf.num_row_groups):
            lo, hi = starts[g], starts[g + 1]
            if rows is not None:
                want = rows[np.searchsorted(rows, lo):np.searchsorted(rows, hi)]
                if not len(want):
                    continue
            row0 = lo
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=["text"]):
                n = batch.num_rows
                r = np.arange(row0, row0 + n, dtype=np.int64)
                text = batch.column(0)
                row0 += n
                if rows is not None:
                    sel = np.isin(r, want, assume_unique=True)
                    if not sel.any():
                        continue
                    r, text = r[sel], text.filter(pa.array(sel))
                yield r, text


def _unique_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``(x, y)`` rows, sorted."""
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    if len(x) > 1:
        new = np.r_[True, (x[1:] != x[:-1]) | (y[1:] != y[:-1])]
        x, y = x[new], y[new]
    return x, y


def _node(shard: int | np.ndarray, row: np.ndarray) -> np.ndarray:
    return (np.asarray(shard, dtype=U64) << U64(32)) | np.asarray(row, dtype=U64)


# -- stage: signatures ---------------------------------------------------------------------

KEYS_SCHEMA = pa.schema([("bucket", pa.uint32()), ("key", pa.uint64()), ("row", pa.uint32()),
                         ("prio", pa.uint64())])


def run_signatures(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """MinHash band keys of the documents of shard ``index`` that exact dedup kept.

    Text is read and hashed ``batch_size`` documents at a time; the keys of the shard
    (``bands`` x 24 bytes per document, a few percent of its text) are held to write them
    sorted into one row group per bucket, as ``clean/keys`` does for exact dedup.
    """
    cfg = _cfg(plan)
    p = cfg.minhash
    mh = MinHasher(p)
    b = _buckets(plan)
    exact = (read_drops(store, ["exact_dedup"], index) if "exact_dedup" in plan.stage_names
             else np.empty(0, np.uint32)).astype(np.int64)
    keys, rows, prios = [], [], []
    docs = skipped = empty = shingles = text_bytes = 0
    for r, text in _iter_rows(store, index, None, cfg.batch_size):
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
        prios.append(_prio(cfg, text)[ok] + U64(1 if plan.refresh else 0))
    key = np.concatenate(keys, axis=1).ravel() if keys else np.empty(0, U64)
    row = np.tile(np.concatenate(rows), p.bands) if rows else np.empty(0, np.int64)
    prio = np.tile(np.concatenate(prios), p.bands) if prios else np.empty(0, U64)
    bucket = (key % U64(b)).astype(np.uint32)
    order = np.lexsort((row, key, bucket))
    table = pa.table({"bucket": bucket[order], "key": key[order], "row": row[order].astype(np.uint32),
                      "prio": prio[order]}, schema=KEYS_SCHEMA)
    write_partitioned(store, f"{cfg.root}/keys", index, table)
    return {"docs": docs, "skipped_exact": skipped, "no_shingles": empty, "shingles": shingles,
            "band_keys": int(len(key)), "text_bytes": text_bytes}


# -- stage: pairs --------------------------------------------------------------------------

EDGE_SCHEMA = pa.schema([("part", pa.uint32()), ("src", pa.uint64()), ("dst", pa.uint64()),
                         ("sprio", pa.uint64()), ("dprio", pa.uint64())])
CAND_SCHEMA = pa.schema([("shard", pa.uint32()), ("role", pa.uint8()), ("a", pa.uint64()),
                         ("b", pa.uint64())])


def _write_edges(store: "Store", folder: str, producer: int, x: np.ndarray, y: np.ndarray, xp: np.ndarray, yp: np.ndarray,
                 parts: int, *, unconverged: int | None = None) -> int:
    """Write undirected edges both ways, each direction in the partition of its source."""
    src, dst, sp, dp = unique_edges(np.concatenate([x, y]), np.concatenate([y, x]),
                                    np.concatenate([xp, yp]), np.concatenate([yp, xp]))
    part = node_partition(src, parts)
    order = np.argsort(part, kind="stable")    # stable: (src, dst) order kept in a part
    table = pa.table({"part": part[order], "src": src[order], "dst": dst[order], "sprio": sp[order],
                      "dprio": dp[order]}, schema=EDGE_SCHEMA)
    md = {"unconverged": str(unconverged)} if unconverged is not None else None
    write_partitioned(store, folder, producer, table, md)
    return int(len(src)) // 2


def _contract(a: np.ndarray, b: np.ndarray, ids: np.ndarray, prio: np.ndarray):
    """Edges → a star per local component (node → smallest node), with the nodes' prio
    looked up in the sorted unique ``ids``."""
    nodes, roots = local_components(a, b)
    keep = nodes != roots
    nodes, roots = nodes[keep], roots[keep]
    return nodes, roots, prio[np.searchsorted(ids, nodes)], prio[np.searchsorted(ids, roots)]


def _band_groups(key: np.ndarray, node: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (key, node); return the sorted nodes, each group's start and size (>= 2)."""
    order = np.lexsort((node, key))
    key, node = key[order], node[order]
    if not len(key):
        e = np.empty(0, np.int64)
        return node, e, e
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    multi = sizes >= 2
    return node, starts[multi], sizes[multi]


def _candidate_pairs(node: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of each small group; star + chain of each large one; ``a < b``, unique."""
    small = sizes <= ALL_PAIRS_MAX_GROUP
    a_parts, b_parts = [], []
    # Positions in the sorted node array of the members of small groups.
    s_starts, s_sizes = starts[small], sizes[small]
    pos = np.repeat(s_starts, s_sizes) + (np.arange(int(s_sizes.sum())) - np.repeat(np.cumsum(s_sizes) - s_sizes, s_sizes))
    end = np.repeat(s_starts + s_sizes, s_sizes)
    for d in range(1, int(s_sizes.max(initial=1))):
        ok = pos + d < end
        a_parts.append(node[pos[ok]])
        b_parts.append(node[pos[ok] + d])
    l_starts, l_sizes = starts[~small], sizes[~small]
    if len(l_starts):
        lpos = np.repeat(l_starts, l_sizes) + (np.arange(int(l_sizes.sum())) - np.repeat(np.cumsum(l_sizes) - l_sizes, l_sizes))
        first = np.repeat(l_starts, l_sizes)
        nf = lpos != first
        a_parts += [node[first[nf]], node[lpos[nf] - 1]]
        b_parts += [node[lpos[nf]], node[lpos[nf]]]
    if not a_parts:
        e = np.empty(0, U64)
        return e, e
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    a, b = unique_edges(a, b)
    return a, b


EARLIER_SHARD = 0xFFFFFFFF      # unverified refresh: stands for "a document of an earlier generation"
SEGMENT_SCHEMA = pa.schema([("bucket", pa.uint32()), ("key", pa.uint64())])
# With verification a segment row also names the earlier document: its generation and
# ``shard << 32 | row`` in that generation's clean/ parts.
VERIFIED_SEGMENT_SCHEMA = pa.schema([("bucket", pa.uint32()), ("key", pa.uint64()), ("gen", pa.uint32()),
                                     ("doc", pa.uint64())])
# Verified refresh: the node of an earlier generation's document is this bit, then its
# shard numbered across all earlier generations (``near_earlier`` in the plan), then its
# row. It sorts after every node of the running generation, so in a candidate pair it is
# always the second, and with priority 0 it is always its cluster's keeper.
EARLIER = U64(1 << 63)


def _segment_files(root: "Store", seg: str, bucket: int) -> list[str]:
    """The files of segment ``seg`` that may hold bucket ``bucket``: a generation's
    segment is part-i files partitioned by bucket; a compacted one a bucket-j file each."""
    return [f"{seg}/{name}" for name in sorted(root.ls(seg))
            if name.startswith("part-") or name == f"bucket-{bucket:05d}.parquet"]


def _earlier_keys(plan: "Plan", bucket: int) -> np.ndarray | None:
    """Band keys (bucket ``bucket``) of the documents earlier generations kept, or None."""
    segs = (plan.refresh or {}).get("near_segments") or []
    if not segs:
        return None

    root = plan.refresh_root()
    parts = []
    for seg in segs:
        for rel in _segment_files(root, seg, bucket):
            t = _read_part(root, rel, bucket, ["key"])
            if t is not None:
                parts.append(t.column("key").to_numpy())
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, U64)


def _earlier_generations(plan: "Plan") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(generations, first global shard, shards, paths)`` of the earlier generations,
    sorted, from ``plan.refresh["near_earlier"]``: how an earlier node names a part."""
    rows = sorted((plan.refresh or {}).get("near_earlier") or [], key=lambda g: g["generation"])
    gens = np.array([g["generation"] for g in rows], np.int64)
    shards = np.array([g["shards"] for g in rows], np.int64)
    base = np.cumsum(shards) - shards
    if len(shards) and int(shards.sum()) >= 2**31:   # pragma: no cover - 2 billion shards
        raise RuntimeError("near dedup: too many shards in earlier generations to number them")
    return gens, base, shards, [g["path"] for g in rows]


def _earlier_docs(plan: "Plan", bucket: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(key, node)`` of the documents earlier generations kept that have one of ``keys``
    (bucket ``bucket``), unique; the nodes as :data:`EARLIER` numbers them."""
    segs = (plan.refresh or {}).get("near_segments") or []
    e = np.empty(0, U64)
    if not segs or not len(keys):
        return e, e

    root = plan.refresh_root()
    want = np.unique(keys)
    ks, gs, ds = [], [], []
    for seg in segs:
        for rel in _segment_files(root, seg, bucket):
            t = _read_part(root, rel, bucket, ["key", "gen", "doc"])
            if t is None:
                continue
            k = t.column("key").to_numpy()
            sel = np.isin(k, want)
            ks.append(k[sel])
            gs.append(t.column("gen").to_numpy()[sel].astype(np.int64))
            ds.append(t.column("doc").to_numpy()[sel])
    if not ks or not sum(len(k) for k in ks):
        return e, e
    key, gen, doc = np.concatenate(ks), np.concatenate(gs), np.concatenate(ds)
    gens, base, _, _ = _earlier_generations(plan)
    gi = np.searchsorted(gens, gen)
    if not len(gens) or (gi >= len(gens)).any() or (gens[np.minimum(gi, len(gens) - 1)] != gen).any():
        raise RuntimeError(f"near_pairs {bucket}: a near-dedup segment names a generation the plan does not list "
                           f"(plan: {gens.tolist()}, segment: {np.unique(gen).tolist()})")
    gshard = base[gi].astype(U64) + (doc >> U64(32))
    node = EARLIER | (gshard << U64(32)) | (doc & ROW_MASK)
    return _unique_rows(key, node)


def _earlier_part(plan: "Plan", gshard: int) -> tuple[str, int]:
    """The clean/ part (relative to the dataset root) of an earlier global shard."""
    gens, base, _, paths = _earlier_generations(plan)
    g = int(np.searchsorted(base, gshard, side="right")) - 1
    shard = gshard - int(base[g])
    return f"{paths[g]}/clean/{_part(shard)}", shard


def _write_segment(plan: "Plan", store: "Store", index: int, dropped_rows: np.ndarray) -> None:
    """This generation's kept documents' band keys (and, verifying, who they are), for the
    generations after it."""
    cfg = _cfg(plan)
    t = read_all(store, f"{cfg.root}/keys", index, ["bucket", "key", "row"])
    row = t.column("row").to_numpy()
    keep = ~np.isin(row, dropped_rows)
    cols = {"bucket": t.column("bucket").to_numpy()[keep], "key": t.column("key").to_numpy()[keep]}
    if cfg.verify:
        cols["gen"] = np.full(int(keep.sum()), int(plan.refresh["generation"]), np.uint32)
        cols["doc"] = _node(index, row[keep])
    seg = pa.table(cols, schema=VERIFIED_SEGMENT_SCHEMA if cfg.verify else SEGMENT_SCHEMA)
    write_row_groups(plan.refresh_root(), f"{plan.refresh['near_segment_out']}/{_part(index)}", seg)


def compact_segments(root: "Store", segs: list[str], bucket: int, *, verified: bool) -> pa.Table:
    """Bucket ``bucket`` of the near-dedup segments ``segs`` merged into one table (unique
    rows, sorted): what :func:`preproc.engine.refresh.compact` writes as ``bucket-j``. With
    ``verified`` the rows keep the earlier documents' identities (``gen``, ``doc``)."""
    cols = ["key", "gen", "doc"] if verified else ["key"]
    tables = []
    for seg in segs:
        for rel in _segment_files(root, seg, bucket):
            t = _read_part(root, rel, bucket, cols)
            if t is not None:
                tables.append(t)
    if verified:
        t = pa.concat_tables(tables) if tables else VERIFIED_SEGMENT_SCHEMA.empty_table().select(cols)
        key, gen, doc = (t.column(c).to_numpy() for c in cols)
        order = np.lexsort((doc, gen, key))
        key, gen, doc = key[order], gen[order], doc[order]
        if len(key) > 1:
            new = np.r_[True, (key[1:] != key[:-1]) | (gen[1:] != gen[:-1]) | (doc[1:] != doc[:-1])]
            key, gen, doc = key[new], gen[new], doc[new]
        return pa.table({"bucket": np.full(len(key), bucket, np.uint32), "key": key, "gen": gen.astype(np.uint32),
                         "doc": doc}, schema=VERIFIED_SEGMENT_SCHEMA)
    key = np.unique(np.concatenate([t.column("key").to_numpy() for t in tables])) if tables else np.empty(0, U64)
    return pa.table({"bucket": np.full(len(key), bucket, np.uint32), "key": key}, schema=SEGMENT_SCHEMA)


def run_pairs(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """Bucket ``index`` of every shard's keys: documents that share a band key.

    A band key lives in exactly one bucket, so each bucket sees whole groups and the
    candidates do not depend on the number of buckets.
    """
    cfg = _cfg(plan)
    d = _read_parts(store, f"{cfg.root}/keys", index, ["key", "row", "prio"],
                    [pa.uint64(), pa.uint32(), pa.uint64()], producer_column="shard")
    key, node, prio = d["key"], _node(d["shard"], d["row"]), d["prio"]
    earlier = None if cfg.verify else _earlier_keys(plan, index)
    n_earlier = 0
    if cfg.verify:
        # The earlier generations' kept documents with one of these keys join the groups as
        # themselves: each pair with one of them is verified like any other.
        e_key, e_node = _earlier_docs(plan, index, key)
        n_earlier = len(e_key)
        key, node = np.concatenate([key, e_key]), np.concatenate([node, e_node])
        prio = np.concatenate([prio, np.zeros(n_earlier, U64)])
    if earlier is not None and len(key):
        # A band key that an earlier generation's kept document has: join its group through
        # a stand-in node of that generation (priority 0, a shard no index owns), so the
        # group's keeper is the published document and every new member is dropped.
        seen = np.unique(key[np.isin(key, earlier)])
        key = np.concatenate([key, seen])
        node = np.concatenate([node, _node(EARLIER_SHARD, seen & ROW_MASK)])
        prio = np.concatenate([prio, np.zeros(len(seen), U64)])
    snode, starts, sizes = _band_groups(key, node)
    stats: dict[str, Any] = {"band_keys": int(len(key)), "groups": int(len(starts)),
                             "grouped_docs": int(sizes.sum())}
    if cfg.verify:
        a, b = _candidate_pairs(snode, starts, sizes)
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
        write_partitioned(store, f"{cfg.root}/cand", index, table)
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
    ids, idx = np.unique(node, return_index=True)
    x, y, xp, yp = _contract(a, b, ids, prio[idx])
    stats["candidates"] = int(len(unique_edges(a, b)[0]))
    stats["edges"] = _write_edges(store, f"{cfg.root}/cc/00", index, x, y, xp, yp, _buckets(plan))
    return stats


# -- stages: verification ------------------------------------------------------------------

SHINGLES_SCHEMA = pa.schema([("shard", pa.uint32()), ("b", pa.uint64()), ("prio", pa.uint64()),
                             ("shingles", pa.large_list(pa.uint32()))])


def _sets_for_rows(cfg: NearConfig, store: "Store", shard: int | str, rows: np.ndarray, *,
                   prio_offset: int = 0):
    """Shingle sets and prio of ``rows`` (sorted unique) of a shard (or part file), in that
    order. ``prio_offset``: 1 in a refresh (see :func:`run_signatures`)."""
    vals, lens, prios, got = [], [], [], []
    where = shard if isinstance(shard, str) else f"clean/{_part(shard)}"
    if not len(rows):
        return np.empty(0, np.uint32), np.zeros(1, np.int64), np.empty(0, U64)
    try:
        for r, text in _iter_rows(store, shard, rows, cfg.batch_size):
            v, off = shingle_sets(text, unit=cfg.minhash.unit, ngram=cfg.minhash.ngram)
            vals.append(v)
            lens.append(np.diff(off))
            prios.append(_prio(cfg, text) + U64(prio_offset))
            got.append(r)
    except FileNotFoundError:
        raise RuntimeError(f"{store.url(where)}: missing; near-dup verification reads the documents of "
                           "candidate pairs from it (a refreshed dataset needs its generations' clean/ "
                           "parts)") from None
    if not got:
        return np.empty(0, np.uint32), np.zeros(1, np.int64), np.empty(0, U64)
    got_rows = np.concatenate(got)
    if len(got_rows) != len(rows) or not np.array_equal(got_rows, rows):
        raise RuntimeError(f"{where}: rows missing for near-dup verification")
    ln = np.concatenate(lens)
    off = np.zeros(len(ln) + 1, np.int64)
    np.cumsum(ln, out=off[1:])
    return np.concatenate(vals), off, np.concatenate(prios)


def run_shingles(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """Shingle sets of the documents of this shard that are the *second* of a candidate
    pair, sent to the shard of the first (where the pair is verified). In a refresh, also
    those of the earlier generations' documents whose global shard maps to this index,
    read from that generation's ``clean/`` part."""
    cfg = _cfg(plan)
    d = _read_parts(store, f"{cfg.root}/cand", index, ["role", "a", "b"], [pa.uint8(), pa.uint64(), pa.uint64()])
    sel = d["role"] == 1
    a, b = d["a"][sel], d["b"][sel]
    # One copy of b's set per shard of its partners.
    dest, b = _unique_rows((a >> U64(32)).astype(U64), b)
    dest = dest.astype(np.uint32)
    old = (b & EARLIER) != 0
    # Every set needed, as (sorted node ids, values, offsets, prio): this shard's first,
    # then each earlier part (their nodes sort after this generation's, by global shard).
    rows = np.unique((b[~old] & ROW_MASK).astype(np.int64))
    sets = [(_node(index, rows), *_sets_for_rows(cfg, store, index, rows, prio_offset=1 if plan.refresh else 0))]
    earlier_parts = 0
    if old.any():
        root = plan.refresh_root()
        ob = np.unique(b[old])
        gshard = ((ob >> U64(32)) & U64(0x7FFFFFFF)).astype(np.int64)
        for g in np.unique(gshard).tolist():
            nodes = ob[gshard == g]
            rel, _ = _earlier_part(plan, g)
            vals, off, _prio_e = _sets_for_rows(cfg, root, rel, (nodes & ROW_MASK).astype(np.int64))
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
    write_partitioned(store, f"{cfg.root}/shingles", index, table)
    stats = {"partners": int(len(ids)), "sent": int(len(b)), "shingles_sent": int(lens.sum())}
    if plan.refresh:
        stats["earlier_partners"] = int(len(ids) - len(rows))
        stats["earlier_parts"] = earlier_parts
    return stats


def run_verify(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """Exact Jaccard of every candidate pair whose first document is in this shard."""
    cfg = _cfg(plan)
    assert cfg.threshold is not None
    d = _read_parts(store, f"{cfg.root}/cand", index, ["role", "a", "b"], [pa.uint8(), pa.uint64(), pa.uint64()])
    sel = d["role"] == 0
    a, b = unique_edges(d["a"][sel], d["b"][sel])[:2] if sel.any() else (np.empty(0, U64), np.empty(0, U64))
    # The partners' sets, from every shard's near_shingles output.
    st = read_partition(store, f"{cfg.root}/shingles", index, ["b", "prio", "shingles"])
    if st is not None:
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
    else:
        b_ids, b_prio, b_vals, b_off = np.empty(0, U64), np.empty(0, U64), np.empty(0, np.uint32), np.zeros(1, np.int64)
    a_rows = np.unique((a & ROW_MASK).astype(np.int64))
    a_vals, a_off, a_prio = _sets_for_rows(cfg, store, index, a_rows, prio_offset=1 if plan.refresh else 0)
    ai = np.searchsorted(a_rows, (a & ROW_MASK).astype(np.int64))
    bi = np.searchsorted(b_ids, b)
    if len(b) and not np.array_equal(b_ids[np.minimum(bi, len(b_ids) - 1)], b):
        raise RuntimeError(f"near_verify {index}: shingle sets missing for some candidate partners")
    # A pair whose sizes alone rule the threshold out needs no set comparison.
    la, lb = a_off[ai + 1] - a_off[ai], b_off[bi + 1] - b_off[bi]
    possible = np.minimum(la, lb) >= cfg.threshold * np.maximum(la, lb)
    sim = np.zeros(len(a))
    sim[possible] = jaccard(a_vals, a_off, ai[possible], b_vals, b_off, bi[possible])
    ok = sim >= cfg.threshold
    ids = np.concatenate([_node(index, a_rows), b_ids])
    prio = np.concatenate([a_prio, b_prio])
    order = np.argsort(ids)
    x, y, xp, yp = _contract(a[ok], b[ok], ids[order], prio[order])
    edges = _write_edges(store, f"{cfg.root}/cc/00", index, x, y, xp, yp, _buckets(plan))
    stats = {"candidates": int(len(a)), "compared": int(possible.sum()), "verified": int(ok.sum()),
             "dissimilar": int(len(a) - ok.sum()), "edges": edges}
    if plan.refresh:
        # Pairs with a document an earlier generation published (it stays; this one goes).
        old = (b & EARLIER) != 0
        stats["earlier_candidates"] = int(old.sum())
        stats["earlier_verified"] = int((old & ok).sum())
    return stats


# -- stages: connected components ----------------------------------------------------------

def _producers(plan: "Plan", cfg: NearConfig, source: str) -> int:
    """How many indices wrote the edges in ``cc/<source>``."""
    if source == LOCAL:
        return 1
    if source == "cc/00":
        return plan.stage(VERIFY).fan_out if cfg.verify else _buckets(plan)
    return _buckets(plan)


def _edges_index(plan: "Plan", store: "Store", source: str) -> str:
    """The folder of ``source``'s edges, its exchange index built if nobody has yet."""
    cfg = _cfg(plan)
    folder = f"{cfg.root}/{source}"
    if not store.exists(f"{folder}/{INDEX_NAME}"):
        build_index(store, folder, _producers(plan, cfg, source), _buckets(plan))
    return folder


def _read_edges(store: "Store", folder: str, part: int):
    cols = ["src", "dst", "sprio", "dprio"]
    d = _read_parts(store, folder, part, cols, [pa.uint64()] * 4)
    return unique_edges(d["src"], d["dst"], d["sprio"], d["dprio"])


# Where the single-stage components go: converged stars, as a round's output.
LOCAL = "cc/local"


def _local_fits(plan: "Plan", store: "Store") -> tuple[bool, int]:
    """Whether the candidate graph's edges fit one worker's budget, and how many there are
    (from the exchange index of ``cc/00``: no edge is read)."""
    info = index_info(store, _edges_index(plan, store, "cc/00"))
    edges = int(info["rows"]) // 2          # each undirected edge is written both ways
    return edges <= _cfg(plan).local_max_edges, edges


def run_components(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """All components in one stage, when the edges fit a worker (``local_max_edges``):
    every edge of ``cc/00`` in memory, :func:`~preproc.dedup.components.local_components`, and
    the converged stars (each component's smallest node at the centre, exactly what the
    rounds converge to) written to ``cc/local`` for ``near_clusters``; the rounds then
    have nothing to compute. Otherwise only a marker: the rounds do the work."""
    cfg = _cfg(plan)
    fits, edges = _local_fits(plan, store)
    if not fits:
        return {"state": "rounds", "edges": edges}
    folder = _edges_index(plan, store, "cc/00")
    tables = [read_all(store, folder, p, ["src", "dst", "sprio", "dprio"])
              for p in range(_producers(plan, cfg, "cc/00"))]
    t = pa.concat_tables(tables) if tables else EDGE_SCHEMA.empty_table().select(["src", "dst", "sprio", "dprio"])
    src, dst, sp = (t.column(c).to_numpy() for c in ("src", "dst", "sprio"))
    ids, first = np.unique(src, return_index=True)
    nodes, roots = local_components(src, dst)
    leaf = nodes != roots
    x, y = nodes[leaf], roots[leaf]
    prio = sp[first]
    out = _write_edges(store, f"{cfg.root}/{LOCAL}", 0, x, y, prio[np.searchsorted(ids, x)],
                       prio[np.searchsorted(ids, y)], _buckets(plan), unconverged=0)
    return {"state": "local", "source": LOCAL, "edges": edges, "edges_out": out,
            "components": int(len(np.unique(roots)))}


def run_round(k: int, plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """Round ``k``: large-star (even) or small-star (odd) on this partition's nodes.

    Round ``k`` reads ``cc/<k>`` and writes ``cc/<k+1>``. Each output carries in the
    exchange index how many of its input nodes were not yet final; when the sum over round
    ``k-1``'s outputs is 0, its input had converged (and its output equals it), so this
    round and all later ones skip, pointing at that output. After the single-stage path
    (``near_components``) every round skips.
    """
    cfg = _cfg(plan)
    source = f"cc/{k:02d}"
    done = converged_source(plan, k, store)
    if done is not None:
        return {"state": "skip", "source": done}
    src, dst, sp, dp = _read_edges(store, _edges_index(plan, store, source), index)
    x, y, xp, yp, unconverged = star_step(src, dst, sp, dp, large=k % 2 == 0)
    out = f"cc/{k + 1:02d}"
    edges = _write_edges(store, f"{cfg.root}/{out}", index, x, y, xp, yp, _buckets(plan),
                         unconverged=unconverged)
    return {"state": "work", "source": out, "step": "large" if k % 2 == 0 else "small",
            "edges_in": int(len(src)), "edges_out": edges, "unconverged": unconverged}


def converged_source(plan: "Plan", k: int, store: "Store") -> str | None:
    """When the graph had converged before round ``k`` (found in one stage, an earlier
    round skipped, or round ``k-1``'s outputs hold no unconverged node), the ``cc/``
    folder round ``k`` and all later ones point at; else None. Reads only markers and one
    exchange index."""
    if k == 0:
        m = store.read_marker(COMPONENTS, 0) or {}
        return LOCAL if m.get("state") == "local" else None
    prev = store.read_marker(round_name(k - 1), 0) or {}
    if prev.get("state") == "skip":
        return prev["source"]
    source = f"cc/{k:02d}"
    info = index_info(store, _edges_index(plan, store, source))
    if sum(int(m.get("unconverged", "1")) for m in info["metadata"]) == 0:
        return source
    return None


def _components_trivial(plan: "Plan", store: "Store") -> bool:
    return not _local_fits(plan, store)[0]


def _round_trivial(k: int):
    def trivial(plan: "Plan", store: "Store") -> bool:
        return converged_source(plan, k, store) is not None

    return trivial


def _round_runner(k: int):
    def run(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
        return run_round(k, plan, index, store)

    run.__name__ = f"run_{round_name(k)}"
    return run


MEMBERS_SCHEMA = pa.schema([("shard", pa.uint32()), ("row", pa.uint32()), ("kept_shard", pa.uint32()),
                            ("kept_row", pa.uint32())])


def run_clusters(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """The stars centred in this partition → members and their keeper, sent to the
    member's shard."""
    cfg = _cfg(plan)
    last = store.read_marker(round_name(cfg.max_rounds - 1), 0) or {}
    source = last.get("source", f"cc/{cfg.max_rounds:02d}")
    src, dst, sp, dp = _read_edges(store, _edges_index(plan, store, source), index)
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
    write_partitioned(store, f"{cfg.root}/members", index, table)
    kept = int(np.count_nonzero(members == keepers))
    return {"clusters": kept, "members": int(len(members)), "removed": int(len(members) - kept),
            "source": source}


CLUSTERS_SCHEMA = pa.schema([("kept_shard", pa.uint32()), ("kept_row", pa.uint32()), ("shard", pa.uint32()),
                             ("row", pa.uint32()), ("id", pa.string()), ("kept", pa.bool_())])


def run_drops(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    """This shard's cluster members that are not their cluster's keeper → the drop list."""
    cfg = _cfg(plan)
    d = _read_parts(store, f"{cfg.root}/members", index, ["row", "kept_shard", "kept_row"], [pa.uint32()] * 3)
    order = np.argsort(d["row"], kind="stable")
    row, ks, kr = d["row"][order], d["kept_shard"][order], d["kept_row"][order]
    kept = (ks == index) & (kr == row)
    drop = row[~kept]
    write_drops(store, DROPS, index, np.full(len(drop), index, np.uint32), drop)
    if plan.refresh and plan.refresh.get("near_segment_out"):
        _write_segment(plan, store, index, drop)
    if cfg.keep_clusters:
        with store.open(f"clean/{_part(index)}") as f:
            ids = pq.read_table(f, columns=["id"]).column("id")
        table = pa.table({"kept_shard": ks, "kept_row": kr, "shard": np.full(len(row), index, np.uint32),
                          "row": row, "id": ids.take(pa.array(row.astype(np.int64))).combine_chunks(),
                          "kept": kept}, schema=CLUSTERS_SCHEMA)
        with store.open_atomic(f"{cfg.root}/clusters/{_part(index)}") as f:
            pq.write_table(table, f, compression="zstd")
    return {"duplicates": int(len(drop)), "members": int(len(row)), "kept": int(kept.sum())}


RUNNERS = {SIGNATURES: run_signatures, PAIRS: run_pairs, SHINGLES: run_shingles, VERIFY: run_verify,
           COMPONENTS: run_components,
           **{round_name(k): _round_runner(k) for k in range(MAX_ROUNDS)},
           CLUSTERS: run_clusters, DROPS: run_drops}
# Stages whose every index is, given what the store holds, only a marker: the runner runs
# them in the coordinator instead of dispatching them (see preproc.engine.stages.trivial).
TRIVIAL = {COMPONENTS: _components_trivial, **{round_name(k): _round_trivial(k) for k in range(MAX_ROUNDS)}}


def prepare(plan: "Plan", stage: str, store: "Store") -> None:
    """Merge the exchange indexes ``stage`` reads, in the coordinator, before dispatch."""
    cfg = _cfg(plan)
    b, n = _buckets(plan), plan.num_shards
    if stage == PAIRS:
        build_index(store, f"{cfg.root}/keys", n, b)
    elif stage in (SHINGLES, VERIFY):
        build_index(store, f"{cfg.root}/cand", b, n)
        if stage == VERIFY:
            build_index(store, f"{cfg.root}/shingles", n, n)
    elif stage == COMPONENTS:
        _edges_index(plan, store, "cc/00")
    elif stage.startswith("near_cc_"):
        k = int(stage.rsplit("_", 1)[1])
        if converged_source(plan, k, store) is None:
            _edges_index(plan, store, f"cc/{k:02d}")
    elif stage == CLUSTERS:
        last = store.read_marker(round_name(cfg.max_rounds - 1), 0) or {}
        _edges_index(plan, store, last.get("source", f"cc/{cfg.max_rounds:02d}"))
    elif stage == DROPS:
        build_index(store, f"{cfg.root}/members", plan.stage(CLUSTERS).fan_out, n)


# -- for users and finalize ----------------------------------------------------------------

def read_clusters(output: str) -> pa.Table:
    """The clusters of a run with ``dedup.near.keep_clusters``: one row per cluster with
    ``kept_id`` and ``ids`` (all members, kept first, then in input order). In a refresh
    generation, a cluster whose keeper an earlier generation published has ``kept_id``
    None and only this generation's (dropped) members in ``ids``.

    >>> read_clusters("out/").to_pylist()[0]      # doctest: +SKIP
    {'kept_id': 'doc-17', 'ids': ['doc-17', 'doc-942'], 'size': 2}
    """
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

    plan = Plan.load(output)
    cfg = _cfg(plan)
    store = plan.store() if hasattr(plan, "store") else Store(plan.output)
    tables = []
    for name in store.ls(f"{cfg.root}/clusters"):
        if name.endswith(".parquet") and not name.startswith("."):
            with store.open(f"{cfg.root}/clusters/{name}") as f:
                tables.append(pq.read_table(f))
    if not tables:
        return pa.table({"kept_id": pa.array([], pa.string()), "ids": pa.array([], pa.list_(pa.string())),
                         "size": pa.array([], pa.int64())})
    t = pa.concat_tables(tables)
    order = np.lexsort((t.column("row").to_numpy(), t.column("shard").to_numpy(),
                        ~t.column("kept").to_numpy(), t.column("kept_row").to_numpy(),
                        t.column("kept_shard").to_numpy()))
    t = t.take(pa.array(order))
    cluster = _node(t.column("kept_shard").to_numpy(), t.column("kept_row").to_numpy())
    starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1]]) if len(cluster) else np.empty(0, np.int64)
    ids = t.column("id").combine_chunks()
    offsets = np.r_[starts, len(cluster)].astype(np.int32)
    kept_here = pa.array(t.column("kept").to_numpy()[starts] if len(starts) else np.empty(0, bool))
    kept_id = pc.if_else(kept_here, ids.take(pa.array(starts)), pa.nulls(len(starts), pa.string()))
    return pa.table({"kept_id": kept_id,
                     "ids": pa.ListArray.from_arrays(pa.array(offsets), ids),
                     "size": pa.array(np.diff(offsets).astype(np.int64))})


def summary(plan: "Plan", store: "Store") -> dict[str, Any]:
    """What ``stats.json`` reports under ``near``: config, candidates, clusters, rounds."""
    cfg = _cfg(plan)

    def total(stage: str, key: str) -> int:
        return sum(int(m.get(key, 0)) for m in store.read_markers(stage).values())

    out: dict[str, Any] = {
        "config": cfg.canonical, "bands": cfg.minhash.bands, "rows": cfg.minhash.rows,
        "threshold": cfg.threshold, "verify": cfg.verify, "keep": cfg.keep,
        "documents": total(SIGNATURES, "docs"), "no_shingles": total(SIGNATURES, "no_shingles"),
        "band_groups": total(PAIRS, "groups"),
        "clusters": total(DROPS, "kept"), "duplicates": total(DROPS, "duplicates"),
        "components": (store.read_marker(COMPONENTS, 0) or {}).get("state"),
        "component_rounds": sum(1 for k in range(cfg.max_rounds)
                                if (store.read_marker(round_name(k), 0) or {}).get("state") == "work"),
    }
    if cfg.verify:
        out["candidate_pairs"] = total(VERIFY, "candidates")
        out["verified_pairs"] = total(VERIFY, "verified")
        if plan.refresh:
            out["earlier_candidate_pairs"] = total(VERIFY, "earlier_candidates")
            out["earlier_verified_pairs"] = total(VERIFY, "earlier_verified")
    if cfg.keep_clusters:
        out["clusters_path"] = f"{cfg.root}/clusters"
    return out
