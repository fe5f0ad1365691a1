"""Following one stage's Job to its verdict: the watch loop, progress, and failures.

:class:`StageRun` watches the Job (``list?watch=true`` from the last ``resourceVersion``;
a timed-out watch resumes, an expired one re-reads the Job, a dropped connection
reconnects), turns ``status.completedIndexes`` into progress, fails fast on pods that can
never start, and judges the end by the markers: an index is done when its marker exists.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from preproc.errors import EXIT_BAD_SHARD, EXIT_CONFIG, ConfigError, StageFailed
from preproc.executors.k8s.client import (
    STUCK_REASONS,
    TRANSIENT_STATUS,
    api_error,
    attempt_order,
    condition,
    failed_exit,
    last_line,
    pod_index,
    terminal,
    terminated,
)
from preproc.io import layout
from preproc.k8s.indexes import format_indexes, index_ranges, parse_indexes
from preproc.k8s.render import LABEL_RUN, LABEL_STAGE, label_value
from preproc.observe.progress import Progress

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.executors.k8s.executor import KubernetesExecutor
    from preproc.io.store import Store

__all__ = ["StageRun"]

log = logging.getLogger("preproc.k8s")


class _RawWatch(watch.Watch):
    """A watch that yields the server's JSON only (``raw_object``, which is all we read): the
    client's models would cost a few ms of CPU per event, deserializing the whole Job with
    its pod template each time its status changes."""

    def get_return_type(self, func: Any) -> Any:
        return None


class StageRun:
    """One stage on one Job: the watch loop, progress, and the verdict."""

    def __init__(self, ex: KubernetesExecutor, plan: Plan, stage: str, indices: list[int],
                 job: dict[str, Any], store: Store):
        self.ex, self.plan, self.stage, self.indices, self.job, self.store = ex, plan, stage, indices, job, store
        self.name = job["metadata"]["name"]
        self.opts = ex.options
        self.wanted = set(indices)
        # seen[i] = 1 once index i is reported done (or when it is not ours to wait for):
        # completedIndexes is compressed ("0-9999"), and a bytearray finds what is new in a
        # run at memchr speed, where a set of 10,000 ints per Job event would be O(N) each time.
        self.seen = bytearray(b"\x01") * (max(indices) + 1 if indices else 0)
        for i in indices:
            self.seen[i] = 0
        self.last_completed: str | None = None
        self.reported_failed: set[int] = set()
        self.failure_target_logged = False
        self.pending_since: dict[str, float] = {}
        self.unschedulable_logged: set[str] = set()
        self.last_change = time.monotonic()
        self.last_status: Any = None
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
        uid = job["metadata"].get("uid")
        rv = job["metadata"].get("resourceVersion")
        last_pod_check = 0.0
        backoff_s = 0.5
        if self.observe(job):
            return job
        while True:
            timeout_s = max(1, int(min(self.opts.watch_timeout_s, self.opts.pod_check_interval_s)))
            w = _RawWatch()
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
                elif e.status in TRANSIENT_STATUS:
                    log.warning("watch of Job %s: HTTP %s; retrying in %.0f s", self.name, e.status, backoff_s)
                    time.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 30)
                else:
                    raise api_error(e, f"watching Job {self.ex.namespace}/{self.name}") from None
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
        fresh = self.ex.get_job(self.name)
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
        completed = status.get("completedIndexes")
        if completed != self.last_completed:
            self.last_completed = completed
            new = self._newly_done(completed)
            for marker in self._read_markers(new):
                self.bar.advance(marker or {})
        failed = parse_indexes(status.get("failedIndexes")) & self.wanted
        for i in sorted(failed - self.reported_failed):
            self.reported_failed.add(i)
            log.warning("stage %s: index %d failed (Job %s)", self.stage, i, self.name)
        target = condition(job, "FailureTarget")
        if target and not self.failure_target_logged:
            self.failure_target_logged = True
            log.warning("stage %s: Job %s is failing (%s: %s); waiting for its pods to stop", self.stage,
                        self.name, target.get("reason"), target.get("message", ""))
        return terminal(job) is not None

    def _newly_done(self, completed: str | None) -> list[int]:
        new: list[int] = []
        seen, n = self.seen, len(self.seen)
        for first, last in index_ranges(completed):
            end = min(last + 1, n)
            j = seen.find(0, first, end) if first < end else -1
            while j != -1:
                new.append(j)
                seen[j] = 1
                j = seen.find(0, j + 1, end)
        return new

    def _read_markers(self, indices: list[int]) -> list[dict[str, Any] | None]:
        """The markers of newly completed indices (their document counts feed the progress):
        one read each, concurrently on an object store (a GET is ~20 ms; 10,000 in a row
        would hold up the watch for minutes)."""
        if self.store.local or len(indices) <= 4:
            return [self.store.read_marker(self.stage, i) for i in indices]
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda i: self.store.read_marker(self.stage, i), indices))

    def check_pods(self, job: dict[str, Any]) -> None:
        """Fail fast on pods that can never start; say so once about unschedulable ones."""
        self.bar.tick()
        now = time.monotonic()
        # Only pending pods can be stuck: at 10,000 indices a list of every pod would be tens
        # of MB, every pod_check_interval_s.
        pods = self.ex.pods(job, phase="Pending")
        stuck_for = self.opts.pending_timeout_s
        current = set()
        for pod in pods:
            name = pod["metadata"]["name"]
            status = pod.get("status") or {}
            if status.get("phase") != "Pending":
                continue
            for cs in status.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in STUCK_REASONS:
                    current.add(name)
                    first = self.pending_since.setdefault(name, now)
                    if now - first >= stuck_for:
                        self.ex.delete_job(self.name)
                        index = pod_index(pod)
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
                and now - self.last_change >= stuck_for and not self.ex.pods(job, limit=1)):
            self.ex.delete_job(self.name)
            raise StageFailed(self.stage, {self.indices[0]: (
                f"ConfigError: Job {self.ex.namespace}/{self.name} created no pod in {stuck_for:.0f} s "
                f"(see `kubectl describe job {self.name} -n {self.ex.namespace}`: a missing service "
                "account, a ResourceQuota or an admission policy)")})

    # -- the verdict -------------------------------------------------------------------------
    def finish(self, job: dict[str, Any]) -> None:
        """Return if every wanted index has its marker; else raise StageFailed naming them."""
        verdict = terminal(job)
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
        cond = condition(job, "Failed") or {}
        status = job.get("status") or {}
        failed_indexes = parse_indexes(status.get("failedIndexes"))
        pods = self.ex.pods(job)
        by_index: dict[int, list[dict[str, Any]]] = {}
        for pod in pods:
            i = pod_index(pod)
            if i is not None:
                by_index.setdefault(i, []).append(pod)
        failures: dict[int, str] = {}
        tails: list[tuple[str, str]] = []
        for i in missing:
            failed_pods = sorted((p for p in by_index.get(i, []) if failed_exit(p) is not None),
                                 key=attempt_order)
            if failed_pods and (i in failed_indexes or failed_exit(failed_pods[-1]) == EXIT_CONFIG):
                pod = failed_pods[-1]
                tail = self.ex.log_tail(pod["metadata"]["name"], self.opts.log_tail_lines)
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
        term = terminated(pod) or {}
        code = term.get("exitCode")
        reason = term.get("reason") or ""
        detail = self._failure_record(pod_index(pod)) or last_line(tail) or last_line(term.get("message"))
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
            rec = self.store.read_json(layout.failure(self.stage, index))
        except Exception:  # noqa: BLE001 - absent or unreadable: fall back to the log
            return None
        if isinstance(rec, dict):
            msg = rec.get("message") or rec.get("error")
            return last_line(str(msg)) if msg else None
        return None
