"""Pods as forks of one warm interpreter (a zygote) instead of a fresh ``python -m preproc``
each: a pod's process then costs a fork, not an interpreter start and the engine's imports
(about a second of CPU, times every pod of every Kubernetes test).

A pod is still its own process: its own pid and session (``killpg`` kills it; a SIGKILL is
an exit status -9, as with ``subprocess``), its environment exactly the one the stand-in
resolved (the zygote's is replaced, not merged), its working directory, and its stdout and
stderr in the pod's log. It runs the worker command's own entry point,
``preproc.cli.main(args)``, as ``python -m preproc`` does. The zygote only imports (it never
opens a tokenizer, a thread pool or a file of a run), so what a pod inherits is the module
state a fresh interpreter would build, and the zygote's process is single-threaded when it
forks.

Protocol (one line each, JSON requests on the zygote's stdin; replies on its stdout):
``{"id": n, "args": [...], "env": {...}, "cwd": ..., "log": ...}`` → ``pid n PID``, and for
every pod that ends, ``exit PID CODE``. When the stand-in's process goes (stdin closes), the
zygote kills the pods still running and exits.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import Any

from preproc.cli import main
from tests.k8s.standin.common import REPO_ROOT

# What `preproc worker` imports before it works (the commands pull in the engine).
PRELOAD = ("preproc.cli", "preproc.commands", "preproc.engine.stages")


class PodProcess:
    """The part of :class:`subprocess.Popen` the stand-in uses, for a pod the zygote forked."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired("pod", timeout or 0)
        assert self.returncode is not None
        return self.returncode


class Zygote:
    """The test process's end: starts the zygote, asks it for pods, hears their exits."""

    def __init__(self, python: str = sys.executable):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT), "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen([python, "-m", "tests.k8s.standin.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=str(REPO_ROOT))
        self.lock = threading.Lock()
        self.next_id = 0
        self.waiting: dict[int, tuple[threading.Event, list[PodProcess]]] = {}
        self.pods: dict[int, PodProcess] = {}
        self.dead = False
        threading.Thread(target=self._read, daemon=True, name="standin-zygote").start()

    def spawn(self, args: list[str], env: dict[str, str], cwd: str, log: str) -> PodProcess:
        """A pod running ``python -m preproc *args``."""
        got: list[PodProcess] = []
        ev = threading.Event()
        with self.lock:
            if self.dead:
                raise RuntimeError("stand-in: the pod zygote is gone")
            rid = self.next_id = self.next_id + 1
            self.waiting[rid] = (ev, got)
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps({"id": rid, "args": args, "env": env, "cwd": cwd, "log": log}) + "\n").encode())
            self.proc.stdin.flush()
        if not ev.wait(60) or not got:
            raise RuntimeError("stand-in: the pod zygote did not start the pod")
        return got[0]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, a, b = line.decode().split()
            with self.lock:
                if kind == "pid":
                    pod = self.pods[int(b)] = PodProcess(int(b))
                    ev, got = self.waiting.pop(int(a))
                    got.append(pod)
                    ev.set()
                else:
                    p = self.pods.pop(int(a), None)
                    if p is not None:
                        p._exited(int(b))
        with self.lock:
            self.dead = True
            for p in self.pods.values():
                p._exited(-signal.SIGKILL)
            for ev, _ in self.waiting.values():
                ev.set()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def shared_zygote() -> Zygote:
    """One zygote per test process (it holds no state of a test), started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.dead:
            _shared = Zygote()
        return _shared


def close_shared() -> None:
    """End the shared zygote (its pods are killed) and reap it: its CPU is then counted."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


# -- the zygote's side ------------------------------------------------------------------------

def _child(req: dict[str, Any], fds: list[int], ready: int) -> None:
    """In the forked pod: become the pod's process, run the worker command, exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        os.close(ready)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in fds + [log, null]:
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        tempfile.tempdir = None          # TMPDIR is the pod's
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
        sys.argv = ["preproc", *req["args"]]
        rc = main(req["args"])
        code = 0 if rc is None else int(rc)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - an uncaught error, as the interpreter reports it
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    for m in PRELOAD:
        importlib.import_module(m)
    reply = os.dup(1)
    os.dup2(2, 1)                       # a stray print must not reach the protocol
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    buf = b""

    def say(text: str) -> None:
        os.write(reply, text.encode())

    while True:
        ready, _, _ = select.select([0, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            say(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
        if 0 not in ready:
            continue
        data = os.read(0, 1 << 20)
        if not data:
            for pid in children:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                _child(req, [reply, wake_r, wake_w], ready_w)
            os.close(ready_w)
            os.read(ready_r, 1)          # as with Popen: the pod's session exists before its pid is told
            os.close(ready_r)
            children.add(pid)
            say(f"pid {req['id']} {pid}\n")


if __name__ == "__main__":
    serve()
