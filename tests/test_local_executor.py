"""The local executor's worker processes: thread pools sized per worker, started early."""

from __future__ import annotations

import os

import pyarrow as pa

import preproc
from preproc.executors import get_executor
from preproc.executors.local import LocalExecutor


def _threads() -> tuple[str | None, int]:
    return os.environ.get("RAYON_NUM_THREADS"), pa.cpu_count()


def test_threads_per_worker_bounds_the_rust_and_arrow_pools(monkeypatch):
    monkeypatch.setenv("RAYON_NUM_THREADS", "7")   # an explicit setting wins over the environment
    ex = LocalExecutor(workers=2, threads=1, progress=False)
    try:
        assert ex._get_pool().submit(_threads).result(timeout=60) == ("1", 1)
    finally:
        ex.close()


def test_default_threads_leave_the_environment_setting(monkeypatch):
    monkeypatch.setenv("RAYON_NUM_THREADS", "3")
    ex = LocalExecutor(workers=1, progress=False)
    try:
        assert ex._get_pool().submit(_threads).result(timeout=60) == ("3", 3)
    finally:
        ex.close()


def test_spec_and_cli_override_reach_the_executor(tmp_path, gpt2):
    s = preproc.load_spec({"input": {"paths": [str(tmp_path / "*.jsonl")]}}, output=str(tmp_path / "o"),
                          tokenizer=str(gpt2), workers=2, threads_per_worker=1)
    assert s.executor.threads_per_worker == 1
    ex = get_executor(s, progress=False)
    assert (ex.workers, ex.threads) == (2, 1)
    from preproc.cli import build_parser, _overrides

    a = build_parser().parse_args(["run", "spec.yaml", "--workers", "2", "--threads-per-worker", "1"])
    assert _overrides(a)["threads_per_worker"] == 1


def test_prestarted_workers_have_the_tokenizer_before_the_plan_exists(gpt2):
    """prestart() loads the spec's tokenizer in each worker, keyed by content: the first task
    finds it in the cache (the plan names the same sha256)."""
    import hashlib

    sha = hashlib.sha256(gpt2.read_bytes()).hexdigest()
    s = preproc.load_spec({"input": {"paths": ["x.jsonl"]}}, output="/tmp/unused", tokenizer=str(gpt2), workers=1)
    ex = LocalExecutor(workers=1, progress=False)
    try:
        ex.prestart(s)
        keys = ex._get_pool().submit(_cache_keys).result(timeout=120)
    finally:
        ex.close()
    assert f"hf|{sha}|True" in keys and f"tk|{sha}" in keys


def _cache_keys() -> list[str]:
    from preproc import tokenizer

    return sorted(tokenizer._CACHE)


def test_a_script_without_a_main_guard_gets_one_clear_error(tmp_path, demo_inputs):
    """Spawned workers re-run a script's top level; without `if __name__ == "__main__":` that
    calls preproc.run() again inside each worker. One error that says what to do, not
    "worker process died (killed or out of memory)" once per retry."""
    import subprocess
    import sys

    from preproc.executors.local import SPAWN_MAIN_MESSAGE

    from .conftest import ROOT

    script = tmp_path / "prep.py"
    script.write_text(
        "import preproc\n"
        f"preproc.run({{'input': {{'paths': [{str(demo_inputs / 'input' / 'web-a.jsonl')!r}]}}, "
        f"'clean': {{'defaults': False}}, 'tokenize': {{'tokenizer': {str(demo_inputs / 'tokenizer.json')!r}}}}}, "
        f"output={str(tmp_path / 'out')!r}, workers=2)\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode != 0
    assert p.stderr.count(SPAWN_MAIN_MESSAGE) == 1, p.stderr[-3000:]
    assert "preproc.errors.ConfigError" in p.stderr and "worker process died" not in p.stderr
    assert "bootstrapping phase" not in p.stderr
    assert not (tmp_path / "out" / "clean" / "_done").exists()
