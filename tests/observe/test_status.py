"""``preproc status`` on a run that was killed half-way (and had a failing index), read
only from the output, as from another machine (also through S3); ``--watch`` and ``--json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from preproc.engine.plan import Plan
from tests.conftest import ROOT

SHARDS = 8


def _cli(*args, env=None, **kw):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "preproc", *map(str, args)], capture_output=True, text=True,
                          env=e, **kw)


def _spec(tmp_path: Path, demo_inputs: Path) -> Path:
    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(tmp_path / "out"),
            "shards": SHARDS, "clean": {"defaults": False, "normalize": True, "length": {"min_chars": 50}},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")},
            "executor": {"retries": 0}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_status_of_a_killed_run_with_a_failed_index(tmp_path, demo_inputs, monkeypatch):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               # Index 1 of clean fails every time (retries: 0), the rest go on.
               PREPROC_FAILPOINTS="point=start,stage=clean,index=1,action=raise")
    # ... and the whole run (coordinator and workers, like a lost node) dies as index 4 is
    # about to write its marker: 0, 2 and 3 are done, 1 has failed.
    env["PREPROC_FAILPOINTS"] += ";point=marker,stage=clean,index=4,action=killpg"
    proc = subprocess.Popen([sys.executable, "-m", "preproc", "run", str(_spec(tmp_path, demo_inputs)),
                             "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    done_dir = out / "clean" / "_done"
    assert (out / "clean" / "_failed" / "00001.json").exists()
    n_done = len(list(done_dir.glob("*.json")))
    assert 3 <= n_done < SHARDS - 1, n_done   # really interrupted mid-stage

    p = _cli("status", out, "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["complete"] is False and st["current_stage"] == "clean"
    stages = {s["stage"]: s for s in st["stages"]}
    clean = stages["clean"]
    assert (clean["done"], clean["total"]) == (n_done, SHARDS)
    assert clean["state"] == "failing"
    markers = [json.loads(f.read_text()) for f in sorted(done_dir.glob("*.json"))]
    assert clean["docs"] == sum(m["docs"] for m in markers)
    assert clean["docs_in"] == sum(m["read"] for m in markers)
    assert clean["docs_per_s"] > 0 and clean["bytes_per_s"] > 0
    assert clean["eta_s"] is not None and clean["eta_s"] > 0
    assert st["eta_s"] == clean["eta_s"]
    assert stages["tokenize"]["done"] == 0 and stages["tokenize"]["state"] == "pending"
    # The failed index: its reason, its attempt, and the input files of its shard.
    (f,) = clean["failures"]
    assert f["index"] == 1 and "failpoint start fired" in f["error"] and f["attempt"] == 1
    uris = {x.uri for x in Plan.load(str(out)).shards[1].splits}
    assert f["inputs"] and {i.split("[")[0] for i in f["inputs"]} == uris
    assert clean["failed"] == {"1": f["error"]}

    text = _cli("status", out)
    assert text.returncode == 0, text.stderr
    assert "not complete" in text.stdout
    assert f"{n_done:>5}/{SHARDS:<5}" in text.stdout
    assert "ETA" in text.stdout and "docs/s" in text.stdout
    assert "index 1 (attempt 1): RuntimeError: failpoint start fired" in text.stdout
    assert "inputs: " in text.stdout

    # The coordinator was SIGKILLed: its heartbeat stops. Once it is stale, status says the
    # run stopped and when, with no ETA (not "[running] ... ETA 9s" forever).
    from preproc.observe.heartbeat import INTERVAL_S, STALE_AFTER
    from preproc.observe.status import format_status, run_status

    hb = json.loads((out / "_coordinator.json").read_text())
    assert hb["state"] == "running" and hb["pid"] == proc.pid
    later = hb["heartbeat_s"] + (STALE_AFTER + 1) * INTERVAL_S
    st = run_status(str(out), now=later)
    assert st["state"] == "stopped" and st["eta_s"] is None
    assert st["coordinator"] == {"state": "stopped", "since_s": hb["heartbeat_s"]}
    assert {s["stage"]: s["state"] for s in st["stages"]}["clean"] == "stopped"
    shown = format_status(st)
    assert "stopped: the coordinator stopped without a word" in shown and "ETA" not in shown
    assert "[running]" not in shown and "[stopped]" in shown
    # Within the heartbeat's interval it still counts as running.
    assert run_status(str(out), now=hb["heartbeat_s"] + INTERVAL_S)["state"] != "stopped"

    # --watch --json: one JSON object per refresh until the run completes (it never will here).
    w = subprocess.Popen([sys.executable, "-m", "preproc", "status", str(out), "--watch", "0.2", "--json"],
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    lines = [w.stdout.readline(), w.stdout.readline()]
    w.kill()
    w.wait()
    assert all(json.loads(l)["stages"][0]["done"] == n_done for l in lines)

    # Resume without the failpoint: the index succeeds, its failure record goes, status is complete.
    p = _cli("run", _spec(tmp_path, demo_inputs), "--workers", "2")
    assert p.returncode == 0, p.stderr
    st = json.loads(_cli("status", out, "--json").stdout)
    assert st["complete"] and st["state"] == "complete" and st["eta_s"] == 0.0
    assert st["coordinator"]["state"] == "finished"
    assert all(s["done"] == s["total"] and not s["failures"] for s in st["stages"])
    p = _cli("status", out, "--watch", "0.1")      # a complete run: prints once and returns
    assert p.returncode == 0 and "complete" in p.stdout

    # From another machine that only reaches the bucket: the same status, and the report data.
    _status_from_s3(out, st, monkeypatch)


def _status_from_s3(out: Path, local: dict, monkeypatch) -> None:
    moto_server = pytest.importorskip("moto.server")
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        for k, v in dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                         AWS_ENDPOINT_URL=f"http://{host}:{port}").items():
            monkeypatch.setenv(k, v)
        import boto3
        import s3fs

        boto3.client("s3").create_bucket(Bucket="runs")
        s3fs.S3FileSystem(skip_instance_cache=True).put(str(out), "runs/web-v1", recursive=True)
        from preproc.engine.plan import Plan
        from preproc.observe.report import report_data
        from preproc.observe.status import run_status

        st = run_status("s3://runs/web-v1")
        assert st["complete"] and st["run_id"] == local["run_id"]
        assert [(s["stage"], s["done"], s["docs"], s["tokens"]) for s in st["stages"]] == \
               [(s["stage"], s["done"], s["docs"], s["tokens"]) for s in local["stages"]]
        plan = Plan.load("s3://runs/web-v1")
        data = report_data(plan, plan.store())
        assert data["stats"] == json.loads((out / "stats.json").read_text())
    finally:
        srv.stop()


def test_status_and_report_on_a_refreshed_dataset_root(tmp_path, demo_inputs):
    """A refreshed dataset keeps no plan.json at its root: status and report show the latest
    generation and list them all."""
    import shutil

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(demo_inputs / "input" / "web-c.jsonl.zst", inp)
    spec = {"input": {"paths": [str(inp / "*")]}, "output": str(tmp_path / "ds"), "shards": 2,
            "clean": {"defaults": False, "normalize": True},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}
    sp = tmp_path / "spec.yaml"
    sp.write_text(yaml.safe_dump(spec))
    for name in ("web-c.jsonl.zst", "web-d.parquet"):
        shutil.copy(demo_inputs / "input" / name, inp)
        p = _cli("refresh", sp, "--workers", "1")
        assert p.returncode == 0, p.stderr
    root = tmp_path / "ds"
    assert not (root / "plan.json").exists()
    g2 = json.loads((root / "generations" / "00002" / "plan.json").read_text())

    p = _cli("status", root, "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["run_id"] == g2["run_id"] and st["generation"] == 2 and st["complete"]
    assert [g["generation"] for g in st["generations"]] == [1, 2]
    ds = json.loads((root / "dataset.json").read_text())
    assert [g["documents"] for g in st["generations"]] == [g["documents"] for g in ds["generations"]]
    text = _cli("status", root)
    assert text.returncode == 0, text.stderr
    assert "2 generation(s); showing generation 2" in text.stdout and f"run {g2['run_id']}" in text.stdout

    before = (root / "generations" / "00002" / "report.html").stat().st_mtime_ns
    p = _cli("report", root)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("generations/00002/report.html") and "generations 1, 2" in p.stderr
    assert (root / "generations" / "00002" / "report.html").stat().st_mtime_ns >= before
    assert not (root / "report.html").exists()   # the root holds what refresh wrote, nothing else


def test_a_closed_pipe_ends_quietly(tmp_path, demo_inputs):
    """`preproc plan SPEC | head`: the reader goes away; no BrokenPipeError traceback."""
    r, w = os.pipe()
    os.close(r)   # the reader is gone before the first write
    try:
        p = subprocess.run([sys.executable, "-m", "preproc", "plan", str(_spec(tmp_path, demo_inputs))], stdout=w,
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        os.close(w)
    assert "BrokenPipeError" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 0
