"""Structured logs: JSON lines with run id, stage, index and attempt (pods), readable lines
on a terminal; the attempt number survives a failed try."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

import preproc
from preproc.io.store import Store
from preproc.observe import logs
from tests.conftest import ROOT


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_index_context(root_logging):
    buf = io.StringIO()
    logs.setup(fmt="json", stream=buf)
    log = logging.getLogger("preproc.test")
    log.info("outside")
    with logs.context(run_id="abc123", stage="clean", index=7, attempt=2):
        log.warning("inside %s", "an index", extra={"docs_per_s": 12.5})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    lines = [json.loads(l) for l in buf.getvalue().splitlines()]
    assert [l["msg"] for l in lines] == ["outside", "inside an index", "failed"]
    assert "stage" not in lines[0] and lines[0]["level"] == "INFO" and lines[0]["logger"] == "preproc.test"
    for l in lines[1:]:
        assert (l["run_id"], l["stage"], l["index"], l["attempt"]) == ("abc123", "clean", 7, 2)
        assert l["ts"].endswith("Z") and isinstance(l["pid"], int) and l["host"]
    assert lines[1]["docs_per_s"] == 12.5
    assert "ValueError: boom" in lines[2]["exc"]


def test_text_lines_and_format_choice(root_logging, monkeypatch):
    buf = io.StringIO()
    logs.setup(fmt="text", stream=buf)
    with logs.context(run_id="abc", stage="tokenize", index=3, attempt=2):
        logging.getLogger("preproc").info("hello")
    logging.getLogger("preproc").info("bye")
    first, second = buf.getvalue().splitlines()
    assert first.endswith(" INFO [tokenize 3 attempt 2] hello") and second.endswith(" INFO bye")
    monkeypatch.delenv("PREPROC_LOG_FORMAT", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert logs.log_format() == "text"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert logs.log_format() == "json"
    monkeypatch.setenv("PREPROC_LOG_FORMAT", "text")
    assert logs.log_format() == "text"


def test_worker_in_a_pod_logs_json_and_counts_attempts(tmp_path, demo_inputs, monkeypatch):
    out = tmp_path / "out"
    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(out), "shards": 2,
            "clean": {"defaults": False, "normalize": True, "length": {"min_chars": 50}},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}
    r = preproc.run(spec, workers=1)
    (out / "tokenize" / "_done" / "00001.json").unlink()
    # As Kubernetes runs it: KUBERNETES_SERVICE_HOST set (JSON logs), index from the Job.
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBERNETES_SERVICE_HOST="10.96.0.1", JOB_COMPLETION_INDEX="1",
               PREPROC_FAILPOINTS="point=marker,stage=tokenize,index=1,action=raise,times=1",
               PREPROC_FAILPOINT_STATE=str(tmp_path / "fp"))
    env.pop("PREPROC_LOG_FORMAT", None)
    cmd = [sys.executable, "-m", "preproc", "worker", str(out), "--stage", "tokenize"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == 1
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    for p, attempt in ((first, 1), (second, 2)):
        lines = [json.loads(l) for l in p.stderr.splitlines() if l.strip()]   # every line parses
        mine = [l for l in lines if l.get("stage") == "tokenize"]
        assert mine and all((l["run_id"], l["index"], l["attempt"]) == (r.run_id, 1, attempt) for l in mine)
        assert any("started" in l["msg"] for l in mine)
    assert any(l.get("event") == "index_done" for l in map(json.loads, second.stderr.splitlines()))
    err = [json.loads(l) for l in first.stderr.splitlines()]
    assert any(l["level"] == "ERROR" and "failpoint" in l.get("exc", "") for l in err)
    # The failure record said attempt 1; the success removed it and left the marker.
    assert not (out / "tokenize" / "_failed" / "00001.json").exists()
    assert json.loads((out / "tokenize" / "_done" / "00001.json").read_text())["docs"] > 0
    # An executor may also say which attempt this is (Kubernetes: the per-index failure count).
    store = Store(str(out))
    assert logs.attempt_number(store, "tokenize", 0) == 1
    monkeypatch.setenv("PREPROC_INDEX_FAILURE_COUNT", "2")
    assert logs.attempt_number(store, "tokenize", 0) == 3
    monkeypatch.setenv("PREPROC_ATTEMPT", "5")
    assert logs.attempt_number(store, "tokenize", 0) == 5
