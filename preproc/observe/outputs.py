"""Reading an output from outside its run (``preproc status``, ``preproc report``).

Two things differ from a run reading its own output:

* **the folder may be a dataset root.** ``preproc refresh`` writes each generation as a run
  under ``generations/<n>/`` and keeps no ``plan.json`` at the root; :func:`open_output`
  picks the generation in progress (else the latest published one) and lists them all.
* **answer fast.** A run retries a dead endpoint for minutes, which is right for a run and
  wrong for a look: here every request gets at most :data:`READ_ATTEMPTS` attempts and a
  :data:`READ_CONNECT_TIMEOUT_S` connect timeout, and an unreachable endpoint, missing
  credentials or a refused access become one :class:`ConfigError` line (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from preproc.engine.plan import Plan
from preproc.errors import ConfigError
from preproc.io import layout
from preproc.io.preflight import preflight_error
from preproc.io.s3 import as_storage, join
from preproc.io.store import Store

__all__ = ["OpenedOutput", "open_output", "reading_storage", "readable", "READ_ATTEMPTS", "READ_CONNECT_TIMEOUT_S"]

READ_ATTEMPTS = 2
READ_CONNECT_TIMEOUT_S = 3.0

T = TypeVar("T")


def reading_storage(storage: Any = None) -> Any:
    """``storage`` (default: ``$PREPROC_S3`` and the AWS environment) with bounded retries
    and connect timeout, for interactive reads."""
    st = as_storage(storage)
    s3 = st.s3.model_copy(update={"max_attempts": min(READ_ATTEMPTS, st.s3.max_attempts),
                                  "connect_timeout_s": min(READ_CONNECT_TIMEOUT_S, st.s3.connect_timeout_s)})
    return st.model_copy(update={"s3": s3})


def readable(output: str, fn: Callable[[], T], storage: Any = None) -> T:
    """``fn()``, with a storage problem (endpoint unreachable, no credentials, access
    refused, store down) turned into one line naming ``output``."""
    try:
        return fn()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - classified; anything else is re-raised as is
        if output.startswith(("s3://", "s3a://")):
            err = preflight_error(e, "output", output, as_storage(storage).s3)
            if err is not e:
                raise err from None
        raise


@dataclass
class OpenedOutput:
    """What :func:`open_output` found: the run to show, and for a dataset root its
    generations (``[{"generation", "run_id", "documents", "tokens", "state"}]``)."""

    output: str
    plan: Plan
    store: Store                      # the run's output, reached with bounded retries
    root: str | None = None           # the dataset root when ``output`` is one
    generation: int | None = None     # which generation ``plan`` is
    generations: list[dict[str, Any]] = field(default_factory=list)


def open_output(output: str, storage: Any = None) -> OpenedOutput:
    """The run at ``output``: its ``plan.json``, or for a refreshed dataset root the
    generation in progress, else the latest one."""
    storage = reading_storage(storage)

    def find() -> OpenedOutput:
        here = Store(output, storage)
        if here.exists(layout.PLAN):
            plan = Plan.load(output, storage)
            return OpenedOutput(output, plan, Store(plan.output, reading_storage(plan.spec.storage)))
        gens = _generations(here)
        if not gens:
            # Plan.load says "no plan here; run `preproc run` first" in one line.
            Plan.load(output, storage)
        g = gens[-1]
        gout = join(here.uri, g["path"])
        plan = Plan.load(gout, storage)
        return OpenedOutput(output, plan, Store(plan.output, reading_storage(plan.spec.storage)),
                            root=output, generation=g["generation"], generations=gens)

    return readable(output, find, storage)


def _generations(root: Store) -> list[dict[str, Any]]:
    """Published generations (from ``dataset.json``) plus the one in progress (from
    ``_state/state.json``), oldest first; [] when ``root`` is no dataset root."""
    try:
        ds = root.read_json(layout.DATASET)
    except FileNotFoundError:
        ds = {}
    try:
        state = root.read_json(layout.STATE)
    except FileNotFoundError:
        state = {}
    gens = [{"generation": g["generation"], "path": g.get("path") or layout.generation(g["generation"]),
             "run_id": g.get("run_id"), "documents": g.get("documents"), "tokens": g.get("tokens"),
             "state": "published"} for g in ds.get("generations") or []]
    pend = state.get("pending")
    if pend and not any(g["generation"] == pend["generation"] for g in gens):
        n = pend["generation"]
        if root.exists(f"{layout.generation(n)}/{layout.PLAN}"):
            gens.append({"generation": n, "path": layout.generation(n), "run_id": None, "documents": None, "tokens": None,
                         "state": "in progress"})
    return gens

