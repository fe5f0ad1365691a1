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
``psutil`` where there is no ``/proc``) and every descendant of one, sweeping until no such
process is left.

The tag must stay readable. ``/proc/PID/environ`` is the memory the environment was
exec'd into, and ``setproctitle`` (Ray's processes call it: ``ray::DashboardAgent``,
``ray::IDLE``) reuses that memory for a long title, zeroing part of it: Ray's agents, spawned
by the raylet with its environment in an order of its own, lost the tag about half the time
and outlived a ``kill -9`` of the coordinator (GCS and raylet die with it through Ray's own
PR_SET_PDEATHSIG, so the agents are re-parented to init at once and Ray's own liveness check
takes longer than our bound). :meth:`Reaper.tagging` therefore also sets ``SPT_NOENV=1``,
which tells setproctitle (Ray's vendored copy honours it) to leave the environment alone, and
the watcher also takes the descendants of a tagged process, in case some other program
clobbers its environment.
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


def watch_process(pid: int) -> None:
    """Make this process exit when process ``pid``, which is not its parent, is gone (no
    such process, or a zombie): a worker forked by a server that outlives the coordinator."""
    def watch() -> None:
        while True:
            try:
                with open(f"/proc/{pid}/stat") as f:     # noqa: PTH123 - procfs
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            time.sleep(POLL_S)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="preproc-lifeline", daemon=True).start()


TAG_ENV = "PREPROC_LIFELINE"
_NO_TITLE_ENV = "SPT_NOENV"   # setproctitle: keep the environment, shorten the title

# The watcher: a few lines of plain Python (no preproc import, so it starts in milliseconds
# and holds no memory worth naming). It blocks on stdin; EOF means the coordinator is gone
# (or done). Each sweep takes one snapshot of /proc and kills every process carrying the tag
# and every descendant of one (a child whose environment was clobbered still has its parent
# in the snapshot: the set is computed before anything is killed, so nothing is re-parented
# away from it mid-sweep). Sweeps repeat until three in a row find none (at most 10 s), so a
# process forked or spawned during a sweep goes too.
_WATCHER = r"""
import os, signal, sys, time
tag, var = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
needle = ("%s=%s" % (var, tag)).encode()
def doomed():
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        try:
            import psutil
        except ImportError:
            return set()
        out = set()
        for p in psutil.process_iter():
            try:
                if p.environ().get(var) == tag:
                    out.add(p.pid)
                    out.update(c.pid for c in p.children(recursive=True))
            except Exception:
                pass
        return out
    children, out = {}, set()
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state == b"Z":   # dead already: nothing to kill, and it has no children left
            continue
        children.setdefault(int(ppid), []).append(pid)
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.add(pid)
        except OSError:
            pass
    todo = list(out)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out
quiet, deadline = 0, time.monotonic() + 10
while quiet < 3 and time.monotonic() < deadline:
    pids = doomed() - {os.getpid()}
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
        old = {k: os.environ.get(k) for k in (TAG_ENV, _NO_TITLE_ENV)}
        os.environ[TAG_ENV] = self.tag
        os.environ[_NO_TITLE_ENV] = "1"   # setproctitle must not overwrite the tag (module doc)
        try:
            yield
        finally:   # a host program's later subprocesses must not carry them
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

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
