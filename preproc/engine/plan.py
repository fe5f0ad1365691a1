"""The plan: what ``plan.json`` holds, and how inputs are listed, split and balanced into shards.

The plan is the single source of truth of a run. Every worker rebuilds what it needs from
``<output>/plan.json`` (never from a pickle), so a pod, a Ray task and a local process run
the same index the same way. The coordinator's cost grows with files and shards, not with
documents: it lists files and reads Parquet footers, nothing else.

This module knows no stage: :func:`preproc.engine.runner.make_plan` composes the stages
(:mod:`preproc.engine.stages`) and the tokenizer backend into a plan, so that everything
that only reads a plan (executors, status, the report, stages) imports a light module.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from preproc.engine.refresh_context import RefreshContext
from preproc.errors import ConfigError
from preproc.io import layout, splitlists
from preproc.io.listing import InputFile, gc_paused, split_file
from preproc.io.ownership import run_writes
from preproc.io.readers import InputSplit
from preproc.io.store import Store
from preproc.spec import Spec, load_spec

__all__ = ["Plan", "Shard", "StagePlan", "DROP_STAGES", "plan_shards", "run_fingerprint"]

# 2: the file lists live in _plan/ (preproc.io.splitlists); 1 held them inline (still read).
PLAN_VERSION = 2

class Shard:
    """One shard: its index, its input bytes and its input splits.

    A shard of a plan read back from ``plan.json`` loads its splits on first use, from its
    own file under ``_plan/`` (:mod:`preproc.io.splitlists`) and no other: a worker reads
    one shard's file list, however many input files the run has."""

    __slots__ = ("index", "bytes", "num_splits", "_splits", "_load")

    def __init__(self, index: int, splits: tuple[InputSplit, ...] | None = None, *, nbytes: int | None = None,
                 num_splits: int | None = None, load: Callable[[], tuple[InputSplit, ...]] | None = None):
        if splits is None and load is None:
            raise ValueError("a shard needs its splits or a way to load them")
        self.index = index
        self._splits = tuple(splits) if splits is not None else None
        self._load = load
        self.bytes: int = nbytes if nbytes is not None else sum(x.bytes for x in self._splits or ())
        self.num_splits: int = num_splits if num_splits is not None else len(self._splits or ())

    @property
    def splits(self) -> tuple[InputSplit, ...]:
        if self._splits is None:
            assert self._load is not None
            self._splits = self._load()
        return self._splits

    def __repr__(self) -> str:
        return f"Shard({self.index}, {self.num_splits} split(s), {self.bytes} B)"


@dataclass(frozen=True)
class StagePlan:
    """One stage of a run and how many indices it fans out to."""

    name: str
    fan_out: int


# Stages that remove rows, in pipeline order: each lists them in its drop list
# (preproc.dedup.drops); tokenize leaves those rows out and finalize counts them as
# duplicates. The stage registry (preproc.engine.stages) checks it knows them all.
DROP_STAGES = ("exact_dedup", "near_drops")


@dataclass(frozen=True)
class Plan:
    """What ``plan.json`` holds: complete and immutable once made. Build with
    :func:`preproc.engine.runner.make_plan`, read with :meth:`load`."""

    run_id: str
    output: str
    spec: Spec
    shards: tuple[Shard, ...]
    stages: tuple[StagePlan, ...]
    # The inspected tokenizer and the backend chosen for it (preproc.tokenize.tokenizer).
    tokenizer: dict[str, Any] = field(default_factory=dict)
    created_s: float = 0.0
    version: int = PLAN_VERSION
    # Set for a generation of an incremental refresh (see preproc.engine.refresh): the dataset
    # root, the generation number and the dedup index segments of earlier generations.
    refresh: RefreshContext | None = None
    # Distinct input files (plan.json keeps the number; the lists are per shard).
    input_files: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", tuple(self.shards))
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def input_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"stage {name!r} is not in this run's plan; stages: {', '.join(self.stage_names)}")

    def shards_of(self, stage: str, index: int) -> range:
        """The shards index ``index`` of a per-shard stage reads: consecutive ones, the same
        number (give or take one) for each index. Clean has one index per shard unless the
        shards are small (:func:`preproc.engine.stages.clean_fan_out`); near dedup's per-shard
        stages follow the data volume (:func:`preproc.engine.stages.later_fan_out`)."""
        n, f = self.num_shards, self.stage(stage).fan_out
        return range(index * n // f, (index + 1) * n // f)

    def index_of(self, stage: str, shard: int) -> int:
        """The index of a per-shard stage whose :meth:`shards_of` holds ``shard``."""
        n, f = self.num_shards, self.stage(stage).fan_out
        i = min(f - 1, shard * f // n)
        while i > 0 and i * n // f > shard:
            i -= 1
        while (i + 1) * n // f <= shard:
            i += 1
        return i

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def drop_stages(self) -> list[str]:
        """This run's stages that remove rows (:data:`DROP_STAGES`), in pipeline order."""
        names = self.stage_names
        return [s for s in DROP_STAGES if s in names]

    def to_json(self, digests: list[str] | None = None) -> dict[str, Any]:
        """``plan.json``: per shard only ``[bytes, splits, digest of its file list]``, so that
        its size does not grow with the number of input files. ``digests``: what
        :func:`write_plan` wrote (computed here when not given)."""
        if digests is None:
            digests = [splitlists.digest(splitlists.encode(s.index, s.splits)) for s in self.shards]
        return {
            "version": self.version,
            "run_id": self.run_id,
            "output": self.output,
            "created_s": self.created_s,
            "spec": self.spec.to_json(),
            "tokenizer": self.tokenizer,
            "refresh": self.refresh.to_json() if self.refresh else None,
            "stages": [{"name": s.name, "fan_out": s.fan_out} for s in self.stages],
            # The run record: what this run writes at the top of its output (--force removes these).
            "writes": run_writes(self.stage_names),
            "input_files": self.input_files,
            "shards": [[s.bytes, s.num_splits, d] for s, d in zip(self.shards, digests)],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], output: str | None = None) -> Plan:
        version = d.get("version")
        if version not in (1, PLAN_VERSION):
            raise ConfigError(f"plan.json has version {version}; this preproc reads versions 1 and {PLAN_VERSION}")
        spec = load_spec(d["spec"])
        output = output or d["output"]
        if version == 1:    # an older plan: the splits inline
            shards = tuple(Shard(s["index"], tuple(InputSplit.from_json(x) for x in s["splits"])) for s in d["shards"])
            files = len({x.uri for s in shards for x in s.splits})
        else:
            # The output as the reader sees it, with the run's storage settings (as Plan.store()).
            store = Store(output, spec.storage)
            shards = tuple(Shard(i, nbytes=b, num_splits=n, load=partial(splitlists.read, store, i, h))
                           for i, (b, n, h) in enumerate(d["shards"]))
            files = int(d.get("input_files") or 0)
        return cls(
            run_id=d["run_id"],
            # The output as the reader sees it (a PVC may be mounted elsewhere than on the
            # machine that planned); the plan's own value is only a default.
            output=output,
            spec=spec,
            tokenizer=d.get("tokenizer", {}),
            stages=tuple(StagePlan(s["name"], s["fan_out"]) for s in d["stages"]),
            shards=shards,
            created_s=d.get("created_s", 0.0),
            refresh=RefreshContext.from_json(d.get("refresh")),
            version=PLAN_VERSION,
            input_files=files,
        )

    @classmethod
    def load(cls, output: str, storage: Any = None) -> Plan:
        """Read ``output/plan.json``. ``storage`` reaches the output (default: ``$PREPROC_S3``
        and the AWS environment); the plan's own ``storage`` settings apply to everything after,
        the shards' file lists included (each read when its shard is first used)."""
        store = Store(output, storage)
        try:
            return cls.from_json(store.read_json(layout.PLAN), output=output)
        except FileNotFoundError:
            raise ConfigError(f"{store.url(layout.PLAN)}: no plan here; run `preproc run` first") from None

    def write(self, store: Store) -> None:
        """Write the shards' file lists, then ``plan.json`` (the run record, last: a plan is
        never there without its lists). Each file is written atomically."""
        digests = splitlists.write_all(store, [(s.index, s.splits) for s in self.shards])
        store.write_json(layout.PLAN, self.to_json(digests))

    def store(self) -> Store:
        """The run's output, reached with the run's storage settings."""
        return Store(self.output, self.spec.storage)

    def refresh_root(self) -> Store:
        """A refresh generation's dataset root (``_state/`` and the earlier generations)."""
        if not self.refresh:
            raise ConfigError("this plan is not a refresh generation")
        return Store(self.refresh.root, self.spec.storage)

    def summary(self) -> str:
        lines = [f"run {self.run_id}  output {self.output}",
                 f"inputs: {self.input_files} file(s), "
                 f"{_human(self.input_bytes)}, {self.num_shards} shard(s)"]
        for s in self.stages:
            lines.append(f"  stage {s.name:<14} {s.fan_out} index(es)")
        why = self.few_shards_reason()
        if why:
            lines.append(f"note: {why}")
        return "\n".join(lines)

    def few_shards_reason(self) -> str | None:
        """Why a local run gets fewer than two shards per worker (some workers would idle),
        or None when it does not."""
        ex = self.spec.executor
        if ex.kind != "local":
            return None
        workers = ex.workers or os.cpu_count() or 1
        n = self.num_shards
        if n >= 2 * workers:
            return None
        head = f"{n} shard(s) for {workers} worker(s), so some workers will idle: "
        if self.spec.shards:
            if n < self.spec.shards:
                return head + (f"shards: {self.spec.shards} asked, but compressed files are not cut and "
                               f"there are only {n} piece(s)")
            return head + f"the spec sets shards: {self.spec.shards}"
        want = default_shards(self.input_bytes, self.spec.target_shard_bytes)
        if n < want:
            return head + f"compressed files are not cut, and there are only {n} piece(s)"
        return head + (f"the input ({_human(self.input_bytes)}) is not cut into shards smaller than "
                       f"{_human(MIN_SHARD_BYTES)}; set shards: N to cut finer")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


# Without `shards`, a small corpus is still cut into up to MIN_SHARDS shards (of at least
# MIN_SHARD_BYTES): a 36 MB corpus in one 128 MiB shard leaves all workers but one idle. The
# default depends on the input only, never on the worker count, so that outputs stay
# byte-identical however many workers run them.
MIN_SHARDS = 16
MIN_SHARD_BYTES = 2**20


def default_shards(total_bytes: int, target_shard_bytes: int) -> int:
    """Shards when the spec sets none: ``target_shard_bytes`` each, but at least
    :data:`MIN_SHARDS` when the input holds that many :data:`MIN_SHARD_BYTES`."""
    return max(1, math.ceil(total_bytes / target_shard_bytes), min(MIN_SHARDS, total_bytes // MIN_SHARD_BYTES))


def plan_shards(files: list[InputFile], *, shards: int | None, target_shard_bytes: int,
                storage: Any = None) -> list[Shard]:
    """Balance splits into shards by bytes, keeping input order (deterministic, local reads).

    With ``shards`` given, aim for exactly that many (fewer when there are fewer pieces than
    shards: compressed files are not cut); otherwise :func:`default_shards`.
    """
    with gc_paused():   # a few objects per input file, none freed (see gc_paused)
        return _plan_shards(files, shards=shards, target_shard_bytes=target_shard_bytes, storage=storage)


def _plan_shards(files: list[InputFile], *, shards: int | None, target_shard_bytes: int, storage: Any) -> list[Shard]:
    total = sum(max(f.bytes, 1) for f in files)
    n = shards or default_shards(total, target_shard_bytes)
    target = max(1, math.ceil(total / n))
    splits = [s for f in files for s in split_file(f, target, storage)]
    # Cut the cumulative byte line at multiples of total/n: a split goes to the shard its
    # midpoint falls in.
    if len(splits) <= n:
        return [Shard(i, (s,)) for i, s in enumerate(splits)]
    buckets: list[list[InputSplit]] = [[] for _ in range(n)]
    cum = 0
    for s in splits:
        w = max(s.bytes, 1)
        k = min(n - 1, int((cum + w / 2) * n // total))
        buckets[k].append(s)
        cum += w
    return [Shard(i, tuple(b)) for i, b in enumerate(b for b in buckets if b)]


def run_fingerprint(spec: Spec, files: list[InputFile]) -> str:
    """The run id: changes with the spec's processing parts and the inputs, not with how it runs."""
    sj = spec.to_json()
    for k in ("executor", "output", "storage", "metrics"):
        sj.pop(k, None)
    h = hashlib.sha256()
    h.update(json.dumps(sj, sort_keys=True).encode())
    for f in files:
        h.update(f"{f.uri}\0{f.fingerprint}\0".encode())
    return h.hexdigest()[:12]

