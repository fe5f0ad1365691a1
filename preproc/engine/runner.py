"""The coordinator: plan a run (or pick up the one already planned), then run each stage's
unfinished indices on the executor, in order.

Rerunning the same command resumes: indices whose marker exists are skipped. A different
spec or changed inputs on the same output is refused (it would mix two runs), unless
``force`` starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preproc.clean.steps import build_steps, check_requirements
from preproc.engine.plan import Plan, plan_shards, run_fingerprint
from preproc.engine.refresh_context import RefreshContext
from preproc.engine.stages import pipeline_stages, run_index, trivial
from preproc.engine.stages import prepare as prepare_stage
from preproc.errors import ConfigError
from preproc.executors import get_executor
from preproc.io import integrity, layout
from preproc.io.lease import RUN_LEASE, RUN_TTL_S, Lease, check_ttl
from preproc.io.listing import InputFile, list_inputs
from preproc.io.ownership import check_paths, check_run_output, remove_run
from preproc.io.preflight import preflight
from preproc.io.s3 import exported
from preproc.io.store import Store
from preproc.observe.heartbeat import Heartbeat
from preproc.spec import Spec, load_spec
from preproc.tokenize.tokenizer import choose_backend, inspect_tokenizer

__all__ = ["run", "plan", "build_plan", "make_plan", "prepare", "execute", "RunResult"]

log = logging.getLogger("preproc")


@dataclass
class RunResult:
    """What :func:`run` returns: where the outputs are and what happened."""

    output: str
    run_id: str
    stats: dict[str, Any]
    dataset: dict[str, Any]

    @property
    def documents(self) -> int:
        return int(self.dataset["documents"])

    @property
    def tokens(self) -> int:
        return int(self.dataset["tokens"])


def plan(spec: Spec | str | Path | dict[str, Any], **overrides: Any) -> Plan:
    """Build the plan a run would use, writing nothing (``preproc plan``)."""
    return build_plan(load_spec(spec, **overrides))[0]


def make_plan(spec: Spec, tokenizer: tuple[dict[str, Any], bytes], *, files: list[InputFile] | None = None,
              refresh: RefreshContext | None = None) -> Plan:
    """The complete plan of ``spec`` (writes nothing): inputs listed (unless ``files``),
    shards balanced, stages composed, and the tokenize backend chosen for ``tokenizer``
    (what :func:`~preproc.tokenize.tokenizer.inspect_tokenizer` returned)."""
    if not spec.output:
        raise ConfigError("output: no output location; set `output:` in the spec or pass --output")
    check_paths(spec)    # never an output that holds, or lies in, its own inputs
    if files is None:
        files = list_inputs(spec)
    shards = plan_shards(files, shards=spec.shards, target_shard_bytes=spec.target_shard_bytes,
                         storage=spec.storage)
    info, tok_bytes = tokenizer
    run_id = run_fingerprint(spec, files)
    if info.get("sha256"):
        run_id = hashlib.sha256(f"{run_id}:{info['sha256']}".encode()).hexdigest()[:12]
    return Plan(run_id=run_id, output=spec.output, spec=spec, shards=tuple(shards),
                stages=tuple(pipeline_stages(spec, len(shards), sum(s.bytes for s in shards))),
                tokenizer={**info, **choose_backend(spec, shards, tok_bytes)}, created_s=time.time(),
                refresh=refresh, input_files=len(files))


def build_plan(s: Spec, files: list[InputFile] | None = None,
               refresh: RefreshContext | None = None) -> tuple[Plan, bytes]:
    """The plan a run would write and its tokenizer's bytes: every check, no writes.
    ``plan()``, ``run()``, :func:`prepare` and ``refresh()`` all plan through here."""
    check_requirements(build_steps(s.clean))   # a missing package: one line, before any work
    preflight(s)   # S3: credentials, buckets, access; one clear line before any work
    tokenizer = inspect_tokenizer(s.tokenize, s.storage)
    return make_plan(s, tokenizer, files=files, refresh=refresh), tokenizer[1]


def prepare(s: Spec, *, force: bool = False, planned: tuple[Plan, bytes] | None = None) -> Plan:
    """Write the plan (and the run's tokenizer copy) unless the same run is already planned.

    The output must be empty or an earlier preproc output (:mod:`preproc.io.ownership`);
    ``force`` removes only what the recorded plan says that run wrote. The caller holds the
    output's lease (:func:`run` does). ``planned``: what :func:`build_plan` returned (by
    default, it is called here)."""
    new, tok_bytes = planned or build_plan(s)
    try:
        store = Store(new.output, s.storage)
        rec = check_run_output(store)
        if force and rec is not None:
            log.info("--force: removing run %s's outputs: %s", rec.get("run_id"), ", ".join(remove_run(store, rec)))
            rec = None
    except OSError as e:
        raise ConfigError(f"output: cannot use {new.output}: {e}") from None
    if rec is not None:
        old = Plan.load(new.output, s.storage)
        if old.run_id != new.run_id:
            raise ConfigError(
                f"{store.url()}: holds run {old.run_id}, planned from another spec or other inputs "
                f"(this one is {new.run_id}); pass --force to start over, or choose another output")
        if not store.exists(layout.TOKENIZER):     # killed between the record and the copy
            store.write_bytes(layout.TOKENIZER, tok_bytes)
        return old
    try:
        # The run record first (after the shards' file lists it points to): from now on
        # this folder is ours.
        new.write(store)
    except OSError as e:
        raise ConfigError(f"output: cannot write to {new.output}: {e.strerror or e}") from None
    store.write_bytes(layout.TOKENIZER, tok_bytes)
    return new


def run(spec: Spec | str | Path | dict[str, Any], *, force: bool = False, progress: bool = False,
        executor_options: dict[str, Any] | None = None, lock_ttl_s: float = RUN_TTL_S,
        **overrides: Any) -> RunResult:
    """Plan, then run every stage not yet done; return the run's stats and manifest.

    ``overrides``: ``input``, ``output``, ``shards``, ``workers``, ``executor``, ``tokenizer``,
    or dotted spec keys (``{"clean.length.min_words": 5}`` as ``**{...}``).

    The run holds the output's lease (:mod:`preproc.io.lease`, expiring ``lock_ttl_s`` after its
    last renewal) from planning to the end: a second run on the same output raises
    :class:`~preproc.io.lease.LeaseHeld` (exit 75) naming the holder.

    >>> import preproc
    >>> result = preproc.run("jobs/demo.yaml", output="/tmp/out")     # doctest: +SKIP
    >>> result.tokens                                                  # doctest: +SKIP
    """
    check_ttl(lock_ttl_s)
    s = load_spec(spec, **overrides)
    check_requirements(build_steps(s.clean))   # before workers start
    ex = get_executor(s, progress=progress, **(executor_options or {}))
    try:
        # Local workers start (and import) while the coordinator plans; with the run's S3
        # settings, as in execute().
        with exported(s.storage):
            ex.prestart(s)
        planned = build_plan(s)       # every check before the lease is written into the output
        lease = _output_lease(s, lock_ttl_s)
        with lease:
            p = prepare(s, force=force, planned=planned)
            return execute(p, s, progress=progress, executor=ex, on_stage=lease.check)
    finally:
        ex.close()


def _log_idle(idle: list[str]) -> None:
    if idle:
        names = idle[0] if len(idle) == 1 else f"{idle[0]}..{idle[-1]} ({len(idle)} stages)"
        log.info("stage %s: nothing left to compute; markers written by the coordinator", names)
        idle.clear()


def _output_lease(s: Spec, ttl_s: float) -> Lease:
    """The output's lease, after the checks that need no writes (a foreign or overlapping
    output is refused before the lease is written into it)."""
    if not s.output:
        raise ConfigError("output: no output location; set `output:` in the spec or pass --output")
    try:
        store = Store(s.output, s.storage)
        check_run_output(store)
    except OSError as e:
        raise ConfigError(f"output: cannot use {s.output}: {e}") from None
    return Lease(store, RUN_LEASE, ttl_s=check_ttl(ttl_s), what="run")


def execute(p: Plan, s: Spec, *, progress: bool = False, executor_options: dict[str, Any] | None = None,
            executor=None, on_stage=None) -> RunResult:
    """Run every unfinished index of every stage of a written plan, in order."""
    # The executor comes from the spec of this invocation: a resumed run may use another.
    p = dataclasses.replace(p, spec=p.spec.model_copy(update={"executor": s.executor}))
    store = p.store()
    ex = executor or get_executor(s, progress=progress, **(executor_options or {}))
    try:
        # Worker processes started during the run read plan.json with the run's S3 settings.
        # The heartbeat tells `preproc status` whether a coordinator is still behind the run.
        with exported(p.spec.storage), Heartbeat(store):
            idle: list[str] = []   # consecutive stages with nothing to compute: one log line
            recomputed = False     # some index ran in this invocation
            for st in p.stages:
                # Done = a marker of this run whose files are all there with their sizes;
                # other markers are removed and their indices run again.
                done = integrity.done_indices(store, p, st.name, st.fan_out)
                if st.name == "finalize" and recomputed and done:
                    # What finalize writes (stats, manifest, report) and sweeps (temporaries
                    # of killed attempts) follows from the markers: some changed, so again.
                    store.rm(store.marker_rel(st.name, 0))
                    done = set()
                todo = [i for i in range(st.fan_out) if i not in done]
                recomputed = recomputed or bool(todo)
                if not todo:
                    log.info("stage %s: all %d indices already done", st.name, st.fan_out)
                    continue
                if on_stage is not None:
                    on_stage(st.name)
                if trivial(p, st.name, store):
                    for i in todo:
                        run_index(p, st.name, i, store, quiet=True)
                    idle.append(st.name)
                    continue
                _log_idle(idle)
                prepare_stage(p, st.name, store)
                ex.run_stage(p, st.name, todo)
            _log_idle(idle)
    finally:
        if executor is None:
            ex.close()
    return RunResult(output=p.output, run_id=p.run_id, stats=store.read_json(layout.STATS),
                     dataset=store.read_json(layout.DATASET))
