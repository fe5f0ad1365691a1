"""What the conformance cases share instead of redoing: the small input and its uninterrupted
reference run (once per test session, whichever xdist worker gets there first; the others
wait on a file lock and read it), and one Ray per xdist worker for the Ray cases.

The shared Ray is what a program that already called ``ray.init`` gets from ``preproc.run``
(the executor joins the running Ray instead of starting one): the same tasks, retries and
stage barriers as with a Ray the executor starts. The executor's own start of a local Ray
(``local_cpus``, ``runtime_env``, the reaper) is covered by tests/executors/test_ray.py and
test_orphans.py, which start fresh ones.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import preproc
from preproc.demo import make_corpus
from preproc.executors.lifeline import Reaper, reaper
from tests.s3server import dummy_env


@dataclass(frozen=True)
class Reference:
    small: Path                 # input/ (800 demo documents) and tokenizer.json
    out: Path                   # the uninterrupted run's output
    stats: dict[str, Any]       # its RunResult.stats


def session_dir(tmp_path_factory) -> Path:
    """A folder all xdist workers of this session share (each worker's basetemp is in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def small_reference(tmp_path_factory, tokenizer: Path, base_spec: Callable[[Path, Path], dict[str, Any]]) -> Reference:
    root = session_dir(tmp_path_factory) / "conformance-small"
    done = root / "stats.pickle"
    with _locked(root.with_suffix(".lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)      # a worker that failed half-way
            make_corpus(root / "input", docs=800, seed=1)
            shutil.copy(tokenizer, root / "tokenizer.json")
            r = preproc.run(base_spec(root, root / "out"), workers=2)
            tmp = done.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(r.stats))
            tmp.rename(done)
    return Reference(small=root, out=root / "out", stats=pickle.loads(done.read_bytes()))


_RAY: dict[str, Any] = {}


def shared_ray(tmp_path_factory, cpus: int) -> Path:
    """Start (or find still running) this xdist worker's Ray with ``cpus`` CPUs; return its
    folder. Its workers read failpoint rules from ``rules.txt`` there at every check (state in
    ``fault-state``), so each test arms its own without restarting Ray. Another test module
    may have shut it down in between (tests/executors/test_ray.py starts fresh ones): then a
    new one is started."""
    import ray

    if ray.is_initialized() and _RAY.get("node") == ray.get_runtime_context().get_node_id():
        return _RAY["home"]
    stop_shared_ray()
    if ray.is_initialized():
        ray.shutdown()
    home = tmp_path_factory.mktemp("ray")
    (home / "rules.txt").write_text("")
    env = {"PREPROC_FAILPOINTS": f"@{home / 'rules.txt'}", "PREPROC_FAILPOINT_STATE": str(home / "fault-state"),
           # moto's dummy keys (what a real cluster's workers get from their environment or
           # IAM): the S3 case's tasks reach the run's endpoint with them (tests/s3server.py).
           **dummy_env(home)}
    lifeline: Reaper = reaper()      # Ray's processes die with this one, however it dies
    with lifeline.tagging():
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, runtime_env={"env_vars": env})
        except Exception as e:  # noqa: BLE001
            # Ray gives its raylet a fixed 30 s to register; on a machine loaded past its
            # cores that is not always enough. Once more, then the error stands.
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            ray.init(num_cpus=cpus, include_dashboard=False, runtime_env={"env_vars": env})
    _RAY.update(node=ray.get_runtime_context().get_node_id(), home=home, reaper=lifeline)
    return home


def stop_shared_ray() -> None:
    """Shut the shared Ray down (if it is still the one running): other modules expect none."""
    if not _RAY:
        return
    import ray

    if ray.is_initialized() and _RAY.get("node") == ray.get_runtime_context().get_node_id():
        ray.shutdown()
    _RAY.pop("reaper").close()
    _RAY.clear()
