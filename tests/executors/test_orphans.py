"""No orphans: ``kill -9`` of the coordinator takes every process it started down with it
(local worker pool; a local Ray the coordinator started: raylet, GCS, Ray workers).

Descendants are found twice over, so that re-parenting after the kill cannot hide one: by
walking ``/proc`` from the coordinator while it runs, and by a unique tag in the environment
that every descendant inherits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from preproc.executors.lifeline import TAG_ENV, reaper
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")


def _ppids() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            out[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def _tagged(tag: str) -> set[int]:
    found = set()
    needle = f"PREPROC_ORPHAN_TAG={tag}".encode()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if needle in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                    found.add(int(d))
            except OSError:
                continue
    return found


def _clobbered(pid: int) -> bool:
    """Whether the process's /proc environ shows zeroed entries (overwritten in place)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return b"" in env.rstrip(b"\0").split(b"\0")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"     # a zombie holds no memory; its parent (init) reaps it


def _names(pids: set[int]) -> list[str]:
    out = []
    for p in sorted(pids):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()
            out.append(f"{p}:{cmd}")
        except OSError:
            pass
    return out


def _kill_coordinator_and_check(tmp_path: Path, corpus: Path, gpt2: Path, executor: str, workers_min: int,
                                extra: dict | None = None, expect: tuple[str, ...] = ()) -> None:
    """``expect``: parts of command lines that must be among the processes before the kill."""
    spec = {"input": {"paths": [str(corpus / "*.jsonl.gz")]}, "shards": 4, "clean": False,
            "dedup": {"exact": False}, "tokenize": {"tokenizer": str(gpt2)},
            "executor": {"kind": executor, "workers": 2, **(extra or {})}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    tag = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAYON_NUM_THREADS="1", PREPROC_ORPHAN_TAG=tag,
               PREPROC_FAILPOINTS="point=start,stage=clean,action=hang", PREPROC_METRICS="off")
    log = open(tmp_path / "coordinator.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "preproc", "run", str(tmp_path / "spec.yaml"),
                             "--output", str(tmp_path / "out")],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Workers are up and stalled in the clean stage (the failpoint hangs them there).
        assert wait_for(lambda: (tmp_path / "out" / "plan.json").exists() and
                        len(_descendants(proc.pid)) >= workers_min, timeout=180, poll_s=0.2), \
            (tmp_path / "coordinator.log").read_text()[-3000:]
        time.sleep(3)   # let every worker reach the failpoint
        before = _descendants(proc.pid) | _tagged(tag)
        # The watcher finds a local Ray's processes by a tag in /proc/PID/environ, as this test
        # does with its own: every process must show its whole environment. (setproctitle, which
        # Ray's agents and workers call, zeroed part of it unless told not to: lifeline sets
        # SPT_NOENV. Which variables it hit depended on their order, so check for any damage.)
        damaged = {p for p in before if _alive(p) and _clobbered(p)}
        assert not damaged, f"processes whose /proc environ was overwritten: {_names(damaged)}"
        names = " ".join(_names(before))
        assert all(e in names for e in expect), names
        assert proc.poll() is None, (tmp_path / "coordinator.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(10)
        left = {p for p in (before | _tagged(tag)) - {proc.pid} if _alive(p)}
        assert not left, f"orphans 10 s after kill -9 of the coordinator: {_names(left)}"
    finally:
        for p in _tagged(tag):   # never leak processes into the rest of the suite
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        log.close()


def test_local_workers_die_with_the_coordinator(tmp_path, corpus, gpt2):
    _kill_coordinator_and_check(tmp_path, corpus, gpt2, "local", workers_min=2)


def test_local_ray_dies_with_the_coordinator(tmp_path, corpus, gpt2):
    pytest.importorskip("ray")
    # raylet + gcs + at least one Ray worker stalled in a task.
    _kill_coordinator_and_check(tmp_path, corpus, gpt2, "ray", workers_min=4,
                                extra={"options": {"local_cpus": 2}}, expect=("gcs_server", "raylet", "ray::"))


def test_reaper_kills_a_descendant_that_dropped_the_tag():
    """A tagged process's child whose environment lacks the tag (``env -i``; or clobbered, as
    setproctitle does) still goes: the watcher also takes the descendants of tagged processes."""
    r = reaper()
    with r.tagging():
        parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                                   "c = subprocess.Popen(['sleep', '120'], env={}); print(c.pid, flush=True); time.sleep(120)"],
                                  stdout=subprocess.PIPE)
    assert TAG_ENV not in os.environ and "SPT_NOENV" not in os.environ   # the host's env is restored
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child) and r.tag.encode() not in Path(f"/proc/{child}/environ").read_bytes()
        r.close()
        parent.wait(10)
        assert wait_for(lambda: not _alive(child), timeout=10, poll_s=0.1), _names({child})
    finally:
        for pid in (parent.pid, child):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

