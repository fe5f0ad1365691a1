"""The executor contract: fan a stage's unfinished indices out, wait, report failures.

An executor only decides *where* ``preproc worker OUTPUT --stage S --index I`` runs (a
local process, a pod of an Indexed Job, a Ray task). It never looks at text, and it trusts
markers only: an index is done when its marker exists, whatever a process said.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from preproc.engine.plan import Plan


class Executor(Protocol):
    name: str

    def run_stage(self, plan: "Plan", stage: str, indices: list[int]) -> None:
        """Run ``indices`` of ``stage`` to completion; raise ``StageFailed`` naming the
        indices that still failed after their retries."""
        ...

    def close(self) -> None:
        ...
