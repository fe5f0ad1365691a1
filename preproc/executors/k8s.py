"""Kubernetes executor: one Indexed Job per stage, watched to the end with the real client.

For each stage the coordinator creates the Job of :func:`preproc.k8s.render.render_job`
(``completionMode: Indexed``, ``completions`` = the stage's index count; each pod runs
``preproc worker OUTPUT --stage S`` and takes its index from ``JOB_COMPLETION_INDEX``), then
watches it:

* **Deterministic names.** The Job name comes from the run id and the stage. A coordinator
  that restarts gets ``409 AlreadyExists`` on create and adopts the running Job instead of
  launching a second one. A finished Job left from an earlier attempt (failed, or complete
  while markers are missing) is deleted (``propagationPolicy: Background``) and created anew.
* **Watch, not poll.** ``list?watch=true&fieldSelector=metadata.name=<job>`` from the last
  ``resourceVersion``; a watch that times out is resumed, one that expired (``410 Gone``)
  re-reads the Job and resumes from its version, a dropped connection reconnects.
* **Progress** from ``status.completedIndexes`` (each newly completed index's marker gives
  its document count). Pods that cannot start (image pull errors, a missing Secret) for
  ``pending_timeout_s`` fail the stage with a config error instead of hanging.
* **Failures** come from ``status.failedIndexes`` and the Failed condition; each failed
  index is named with its exit code and the last line of its pod's log, and the tail of each
  failed pod's log is printed. Success is checked against the markers: a pod that exited 0
  without a marker (an output the pods cannot share) is a failure, not a success.

Laptop (kubeconfig, ``--context``) or in-cluster (the pod's service account), whichever
applies; the coordinator needs only: create/get/list/watch/delete Jobs, get/list/watch Pods,
get Pods/log in its namespace (``manifests/base/rbac.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from preproc.errors import EXIT_BAD_SHARD, EXIT_CONFIG, ConfigError, StageFailed
from preproc.k8s.indexes import format_indexes, parse_indexes
from preproc.k8s.options import KubernetesOptions, parse_options
from preproc.k8s.render import ANNOTATION_OUTPUT, CONTAINER_NAME, LABEL_RUN, LABEL_STAGE, label_value, render_job

if TYPE_CHECKING:
    from preproc.spec.model import Spec
    from preproc.engine.plan import Plan

__all__ = ["KubernetesExecutor", "load_api_client"]

log = logging.getLogger("preproc.k8s")

_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Container waiting reasons that do not fix themselves: the image or the pod's config is wrong.
_STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                  "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
_UID_LABEL = "batch.kubernetes.io/controller-uid"


def load_api_client(*, context: str | None = None, kubeconfig: str | None = None) -> tuple[Any, str | None]:
    """``(ApiClient, namespace or None)``: from a kubeconfig, or in-cluster from the pod's
    service account. Nothing global is touched (no ``kubernetes.config.load_*`` defaults),
    so a host program's own client stays as it was.

    A kubeconfig is used when ``kubeconfig`` or ``context`` is given, or when not running in
    a pod; otherwise the in-cluster service account.
    """
    api, namespace, _ = _load_api_client(context=context, kubeconfig=kubeconfig)
    return api, namespace


def _load_api_client(*, context: str | None, kubeconfig: str | None) -> tuple[Any, str | None, bool]:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    cfg = client.Configuration()
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (kubeconfig or context)
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
            namespace = None
            if os.path.exists(_SA_NAMESPACE):
                with open(_SA_NAMESPACE) as f:
                    namespace = f.read().strip() or None
            return client.ApiClient(cfg), namespace, True
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg,
                                persist_config=False)
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, FileNotFoundError, OSError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ConfigError(f"no usable Kubernetes configuration ({where}"
                          f"{', context ' + context if context else ''}): {e}") from None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return client.ApiClient(cfg), namespace, False


class KubernetesExecutor:
    """Runs each stage as an Indexed Job; see the module docstring.

    >>> ex = KubernetesExecutor(spec, context="kind-preproc")          # doctest: +SKIP
    >>> ex.run_stage(plan, "tokenize", [0, 1, 2])                      # doctest: +SKIP
    """

    name = "k8s"

    def __init__(self, spec: "Spec", *, context: str | None = None, kubeconfig: str | None = None,
                 api_client: Any = None, progress: bool = True):
        from kubernetes import client

        self.options: KubernetesOptions = parse_options(spec.executor.options)
        self.retries = spec.executor.retries
        in_cluster = False
        if api_client is None:
            api_client, default_ns, in_cluster = _load_api_client(context=context, kubeconfig=kubeconfig)
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
        from kubernetes.client.exceptions import ApiException

        pod = os.environ.get("HOSTNAME")
        if not pod:
            return None
        try:
            obj = _json(self.core.read_namespaced_pod(pod, self.namespace, _preload_content=False))
        except (ApiException, OSError, ValueError) as e:
            log.debug("cannot read this pod (%s) for its image: %s", pod, e)
            return None
        containers = (obj.get("spec") or {}).get("containers") or []
        return containers[0].get("image") if containers else None

    def close(self) -> None:
        self.api_client.close()

    # -- the Executor contract -------------------------------------------------------------
    def run_stage(self, plan: "Plan", stage: str, indices: list[int]) -> None:
        """Create (or adopt) the stage's Job, watch it to the end, check the markers."""
        if not indices:
            return
        from preproc.io.store import Store

        store = Store(plan.output, plan.spec.storage)
        job = render_job(plan, stage, self.options, retries=self.retries)
        job["metadata"]["namespace"] = self.namespace
        run = _StageRun(self, plan, stage, sorted(indices), job, store)
        try:
            run.finish(run.wait(self._launch(run)))
        except KeyboardInterrupt:  # also between create and watch: the Job may exist already
            if self.options.delete_on_interrupt:
                log.warning("interrupted: deleting Job %s/%s", self.namespace, run.name)
                self._delete(run.name)
            else:
                log.warning("interrupted: Job %s/%s keeps running; `preproc run` again adopts it",
                            self.namespace, run.name)
            raise
        finally:
            run.bar.close()

    # -- API calls (raw JSON: what the server sent, whatever the client's models know) --------
    def _get_job(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return _json(self.batch.read_namespaced_job(name, self.namespace, _preload_content=False))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background",
                                             _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise

    def _pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"].get("uid")
        selector = f"{_UID_LABEL}={uid}" if uid else f"batch.kubernetes.io/job-name={job['metadata']['name']}"
        resp = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False)
        return _json(resp).get("items") or []

    def _log_tail(self, pod: str, lines: int) -> str | None:
        from kubernetes.client.exceptions import ApiException

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

    def _launch(self, run: "_StageRun") -> dict[str, Any]:
        """Create the Job; on 409 adopt it (running) or replace it (finished, stale)."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + 120
        while True:
            try:
                created = _json(self.batch.create_namespaced_job(self.namespace, run.job, _preload_content=False))
                log.info("stage %s: created Job %s/%s (%d index(es), parallelism %d)", run.stage,
                         self.namespace, run.name, run.job["spec"]["completions"], run.job["spec"]["parallelism"])
                return created
            except ApiException as e:
                if e.status != 409:
                    raise _api_error(e, f"creating Job {self.namespace}/{run.name}") from None
            existing = self._get_job(run.name)
            if existing is None:  # deleted between the 409 and now: create again
                continue
            run.check_ownership(existing)
            ours = (existing["metadata"].get("annotations") or {}).get(ANNOTATION_OUTPUT) == \
                run.job["metadata"]["annotations"][ANNOTATION_OUTPUT]
            state = _terminal(existing)
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
                self._delete(run.name)
            if time.monotonic() > deadline:
                raise ConfigError(f"Job {self.namespace}/{run.name} is still being deleted after 120 s; "
                                  "delete it by hand and run again")
            time.sleep(0.5)


class _StageRun:
    """One stage on one Job: the watch loop, progress, and the verdict."""

    def __init__(self, ex: KubernetesExecutor, plan: "Plan", stage: str, indices: list[int],
                 job: dict[str, Any], store: Any):
        self.ex, self.plan, self.stage, self.indices, self.job, self.store = ex, plan, stage, indices, job, store
        self.name = job["metadata"]["name"]
        self.opts = ex.options
        self.wanted = set(indices)
        self.seen_done: set[int] = set()
        self.reported_failed: set[int] = set()
        self.failure_target_logged = False
        self.pending_since: dict[str, float] = {}
        self.unschedulable_logged: set[str] = set()
        self.last_change = time.monotonic()
        self.last_status: Any = None
        from preproc.observe.progress import Progress

        total = plan.stage(stage).fan_out
        self.bar = Progress(stage, total=total, done=total - len(indices), enabled=ex.progress, plan=plan)

    def all_done(self) -> bool:
        return self.wanted <= self.store.done_indices(self.stage)

    def check_ownership(self, existing: dict[str, Any]) -> None:
        labels = existing["metadata"].get("labels") or {}
        if (labels.get(LABEL_RUN) != label_value(self.plan.run_id)
                or labels.get(LABEL_STAGE) != label_value(self.stage)):
            raise ConfigError(
                f"Job {self.ex.namespace}/{self.name} exists but is not stage {self.stage!r} of run "
                f"{self.plan.run_id} (labels {LABEL_RUN}={labels.get(LABEL_RUN)}, "
                f"{LABEL_STAGE}={labels.get(LABEL_STAGE)}); delete it or set executor.options.job_name_prefix")
        if (existing.get("spec") or {}).get("completions") != self.job["spec"]["completions"]:
            raise ConfigError(
                f"Job {self.ex.namespace}/{self.name} has {existing['spec'].get('completions')} completions, "
                f"this plan has {self.job['spec']['completions']}; delete the Job and run again")

    # -- watching ----------------------------------------------------------------------------
    def wait(self, job: dict[str, Any]) -> dict[str, Any]:
        """Follow the Job until it is Complete or Failed; return its last state."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        uid = job["metadata"].get("uid")
        rv = job["metadata"].get("resourceVersion")
        last_pod_check = 0.0
        backoff_s = 0.5
        if self.observe(job):
            return job
        while True:
            timeout_s = max(1, int(min(self.opts.watch_timeout_s, self.opts.pod_check_interval_s)))
            w = watch.Watch()
            try:
                for event in w.stream(self.ex.batch.list_namespaced_job, self.ex.namespace,
                                      field_selector=f"metadata.name={self.name}", resource_version=rv,
                                      timeout_seconds=timeout_s, allow_watch_bookmarks=True):
                    obj = event["raw_object"]
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if event["type"] == "BOOKMARK" or obj["metadata"].get("uid") != uid:
                        continue
                    if event["type"] == "DELETED":
                        return self._vanished(job)
                    job = obj
                    backoff_s = 0.5
                    if self.observe(job):
                        w.stop()
                        return job
                    if time.monotonic() - last_pod_check >= self.opts.pod_check_interval_s:
                        last_pod_check = time.monotonic()
                        self.check_pods(job)
            except ApiException as e:
                if e.status == 410:  # our resourceVersion expired: re-read, resume from now
                    log.debug("watch of Job %s expired; re-reading it", self.name)
                elif e.status in _TRANSIENT_STATUS:
                    log.warning("watch of Job %s: HTTP %s; retrying in %.0f s", self.name, e.status, backoff_s)
                    time.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 30)
                else:
                    raise _api_error(e, f"watching Job {self.ex.namespace}/{self.name}") from None
            except (HTTPError, OSError) as e:
                log.warning("lost the watch of Job %s (%s); reconnecting in %.0f s", self.name, e, backoff_s)
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 30)
            else:
                # The watch ended on its server-side timeout: look at the pods, watch again.
                last_pod_check = time.monotonic()
                self.check_pods(job)
                continue
            # The watch broke: re-read the Job (it may have finished or gone meanwhile) and
            # watch again from its current resourceVersion.
            job, rv = self._reread(job)
            if job["metadata"].get("uid") != uid:
                return self._vanished(job)
            if self.observe(job):
                return job

    def _reread(self, job: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        fresh = self.ex._get_job(self.name)
        if fresh is None:
            gone = dict(job)
            gone["metadata"] = {**job["metadata"], "uid": None}
            return gone, None
        return fresh, fresh["metadata"].get("resourceVersion")

    def _vanished(self, job: dict[str, Any]) -> dict[str, Any]:
        missing = self.wanted - self.store.done_indices(self.stage)
        if not missing:
            return {**job, "status": {**(job.get("status") or {}), "conditions": [
                {"type": "Complete", "status": "True", "reason": "Deleted"}]}}
        raise StageFailed(self.stage, {i: f"Job {self.ex.namespace}/{self.name} was deleted while running "
                                          "(kubectl delete, or another coordinator)" for i in sorted(missing)})

    def observe(self, job: dict[str, Any]) -> bool:
        """Report what changed; True when the Job is finished (Complete or Failed)."""
        self.bar.tick()
        status = job.get("status") or {}
        key = (status.get("completedIndexes"), status.get("failedIndexes"), status.get("active"),
               status.get("failed"), tuple((c.get("type"), c.get("status")) for c in status.get("conditions") or []))
        if key != self.last_status:
            self.last_status = key
            self.last_change = time.monotonic()
        done = parse_indexes(status.get("completedIndexes")) & self.wanted
        for i in sorted(done - self.seen_done):
            self.seen_done.add(i)
            self.bar.advance(self.store.read_marker(self.stage, i) or {})
        failed = parse_indexes(status.get("failedIndexes")) & self.wanted
        for i in sorted(failed - self.reported_failed):
            self.reported_failed.add(i)
            log.warning("stage %s: index %d failed (Job %s)", self.stage, i, self.name)
        target = _condition(job, "FailureTarget")
        if target and not self.failure_target_logged:
            self.failure_target_logged = True
            log.warning("stage %s: Job %s is failing (%s: %s); waiting for its pods to stop", self.stage,
                        self.name, target.get("reason"), target.get("message", ""))
        return _terminal(job) is not None

    def check_pods(self, job: dict[str, Any]) -> None:
        """Fail fast on pods that can never start; say so once about unschedulable ones."""
        self.bar.tick()
        now = time.monotonic()
        pods = self.ex._pods(job)
        stuck_for = self.opts.pending_timeout_s
        current = set()
        for pod in pods:
            name = pod["metadata"]["name"]
            status = pod.get("status") or {}
            if status.get("phase") != "Pending":
                continue
            for cs in status.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in _STUCK_REASONS:
                    current.add(name)
                    first = self.pending_since.setdefault(name, now)
                    if now - first >= stuck_for:
                        self.ex._delete(self.name)
                        index = _pod_index(pod)
                        msg = (f"ConfigError: pod {name} cannot start: {waiting['reason']}: "
                               f"{waiting.get('message', '')}".rstrip(": "))
                        log.error("stage %s: %s; deleted Job %s", self.stage, msg, self.name)
                        raise StageFailed(self.stage, {index if index is not None else self.indices[0]: msg})
            for cond in status.get("conditions") or []:
                if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                        and cond.get("reason") == "Unschedulable" and name not in self.unschedulable_logged):
                    self.unschedulable_logged.add(name)
                    log.warning("stage %s: pod %s is not scheduled yet: %s", self.stage, name, cond.get("message", ""))
        self.pending_since = {k: v for k, v in self.pending_since.items() if k in current}
        status = job.get("status") or {}
        if (not pods and not status.get("active") and not status.get("terminating")
                and now - self.last_change >= stuck_for):
            self.ex._delete(self.name)
            raise StageFailed(self.stage, {self.indices[0]: (
                f"ConfigError: Job {self.ex.namespace}/{self.name} created no pod in {stuck_for:.0f} s "
                f"(see `kubectl describe job {self.name} -n {self.ex.namespace}`: a missing service "
                "account, a ResourceQuota or an admission policy)")})

    # -- the verdict -------------------------------------------------------------------------
    def finish(self, job: dict[str, Any]) -> None:
        """Return if every wanted index has its marker; else raise StageFailed naming them."""
        verdict = _terminal(job)
        done = self.store.done_indices(self.stage)
        missing = sorted(self.wanted - done)
        if verdict == "Complete":
            if missing:
                raise StageFailed(self.stage, {i: (
                    "the pod succeeded but wrote no marker: do the pods see the same output as the "
                    f"coordinator ({self.plan.output})?") for i in missing})
            log.info("stage %s: Job %s complete", self.stage, self.name)
            return
        if not missing:  # failed, yet everything we needed is committed (a race with a deadline)
            return
        cond = _condition(job, "Failed") or {}
        status = job.get("status") or {}
        failed_indexes = parse_indexes(status.get("failedIndexes"))
        pods = self.ex._pods(job)
        by_index: dict[int, list[dict[str, Any]]] = {}
        for pod in pods:
            i = _pod_index(pod)
            if i is not None:
                by_index.setdefault(i, []).append(pod)
        failures: dict[int, str] = {}
        tails: list[tuple[str, str]] = []
        for i in missing:
            failed_pods = sorted((p for p in by_index.get(i, []) if _failed_exit(p) is not None),
                                 key=_attempt_order)
            if failed_pods and (i in failed_indexes or _failed_exit(failed_pods[-1]) == EXIT_CONFIG):
                pod = failed_pods[-1]
                tail = self.ex._log_tail(pod["metadata"]["name"], self.opts.log_tail_lines)
                failures[i] = self._describe(pod, len(failed_pods), tail)
                if tail:
                    tails.append((pod["metadata"]["name"], tail))
            elif i in failed_indexes:
                failures[i] = f"failed ({cond.get('reason', 'no pod left to inspect')})"
        if not failures:  # the Job failed as a whole (deadline, ...): every unfinished index
            why = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".rstrip(": ")
            failures = {i: f"Job {self.name} failed before this index finished ({why})" for i in missing}
        for pod_name, tail in tails:
            text = "\n".join("    " + line for line in tail.rstrip("\n").splitlines())
            log.error("stage %s: last %d log line(s) of pod %s:\n%s", self.stage, self.opts.log_tail_lines,
                      pod_name, text)
        for i, msg in failures.items():
            self.bar.fail(i, msg)
        log.error("stage %s: Job %s failed (%s); failed indices: %s", self.stage, self.name,
                  cond.get("reason", "?"), format_indexes(failures))
        raise StageFailed(self.stage, failures)

    def _describe(self, pod: dict[str, Any], attempts: int, tail: str | None) -> str:
        term = _terminated(pod) or {}
        code = term.get("exitCode")
        reason = term.get("reason") or ""
        detail = self._failure_record(_pod_index(pod)) or _last_line(tail) or _last_line(term.get("message"))
        detail = f": {detail}" if detail else ""
        if code == EXIT_CONFIG:
            return f"ConfigError (exit {code}, pod {pod['metadata']['name']}){detail}"
        if code == EXIT_BAD_SHARD:
            return f"BadShardError (exit {code}, pod {pod['metadata']['name']}){detail}"
        why = f"exit {code}" + (f" {reason}" if reason and reason != "Error" else "")
        return f"{why} after {attempts} attempt(s), last pod {pod['metadata']['name']}{detail}"

    def _failure_record(self, index: int | None) -> str | None:
        # A worker may leave <stage>/_failed/<index>.json saying why (the core's choice).
        if index is None:
            return None
        try:
            rec = self.store.read_json(self.store.failure_rel(self.stage, index))
        except Exception:  # noqa: BLE001 - absent or unreadable: fall back to the log
            return None
        if isinstance(rec, dict):
            msg = rec.get("message") or rec.get("error")
            return _last_line(str(msg)) if msg else None
        return None


def _json(resp: Any) -> dict[str, Any]:
    data = resp.data if hasattr(resp, "data") else resp.read()
    return json.loads(data)


def _condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _terminal(job: dict[str, Any]) -> str | None:
    for t in ("Complete", "Failed"):
        if _condition(job, t):
            return t
    return None


def _pod_index(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    raw = (meta.get("labels") or {}).get(_INDEX_LABEL) or (meta.get("annotations") or {}).get(_INDEX_LABEL)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _attempt_order(pod: dict[str, Any]) -> tuple[str, int]:
    # Creation times have second resolution; the controller's per-index failure count breaks ties.
    meta = pod.get("metadata") or {}
    count = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-index-failure-count", "0")
    return meta.get("creationTimestamp") or "", int(count) if count.isdigit() else 0


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER_NAME:
            return (cs.get("state") or {}).get("terminated")
    return None


def _failed_exit(pod: dict[str, Any]) -> int | None:
    """The worker's exit code if this pod failed (None: running, succeeded or disrupted)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    if any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in status.get("conditions") or []):
        return None
    term = _terminated(pod)
    return int(term.get("exitCode", -1)) if term else -1


def _last_line(text: str | None) -> str | None:
    for line in reversed((text or "").splitlines()):
        if line.strip():
            return line.strip()[:500]
    return None


def _api_error(e: Any, doing: str) -> Exception:
    """An ApiException as one line; config-type errors (403, 404 namespace, 422) as ConfigError."""
    message = e.reason or ""
    try:
        body = json.loads(e.body or "{}")
        message = body.get("message") or message
    except (ValueError, TypeError):
        pass
    if e.status == 403:
        return ConfigError(f"{doing}: forbidden ({message}); the coordinator's account needs the Role in "
                           "manifests/base/rbac.yaml")
    if e.status in (400, 404, 422):
        return ConfigError(f"{doing}: the API server said {e.status}: {message}")
    if e.status == 401:
        return ConfigError(f"{doing}: unauthorized ({message}); check the kubeconfig credentials")
    return RuntimeError(f"{doing}: the API server said {e.status}: {message}")
