"""Stages: pure functions of (plan, stage, index) that commit their outputs, then a marker.

Stages know nothing about executors; executors know nothing about text. The only meeting
point is :func:`run_index`, which every executor calls (in a pool process, a pod, a Ray task)
through ``preproc worker OUTPUT --stage NAME --index I``.

Default pipeline, in order:

=============  =================  ========================================================
stage          fan-out            does
=============  =================  ========================================================
clean          shards (groups of  read input splits, reject bad records, clean steps,
               small ones)        write ``clean/part-s.parquet`` + exact-dedup keys
exact_dedup    buckets            one hash bucket across all shards → ids to drop
tokenize       shards             a slice of the clean output, cut at equal text bytes,
                                  minus drops → tokens (Parquet, Megatron)
finalize       1                  ``dataset.json``, ``stats.json``, accounting check
=============  =================  ========================================================
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from preproc import faults
from preproc.clean import stage as clean
from preproc.clean.steps import CleanPipeline, build_steps
from preproc.dedup import exact, near
from preproc.dedup.drops import index_drops
from preproc.engine import finalize, signals
from preproc.engine.plan import DROP_STAGES, StagePlan
from preproc.errors import ConfigError
from preproc.io import integrity
from preproc.io.slices import write_slices
from preproc.io.store import Store, deferred_sync, sweep_deferred
from preproc.observe import logs, metrics
from preproc.tokenize import stage as tokenize
from preproc.tokenize.tokenizer import preload

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.spec.model import Spec

__all__ = ["pipeline_stages", "run_index", "trivial", "prepare", "warm_up", "STAGE_RUNNERS", "TRIVIAL"]

log = logging.getLogger("preproc")

StageRunner = Callable[["Plan", int, Store], dict[str, Any]]

# The registry: stage name -> the function that runs one index of it.
STAGE_RUNNERS: dict[str, StageRunner] = {
    "clean": clean.run,
    "exact_dedup": exact.run,
    **near.RUNNERS,
    "tokenize": tokenize.run,
    "finalize": finalize.run,
}
# Stage name -> check that every index of the stage would only write a marker (see trivial).
TRIVIAL: dict[str, Callable[[Plan, Store], bool]] = dict(near.TRIVIAL)

# The plan names the stages that drop rows without knowing the stages: they must be these.
if set(DROP_STAGES) != {"exact_dedup", *near.DROP_STAGES}:  # pragma: no cover - a stage was renamed
    raise RuntimeError(f"preproc.engine.plan.DROP_STAGES {DROP_STAGES} does not name the dedup stages")


def warm_up(tokenizer: str | None = None, storage: Any = None, *, encode_special_tokens: bool = True) -> None:
    """Pay now what a worker process's first task would (~0.8 s): the stage modules'
    imports (this module's), pyarrow's lazy import of pandas on its first conversion of
    Python objects, the default clean steps' first call (models, compiled patterns), and the
    tokenizer at ``tokenizer`` (cached by content). An executor calls it in a fresh worker
    before the plan exists; it reads no input and writes nothing."""
    text = "The quick brown fox jumps over the lazy dog, and then it runs back home again.\n" * 8
    CleanPipeline(build_steps(True))(pa.record_batch({"id": ["warm"], "text": [text], "source": ["warm"]}))
    if tokenizer:
        preload(tokenizer, storage, encode_special_tokens=encode_special_tokens)


# The stages after clean take this much input per index (and at least MIN_LATER_FAN_OUT
# indices, never more than the shards): cutting the same data into more shards adds clean
# indices, not indices of every later stage (each costs a marker, a dispatch and its files).
INPUT_BYTES_PER_LATER_INDEX = 32 * 2**20
MIN_LATER_FAN_OUT = 16


def later_fan_out(num_shards: int, input_bytes: int, want: int | None = None) -> int:
    """The fan-out of tokenize and near dedup's per-shard stages: ``want`` (the spec's
    ``later_fan_out``) or one index per ``INPUT_BYTES_PER_LATER_INDEX`` of input, at least
    ``MIN_LATER_FAN_OUT``; at most ``num_shards`` (so at up to 16 shards it is the shard count)."""
    return _by_volume(num_shards, input_bytes, INPUT_BYTES_PER_LATER_INDEX, want)


def _by_volume(num_shards: int, input_bytes: int, per_index: int, want: int | None) -> int:
    """``want``, or one index per ``per_index`` bytes of input but at least
    ``MIN_LATER_FAN_OUT``; never more than the shards."""
    if want is None:
        want = max(MIN_LATER_FAN_OUT, -(-int(input_bytes) // per_index))
    return max(1, min(num_shards, want))


# Clean takes a group of consecutive shards per index when they hold less than this on
# average (and keeps at least MIN_LATER_FAN_OUT indices): a shard of a few documents would
# otherwise cost more in fixed work (files, a marker, the steps' per-batch work) than in text.
INPUT_BYTES_PER_CLEAN_INDEX = 2**20


def clean_fan_out(num_shards: int, input_bytes: int, want: int | None = None) -> int:
    """Clean's fan-out: ``want`` (the spec's ``clean_fan_out``) or one index per shard,
    unless the shards average under ``INPUT_BYTES_PER_CLEAN_INDEX``: then one per that much
    input, at least ``MIN_LATER_FAN_OUT``; never more than the shards. Each index cleans
    ``Plan.shards_of("clean", i)``."""
    return _by_volume(num_shards, input_bytes, INPUT_BYTES_PER_CLEAN_INDEX, want)


def pipeline_stages(spec: Spec, num_shards: int, input_bytes: int) -> list[StagePlan]:
    """The stages a spec runs, in order, with their fan-out. Clean fans out over the shards
    (over groups of them when they are small, :func:`clean_fan_out`); the later stages'
    fan-outs follow the data volume (``input_bytes``): dedup's buckets (unless the spec sets
    them), tokenize's slices and near dedup's shard groups (:func:`later_fan_out`)."""
    later = later_fan_out(num_shards, input_bytes, spec.later_fan_out)
    stages = [StagePlan("clean", clean_fan_out(num_shards, input_bytes, spec.clean_fan_out))]
    if spec.dedup.exact.enabled:
        stages.append(StagePlan("exact_dedup", spec.dedup.exact.buckets or exact.buckets_for(input_bytes)))
    if spec.dedup.near:
        stages.extend(StagePlan(name, n) for name, n in near.stages(spec.dedup.near, later, input_bytes))
    stages.append(StagePlan("tokenize", later))
    stages.append(StagePlan("finalize", 1))
    return stages


def trivial(plan: Plan, stage: str, store: Store) -> bool:
    """True when every index of ``stage`` would only write a marker (e.g. a near-dedup
    component round after convergence): the runner then runs them in the coordinator,
    where they cost a few file reads, instead of a pool round-trip locally, a Job and its
    pods on Kubernetes, or Ray tasks. Same function, same markers: only the place differs."""
    check = TRIVIAL.get(stage)
    return check is not None and check(plan, store)


def prepare(plan: Plan, stage: str, store: Store) -> None:
    """Before ``stage``'s indices are dispatched: merge the index of every exchange they
    read (:mod:`preproc.io.exchange`), once, in the coordinator: N small reads and one
    write per exchange, where each of B consumers would otherwise look at N producers."""
    if stage == "exact_dedup":
        exact.prepare(plan, store)
    elif stage in ("tokenize", "near_signatures"):
        for st in plan.drop_stages if stage == "tokenize" else ["exact_dedup"]:
            if st in plan.stage_names:
                index_drops(store, st, plan.stage(st).fan_out, plan.num_shards)
        if stage == "tokenize":
            # Which rows of the clean output each index reads, cut at equal text bytes.
            write_slices(store, stage, "clean", plan.num_shards, plan.stage(stage).fan_out)
    elif stage.startswith("near_"):
        near.prepare(plan, stage, store)


def run_index(plan: Plan, stage: str, index: int, store: Store | None = None, *,
              quiet: bool = False) -> dict[str, Any]:
    """Run one index of one stage unless its marker exists; return its stats.

    Idempotent: the stage overwrites its own outputs (each committed atomically) and the
    marker is written last, so a killed attempt leaves nothing a reader trusts. ``quiet``:
    its "started" and "committed" lines at DEBUG (markers the coordinator writes for rounds
    with nothing to compute would otherwise drown the progress bars).
    """
    store = store or plan.store()
    sp = plan.stage(stage)
    if not 0 <= index < sp.fan_out:
        raise ConfigError(f"stage {stage!r} has indices 0..{sp.fan_out - 1}; got {index}")
    done = store.read_marker(stage, index)
    if done is not None and done.get("run_id") == plan.run_id:
        return done
    # (no marker, an unreadable one, or another run's: this index is not done)
    _check_previous_done(plan, stage, store)
    # Every log record of this try carries run id, stage, index and attempt (preproc.observe.logs).
    attempt = logs.attempt_number(store, stage, index)
    # Stale temporaries of earlier attempts are swept once, by finalize (sweep_deferred);
    # deep code (commits, clean steps) names this index to failpoints (faults.running).
    with logs.context(run_id=plan.run_id, stage=stage, index=index, attempt=attempt), sweep_deferred(store), \
            faults.running(stage, index):
        return _attempt(plan, stage, index, store, attempt, level=logging.DEBUG if quiet else logging.INFO)


def _attempt(plan: Plan, stage: str, index: int, store: Store, attempt: int, *,
             level: int = logging.INFO) -> dict[str, Any]:
    """One try of one index: run it, write its marker (or failure record), publish metrics."""
    t0 = time.time()
    log.log(level, "%s %d: started (attempt %d)", stage, index, attempt)
    signals.busy = True
    try:
        skip = faults.failpoint("start", stage, index)   # action=skip: a no-op index (benchmarks)
        # Outputs are synced together at the end of the block, before the marker (deferred_sync).
        with integrity.recording(store) as files, deferred_sync():
            stats = {} if skip else STAGE_RUNNERS[stage](plan, index, store)
        faults.failpoint("marker", stage, index)
    except Exception as e:
        try:
            store.write_json(store.failure_rel(stage, index), {
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:],
                "time_s": time.time(), "attempt": attempt, "host": logs.HOST})
        except Exception:  # noqa: BLE001 - reporting must not hide the real error
            pass
        metrics.publish_index(plan, stage, index, None, ok=False, attempt=attempt, duration_s=time.time() - t0)
        raise
    finally:
        signals.busy = False
    stats["wall_time_s"] = round(time.time() - t0, 3)
    stats["run_id"] = plan.run_id
    stats["files"] = files         # what this index committed: sizes and xxh3 (preproc.io.integrity)
    stats["started_s"], stats["finished_s"] = round(t0, 3), round(time.time(), 3)
    store.write_marker(stage, index, stats)
    if store.exists(store.failure_rel(stage, index)):
        store.rm(store.failure_rel(stage, index))
    log.log(level, "%s %d: committed in %.1fs", stage, index, stats["wall_time_s"],
             extra={"event": "index_done", "wall_time_s": stats["wall_time_s"]})
    metrics.publish_index(plan, stage, index, stats, ok=True, attempt=attempt, duration_s=stats["wall_time_s"])
    return stats


# (output, run id, stage) whose every index this process has seen done. A stage's markers
# are never removed while a later stage runs, so one listing per worker process and stage
# is enough: listing N markers for each of N indices cost O(N^2) at thousands of shards.
_seen_complete: set[tuple[str, str, str]] = set()


def _check_previous_done(plan: Plan, stage: str, store: Store) -> None:
    names = plan.stage_names
    pos = names.index(stage)
    if pos == 0:
        return
    prev = plan.stages[pos - 1]
    key = (store.root, plan.run_id, prev.name)
    if key in _seen_complete:
        return
    have = store.done_indices(prev.name)
    if len(have & set(range(prev.fan_out))) >= prev.fan_out:
        _seen_complete.add(key)
    else:
        # An executor ran stages out of order: retrying cannot fix that, stop the run.
        raise ConfigError(f"stage {stage!r} cannot start: stage {prev.name!r} has "
                           f"{len(have)}/{prev.fan_out} indices done")

