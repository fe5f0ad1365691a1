"""The Kubernetes executor: for each stage, create (or adopt, or replace) its Indexed Job and
hand it to :class:`preproc.executors.k8s.watch.StageRun` to follow to the end. See the
package docstring for the whole contract.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from preproc.errors import ConfigError
from preproc.executors.k8s.client import UID_LABEL, api_error, body_json, open_api_client, terminal
from preproc.executors.k8s.watch import StageRun
from preproc.io.store import Store
from preproc.k8s.job import render_job
from preproc.k8s.options import KubernetesOptions, parse_options
from preproc.k8s.render import ANNOTATION_OUTPUT, CONTAINER_NAME

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.spec.model import Spec

__all__ = ["KubernetesExecutor"]

log = logging.getLogger("preproc.k8s")


class KubernetesExecutor:
    """Runs each stage as an Indexed Job; see the package docstring.

    >>> ex = KubernetesExecutor(spec, context="kind-preproc")          # doctest: +SKIP
    >>> ex.run_stage(plan, "tokenize", [0, 1, 2])                      # doctest: +SKIP
    """

    name = "k8s"

    def __init__(self, spec: Spec, *, context: str | None = None, kubeconfig: str | None = None,
                 api_client: Any = None, progress: bool = True):
        self.options: KubernetesOptions = parse_options(spec.executor.options)
        self.retries = spec.executor.retries
        in_cluster = False
        if api_client is None:
            api_client, default_ns, in_cluster = open_api_client(context=context, kubeconfig=kubeconfig)
        else:
            default_ns = None
        self.api_client = api_client
        self.namespace = self.options.namespace or default_ns or "default"
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.progress = progress
        if in_cluster and "image" not in self.options.model_fields_set:
            # One source of truth for the image: workers run the coordinator's own (the one
            # kustomize's `images:` set), unless the spec names another.
            image = self._own_image()
            if image:
                self.options = self.options.model_copy(update={"image": image})

    def _own_image(self) -> str | None:
        pod = os.environ.get("HOSTNAME")
        if not pod:
            return None
        try:
            obj = body_json(self.core.read_namespaced_pod(pod, self.namespace, _preload_content=False))
        except (ApiException, OSError, ValueError) as e:
            log.debug("cannot read this pod (%s) for its image: %s", pod, e)
            return None
        containers = (obj.get("spec") or {}).get("containers") or []
        return containers[0].get("image") if containers else None

    def prestart(self, spec: Spec) -> None:
        """Nothing to start before the plan: a stage's pods come with its Job."""

    def close(self) -> None:
        self.api_client.close()

    # -- the Executor contract -------------------------------------------------------------
    def run_stage(self, plan: Plan, stage: str, indices: list[int]) -> None:
        """Create (or adopt) the stage's Job, watch it to the end, check the markers."""
        if not indices:
            return
        store = Store(plan.output, plan.spec.storage)
        job = render_job(plan, stage, self.options, retries=self.retries)
        job["metadata"]["namespace"] = self.namespace
        run = StageRun(self, plan, stage, sorted(indices), job, store)
        try:
            run.finish(run.wait(self.launch(run)))
        except KeyboardInterrupt:  # also between create and watch: the Job may exist already
            if self.options.delete_on_interrupt:
                log.warning("interrupted: deleting Job %s/%s", self.namespace, run.name)
                self.delete_job(run.name)
            else:
                log.warning("interrupted: Job %s/%s keeps running; `preproc run` again adopts it",
                            self.namespace, run.name)
            raise
        finally:
            run.bar.close()

    # -- API calls (raw JSON: what the server sent, whatever the client's models know) --------
    def get_job(self, name: str) -> dict[str, Any] | None:
        try:
            return body_json(self.batch.read_namespaced_job(name, self.namespace, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def delete_job(self, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background",
                                             _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise

    def pods(self, job: dict[str, Any], *, phase: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The Job's pods (``phase``: only those in it, a field selector the API server applies)."""
        uid = job["metadata"].get("uid")
        selector = f"{UID_LABEL}={uid}" if uid else f"batch.kubernetes.io/job-name={job['metadata']['name']}"
        kw: dict[str, Any] = {"field_selector": f"status.phase={phase}"} if phase else {}
        if limit:
            kw["limit"] = limit
        resp = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False, **kw)
        return body_json(resp).get("items") or []

    def log_tail(self, pod: str, lines: int) -> str | None:
        if lines <= 0:
            return None
        try:
            resp = self.core.read_namespaced_pod_log(pod, self.namespace, container=CONTAINER_NAME,
                                                     tail_lines=lines, _preload_content=False)
            return resp.data.decode("utf-8", errors="replace")
        except ApiException as e:
            if e.status in (400, 404):  # the pod or its log is gone (TTL, node lost)
                return None
            raise

    def launch(self, run: StageRun) -> dict[str, Any]:
        """Create the Job; on 409 adopt it (running) or replace it (finished, stale)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                created = body_json(self.batch.create_namespaced_job(self.namespace, run.job, _preload_content=False))
                log.info("stage %s: created Job %s/%s (%d index(es), parallelism %d)", run.stage,
                         self.namespace, run.name, run.job["spec"]["completions"], run.job["spec"]["parallelism"])
                return created
            except ApiException as e:
                if e.status != 409:
                    raise api_error(e, f"creating Job {self.namespace}/{run.name}") from None
            existing = self.get_job(run.name)
            if existing is None:  # deleted between the 409 and now: create again
                continue
            run.check_ownership(existing)
            ours = (existing["metadata"].get("annotations") or {}).get(ANNOTATION_OUTPUT) == \
                run.job["metadata"]["annotations"][ANNOTATION_OUTPUT]
            state = terminal(existing)
            if existing["metadata"].get("deletionTimestamp"):
                pass  # being deleted: wait for it to go
            elif ours and (state is None or (state == "Complete" and run.all_done())):
                log.info("stage %s: Job %s/%s was already launched; watching it", run.stage,
                         self.namespace, run.name)
                return existing
            elif state is None:
                raise ConfigError(
                    f"Job {self.namespace}/{run.name} is running the same run into another output "
                    f"({existing['metadata']['annotations'].get(ANNOTATION_OUTPUT)}); wait for it, or set "
                    "executor.options.job_name_prefix to run both at once")
            else:
                log.info("stage %s: deleting the %s Job %s/%s left from an earlier attempt", run.stage,
                         state.lower(), self.namespace, run.name)
                self.delete_job(run.name)
            if time.monotonic() > deadline:
                raise ConfigError(f"Job {self.namespace}/{run.name} is still being deleted after 120 s; "
                                  "delete it by hand and run again")
            time.sleep(0.5)
