"""A stand-in for the Kubernetes API server and Job controller, for tests without a cluster.

It speaks the real REST wire format for the subset the coordinator uses, so the real
``kubernetes`` client talks to it through an ordinary kubeconfig (http, 127.0.0.1, a free
port, a bearer token):

* ``batch/v1`` Jobs: create (defaulting, schema + semantic validation → 422, 409 on a
  taken name), get, list, watch (chunked JSON lines from a ``resourceVersion``; ``410
  Expired`` once the history was compacted; bookmarks), delete with ``propagationPolicy``
  (Background, Foreground, Orphan);
* core/v1 Pods: get, list (label selectors), ``/log`` (``tailLines``), the ``eviction``
  subresource (which disrupts the pod with a ``DisruptionTarget`` condition);
* ``Status`` errors 400/401/403/404/405/409/410/422; RBAC by token: each token maps to a
  list of Role rules (e.g. the Role of ``manifests/base``) and anything else is 403.

Each pod "runs" as a local subprocess with the environment Kubernetes injects
(``JOB_COMPLETION_INDEX`` via the completion-index label, ``HOSTNAME=<job>-<index>``, the
completion-index annotation and label, ``env``/``envFrom``/``fieldRef`` resolved), its
output captured as the pod log. ``preproc`` as ``command[0]`` runs ``python -m preproc``.
A controller thread per Job honours ``parallelism``, ``backoffLimit``/``backoffLimitPerIndex``,
``podFailurePolicy`` (exit codes, pod conditions; Ignore/FailJob/FailIndex/Count),
``maxFailedIndexes``, ``activeDeadlineSeconds`` and ``ttlSecondsAfterFinished``, and writes
``status`` as the real one does (compressed ``completedIndexes``/``failedIndexes``, the
interim ``FailureTarget``/``SuccessCriteriaMet`` conditions, then ``Complete``/``Failed``
once no pod is left running).

Test hooks, as pod environment the stand-in interprets (a real kubelet ignores them):
``STANDIN_FAIL_ONCE=1,3`` SIGKILLs the first pod of those indices right after it starts
(exit 137, a retryable failure); ``STANDIN_DISRUPT_ONCE=2`` preempts the first pod of
index 2 (``DisruptionTarget``); ``STANDIN_EXIT=4:3`` makes every pod of index 4 exit 3
without running. An image containing ``does-not-exist`` cannot be pulled. Python-side:
:meth:`StandIn.evict`, :meth:`StandIn.compact`, :meth:`StandIn.drop_watches`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets as _secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "standin-admin-token"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
FAILURE_COUNT_KEY = "batch.kubernetes.io/job-index-failure-count"
MAX_INT32 = 2**31 - 1


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status_error(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.body = status_error(code, reason, message, details)
        self.code = code


# -- index sets and selectors -------------------------------------------------------------------
def format_indexes(indexes) -> str:
    runs: list[list[int]] = []
    for i in sorted(set(indexes)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector(text: str | None) -> Callable[[dict[str, str]], bool]:
    """A matcher for ``a=b,c!=d,e in (x,y),f notin (z),g,!h``."""
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for part in _split_selector(text or ""):
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\((.*)\)$", part)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            reqs.append((lambda k, vs: lambda l: l.get(k) in vs)(key, vals) if op == "in"
                        else (lambda k, vs: lambda l: l.get(k) not in vs)(key, vals))
        elif "!=" in part:
            k, v = (s.strip() for s in part.split("!=", 1))
            reqs.append((lambda k, v: lambda l: l.get(k) != v)(k, v))
        elif "=" in part:
            k, v = (s.strip() for s in part.replace("==", "=").split("=", 1))
            reqs.append((lambda k, v: lambda l: l.get(k) == v)(k, v))
        elif part.startswith("!"):
            reqs.append((lambda k: lambda l: k not in l)(part[1:].strip()))
        else:
            reqs.append((lambda k: lambda l: k in l)(part))
    return lambda labels: all(r(labels or {}) for r in reqs)


def field_selector(text: str | None) -> Callable[[dict[str, Any]], bool]:
    reqs = []
    for part in _split_selector(text or ""):
        neg = "!=" in part
        k, v = (s.strip() for s in part.replace("==", "=").split("!=" if neg else "=", 1))
        if k not in ("metadata.name", "metadata.namespace", "status.phase"):
            raise ApiError(400, "BadRequest", f"field label not supported: {k}")
        reqs.append((k, v, neg))

    def get(obj, path):
        for p in path.split("."):
            obj = (obj or {}).get(p)
        return obj

    return lambda obj: all((get(obj, k) == v) != neg for k, v, neg in reqs)


# -- the server ---------------------------------------------------------------------------------
class StandIn:
    """The API server + Job controller + "kubelet". Use as a context manager.

    ``tokens`` maps bearer tokens to RBAC rules (a list of Role ``rules``; ``None`` = all
    allowed); :data:`ADMIN_TOKEN` is always allowed everything.
    """

    def __init__(self, *, tokens: dict[str, list[dict[str, Any]] | None] | None = None,
                 python: str = sys.executable, kube_version: str = "1.34", history: int = 10000,
                 secrets: dict[tuple[str, str], dict[str, str]] | None = None,
                 validate_schema: bool = True, pod_start_delay_s: float = 0.0):
        self.tokens: dict[str, list[dict[str, Any]] | None] = {ADMIN_TOKEN: None, **(tokens or {})}
        self.python = python
        self.kube_version = kube_version
        self.validate_schema = validate_schema
        self.pod_start_delay_s = pod_start_delay_s
        self.secrets = dict(secrets or {})
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 100
        self.events: deque[tuple[int, str, str, dict[str, Any]]] = deque(maxlen=history)
        self.oldest_rv = self.rv  # watches from an older version get 410 Expired
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource, ns, name)
        self.controllers: dict[str, "JobController"] = {}  # by job uid
        self.procs: dict[str, subprocess.Popen] = {}  # by pod name
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query), for assertions
        self.deletions: list[tuple[str, str, str]] = []  # (resource, name, propagationPolicy)
        self.watch_generation = 0
        self.root = Path(tempfile.mkdtemp(prefix="standin-"))
        self.httpd: ThreadingHTTPServer | None = None
        self._stopping = False

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> "StandIn":
        handler = type("Handler", (_Handler,), {"standin": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, name="standin-http", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self._stopping = True
        with self.cond:
            for c in list(self.controllers.values()):
                c.stopped = True
            self.cond.notify_all()
        for name in list(self.procs):
            self._kill(name, signal.SIGKILL)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | os.PathLike, *, token: str = ADMIN_TOKEN,
                         namespace: str = "default", context: str = "standin") -> str:
        cfg = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": f"{context}-user", "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": "standin", "user": f"{context}-user",
                                                       "namespace": namespace}}],
            "current-context": context,
        }
        Path(path).write_text(yaml.safe_dump(cfg))
        return str(path)

    # storage --------------------------------------------------------------------------------
    def _bump(self, resource: str, ns: str, obj: dict[str, Any], event: str) -> None:
        """Record a change: new resourceVersion, an event for watchers. Caller holds the lock."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, resource, event, copy.deepcopy(obj)))
        if len(self.events) == self.events.maxlen:
            self.oldest_rv = self.events[0][0] - 1
        self.cond.notify_all()

    def put(self, resource: str, obj: dict[str, Any], event: str = "MODIFIED") -> None:
        meta = obj["metadata"]
        with self.lock:
            self.objects[(resource, meta["namespace"], meta["name"])] = obj
            self._bump(resource, meta["namespace"], obj, event)

    def remove(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.pop((resource, ns, name), None)
            if obj is not None:
                self._bump(resource, ns, obj, "DELETED")
            return obj

    def get(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get((resource, ns, name))

    def list(self, resource: str, ns: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [o for (r, n, _), o in sorted(self.objects.items(), key=lambda kv: int(kv[1]["metadata"]["resourceVersion"]))
                    if r == resource and (ns is None or n == ns)]

    # test hooks -----------------------------------------------------------------------------
    def job(self, name: str, ns: str = "default") -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.get("jobs", ns, name))

    def pods(self, ns: str = "default", job: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(p) for p in self.list("pods", ns)
                    if job is None or p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job]

    def max_active(self, name: str, ns: str = "default") -> int:
        """The most pods a Job ever had running at once (its controller's record)."""
        with self.lock:
            job = self.get("jobs", ns, name)
            ctl = self.controllers.get(job["metadata"]["uid"]) if job else None
            return ctl.max_active if ctl else 0

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410."""
        with self.lock:
            self.events.clear()
            self.oldest_rv = self.rv

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (a proxy or an API server restart)."""
        with self.cond:
            self.watch_generation += 1
            self.cond.notify_all()

    def evict(self, pod_name: str, ns: str = "default", reason: str = "EvictionByEvictionAPI") -> None:
        """Disrupt a pod: a DisruptionTarget condition, then the container is killed."""
        with self.lock:
            pod = self.get("pods", ns, pod_name)
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{pod_name}" not found',
                               {"name": pod_name, "kind": "pods"})
            if pod["status"].get("phase") in ("Succeeded", "Failed"):
                return
            pod["status"].setdefault("conditions", []).append({
                "type": "DisruptionTarget", "status": "True", "reason": reason,
                "message": "Eviction API: evicting" if reason == "EvictionByEvictionAPI" else
                           "Kubernetes Scheduler: preempting", "lastTransitionTime": _now()})
            pod["metadata"]["deletionTimestamp"] = _now()
            self.put("pods", pod)
        if not self._kill(pod_name, signal.SIGKILL):
            with self.lock:  # not started yet: it fails without a container exit
                self._finish_pod(pod, None)

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                got = predicate()
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("stand-in: condition not met in time")
                self.cond.wait(min(left, 0.1))

    # processes ------------------------------------------------------------------------------
    def _kill(self, pod_name: str, sig: int) -> bool:
        proc = self.procs.get(pod_name)
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _finish_pod(self, pod: dict[str, Any], returncode: int | None) -> None:
        """The container ended (or never started): write the pod's final status. Holds lock."""
        status = pod["status"]
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        c = pod["spec"]["containers"][0]
        if returncode is None:
            term = {"exitCode": 137, "reason": "ContainerStatusUnknown", "message": "The container could not be located when the pod was terminated"}
        else:
            code = returncode if returncode >= 0 else 128 - returncode
            term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
            if code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                log = self._log_path(pod)
                if log.exists():
                    lines = log.read_bytes()[-2048:].decode("utf-8", "replace").splitlines()[-80:]
                    term["message"] = "\n".join(lines)
        term["startedAt"] = status.get("startTime", _now())
        term["finishedAt"] = _now()
        status["phase"] = "Succeeded" if term["exitCode"] == 0 and returncode is not None else "Failed"
        status["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                        "restartCount": 0, "started": False, "state": {"terminated": term}}]
        status["conditions"] = [x for x in status.get("conditions", []) if x["type"] != "Ready"] + [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": _now()}]
        self.put("pods", pod)

    def _log_path(self, pod: dict[str, Any]) -> Path:
        return self.root / "pods" / pod["metadata"]["name"] / "log"

    def resolve_env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """The container environment as the kubelet builds it; raises LookupError for a
        missing Secret/ConfigMap (the pod then waits in CreateContainerConfigError)."""
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            if "secretRef" in src:
                ref = src["secretRef"]
                data = self.secrets.get((ns, ref["name"]))
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise LookupError(f'secret "{ref["name"]}" not found')
                env.update({src.get("prefix", "") + k: v for k, v in data.items()})
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    env[e["name"]] = self._field(pod, vf["fieldRef"]["fieldPath"])
                elif "secretKeyRef" in vf:
                    ref = vf["secretKeyRef"]
                    data = self.secrets.get((ns, ref["name"]))
                    if data is None or ref["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise LookupError(f'secret "{ref["name"]}" not found')
                    env[e["name"]] = data[ref["key"]]
        return env

    @staticmethod
    def _field(pod: dict[str, Any], path: str) -> str:
        m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
        if m:
            return pod["metadata"].get(m.group(1), {}).get(m.group(2), "")
        return {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
                "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
                "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                "status.podIP": "10.244.0.10", "status.hostIP": "172.18.0.2"}.get(path, "")

    def start_pod(self, pod: dict[str, Any]) -> None:
        """The kubelet's part: pull, build the environment, run the container. Holds lock."""
        name = pod["metadata"]["name"]
        c = pod["spec"]["containers"][0]
        status = pod["status"]
        if "does-not-exist" in c["image"]:
            reason = "ImagePullBackOff" if status.get("_pull_tried") else "ErrImagePull"
            status["_pull_tried"] = True
            self._waiting(pod, reason, f'Back-off pulling image "{c["image"]}"' if reason == "ImagePullBackOff"
                          else f'failed to pull and unpack image "{c["image"]}": not found')
            return
        try:
            env = self.resolve_env(pod, c)
        except LookupError as e:
            self._waiting(pod, "CreateContainerConfigError", str(e))
            return
        index = int(pod["metadata"]["labels"][INDEX_KEY])
        podd = self.root / "pods" / name
        (podd / "tmp").mkdir(parents=True, exist_ok=True)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT),
                "HOSTNAME": pod["spec"].get("hostname", name), "LANG": "C.UTF-8"}
        if any(m.get("mountPath") == "/tmp" for m in c.get("volumeMounts") or []):
            base["TMPDIR"] = str(podd / "tmp")  # the emptyDir on /tmp
        full_env = {**base, **env}
        cmd = list(c.get("command") or []) + list(c.get("args") or [])
        if not cmd:
            self._waiting(pod, "RunContainerError", "no command and the stand-in has no image entrypoint")
            return
        if cmd[0] == "preproc":
            cmd = [self.python, "-m", "preproc"] + cmd[1:]
        elif cmd[0] in ("python", "python3"):
            cmd = [self.python] + cmd[1:]
        exit_override = _index_map(env.get("STANDIN_EXIT")).get(index)
        if exit_override is not None:
            cmd = [self.python, "-c", f"import sys; print('stand-in: exiting {exit_override}'); sys.exit({exit_override})"]
        log = open(podd / "log", "wb")
        proc = subprocess.Popen(cmd, env=full_env, cwd=str(podd), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        status.pop("_pull_tried", None)
        status["phase"] = "Running"
        status["startTime"] = status.get("startTime") or _now()
        status["podIP"] = "10.244.0.10"
        status["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                                        "restartCount": 0, "started": True,
                                        "state": {"running": {"startedAt": _now()}}}]
        status["conditions"] = [x for x in status.get("conditions", []) if x["type"] not in ("Ready", "ContainersReady")] + [
            {"type": "Ready", "status": "True", "lastTransitionTime": _now()},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": _now()}]
        self.put("pods", pod)
        threading.Thread(target=self._reap, args=(pod, proc), daemon=True, name=f"reap-{name}").start()
        first = pod["metadata"]["annotations"].get("standin/first-attempt") == "true"
        if first and index in _index_set(env.get("STANDIN_FAIL_ONCE")):
            os.killpg(proc.pid, signal.SIGKILL)
        if first and index in _index_set(env.get("STANDIN_DISRUPT_ONCE")):
            threading.Thread(target=self.evict, args=(name, pod["metadata"]["namespace"], "PreemptionByScheduler"),
                             daemon=True).start()

    def _waiting(self, pod: dict[str, Any], reason: str, message: str) -> None:
        c = pod["spec"]["containers"][0]
        state = {"waiting": {"reason": reason, "message": message}}
        cs = pod["status"].get("containerStatuses") or [{}]
        if (cs[0].get("state") or {}) != state:
            pod["status"]["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "",
                                                   "ready": False, "restartCount": 0, "started": False,
                                                   "state": state}]
            self.put("pods", pod)

    def _reap(self, pod: dict[str, Any], proc: subprocess.Popen) -> None:
        rc = proc.wait()
        with self.lock:
            self.procs.pop(pod["metadata"]["name"], None)
            if self.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"]) is pod:
                self._finish_pod(pod, rc)
            else:
                self.cond.notify_all()

    # jobs -----------------------------------------------------------------------------------
    def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("kind") not in (None, "Job") or body.get("apiVersion") not in (None, "batch/v1"):
            raise ApiError(400, "BadRequest", f"expected a batch/v1 Job, got {body.get('apiVersion')}/{body.get('kind')}")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, ns):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + _secrets.token_hex(3)[:5]
        validate_job(body, self.kube_version if self.validate_schema else None)
        name = meta["name"]
        with self.lock:
            if self.get("jobs", ns, name) is not None:
                raise ApiError(409, "AlreadyExists", f'jobs.batch "{name}" already exists',
                               {"name": name, "group": "batch", "kind": "jobs"})
            job = default_job(body, ns)
            self.put("jobs", job, "ADDED")
            ctl = JobController(self, job)
            self.controllers[job["metadata"]["uid"]] = ctl
            threading.Thread(target=ctl.run, daemon=True, name=f"job-{name}").start()
            return copy.deepcopy(job)

    def delete_job(self, ns: str, name: str, policy: str | None) -> dict[str, Any]:
        policy = policy or "Orphan"  # batch/v1 Jobs orphan their pods unless told otherwise
        with self.lock:
            job = self.get("jobs", ns, name)
            if job is None:
                raise ApiError(404, "NotFound", f'jobs.batch "{name}" not found',
                               {"name": name, "group": "batch", "kind": "jobs"})
            self.deletions.append(("jobs", name, policy))
            uid = job["metadata"]["uid"]
            ctl = self.controllers.pop(uid, None)
            if ctl:
                ctl.stopped = True
            pods = [p for p in self.list("pods", ns)
                    if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]
            if policy == "Orphan":
                for p in pods:
                    p["metadata"]["ownerReferences"] = []
                    self.put("pods", p)
                self.remove("jobs", ns, name)
            elif policy == "Background":
                self.remove("jobs", ns, name)
                threading.Thread(target=self._collect, args=(pods, 0.2), daemon=True).start()
            else:  # Foreground: the Job stays (deletionTimestamp) until its pods are gone
                job["metadata"]["deletionTimestamp"] = _now()
                job["metadata"].setdefault("finalizers", []).append("foregroundDeletion")
                self.put("jobs", job)
                threading.Thread(target=self._collect, args=(pods, 0.0, job), daemon=True).start()
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid}}

    def _collect(self, pods: list[dict[str, Any]], delay_s: float, job: dict[str, Any] | None = None) -> None:
        """The garbage collector: delete a deleted Job's pods (and then a foreground Job)."""
        time.sleep(delay_s)
        for p in pods:
            self._kill(p["metadata"]["name"], signal.SIGKILL)
        for p in pods:
            proc = self.procs.get(p["metadata"]["name"])
            if proc is not None:
                proc.wait()
            self.remove("pods", p["metadata"]["namespace"], p["metadata"]["name"])
        if job is not None:
            self.remove("jobs", job["metadata"]["namespace"], job["metadata"]["name"])


def _index_set(text: str | None) -> set[int]:
    return {int(x) for x in (text or "").replace(" ", "").split(",") if x}


def _index_map(text: str | None) -> dict[int, int]:
    out = {}
    for part in (text or "").replace(" ", "").split(","):
        if part:
            i, _, code = part.partition(":")
            out[int(i)] = int(code)
    return out


# -- validation and defaulting, as the API server does for Jobs ---------------------------------
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def validate_job(job: dict[str, Any], kube_version: str | None) -> None:
    """422 Invalid for what the real API server rejects (the subset we can hit)."""
    causes: list[tuple[str, str]] = []
    if kube_version:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(job, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            causes.append((path or "<root>", e.message[:300]))
    meta = job.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > 63 or not _DNS1123_SUBDOMAIN.match(name):
        causes.append(("metadata.name", f'Invalid value: "{name}": must be no more than 63 characters and a lowercase RFC 1123 subdomain'))
    for where, labels in (("metadata.labels", meta.get("labels") or {}),
                          ("spec.template.metadata.labels", (((job.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})):
        for k, v in labels.items():
            if len(str(v)) > 63 or not _LABEL_VALUE.match(str(v)):
                causes.append((f"{where}", f'Invalid value: "{v}": a valid label must be an empty string or consist of alphanumeric characters, \'-\', \'_\' or \'.\' (at most 63)'))
            if len(k.split("/")[-1]) > 63 or not _LABEL_NAME.match(k.split("/")[-1]):
                causes.append((f"{where}", f'Invalid value: "{k}": name part must consist of alphanumeric characters'))
    spec = job.get("spec") or {}
    tpl = spec.get("template") or {}
    pod = tpl.get("spec") or {}
    indexed = spec.get("completionMode") == "Indexed"
    if indexed and spec.get("completions") is None:
        causes.append(("spec.completions", "Required value: when completion mode is Indexed"))
    if spec.get("backoffLimitPerIndex") is not None:
        if not indexed:
            causes.append(("spec.backoffLimitPerIndex", "Forbidden: requires indexed completion mode"))
        if (spec.get("completions") or 0) > 100000:
            causes.append(("spec.completions", "Invalid value: must be less than or equal to 100000 when backoffLimitPerIndex is specified"))
    if spec.get("maxFailedIndexes") is not None:
        if spec.get("backoffLimitPerIndex") is None:
            causes.append(("spec.maxFailedIndexes", "Required value: when maxFailedIndexes is specified"))
        elif spec["maxFailedIndexes"] > (spec.get("completions") or 0):
            causes.append(("spec.maxFailedIndexes", "Invalid value: must be less than or equal to completions"))
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(("spec.template.spec.restartPolicy", 'Unsupported value: supported values: "OnFailure", "Never"'))
    pfp = spec.get("podFailurePolicy")
    if pfp:
        if pod.get("restartPolicy") != "Never":
            causes.append(("spec.template.spec.restartPolicy", "Invalid value: only \"Never\" is supported when podFailurePolicy is specified"))
        if spec.get("podReplacementPolicy") not in (None, "Failed"):
            causes.append(("spec.podReplacementPolicy", "Not supported: must be Failed when podFailurePolicy is specified"))
        names = {c.get("name") for c in pod.get("containers") or []} | {c.get("name") for c in pod.get("initContainers") or []}
        for n, rule in enumerate(pfp.get("rules") or []):
            at = f"spec.podFailurePolicy.rules[{n}]"
            if rule.get("action") == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
                causes.append((f"{at}.action", "Invalid value: requires the backoffLimitPerIndex to be set"))
            oec = rule.get("onExitCodes")
            if oec and rule.get("onPodConditions"):
                causes.append((at, "Invalid value: specifying both OnExitCodes and OnPodConditions is not supported"))
            if oec:
                vals = oec.get("values") or []
                if vals != sorted(set(vals)):
                    causes.append((f"{at}.onExitCodes.values", "Invalid value: must be ordered"))
                if oec.get("operator") == "In" and 0 in vals:
                    causes.append((f"{at}.onExitCodes.values", "Invalid value: must not be 0 for the In operator"))
                if oec.get("containerName") is not None and oec["containerName"] not in names:
                    causes.append((f"{at}.onExitCodes.containerName", "Invalid value: must be one of the container or initContainer names in the pod template"))
    for c in pod.get("containers") or []:
        if not c.get("image"):
            causes.append(("spec.template.spec.containers[0].image", "Required value"))
    if causes:
        msg = f'Job.batch "{name}" is invalid: ' + ", ".join(f"{f}: {m}" for f, m in causes)
        raise ApiError(422, "Invalid", msg, {"name": name, "group": "batch", "kind": "Job",
                                             "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                                                        for f, m in causes]})


def default_job(body: dict[str, Any], ns: str) -> dict[str, Any]:
    job = copy.deepcopy(body)
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    meta = job["metadata"]
    uid = str(uuid.uuid4())
    meta.update(namespace=ns, uid=uid, creationTimestamp=_now(), generation=1)
    spec = job["spec"]
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", spec["parallelism"] if spec.get("completionMode") == "Indexed" else 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("backoffLimit", MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6)
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        if "onExitCodes" in rule:
            rule.setdefault("onPodConditions", [])  # the API server's default
    gen = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": meta["name"],
           "controller-uid": uid, "job-name": meta["name"]}
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    tmeta = spec["template"].setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), **gen}
    meta["labels"] = {**gen, **(meta.get("labels") or {})}
    pod = spec["template"]["spec"]
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("schedulerName", "default-scheduler")
    pod.setdefault("terminationGracePeriodSeconds", 30)
    for c in pod.get("containers") or []:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "Always" if c["image"].endswith(":latest") or ":" not in c["image"] else "IfNotPresent")
    job["status"] = {}
    return job


# -- the Job controller -------------------------------------------------------------------------
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
                self.s.cond.wait(0.05)

    def _pods(self) -> list[dict[str, Any]]:
        return [p for p in self.s.list("pods", self.ns)
                if p["metadata"]["labels"].get("batch.kubernetes.io/controller-uid") == self.uid]

    def _cond(self, type_: str) -> dict[str, Any] | None:
        for c in self.job["status"].get("conditions") or []:
            if c["type"] == type_ and c["status"] == "True":
                return c
        return None

    def _add_cond(self, type_: str, reason: str, message: str) -> None:
        self.job["status"].setdefault("conditions", []).append({
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": _now(), "lastTransitionTime": _now()})

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
        status.setdefault("startTime", _now())
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
                status["completionTime"] = _now()
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
                         "annotations": annotations, "creationTimestamp": _now(), "_created_mono": time.monotonic(),
                         "finalizers": ["batch.kubernetes.io/job-tracking"],
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": self.name,
                                              "uid": self.uid, "controller": True, "blockOwnerDeletion": True}]},
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "Burstable", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}]},
        }
        self.s.put("pods", pod, "ADDED")
        if self.s.pod_start_delay_s <= 0:
            self.s.start_pod(pod)


# -- HTTP ---------------------------------------------------------------------------------------
_ROUTES = [
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs$"), "batch", "jobs", "collection"),
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)$"), "batch", "jobs", "item"),
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)/status$"), "batch", "jobs/status", "item"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods$"), "", "pods", "collection"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$"), "", "pods", "item"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$"), "", "pods/log", "item"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/eviction$"), "", "pods/eviction", "item"),
]
_LIST_KIND = {"jobs": ("JobList", "batch/v1"), "pods": ("PodList", "v1")}


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as served: without the stand-in's private bookkeeping (``_`` keys)."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return obj


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not JSON") from None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        s = self.standin
        url = urlsplit(self.path)
        path = unquote(url.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        s.requests.append((method, path, url.query))
        try:
            if method in ("POST", "PUT", "PATCH", "DELETE"):
                body = self._body()
            else:
                body = {}
            if path == "/version":
                major, minor = s.kube_version.split(".")[:2]
                return self._send_json(200, {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-standin",
                                             "platform": "linux/amd64"})
            for rx, group, resource, shape in _ROUTES:
                m = rx.match(path)
                if m:
                    break
            else:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            ns = m.group(1)
            name = m.group(2) if shape == "item" else None
            watching = q.get("watch") in ("true", "1")
            verb = {"GET": ("watch" if watching else "get" if shape == "item" else "list"), "POST": "create",
                    "DELETE": "delete", "PUT": "update", "PATCH": "patch"}[method]
            self._authorize(group, resource, verb, ns, name)
            if resource == "jobs" and shape == "collection":
                if method == "POST":
                    return self._send_json(201, _public(s.create_job(ns, body)))
                if method == "GET":
                    return self._list_or_watch("jobs", ns, q, watching)
            elif resource == "jobs" and method == "GET":
                return self._send_json(200, _public(self._must("jobs", ns, name)))
            elif resource == "jobs/status" and method == "GET":
                return self._send_json(200, _public(self._must("jobs", ns, name)))
            elif resource == "jobs" and method == "DELETE":
                policy = body.get("propagationPolicy") or q.get("propagationPolicy")
                if body.get("orphanDependents") is True or q.get("orphanDependents") == "true":
                    policy = "Orphan"
                return self._send_json(200, s.delete_job(ns, name, policy))
            elif resource == "pods" and shape == "collection" and method == "GET":
                return self._list_or_watch("pods", ns, q, watching)
            elif resource == "pods" and method == "GET":
                return self._send_json(200, _public(self._must("pods", ns, name)))
            elif resource == "pods/log" and method == "GET":
                return self._log(ns, name, q)
            elif resource == "pods/eviction" and method == "POST":
                self._must("pods", ns, name)
                s.evict(name, ns)
                return self._send_json(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                             "status": "Success", "code": 201})
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({method} {resource})")
        except ApiError as e:
            self._send_json(e.code, e.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _authorize(self, group: str, resource: str, verb: str, ns: str, name: str | None) -> None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None or token not in self.standin.tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        rules = self.standin.tokens[token]
        if rules is None:
            return
        for r in rules:
            if ((group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
                    and (resource in r.get("resources", []) or "*" in r.get("resources", []))
                    and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
                    and (not r.get("resourceNames") or name in r["resourceNames"])):
                return
        res, _, sub = resource.partition("/")
        what = f'{res}{"." + group if group else ""}' + (f'/{sub}' if sub else "")
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "system:serviceaccount:{ns}:preproc-coordinator" '
                                         f'cannot {verb} resource "{res}" in API group "{group}" in the namespace "{ns}"',
                       {"kind": res, "group": group, "name": name} if name else {"kind": res, "group": group})

    def _must(self, resource: str, ns: str, name: str) -> dict[str, Any]:
        obj = self.standin.job(name, ns) if resource == "jobs" else next(
            (p for p in self.standin.pods(ns) if p["metadata"]["name"] == name), None)
        if obj is None:
            group = "batch" if resource == "jobs" else ""
            raise ApiError(404, "NotFound", f'{resource}{".batch" if group else ""} "{name}" not found',
                           {"name": name, "group": group, "kind": resource})
        return obj

    def _log(self, ns: str, name: str, q: dict[str, str]) -> None:
        pod = self._must("pods", ns, name)
        c = q.get("container")
        names = [x["name"] for x in pod["spec"]["containers"]]
        if c is not None and c not in names:
            raise ApiError(400, "BadRequest", f"container {c} is not valid for pod {name}")
        if pod["status"].get("phase") == "Pending":
            raise ApiError(400, "BadRequest", f'container "{names[0]}" in pod "{name}" is waiting to start: ContainerCreating')
        path = self.standin._log_path(pod)
        data = path.read_bytes() if path.exists() else b""
        if "tailLines" in q:
            n = int(q["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in q:
            data = data[: int(q["limitBytes"])]
        self._send_text(200, data)

    def _list_or_watch(self, resource: str, ns: str, q: dict[str, str], watching: bool) -> None:
        s = self.standin
        lsel = label_selector(q.get("labelSelector"))
        fsel = field_selector(q.get("fieldSelector"))

        def match(obj: dict[str, Any]) -> bool:
            return (obj["metadata"]["namespace"] == ns and lsel(obj["metadata"].get("labels") or {}) and fsel(obj))

        if not watching:
            with s.lock:
                items = [_public(o) for o in s.list(resource, ns) if match(o)]
                rv = s.rv
            kind, api = _LIST_KIND[resource]
            return self._send_json(200, {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": str(rv)},
                                         "items": items})
        self._watch(resource, q, match)

    def _watch(self, resource: str, q: dict[str, str], match: Callable[[dict[str, Any]], bool]) -> None:
        s = self.standin
        timeout_s = min(float(q.get("timeoutSeconds") or 1800), 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        since = q.get("resourceVersion")
        kind, api = _LIST_KIND[resource]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        deadline = time.monotonic() + timeout_s
        with s.cond:
            generation = s.watch_generation
            if since in (None, "", "0"):
                initial = [o for o in s.list(resource) if match(o)]
                cursor = s.rv
                pending = [{"type": "ADDED", "object": _public(o)} for o in initial]
            else:
                cursor = int(since)
                if cursor < s.oldest_rv:
                    pending = [{"type": "ERROR", "object": status_error(
                        410, "Expired", f"too old resource version: {cursor} ({s.oldest_rv + 1})")}]
                    cursor = None
                else:
                    pending = []
        try:
            for ev in pending:
                send(ev)
            if cursor is None:
                return self._end_chunks()
            while True:
                with s.cond:
                    while True:
                        if s.watch_generation != generation or s._stopping:
                            self.close_connection = True
                            return  # cut without the last chunk: the client sees a broken stream
                        if cursor < s.oldest_rv:
                            batch = [{"type": "ERROR", "object": status_error(
                                410, "Expired", f"too old resource version: {cursor} ({s.oldest_rv + 1})")}]
                            cursor = None
                            break
                        batch = []
                        for rv, res, typ, obj in s.events:
                            if rv > cursor and res == resource:
                                if match(obj):
                                    batch.append({"type": typ, "object": _public(obj)})
                        new_cursor = s.rv
                        if batch:
                            cursor = new_cursor
                            break
                        cursor = new_cursor
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        s.cond.wait(min(left, 0.5))
                for ev in batch:
                    send(ev)
                if cursor is None:
                    return self._end_chunks()
                if time.monotonic() >= deadline:
                    if bookmarks:
                        send({"type": "BOOKMARK", "object": {"kind": kind.removesuffix("List"), "apiVersion": api,
                                                             "metadata": {"resourceVersion": str(cursor)}}})
                    return self._end_chunks()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def rbac_rules_from(path: str | os.PathLike, role_name: str | None = None) -> list[dict[str, Any]]:
    """The ``rules`` of the (first or named) Role in a YAML file or kustomize output."""
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if doc and doc.get("kind") == "Role" and (role_name is None or doc["metadata"]["name"] == role_name):
            return doc["rules"]
    raise LookupError(f"no Role in {path}")
