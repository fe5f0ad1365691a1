"""Shared fixtures. Real data lives in ../shared/data (beside the checkout); tests that need
it are skipped when it is absent, unless PREPROC_REQUIRE_SHARED=1 (CI) makes that a failure."""

from __future__ import annotations

import multiprocessing as mp
import os
from multiprocessing import forkserver
from pathlib import Path

import pytest
import yaml

from preproc.executors import local as local_executor
from tests.k8s.standin.zygote import close_shared

# The S3 fixtures (moto's server on loopback), shared by every test module that takes `s3`.
from tests.s3server import s3, s3_server  # noqa: F401  (pytest fixtures, found by name)

# In-process runs start their local workers from a fork server that has imported the engine
# once (preproc.executors.local.START_METHOD): a pool costs a fork per worker, not an
# interpreter start and a second of imports. Runs in subprocesses (the CLI tests) keep spawn.
local_executor.START_METHOD = "forkserver"
mp.get_context("forkserver").set_forkserver_preload(["preproc.executors.local"])

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREPROC_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
CORPUS = DATA / "corpus"
BAD = DATA / "bad"
GPT2 = DATA / "tokenizers" / "gpt2" / "tokenizer.json"
DEEPSEEK = DATA / "tokenizers" / "deepseek-v3" / "tokenizer.json"


@pytest.fixture(scope="session", autouse=True)
def _helpers_reaped():
    """At the end, the pod zygote and the fork server are stopped and waited for (their
    pods' and workers' CPU then counts in this process's children, as a spawned one's does)."""
    yield
    close_shared()
    forkserver._forkserver._stop()


def need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("PREPROC_REQUIRE_SHARED") == "1":
            raise AssertionError(f"{path} is missing (PREPROC_REQUIRE_SHARED=1)")
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def corpus() -> Path:
    return need(CORPUS)


@pytest.fixture(scope="session")
def bad() -> Path:
    return need(BAD)


@pytest.fixture(scope="session")
def gpt2() -> Path:
    return need(GPT2)


@pytest.fixture(scope="session")
def deepseek() -> Path:
    return need(DEEPSEEK)


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> Path:
    """The demo corpus and its trained tokenizer, made once per test session."""
    import json

    from preproc.demo import make_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("demo")
    make_corpus(root / "input")
    texts = [json.loads(l)["text"] for l in (root / "input" / "web-a.jsonl").read_bytes().splitlines()
             if l.startswith(b'{"id": "demo')]
    train_tokenizer(texts, root / "tokenizer.json")
    return root


def demo_run_spec(demo_inputs: Path, out: Path, **extra) -> dict:
    """The demo corpus with its own tokenizer, 8 shards, default clean and dedup."""
    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(out), "shards": 8,
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}
    spec.update(extra)
    return spec


def demo_spec_file(tmp_path: Path, demo_inputs: Path, **extra) -> Path:
    """:func:`demo_run_spec` (output ``tmp_path/out``) written as ``tmp_path/spec.yaml``."""
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(demo_run_spec(demo_inputs, tmp_path / "out", **extra)))
    return p


@pytest.fixture(scope="session")
def demo_run(demo_inputs, tmp_path_factory) -> Path:
    """A finished run of :func:`demo_run_spec` (2 workers), made once per test session (per
    xdist worker): the reference outputs several tests compare with. Read it or copy it
    (a run folder is relocatable); never change it."""
    out = tmp_path_factory.mktemp("demo-run") / "out"
    import preproc

    preproc.run(demo_run_spec(demo_inputs, out), workers=2)
    return out


def read_tree(out: Path, sub: str = "tokens") -> dict[str, bytes]:
    """name → bytes of every committed file under ``out/sub`` (for byte-identity checks)."""
    d = out / sub
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def wait_for(pred, timeout: float = 90.0, poll_s: float = 0.01) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds pass; return whether it became true."""
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(poll_s)
    return False


# The suite's longest tests (20-60 s each here, `--durations=30`), started
# first: with xdist they then overlap the many short ones instead of running alone at the
# end while the other processes have nothing left (longest-first scheduling).
LONGEST_FIRST = (
    "tests/conformance/test_conformance.py::test_kill_anywhere[ray]",
    "tests/engine/test_refresh.py::test_verified_refresh_on_s3_with_compaction",
    "tests/engine/test_pipeline.py::test_corpus_gpt2_tokens_exact",
    "tests/conformance/test_conformance.py::test_worker_counts[ray-4]",
    "tests/io/test_store_faults.py::test_flaky_store_same_outputs_and_down_store_resumes",
    "tests/executors/test_ray.py::test_ray_outputs_identical_and_a_crash_is_retried",
    "tests/engine/test_refresh.py::test_index_compaction_keeps_dedup_against_all_generations",
    "tests/io/test_s3.py::test_s3_run_is_identical_to_local_and_resumes",
    "tests/engine/test_refresh.py::test_verified_refresh_killed_and_resumed_is_byte_identical",
    "tests/executors/test_orphans.py::test_local_ray_dies_with_the_coordinator",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {nodeid: i for i, nodeid in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(it.nodeid, len(rank)))    # stable: the rest keep their order
