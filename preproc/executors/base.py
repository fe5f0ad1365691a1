"""The executor contract: fan a stage's unfinished indices out, wait, report failures.

An executor only decides *where* ``preproc worker OUTPUT --stage S --index I`` runs (a
local process, a pod of an Indexed Job, a Ray task). It never looks at text, and it trusts
markers only: an index is done when its marker exists, whatever a process said.

:class:`Executor` names everything the runner calls, in the order it calls them:
``prestart`` once before planning, ``run_stage`` per stage, ``close`` at the end. Every
executor implements all of it (``prestart`` is a no-op where there is nothing to start early),
so the runner calls them plainly instead of asking ``hasattr``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.spec.model import Spec

__all__ = ["Executor"]


@runtime_checkable
class Executor(Protocol):
    name: str

    def prestart(self, spec: Spec) -> None:
        """Start what can start before the plan exists (the local executor's worker
        processes), so it overlaps planning; return without waiting."""
        ...

    def run_stage(self, plan: Plan, stage: str, indices: list[int]) -> None:
        """Run ``indices`` of ``stage`` to completion; raise ``StageFailed`` naming the
        indices that still failed after their retries."""
        ...

    def close(self) -> None:
        """Release what the executor holds (pools, clients, a local Ray it started)."""
        ...
