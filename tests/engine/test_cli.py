"""The CLI as users run it: subprocesses, exit codes, one-line errors, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import preproc
from tests.conftest import ROOT, demo_spec_file, read_tree


def cli(*args, env=None, check=False, **kw):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "preproc", *map(str, args)], capture_output=True, text=True,
                       env=e, **kw)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def _spec(tmp_path, demo_inputs, **extra) -> Path:
    return demo_spec_file(tmp_path, demo_inputs, **extra)


@pytest.mark.parametrize("case,needle", [
    ("bad_key", "spec.yaml: shardz: unknown key"),
    ("no_input", "input.paths: no input files match"),
    ("no_tokenizer", "tokenize.tokenizer: "),
    ("bad_tokenizer", "is not a readable tokenizer.json"),
    ("unwritable", "output: cannot "),
])
def test_fatal_errors_exit_2_with_one_line_and_write_nothing(tmp_path, demo_inputs, case, needle):
    extra = {}
    if case == "bad_key":
        extra = {"shardz": 3}
    elif case == "no_input":
        extra = {"input": {"paths": [str(tmp_path / "nothing" / "*.jsonl")]}}
    elif case == "no_tokenizer":
        extra = {"tokenize": {"tokenizer": str(tmp_path / "missing.json")}}
    elif case == "bad_tokenizer":
        (tmp_path / "t.json").write_text("{not json")
        extra = {"tokenize": {"tokenizer": str(tmp_path / "t.json")}}
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        extra = {"output": str(tmp_path / "file" / "out")}
    spec = _spec(tmp_path, demo_inputs, **extra)
    p = cli("run", spec)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("preproc: error: "), p.stderr
    assert needle in p.stderr
    assert not (tmp_path / "out").exists()


def test_plan_writes_nothing(tmp_path, demo_inputs):
    p = cli("plan", _spec(tmp_path, demo_inputs), "--shards", "3", check=True)
    assert "shard" in p.stdout and "stage clean" in p.stdout and "stage tokenize" in p.stdout
    assert not (tmp_path / "out").exists()
    pj = json.loads(cli("plan", _spec(tmp_path, demo_inputs), "--json", check=True).stdout)
    assert [s["name"] for s in pj["stages"]] == ["clean", "exact_dedup", "tokenize", "finalize"]


def test_worker_status_and_job_completion_index(tmp_path, demo_inputs):
    # Three shards: every tokenize index is one `preproc worker` process started here.
    spec = _spec(tmp_path, demo_inputs, shards=3)
    out = tmp_path / "out"
    # Plan and run in this process (the CLI's run is tested below), then drive workers by
    # hand like pods do.
    preproc.run(str(spec), workers=1)
    ref = read_tree(out)
    for d in ("tokens", "tokenize", "finalize"):
        shutil.rmtree(out / d)
    (out / "dataset.json").unlink()
    n = json.loads((out / "plan.json").read_text())["stages"][2]["fan_out"]
    st = json.loads(cli("status", out, "--json", check=True).stdout)
    assert {s["stage"]: (s["done"], s["total"]) for s in st["stages"]}["tokenize"] == (0, n)
    for i in range(n):
        cli("worker", out, "--stage", "tokenize", env={"JOB_COMPLETION_INDEX": str(i)}, check=True)
    assert cli("worker", out, "--stage", "finalize", "--index", "0").returncode == 0
    assert read_tree(out) == ref
    p = cli("worker", out, "--stage", "tokenize", "--index", str(n + 5))
    assert p.returncode == 2 and "has indices 0.." in p.stderr
    p = cli("worker", out, "--stage", "tokenize")
    assert p.returncode == 2 and "JOB_COMPLETION_INDEX" in p.stderr
    text = cli("status", out, check=True).stdout
    assert "complete" in text and f"{n:>5}/{n:<5}" in text


def test_killed_worker_is_retried_and_killed_run_resumes_identically(tmp_path, demo_inputs, demo_run):
    ref = read_tree(demo_run)     # the same spec (tests.conftest.demo_run_spec), undisturbed

    # 1. SIGKILL one pool worker as it starts tokenize index 1 (a failpoint, once): the pool is
    #    rebuilt, the index retried, and the run finishes by itself with identical outputs.
    a = tmp_path / "a"
    a.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    fired = tmp_path / "fired"
    p = cli("run", _spec(a, demo_inputs), "--workers", "2",
            env={"PREPROC_FAILPOINTS": "point=start,stage=tokenize,index=1,action=kill,times=1",
                 "PREPROC_FAILPOINT_STATE": str(fired)})
    assert p.returncode == 0, p.stderr
    assert (fired / "rule0-0").exists(), "the worker was not killed"
    assert read_tree(a / "out") == ref

    # 2. SIGKILL the whole run (coordinator and workers) as clean index 2 is about to write its
    #    marker, then rerun: it resumes from the markers and ends byte-identical.
    b = tmp_path / "b"
    b.mkdir()
    proc = subprocess.run([sys.executable, "-m", "preproc", "run", str(_spec(b, demo_inputs)), "--workers", "1"],
                          env=dict(env, PREPROC_FAILPOINTS="point=marker,stage=clean,index=2,action=killpg"),
                          capture_output=True, start_new_session=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    done_dir = b / "out" / "clean" / "_done"
    n_done = len(list(done_dir.glob("*.json")))
    assert 2 <= n_done < 8, n_done   # really interrupted mid-stage
    assert not (b / "out" / "dataset.json").exists()
    p = cli("run", _spec(b, demo_inputs), "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert read_tree(b / "out") == ref
