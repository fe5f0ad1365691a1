"""No orphans: a worker process dies with the coordinator that started it.

A ``kill -9`` of ``preproc run`` gives its workers no chance to be told; left alone they park
forever on their task queue under PID 1, holding their memory. Two mechanisms, both cheap:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` — the kernel kills the worker the moment its
  parent dies. (It fires when the parent *thread* that started the worker exits; the local
  executor starts its pool from the thread that runs the stages and shuts the pool down
  before that thread returns, so this never kills a live run's workers.)
* Everywhere (POSIX): a daemon thread that watches ``os.getppid()`` and exits the process
  within :data:`POLL_S` seconds once the parent is gone (the worker is re-parented). It also
  covers a parent that died before the worker could ask the kernel.

Call :func:`watch_parent` first thing in a worker, with the pid the parent gave it.

Processes we do not start ourselves (a local Ray: GCS, raylet, its agents and workers, which
Ray parents to one another) are tagged instead: :func:`reaper` puts a unique tag into the
environment they inherit and starts a tiny watcher holding the read end of a pipe whose write
end only the coordinator has. When the coordinator dies, however it dies, the pipe reaches EOF
and the watcher SIGKILLs every process carrying the tag (found in ``/proc/*/environ``, or with
``psutil`` where there is no ``/proc``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import IO

__all__ = ["watch_parent", "reaper", "Reaper", "POLL_S", "EXIT_ORPHANED"]

POLL_S = 0.5
EXIT_ORPHANED = 137     # as if killed by SIGKILL, which is what PDEATHSIG does on Linux
_PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):   # no libc (static builds): the thread below still works
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(EXIT_ORPHANED)


def watch_parent(parent_pid: int | None = None) -> None:
    """Make this process exit when ``parent_pid`` (default: the current parent) dies."""
    parent_pid = parent_pid or os.getppid()
    _pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:   # the parent died before we asked
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=_watch, args=(parent_pid,), name="preproc-lifeline", daemon=True).start()


TAG_ENV = "PREPROC_LIFELINE"

# The watcher: a few lines of plain Python (no preproc import, so it starts in milliseconds
# and holds no memory worth naming). It blocks on stdin; EOF means the coordinator is gone
# (or done), and every process carrying the tag is killed; the sweep repeats until three in a
# row find none (at most 10 s), so a process forked or spawned during a sweep goes too.
_WATCHER = r"""
import os, signal, sys
tag = sys.argv[1]
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
needle = ("%s=%s" % (sys.argv[2], tag)).encode()
def tagged():
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        try:
            import psutil
        except ImportError:
            return []
        out = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(sys.argv[2]) == tag:
                    out.append(p.pid)
            except Exception:
                pass
        return out
    out = []
    for pid in pids:
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(pid)
        except OSError:
            pass
    return out
import time
quiet, deadline = 0, time.monotonic() + 10
while quiet < 3 and time.monotonic() < deadline:
    pids = [p for p in tagged() if p != os.getpid()]
    quiet = 0 if pids else quiet + 1
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
"""


class Reaper:
    """Handle of a running watcher: :meth:`close` when the tagged processes were shut down
    cleanly (the watcher then kills only stragglers, and exits)."""

    def __init__(self, tag: str, proc: subprocess.Popen[bytes], pipe: IO[bytes]):
        self.tag = tag
        self._proc = proc
        self._pipe = pipe

    @contextlib.contextmanager
    def tagging(self) -> Iterator[None]:
        """Processes started inside this block (and their descendants) carry the tag."""
        old = os.environ.get(TAG_ENV)
        os.environ[TAG_ENV] = self.tag
        try:
            yield
        finally:   # a host program's later subprocesses must not carry it
            if old is None:
                os.environ.pop(TAG_ENV, None)
            else:
                os.environ[TAG_ENV] = old

    def close(self, timeout_s: float = 10.0) -> None:
        with contextlib.suppress(OSError):
            self._pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout_s)


def reaper() -> Reaper:
    """Start a watcher that kills every process started under :meth:`Reaper.tagging` once
    this process dies or calls :meth:`Reaper.close`."""
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != TAG_ENV}
    proc = subprocess.Popen([sys.executable, "-c", _WATCHER, tag, TAG_ENV], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True, close_fds=True)
    assert proc.stdin is not None
    return Reaper(tag, proc, proc.stdin)
