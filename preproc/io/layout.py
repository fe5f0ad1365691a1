"""The output layout: every path under a run's output or a refresh dataset root.

This module is the only place that formats a path inside an output. Stages, the engine,
status and the report ask it; nobody else writes ``f"part-{i:05d}"``. Changing a name here
changes the on-disk format, which ``tests/io/test_layout.py`` pins and
``scripts/output_hashes.py`` checks end to end.

A run's output::

    plan.json                      the run record (see preproc.io.ownership)
    _plan/shard-00000.json         shard 0's input splits (plan.json keeps counts and a hash)
    tokenizer.json                 the run's copy of its tokenizer
    dataset.json  stats.json  report.html
    _coordinator.json  _lease/  _metrics/
    clean/part-00000.parquet       cleaned documents of shard 0
    clean/keys/                    exact-dedup keys (an exchange, see preproc.io.exchange)
    rejects/part-00000.parquet  removed/part-00000.parquet
    <stage>/_done/00000.json       index 0's marker;  <stage>/_failed/00000.json  its failure
    <stage>/drops/                 rows a dedup stage removed (an exchange)
    near/<canonical>/...           near dedup's working folders
    tokens/part-00000.parquet  tokens/part-00000.bin  tokens/part-00000.idx
    tokenize/_slices.json          which rows of the clean output each tokenize index reads

A refresh dataset root::

    dataset.json                   the published manifest
    generations/00001/             one run per generation (the layout above)
    _state/state.json  _state/lease/  _state/manifests/dataset-v00001.json
    _state/exact/gen-00001/  _state/exact/compact-00003/   (bucket-00000.parquet ...)
    _state/near/gen-00001/   _state/near/compact-00003/
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# ---- top level of a run's output ------------------------------------------------------
PLAN = "plan.json"
TOKENIZER = "tokenizer.json"
DATASET = "dataset.json"
STATS = "stats.json"
REPORT = "report.html"
HEARTBEAT = "_coordinator.json"
RUN_LEASE = "_lease"
METRICS = "_metrics"
COORDINATOR_METRICS = "coordinator.prom"   # the coordinator's gauges in METRICS (or the textfile dir)
CLEAN = "clean"
REJECTS = "rejects"
REMOVED = "removed"
TOKENS = "tokens"
NEAR = "near"
EXACT_DEDUP = "exact_dedup"     # the exact-dedup stage's folder (markers, drops)
FINALIZE = "finalize"           # the finalize stage's folder (markers)
DONE = "_done"
FAILED = "_failed"
PLAN_SPLITS = "_plan"           # the plan's file lists, one file per shard (preproc.io.splitlists)


def plan_splits(i: int) -> str:
    """``_plan/shard-00042.json``: shard 42's input splits, written with the plan."""
    return f"{PLAN_SPLITS}/shard-{i:05d}.json"


def lease_version(lease: str, n: int) -> str:
    """Version ``n`` of the lease in folder ``lease`` (see :mod:`preproc.io.lease`)."""
    return f"{lease}/{n:010d}.json"


def part(i: int) -> str:
    """``part-00042``: the one place that zero-pads a shard or partition index."""
    return f"part-{i:05d}"


def bucket(j: int) -> str:
    """``bucket-00042.parquet``: one hash bucket of a dedup index."""
    return f"bucket-{j:05d}.parquet"


def done_dir(stage: str) -> str:
    return f"{stage}/{DONE}"


def failed_dir(stage: str) -> str:
    return f"{stage}/{FAILED}"


def marker(stage: str, index: int) -> str:
    """An index's commit marker: written last, the only proof that the index is done."""
    return f"{done_dir(stage)}/{index:05d}.json"


def failure(stage: str, index: int) -> str:
    """An index's failure record (what failed, which attempt)."""
    return f"{failed_dir(stage)}/{index:05d}.json"


def is_marker(rel: str) -> bool:
    """True for a marker or failure record (bookkeeping of an index, not one of its outputs)."""
    return f"/{DONE}/" in f"/{rel}" or f"/{FAILED}/" in f"/{rel}"


def marker_index(name: str) -> int | None:
    """The index a marker's (or failure record's) file name holds; None for other names."""
    stem, dot, ext = name.rpartition(".")
    return int(stem) if dot and ext == "json" and stem.isdigit() else None


# ---- temporaries ----------------------------------------------------------------------
def temporary(name: str, token: str) -> str:
    """Where an atomic write of ``name`` puts its bytes before the rename (same folder)."""
    return f".{name}.tmp-{token}"


_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9a-f]+$")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary of :func:`temporary` (a hex token)."""
    return name.startswith(".") and _TEMPORARY.match(name) is not None


def temporary_of(name: str) -> str:
    """The final name a temporary of :func:`temporary` stands for."""
    return name[1:name.rindex(".tmp-")]


def lease_temporary(token: str) -> str:
    """A lease version's bytes before ``os.link`` publishes them (same folder)."""
    return f".lease-{token}"


# What our own interrupted writes leave at the top of an output (the run lease, the plan's
# file lists written just before plan.json, temporaries of :func:`temporary` and
# :func:`lease_temporary`): never a sign of someone else's files.
LEFTOVER = re.compile(rf"^({re.escape(RUN_LEASE)}|{re.escape(PLAN_SPLITS)}|\..+\.tmp-[0-9a-f]{{12}}|\.lease-[0-9a-f]{{32}})$")


# ---- clean ----------------------------------------------------------------------------
def clean_part(i: int) -> str:
    return f"{CLEAN}/{part(i)}.parquet"


CLEAN_KEYS = f"{CLEAN}/keys"


def rejects(i: int) -> str:
    return f"{REJECTS}/{part(i)}.parquet"


def removed(i: int) -> str:
    return f"{REMOVED}/{part(i)}.parquet"


# ---- dedup ----------------------------------------------------------------------------
def drops_dir(stage: str) -> str:
    """The exchange where dedup stage ``stage`` lists the rows it removed."""
    return f"{stage}/drops"


def near_root(canonical: str) -> str:
    """Near dedup's working folder: its canonical string names it, so changing a knob never
    overwrites earlier results."""
    return f"{NEAR}/{canonical}"


def cc_round(k: int) -> str:
    """``cc/03``: the edges component round ``k`` reads (round ``k-1`` wrote them); the
    name is also what markers record as a round's ``source``."""
    return f"cc/{k:02d}"


# The converged stars of the single-stage components (near_components), as a round's output.
CC_LOCAL = "cc/local"


@dataclass(frozen=True)
class NearPaths:
    """The folders and files under ``near/<canonical>/``."""

    canonical: str

    @property
    def root(self) -> str:
        return near_root(self.canonical)

    @property
    def keys(self) -> str:
        """Band keys per shard (an exchange: near_signatures → near_pairs)."""
        return f"{self.root}/keys"

    @property
    def cand(self) -> str:
        """Candidate pairs (near_pairs → near_shingles, near_verify)."""
        return f"{self.root}/cand"

    @property
    def shingles(self) -> str:
        """Partners' shingle sets (near_shingles → near_verify)."""
        return f"{self.root}/shingles"

    @property
    def members(self) -> str:
        """Cluster members and their keeper (near_clusters → near_drops)."""
        return f"{self.root}/members"

    @property
    def clusters(self) -> str:
        """``dedup.near.keep_clusters``: the clusters, one file per shard."""
        return f"{self.root}/clusters"

    def cc(self, source: str) -> str:
        """The edges folder ``source`` (:func:`cc_round` or :data:`CC_LOCAL`)."""
        return f"{self.root}/{source}"

    def clusters_file(self, i: int) -> str:
        return f"{self.clusters}/{part(i)}.parquet"


# ---- dedup index segments (a refresh dataset root) --------------------------------------
def segment_part(seg: str, i: int) -> str:
    """Shard ``i``'s file of a generation's near segment (partitioned by bucket inside)."""
    return f"{seg}/{part(i)}.parquet"


def segment_bucket(seg: str, j: int) -> str:
    """Bucket ``j``'s file of an exact segment, or of a compacted near segment."""
    return f"{seg}/{bucket(j)}"


def segment_files(seg: str, names: list[str], j: int) -> list[str]:
    """Of the files ``names`` in segment ``seg``, those that may hold bucket ``j``: every
    ``part-`` file of a generation's segment, or the one ``bucket-j`` file of a compacted
    one. Sorted."""
    return [f"{seg}/{name}" for name in sorted(names) if name.startswith("part-") or name == bucket(j)]


# ---- tokenize -------------------------------------------------------------------------
def tokens(i: int) -> str:
    """Prefix of tokenize index ``i``'s token files (``.parquet``, ``.bin``, ``.idx`` are added)."""
    return f"{TOKENS}/{part(i)}"


def slices(stage: str) -> str:
    """The balanced slices of the clean output that ``stage``'s indices read
    (:mod:`preproc.io.slices`)."""
    return f"{stage}/_slices.json"


# ---- a refresh dataset root -----------------------------------------------------------
STATE = "_state/state.json"
REFRESH_LEASE = "_state/lease"
STATE_DIR = "_state"
GENERATIONS = "generations"


def generation(n: int) -> str:
    return f"generations/{n:05d}"


def manifest(n: int) -> str:
    return f"_state/manifests/dataset-v{n:05d}.json"


def segment(kind: str, n: int, *, compact: bool = False) -> str:
    """The dedup index segment of ``kind`` (``exact`` or ``near``) written by generation
    ``n``, or compacted at generation ``n``."""
    return f"_state/{kind}/{'compact' if compact else 'gen'}-{n:05d}"


# ---- labels ---------------------------------------------------------------------------
def split_label(split: Any, *, short: bool = False) -> str:
    """How status and the report (``uri``) or a worker's messages (``short``: the path
    relative to the input root) name an input split, with its byte range or row groups when
    it is only part of a file."""
    name = split.rel if short else split.uri
    if getattr(split, "end", None) is not None:
        return f"{name}[{split.start}:{split.end}]"
    if getattr(split, "row_groups", None) is not None:
        rg = "rg" if short else "row groups"
        return f"{name}[{rg} {split.row_groups[0]}..{split.row_groups[-1]}]"
    return name


def slice_label(part_index: int, start: int, end: int) -> str:
    """How the report names a piece of a slice of the clean output (rows ``start..end``
    of clean part ``part_index``)."""
    return f"{clean_part(part_index)}[rows {start}:{end}]"
