"""The stand-in's state and its "kubelet": objects by resource, resourceVersions and the
watch history, pods run as local subprocesses (their environment resolved as Kubernetes
does), pod logs, eviction; and the Job create/delete that the HTTP layer calls."""

from __future__ import annotations

import copy
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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.k8s.standin.api import ApiHandler
from tests.k8s.standin.common import ADMIN_TOKEN, INDEX_KEY, REPO_ROOT, ApiError, index_map, index_set, now
from tests.k8s.standin.controller import JobController
from tests.k8s.standin.validation import default_job, validate_job
from tests.k8s.standin.zygote import PodProcess, shared_zygote


class StandIn:
    """The API server + Job controller + "kubelet". Use as a context manager.

    ``tokens`` maps bearer tokens to RBAC rules (a list of Role ``rules``; ``None`` = all
    allowed); :data:`ADMIN_TOKEN` is always allowed everything.
    """

    def __init__(self, *, tokens: dict[str, list[dict[str, Any]] | None] | None = None,
                 python: str = sys.executable, kube_version: str = "1.34", history: int = 10000,
                 secrets: dict[tuple[str, str], dict[str, str]] | None = None,
                 validate_schema: bool = True, pod_start_delay_s: float = 0.0,
                 pod_runner: Callable[[list[str], dict[str, str], int], int] | None = None,
                 pod_runner_threads: int = 8, sync_period_s: float = 0.0, zygote: bool = True):
        self.tokens: dict[str, list[dict[str, Any]] | None] = {ADMIN_TOKEN: None, **(tokens or {})}
        self.python = python
        self.kube_version = kube_version
        self.validate_schema = validate_schema
        self.pod_start_delay_s = pod_start_delay_s
        self.secrets = dict(secrets or {})
        # In-process pods (scale benchmarks): the container is pod_runner(command, env, index)
        # on a thread pool, its return value the exit code; no process, no log.
        self.pod_runner = pod_runner
        # Pods of `preproc` commands are forks of a warm interpreter (zygote.py), not each a
        # fresh one: the same process boundaries at a fraction of the CPU. False: subprocesses.
        self.zygote = zygote
        self.sync_period_s = sync_period_s   # > 0: each Job controller reconciles at most this often
        self._runner_pool = ThreadPoolExecutor(pod_runner_threads, thread_name_prefix="standin-pod") if pod_runner else None
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 100
        self.events: deque[tuple[int, str, str, dict[str, Any]]] = deque(maxlen=history)
        self.oldest_rv = self.rv  # watches from an older version get 410 Expired
        # (resource, ns, name) -> object, in resourceVersion order: a changed object moves to
        # the end, so lists need no sort (at 10,000 pods a sort per reconcile was most of the CPU).
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.by_controller: dict[str, dict[str, dict[str, Any]]] = {}  # job uid -> pod name -> pod, same order
        self.controllers: dict[str, "JobController"] = {}  # by job uid
        self.procs: dict[str, subprocess.Popen | PodProcess] = {}  # by pod name
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query), for assertions
        self.deletions: list[tuple[str, str, str]] = []  # (resource, name, propagationPolicy)
        self.watch_generation = 0
        self.root = Path(tempfile.mkdtemp(prefix="standin-"))
        self.httpd: ThreadingHTTPServer | None = None
        self._stopping = False

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> "StandIn":
        handler = type("Handler", (ApiHandler,), {"standin": self})
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
        if self._runner_pool is not None:
            self._runner_pool.shutdown(wait=True, cancel_futures=True)
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
        key = (resource, meta["namespace"], meta["name"])
        with self.lock:
            self.objects.pop(key, None)
            self.objects[key] = obj
            owner = self._controller_uid(resource, obj)
            if owner is not None:
                pods = self.by_controller.setdefault(owner, {})
                pods.pop(meta["name"], None)
                pods[meta["name"]] = obj
            self._bump(resource, meta["namespace"], obj, event)

    def remove(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.pop((resource, ns, name), None)
            if obj is not None:
                owner = self._controller_uid(resource, obj)
                if owner is not None:
                    self.by_controller.get(owner, {}).pop(name, None)
                self._bump(resource, ns, obj, "DELETED")
            return obj

    @staticmethod
    def _controller_uid(resource: str, obj: dict[str, Any]) -> str | None:
        if resource != "pods":
            return None
        return (obj["metadata"].get("labels") or {}).get("batch.kubernetes.io/controller-uid")

    def controller_pods(self, uid: str, ns: str) -> list[dict[str, Any]]:
        """The pods labelled with Job ``uid``'s controller-uid, in resourceVersion order."""
        with self.lock:
            return [p for p in self.by_controller.get(uid, {}).values() if p["metadata"]["namespace"] == ns]

    def get(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get((resource, ns, name))

    def list(self, resource: str, ns: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [o for (r, n, _), o in self.objects.items() if r == resource and (ns is None or n == ns)]

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
                           "Kubernetes Scheduler: preempting", "lastTransitionTime": now()})
            pod["metadata"]["deletionTimestamp"] = now()
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
        term["startedAt"] = status.get("startTime", now())
        term["finishedAt"] = now()
        status["phase"] = "Succeeded" if term["exitCode"] == 0 and returncode is not None else "Failed"
        status["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                        "restartCount": 0, "started": False, "state": {"terminated": term}}]
        status["conditions"] = [x for x in status.get("conditions", []) if x["type"] != "Ready"] + [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()}]
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
        if self.pod_runner is not None:
            self._run_in_process(pod, c, {**base, **env}, index)
            return
        exit_override = index_map(env.get("STANDIN_EXIT")).get(index)
        if exit_override is not None:
            cmd = [self.python, "-c", f"import sys; print('stand-in: exiting {exit_override}'); sys.exit({exit_override})"]
        proc: subprocess.Popen | PodProcess
        if self.zygote and cmd[:3] == [sys.executable, "-m", "preproc"]:
            # `preproc ...` forked from a warm interpreter (tests/k8s/standin/zygote.py)
            proc = shared_zygote().spawn(cmd[3:], full_env, str(podd), str(podd / "log"))
        else:
            log = open(podd / "log", "wb")
            proc = subprocess.Popen(cmd, env=full_env, cwd=str(podd), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
        self.procs[name] = proc
        status.pop("_pull_tried", None)
        status["phase"] = "Running"
        status["startTime"] = status.get("startTime") or now()
        status["podIP"] = "10.244.0.10"
        status["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                                        "restartCount": 0, "started": True,
                                        "state": {"running": {"startedAt": now()}}}]
        status["conditions"] = [x for x in status.get("conditions", []) if x["type"] not in ("Ready", "ContainersReady")] + [
            {"type": "Ready", "status": "True", "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now()}]
        self.put("pods", pod)
        threading.Thread(target=self._reap, args=(pod, proc), daemon=True, name=f"reap-{name}").start()
        first = pod["metadata"]["annotations"].get("standin/first-attempt") == "true"
        if first and index in index_set(env.get("STANDIN_FAIL_ONCE")):
            os.killpg(proc.pid, signal.SIGKILL)
        if first and index in index_set(env.get("STANDIN_DISRUPT_ONCE")):
            threading.Thread(target=self.evict, args=(name, pod["metadata"]["namespace"], "PreemptionByScheduler"),
                             daemon=True).start()

    def _run_in_process(self, pod: dict[str, Any], c: dict[str, Any], env: dict[str, str], index: int) -> None:
        """start_pod with a pod_runner: Running now, Succeeded/Failed when the runner returns."""
        assert self._runner_pool is not None and self.pod_runner is not None
        cmd = list(c.get("command") or []) + list(c.get("args") or [])
        pod["status"]["phase"] = "Running"
        pod["status"]["startTime"] = pod["status"].get("startTime") or now()
        pod["status"]["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                                               "restartCount": 0, "started": True,
                                               "state": {"running": {"startedAt": now()}}}]
        self.put("pods", pod)
        runner = self.pod_runner

        def run() -> None:
            try:
                rc = runner(cmd, env, index)
            except BaseException:  # noqa: BLE001 - the container crashed
                rc = 1
            with self.lock:
                if self.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"]) is pod:
                    self._finish_pod(pod, rc)

        self._runner_pool.submit(run)

    def _waiting(self, pod: dict[str, Any], reason: str, message: str) -> None:
        c = pod["spec"]["containers"][0]
        state = {"waiting": {"reason": reason, "message": message}}
        cs = pod["status"].get("containerStatuses") or [{}]
        if (cs[0].get("state") or {}) != state:
            pod["status"]["containerStatuses"] = [{"name": c["name"], "image": c["image"], "imageID": "",
                                                   "ready": False, "restartCount": 0, "started": False,
                                                   "state": state}]
            self.put("pods", pod)

    def _reap(self, pod: dict[str, Any], proc: subprocess.Popen | PodProcess) -> None:
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
                job["metadata"]["deletionTimestamp"] = now()
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
