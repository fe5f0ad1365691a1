"""The coordinator: plan a run (or pick up the one already planned), then run each stage's
unfinished indices on the executor, in order.

Rerunning the same command resumes: indices whose marker exists are skipped. A different
spec or changed inputs on the same output is refused (it would mix two runs), unless
``force`` starts over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Spec, load_spec
from .errors import ConfigError
from .executors import get_executor
from .plan import Plan, make_plan
from .stages import prepare as prepare_stage, run_index, trivial
from .storage import Store, exported, preflight
from .tokenizer import choose_backend, inspect_tokenizer

__all__ = ["run", "plan", "RunResult"]

log = logging.getLogger("preproc")

# What a run writes under its output; `force` removes exactly these, nothing else.
RUN_ENTRIES = ("plan.json", "tokenizer.json", "dataset.json", "stats.json", "report.html", "rejects",
               "removed", "clean", "exact_dedup", "tokens", "finalize", "near", "_metrics")


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


def plan(spec: "Spec | str | Path | dict[str, Any]", **overrides: Any) -> Plan:
    """Build the plan a run would use, writing nothing (``preproc plan``)."""
    s = load_spec(spec, **overrides)
    preflight(s)
    info, tok_bytes = inspect_tokenizer(s.tokenize, s.storage)
    p = make_plan(s, tokenizer_info=info)
    choose_backend(p, tok_bytes, s.storage)
    return p


def prepare(s: Spec, *, force: bool = False, files=None, refresh: dict[str, Any] | None = None) -> Plan:
    """Write the plan (and the run's tokenizer copy) unless the same run is already planned."""
    preflight(s)   # S3: credentials, buckets, access; one clear line before any work
    info, tok_bytes = inspect_tokenizer(s.tokenize, s.storage)
    new = make_plan(s, tokenizer_info=info, files=files, refresh=refresh)
    choose_backend(new, tok_bytes, s.storage)
    try:
        store = Store(new.output, s.storage)
        if force:
            for entry in RUN_ENTRIES + tuple(st.name for st in new.stages):
                store.rm(entry)
        planned = store.exists("plan.json")
    except OSError as e:
        raise ConfigError(f"output: cannot use {new.output}: {e}") from None
    if planned:
        old = Plan.load(new.output, s.storage)
        if old.run_id != new.run_id:
            raise ConfigError(
                f"{store.url()}: holds run {old.run_id}, planned from another spec or other inputs "
                f"(this one is {new.run_id}); pass --force to start over, or choose another output")
        return old
    try:
        store.write_bytes("tokenizer.json", tok_bytes)
    except OSError as e:
        raise ConfigError(f"output: cannot write to {new.output}: {e.strerror or e}") from None
    store.write_json("plan.json", new.to_json())
    return new


def run(spec: "Spec | str | Path | dict[str, Any]", *, force: bool = False, progress: bool = False,
        executor_options: dict[str, Any] | None = None, **overrides: Any) -> RunResult:
    """Plan, then run every stage not yet done; return the run's stats and manifest.

    ``overrides``: ``input``, ``output``, ``shards``, ``workers``, ``executor``, ``tokenizer``,
    or dotted spec keys (``{"clean.length.min_words": 5}`` as ``**{...}``).

    >>> import preproc
    >>> result = preproc.run("jobs/demo.yaml", output="/tmp/out")     # doctest: +SKIP
    >>> result.tokens                                                  # doctest: +SKIP
    """
    s = load_spec(spec, **overrides)
    ex = get_executor(s, progress=progress, **(executor_options or {}))
    try:
        # Local workers start (and import) while the coordinator plans; with the run's S3
        # settings, as in execute().
        if hasattr(ex, "prestart"):
            with exported(s.storage):
                ex.prestart(s)
        p = prepare(s, force=force)
        return execute(p, s, progress=progress, executor=ex)
    finally:
        ex.close()


def execute(p: Plan, s: Spec, *, progress: bool = False, executor_options: dict[str, Any] | None = None,
            executor=None, on_stage=None) -> RunResult:
    """Run every unfinished index of every stage of a written plan, in order."""
    # The executor comes from the spec of this invocation: a resumed run may use another.
    p.spec = p.spec.model_copy(update={"executor": s.executor})
    store = p.store()
    ex = executor or get_executor(s, progress=progress, **(executor_options or {}))
    try:
        # Worker processes started during the run read plan.json with the run's S3 settings.
        with exported(p.spec.storage):
            for st in p.stages:
                done = store.done_indices(st.name)
                todo = [i for i in range(st.fan_out) if i not in done]
                if not todo:
                    log.info("stage %s: all %d indices already done", st.name, st.fan_out)
                    continue
                if on_stage is not None:
                    on_stage(st.name)
                if trivial(p, st.name, store):
                    for i in todo:
                        run_index(p, st.name, i, store)
                    log.info("stage %s: nothing left to compute; %d marker(s) written by the coordinator",
                             st.name, len(todo))
                    continue
                prepare_stage(p, st.name, store)
                ex.run_stage(p, st.name, todo)
    finally:
        if executor is None:
            ex.close()
    return RunResult(output=p.output, run_id=p.run_id, stats=store.read_json("stats.json"),
                     dataset=store.read_json("dataset.json"))
