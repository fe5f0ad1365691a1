"""The Job controller: reconciles one Indexed Job, like kube-controller-manager's (parallelism,
per-index backoff, pod failure policy, deadlines, TTL, status conditions)."""

from __future__ import annotations

import copy
import json
import secrets as _secrets
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from tests.k8s.standin.common import FAILURE_COUNT_KEY, INDEX_KEY, format_indexes, now

if TYPE_CHECKING:
    from tests.k8s.standin.server import StandIn


class JobController:
    """Reconciles one Indexed Job, like kube-controller-manager's job controller."""

    def __init__(self, server: StandIn, job: dict[str, Any]):
        self.s = server
        self.job = job
        self.ns = job["metadata"]["namespace"]
        self.name = job["metadata"]["name"]
        self.uid = job["metadata"]["uid"]
        spec = job["spec"]
        self.n = spec["completions"]
        self.indexed = spec.get("completionMode") == "Indexed"
        self.per_index = spec.get("backoffLimitPerIndex")
        self.succeeded: set[int] = set()
        self.failed_idx: set[int] = set()
        self.index_failures: dict[int, int] = {}
        self.pods_created: dict[int, int] = {}
        self.failed_count = 0
        self.accounted: set[str] = set()
        self.term_sent: dict[str, float] = {}
        self.max_active = 0  # for tests: parallelism was honoured
        self.stopped = False
        self.start = time.monotonic()
        self.finished_at: float | None = None

    def run(self) -> None:
        with self.s.cond:
            while not self.stopped and not self.s._stopping:
                self.reconcile()
                if self.stopped:
                    break
                if self.s.sync_period_s <= 0:
                    self.s.cond.wait(0.05)
                    continue
                # Batched, as kube-controller-manager's syncJobBatchPeriod: one reconcile (and at
                # most one status write) per period, however many pods changed meanwhile.
                until = time.monotonic() + self.s.sync_period_s
                while not self.stopped and not self.s._stopping and (left := until - time.monotonic()) > 0:
                    self.s.cond.wait(left)

    def _pods(self) -> list[dict[str, Any]]:
        return self.s.controller_pods(self.uid, self.ns)

    def _cond(self, type_: str) -> dict[str, Any] | None:
        for c in self.job["status"].get("conditions") or []:
            if c["type"] == type_ and c["status"] == "True":
                return c
        return None

    def _add_cond(self, type_: str, reason: str, message: str) -> None:
        self.job["status"].setdefault("conditions", []).append({
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now(), "lastTransitionTime": now()})

    def reconcile(self) -> None:
        job = self.job
        spec, status = job["spec"], job["status"]
        before = json.dumps(status, sort_keys=True)
        if self._cond("Complete") or self._cond("Failed"):
            ttl = spec.get("ttlSecondsAfterFinished")
            if ttl is not None and self.finished_at is not None and time.monotonic() - self.finished_at >= ttl:
                self.stopped = True
                self.s.delete_job(self.ns, self.name, "Background")
            return
        status.setdefault("startTime", now())
        pods = self._pods()
        active = [p for p in pods if p["status"].get("phase") in ("Pending", "Running")]

        # 1. account for finished pods
        for p in pods:
            pname = p["metadata"]["name"]
            phase = p["status"].get("phase")
            if pname in self.accounted or phase not in ("Succeeded", "Failed"):
                continue
            self.accounted.add(pname)
            i = int(p["metadata"]["labels"][INDEX_KEY])
            if self._cond("FailureTarget") or self._cond("SuccessCriteriaMet"):
                continue  # terminated on the way out: not counted
            if phase == "Succeeded":
                if i not in self.failed_idx:
                    self.succeeded.add(i)
                continue
            action, rule_n, code = self._policy_action(p)
            if action == "Ignore":
                continue
            self.failed_count += 1
            if action == "FailJob":
                self._add_cond("FailureTarget", "PodFailurePolicy",
                               f"Container {spec['template']['spec']['containers'][0]['name']} for pod "
                               f"{self.ns}/{pname} failed with exit code {code} matching FailJob rule at index {rule_n}")
            elif action == "FailIndex":
                self.failed_idx.add(i)
            elif self.per_index is not None:
                self.index_failures[i] = self.index_failures.get(i, 0) + 1
                if self.index_failures[i] > self.per_index:
                    self.failed_idx.add(i)
            elif self.failed_count > spec.get("backoffLimit", 6):
                self._add_cond("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit")

        # 2. decide
        finishing = self._cond("FailureTarget") or self._cond("SuccessCriteriaMet")
        decided_now = False
        if not finishing:
            deadline = spec.get("activeDeadlineSeconds")
            mfi = spec.get("maxFailedIndexes")
            if deadline is not None and time.monotonic() - self.start >= deadline:
                self._add_cond("FailureTarget", "DeadlineExceeded", "Job was active longer than specified deadline")
            elif mfi is not None and len(self.failed_idx) > mfi:
                self._add_cond("FailureTarget", "MaxFailedIndexesExceeded",
                               "Job has exceeded the specified maximal number of failed indexes")
            elif len(self.succeeded) + len(self.failed_idx) >= self.n:
                if self.failed_idx:
                    self._add_cond("FailureTarget", "FailedIndexes", "Job has failed indexes")
                else:
                    self._add_cond("SuccessCriteriaMet", "CompletionsReached",
                                   "Reached expected number of succeeded pods")
            finishing = self._cond("FailureTarget") or self._cond("SuccessCriteriaMet")
            decided_now = bool(finishing)
        if finishing:
            # Terminate what still runs: SIGTERM, SIGKILL after the grace period (<= 3 s here).
            grace = min(3.0, spec["template"]["spec"].get("terminationGracePeriodSeconds", 30))
            for p in active:
                pname = p["metadata"]["name"]
                if pname not in self.s.procs:
                    self.s._finish_pod(p, None)
                elif pname not in self.term_sent:
                    self.term_sent[pname] = time.monotonic()
                    self.s._kill(pname, signal.SIGTERM)
                elif time.monotonic() - self.term_sent[pname] >= grace:
                    self.s._kill(pname, signal.SIGKILL)
        else:
            # 3. pods: retry pending kubelet work, create new ones up to parallelism
            for p in active:
                if p["status"].get("phase") == "Pending" and p["metadata"]["name"] not in self.s.procs:
                    if time.monotonic() - p["metadata"].get("_created_mono", 0) >= self.s.pod_start_delay_s:
                        self.s.start_pod(p)
            busy = {int(p["metadata"]["labels"][INDEX_KEY]) for p in active}
            slots = spec["parallelism"] - len(active)
            for i in range(self.n):
                if slots <= 0:
                    break
                if i in self.succeeded or i in self.failed_idx or i in busy:
                    continue
                self._create_pod(i)
                slots -= 1
            active = [p for p in self._pods() if p["status"].get("phase") in ("Pending", "Running")]

        # 4. status
        self.max_active = max(self.max_active, len(active))
        status["active"] = len(active)
        status["ready"] = sum(1 for p in active if p["status"].get("phase") == "Running")
        status["succeeded"] = len(self.succeeded)
        status["failed"] = self.failed_count
        status["terminating"] = 0
        status["uncountedTerminatedPods"] = {}
        if self.indexed:
            status["completedIndexes"] = format_indexes(self.succeeded)
            if self.per_index is not None:
                status["failedIndexes"] = format_indexes(self.failed_idx)
        # The interim condition is written on its own first; the terminal one follows once
        # no pod is left running (as kube-controller-manager >= 1.31 does).
        if finishing and not active and not decided_now:
            target = self._cond("FailureTarget")
            if target:
                self._add_cond("Failed", target["reason"], target["message"])
            else:
                met = self._cond("SuccessCriteriaMet")
                self._add_cond("Complete", met["reason"], met["message"])
                status["completionTime"] = now()
            self.finished_at = time.monotonic()
        if json.dumps(status, sort_keys=True) != before:
            self.s.put("jobs", job)

    def _policy_action(self, pod: dict[str, Any]) -> tuple[str, int | None, int | None]:
        """The podFailurePolicy rule that matches a failed pod: (action, rule index, exit code)."""
        conds = {(c["type"], c["status"]) for c in pod["status"].get("conditions") or []}
        statuses = pod["status"].get("containerStatuses") or []
        for n, rule in enumerate((self.job["spec"].get("podFailurePolicy") or {}).get("rules") or []):
            for pat in rule.get("onPodConditions") or []:
                if (pat["type"], pat.get("status", "True")) in conds:
                    return rule["action"], n, None
            oec = rule.get("onExitCodes")
            if oec:
                for cs in statuses:
                    if oec.get("containerName") not in (None, cs["name"]):
                        continue
                    term = (cs.get("state") or {}).get("terminated")
                    if not term or term["exitCode"] == 0:
                        continue
                    hit = term["exitCode"] in oec["values"]
                    if hit == (oec["operator"] == "In"):
                        return rule["action"], n, term["exitCode"]
        return "Count", None, None

    def _create_pod(self, i: int) -> None:
        tpl = copy.deepcopy(self.job["spec"]["template"])
        suffix = "".join(_secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        name = f"{self.name}-{i}-{suffix}"
        attempt = self.pods_created.get(i, 0)
        self.pods_created[i] = attempt + 1
        meta = tpl.get("metadata") or {}
        labels = {**(meta.get("labels") or {}), INDEX_KEY: str(i)}
        annotations = {**(meta.get("annotations") or {}), INDEX_KEY: str(i),
                       "standin/first-attempt": "true" if attempt == 0 else "false"}
        if self.per_index is not None:
            annotations[FAILURE_COUNT_KEY] = str(self.index_failures.get(i, 0))
        spec = tpl["spec"]
        spec["hostname"] = f"{self.name}-{i}"
        spec["nodeName"] = "standin-node"
        spec.setdefault("serviceAccountName", "default")
        for c in spec["containers"]:
            c["env"] = list(c.get("env") or []) + [{
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": f"metadata.labels['{INDEX_KEY}']"}}}]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "uid": str(uuid.uuid4()), "labels": labels,
                         "annotations": annotations, "creationTimestamp": now(), "_created_mono": time.monotonic(),
                         "finalizers": ["batch.kubernetes.io/job-tracking"],
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": self.name,
                                              "uid": self.uid, "controller": True, "blockOwnerDeletion": True}]},
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "Burstable", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]},
        }
        self.s.put("pods", pod, "ADDED")
        if self.s.pod_start_delay_s <= 0:
            self.s.start_pod(pod)
