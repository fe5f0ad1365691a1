"""Failpoints: deliberate failures at named points of the real code path, for chaos tests.

Off unless ``PREPROC_FAILPOINTS`` is set, and then only checked at a few points per index
(not in hot loops). The value is a ``;``-separated list of rules::

    PREPROC_FAILPOINTS="point=start,stage=tokenize,index=1,action=exit,times=1"

* ``point``: ``start`` (before the stage runs), ``commit`` (an output is fully written but
  not yet renamed/published), ``marker`` (all outputs committed, marker not yet written),
  ``clean_step`` (before a clean step runs on a batch; ``step=NAME`` picks the step, e.g.
  ``step=langid_v1``), ``lease_takeover`` (a lease was read expired, the compare-and-swap not
  yet tried), ``preload`` (a worker's tokenizer preload, before it reads the file).
* ``stage``/``index``: which index (omit for any).
* ``action``: ``kill`` (SIGKILL this process, like the OOM killer), ``exit`` (exit code 1),
  ``raise`` (a ``RuntimeError``, or the built-in exception ``error`` names: ``ImportError``,
  ``MemoryError``, ``OSError``, ``ValueError``), ``hang`` (sleep forever: a stalled worker),
  ``data_error`` (a ``ValueError``: what a file whose bytes are not what its format says raises),
  ``killpg`` (SIGKILL this process's whole process group: the coordinator and its workers, like
  a lost node; only where the group is its own session, i.e. the test started the run with
  ``start_new_session=True``, so a test can never kill its own runner), ``signal`` (send this
  process the signal ``signal=TERM`` names, default TERM: what Kubernetes sends a pod, at an
  exact point instead of a moment a test guesses), ``skip`` (at ``start`` only: the index does
  nothing but write its marker, with empty stats; a no-op index, for benchmarks of the
  coordinator at many indices: the runner, marker, metrics and executors are the real code).
* ``read_batch`` (a reader's batch boundary, in ``readers.read_split``) also takes ``batch``
  (the boundary's number in its split: 0 before the first batch) and ``file`` (the input's
  relative path); any other key a point passes is matched the same way. Small files read
  with their neighbours (``readers.small``) pass it once each, with ``batch`` 0.
* ``pause`` (an action): create ``paused-<point>-<pid>`` in ``PREPROC_FAILPOINT_STATE``, then wait
  until a file ``resume`` appears there, at most ``wait_s`` seconds, default 120: lets a test
  hold two processes at the same point.
``PREPROC_FAILPOINTS=@/path/rules.txt`` reads the rules from a file at every check.

* ``times``: how many times the rule fires in total, across processes; counted with files in
  ``PREPROC_FAILPOINT_STATE`` (a folder). A coordinator creates a fresh one for its workers
  when it is not set (:func:`share_state`); a process with a ``times`` rule and no folder
  refuses to guess (a rule that fired in every process would be a different test).

The executors' conformance tests use these to kill workers anywhere, including mid-commit,
and check that a rerun gives byte-identical outputs.
"""

from __future__ import annotations

import contextvars
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

_ENV = "PREPROC_FAILPOINTS"
_STATE = "PREPROC_FAILPOINT_STATE"


def _rules() -> list[dict[str, str]]:
    spec = os.environ.get(_ENV, "")
    if spec.startswith("@"):
        # Rules in a file, read at every check: long-lived workers (a Ray cluster) can be
        # given new rules without restarting.
        try:
            with open(spec[1:]) as f:
                spec = f.read().replace("\n", ";")
        except FileNotFoundError:
            return []
    rules = []
    for part in spec.split(";"):
        part = part.strip()
        if part:
            rules.append(dict(kv.split("=", 1) for kv in part.split(",")))
    return rules


def share_state() -> None:
    """Before starting workers: give ``times=`` rules a state folder the workers share."""
    if os.environ.get(_STATE) or _ENV not in os.environ:
        return
    if any("times" in r for r in _rules()):
        os.environ[_STATE] = tempfile.mkdtemp(prefix="preproc-failpoints-")


def _claim(rule_id: int, times: int) -> bool:
    state = os.environ.get(_STATE)
    if not state:
        raise RuntimeError(f"{_ENV}: a rule with times={times} needs {_STATE} (a folder shared by the processes "
                           "that count it)")
    os.makedirs(state, exist_ok=True)
    for k in range(times):
        try:
            fd = os.open(os.path.join(state, f"rule{rule_id}-{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return True
    return False


_ERRORS = {e.__name__: e for e in (RuntimeError, ImportError, MemoryError, OSError, ValueError)}


def failpoint(point: str, stage: str | None = None, index: int | None = None, *,
              step: str | None = None, **where: object) -> bool:
    """Fire the first matching rule for this point, if any (no-op when not configured).
    ``step``: the clean step about to run; ``where``: more facts about the point (``batch=3``)
    that a rule may require. True when an ``action=skip`` rule fired: the caller skips the work."""
    if _ENV not in os.environ:
        return False
    for rid, r in enumerate(_rules()):
        if r.get("point", "start") != point:
            continue
        if "stage" in r and r["stage"] != stage:
            continue
        if "step" in r and r["step"] != step:
            continue
        if "index" in r and index is not None and int(r["index"]) != index:
            continue
        if any(k in r and r[k] != str(v) for k, v in where.items()):
            continue
        if "times" in r and not _claim(rid, int(r["times"])):
            continue
        action = r.get("action", "raise")
        if action == "skip":
            return True
        if action == "pause":
            _pause(point, float(r.get("wait_s", 120)))
            return False
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "killpg":
            _killpg(point)
        if action == "signal":
            os.kill(os.getpid(), getattr(signal, "SIG" + r.get("signal", "TERM")))
            return False
        if action == "exit":
            os._exit(1)
        if action == "hang":
            while True:
                time.sleep(3600)
        if action == "data_error":
            raise ValueError(f"failpoint {point} fired (stage={stage}, index={index}, {where})")
        error = _ERRORS.get(r.get("error", "RuntimeError"), RuntimeError)
        raise error(f"failpoint {point} fired (stage={stage}, index={index}, step={step})")
    return False


def _killpg(point: str) -> None:
    group = os.getpgrp()
    if os.getsid(0) != group:
        raise RuntimeError(f"failpoint {point}: action=killpg needs the run in its own session "
                           "(start_new_session=True); refusing to kill a group it may share with its caller")
    os.killpg(group, signal.SIGKILL)


def _pause(point: str, wait_s: float) -> None:
    state = os.environ.get(_STATE)
    if not state:
        raise RuntimeError(f"failpoint {point}: action=pause needs {_STATE}")
    os.makedirs(state, exist_ok=True)
    open(os.path.join(state, f"paused-{point}-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + wait_s
    while not os.path.exists(os.path.join(state, "resume")) and time.monotonic() < deadline:
        time.sleep(0.01)


class _Context:
    """Stage and index of the index running in this thread (or task), so deep code (commits,
    clean steps) can name them to failpoints. A context variable, not a global: indices that
    run in threads of one process (the API stand-in's in-process pods) each see their own."""

    _var: contextvars.ContextVar[tuple[str | None, int | None]] = contextvars.ContextVar(
        "preproc_fault_context", default=(None, None))

    @property
    def stage(self) -> str | None:
        return self._var.get()[0]

    @property
    def index(self) -> int | None:
        return self._var.get()[1]


context = _Context()


@contextmanager
def running(stage: str, index: int) -> Iterator[None]:
    """Within the block deep code names ``stage``/``index`` (:data:`context`); afterwards it
    names what it named before, so a process that runs an index itself (the coordinator's
    trivial rounds, a test) does not go on committing as that index."""
    token = _Context._var.set((stage, index))
    try:
        yield
    finally:
        _Context._var.reset(token)
