"""Pods that run in this process: the stand-in's ``pod_runner`` for stages of thousands of
indices (a subprocess per pod costs ~0.3 s of CPU; the coordinator is what is measured).

A pod of ``preproc worker OUTPUT --stage S`` becomes ``run_index(plan, S,
$JOB_COMPLETION_INDEX)``: the worker command's own code minus its argument parsing and
its plan load (cached per output). Failpoints come from this process's environment.
"""

from __future__ import annotations

import threading

from preproc.engine.plan import Plan
from preproc.engine.stages import run_index

__all__ = ["InProcessPods", "skip_rules"]


def skip_rules(*stages: str) -> str:
    """``PREPROC_FAILPOINTS`` that make every index of ``stages`` a no-op (marker only)."""
    return ";".join(f"point=start,stage={s},action=skip" for s in stages)


class InProcessPods:
    """``StandIn(pod_runner=InProcessPods())``: each pod runs on the stand-in's thread pool."""

    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}
        self.lock = threading.Lock()
        self.ran: list[tuple[str, int]] = []

    def __call__(self, command: list[str], env: dict[str, str], index: int) -> int:
        w = command.index("worker")
        output, stage = command[w + 1], command[command.index("--stage") + 1]
        with self.lock:
            plan = self.plans.get(output)
            if plan is None:
                plan = self.plans[output] = Plan.load(output)
        run_index(plan, stage, int(env["JOB_COMPLETION_INDEX"]))
        with self.lock:
            self.ran.append((stage, index))
        return 0

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"InProcessPods({len(self.ran)} pods run)"
