"""Ray executor: one Ray task per index, stages in order with a barrier.

Tasks call the same :func:`preproc.engine.stages.run_index` as every other executor and exchange
nothing through the object store but small stats dicts: they read the plan and inputs from
storage and commit outputs there, so a lost node or a restarted RayJob resumes from the
markers, not from scratch.

With no address a local Ray is started (the laptop default, sized to this machine's
cores); ``auto`` joins the cluster this process runs in (a RayJob's entrypoint), and
``ray://host:10001`` connects a client to a remote cluster. A local Ray started here dies
with the coordinator, even on ``kill -9`` (:func:`preproc.executors.lifeline.reaper`).

Options (spec ``executor.options`` or ``--ray-address``)::

    executor:
      kind: ray
      retries: 2                 # max_retries of each task (crashes and errors)
      options:
        address: auto
        num_cpus: 1              # per task
        memory: 2GiB             # per task (scheduling hint)
        runtime_env: {}          # passed to ray.init, e.g. {"pip": [...]} for a client
        kuberay: {...}           # only for `preproc manifests --executor ray`
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from preproc.engine.plan import Plan
from preproc.engine.stages import run_index
from preproc.errors import PreprocError, StageFailed
from preproc.executors.lifeline import Reaper, reaper
from preproc.k8s.ray_options import ray_options
from preproc.observe.progress import Progress
from preproc.spec.secrets import install_log_redaction

if TYPE_CHECKING:
    from preproc.spec.model import Spec

__all__ = ["RayExecutor"]

log = logging.getLogger("preproc")


def _task(output: str, stage: str, index: int, storage: dict[str, Any]) -> dict[str, Any]:
    """Runs inside a Ray worker. Config/bad-shard errors come back as values (retrying
    cannot help them); anything else raises, and Ray retries the task.

    ``storage`` (the run's S3 settings, no secrets) reaches ``plan.json``: a Ray worker's
    environment was fixed when its Ray started (before the run, or on another machine), so
    ``$PREPROC_S3`` cannot carry it as it does for local workers. Without it an S3 output
    was looked for on AWS's default endpoint, and each task stalled in connection retries."""
    install_log_redaction()
    try:
        return {"ok": True, "stats": run_index(Plan.load(output, storage), stage, index)}
    except PreprocError as e:
        if e.exit_code in (2, 3):
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        raise


class RayExecutor:
    name = "ray"

    def __init__(self, spec: Spec, *, address: str | None = None, progress: bool = True, **_: Any):
        import ray

        self.ray = ray
        self.options = ray_options(spec, address)
        self.retries = spec.executor.retries
        self.progress = progress
        self._started = False
        self._reaper: Reaper | None = None
        if not ray.is_initialized():
            kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
            if self.options.runtime_env:
                kw["runtime_env"] = self.options.runtime_env
            if self.options.address:
                ray.init(address=self.options.address, **kw)
            else:
                # A local Ray we start is ours to take down, even if we are killed (-9):
                # every Ray process carries the reaper's tag (preproc.executors.lifeline).
                self._reaper = reaper()
                try:
                    with self._reaper.tagging():
                        ray.init(num_cpus=self.options.local_cpus or os.cpu_count() or 1, include_dashboard=False, **kw)
                except BaseException:   # a Ray that failed to start leaves no process behind
                    self.close()
                    raise
                self._started = True
        res: dict[str, Any] = {"num_cpus": self.options.num_cpus}
        if self.options.memory:
            res["memory"] = self.options.memory
        self._remote = ray.remote(max_retries=self.retries, retry_exceptions=True, **res)(_task)

    def prestart(self, spec: Spec) -> None:
        """Nothing to start before the plan: Ray (and its workers) started in ``__init__``."""

    def run_stage(self, plan: Plan, stage: str, indices: list[int]) -> None:
        ray = self.ray
        total = plan.stage(stage).fan_out
        bar = Progress(stage, total=total, done=total - len(indices), enabled=self.progress, plan=plan)
        storage = plan.spec.storage.model_dump(mode="json")
        refs = {self._remote.remote(plan.output, stage, i, storage): i for i in indices}
        errors: dict[int, str] = {}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=5.0)
                bar.tick()
                for ref in done:
                    i = refs[ref]
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - task failed after its retries
                        cause = getattr(e, "cause", None) or e
                        errors[i] = f"{type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}"
                        continue
                    if not res["ok"]:
                        errors[i] = res["error"]
                        if res["error"].startswith("ConfigError"):
                            for r in pending:
                                ray.cancel(r)
                            raise StageFailed(stage, errors)
                        continue
                    bar.advance(res["stats"])
        finally:
            bar.close()
        if errors:
            raise StageFailed(stage, errors)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False
        if self._reaper is not None:
            self._reaper.close()
            self._reaper = None
