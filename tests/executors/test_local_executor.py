"""The local executor's worker processes: thread pools sized per worker, started early."""

from __future__ import annotations

import os
import time

import pyarrow as pa

import preproc
from preproc.executors import get_executor
from preproc.executors.local import LocalExecutor
from tests.conftest import wait_for


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
    from preproc.cli import build_parser
    from preproc.cli import overrides as _overrides

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


def test_closing_while_workers_still_load_the_tokenizer_does_not_wait_for_them(tmp_path, gpt2, monkeypatch):
    """A run that ends before its first stage (a planning error, a lease held elsewhere)
    while the workers' tokenizer preload is stuck (a store that does not answer: here a
    failpoint holds it up to 60 s) closes at once: the workers have nothing to commit."""
    state = tmp_path / "fp"
    state.mkdir()
    monkeypatch.setenv("PREPROC_FAILPOINTS", "point=preload,action=pause,wait_s=60")
    monkeypatch.setenv("PREPROC_FAILPOINT_STATE", str(state))
    s = preproc.load_spec({"input": {"paths": ["x.jsonl"]}}, output=str(tmp_path / "o"), tokenizer=str(gpt2),
                          workers=2)
    ex = LocalExecutor(workers=2, progress=False)
    ex.prestart(s)
    procs = list(ex._get_pool()._processes.values())
    assert wait_for(lambda: len(list(state.glob("paused-preload-*"))) == 2, timeout=60)
    t0 = time.monotonic()
    ex.close()
    assert time.monotonic() - t0 < 15
    assert all(not p.is_alive() for p in procs)


def _cache_keys() -> list[str]:
    from preproc.tokenize import tokenizer

    return sorted(tokenizer._CACHE)


def test_a_script_without_a_main_guard_gets_one_clear_error(tmp_path, demo_inputs):
    """Spawned workers re-run a script's top level; without `if __name__ == "__main__":` that
    calls preproc.run() again inside each worker. One error that says what to do, not
    "worker process died (killed or out of memory)" once per retry."""
    import subprocess
    import sys

    from preproc.executors.local import SPAWN_MAIN_MESSAGE
    from tests.conftest import ROOT

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


def test_a_dying_worker_charges_only_its_own_index(tmp_path, demo_inputs, monkeypatch, caplog):
    """Index 1 of clean SIGKILLs its worker every time. The pool breaks and takes the other
    running indices down with it: they are run again without losing an attempt, the failure
    names exactly index 1, each retry after a SIGKILL is logged, and status names index 1."""
    import logging

    import pytest

    from preproc.errors import StageFailed
    from preproc.executors.local import DIED
    from preproc.observe.status import run_status

    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "shards": 4,
            "clean": {"defaults": False, "normalize": True},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}, "executor": {"retries": 2}}
    out = tmp_path / "out"
    monkeypatch.setenv("PREPROC_FAILPOINTS", "point=start,stage=clean,index=1,action=kill")
    with caplog.at_level(logging.INFO, logger="preproc"), pytest.raises(StageFailed) as e:
        preproc.run(spec, output=str(out), workers=2)
    assert e.value.stage == "clean" and e.value.failures == {1: DIED}
    assert sorted(p.name for p in (out / "clean" / "_done").iterdir()) == ["00000.json", "00002.json", "00003.json"]
    retries = [r.getMessage() for r in caplog.records if "clean index 1: worker process died" in r.getMessage()]
    assert len(retries) == 2 and all("retrying" in m for m in retries)
    assert not [r for r in caplog.records if "worker process died" in r.getMessage() and "index 1" not in r.getMessage()]
    (clean,) = [s for s in run_status(str(out))["stages"] if s["stage"] == "clean"]
    assert [f["index"] for f in clean["failures"]] == [1] and clean["failures"][0]["attempt"] == 3
    assert clean["failures"][0]["error"] == DIED


def test_times_rules_count_across_workers_without_a_state_folder(tmp_path, demo_inputs, monkeypatch, caplog):
    """`times=1` without PREPROC_FAILPOINT_STATE: the coordinator gives its workers a shared
    folder, so the rule fires once (not in every worker, forever)."""
    import logging

    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "shards": 4,
            "clean": {"defaults": False, "normalize": True},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}, "executor": {"retries": 1}}
    monkeypatch.setenv("PREPROC_FAILPOINTS", "point=start,stage=tokenize,index=2,action=kill,times=1")
    monkeypatch.delenv("PREPROC_FAILPOINT_STATE", raising=False)
    with caplog.at_level(logging.INFO, logger="preproc"):
        r = preproc.run(spec, output=str(tmp_path / "out"), workers=2)
    assert r.stats["kept"] > 0
    assert [m for m in (rec.getMessage() for rec in caplog.records)
            if m.startswith("stage tokenize index 2: worker process died") and "retrying" in m]
    monkeypatch.delenv("PREPROC_FAILPOINT_STATE", raising=False)
