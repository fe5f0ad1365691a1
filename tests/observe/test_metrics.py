"""Prometheus metrics after real runs: the textfiles under the output, and pushes to a small
Pushgateway stand-in (a real HTTP server on 127.0.0.1) with the right groups and labels."""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import preproc
from preproc.engine.plan import Plan
from preproc.observe import metrics


def _spec(out: Path, demo_inputs: Path, **extra) -> dict:
    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(out), "shards": 3,
            "clean": {"defaults": False, "normalize": True, "length": {"min_chars": 50}},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}
    spec.update(extra)
    return spec


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _value(samples, name, **labels) -> float:
    hits = [v for n, l, v in samples if n == name and all(l.get(k) == str(x) for k, x in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def _check_worker_metrics(samples, out: Path, run_id: str) -> None:
    stats = json.loads((out / "stats.json").read_text())
    clean = {int(p.stem): json.loads(p.read_text()) for p in (out / "clean" / "_done").glob("*.json")}
    assert len(clean) == 3
    for i, m in clean.items():
        lab = {"run_id": run_id, "stage": "clean", "index": i}
        assert _value(samples, "preproc_documents_read_total", **lab) == m["read"]
        assert _value(samples, "preproc_documents_written_total", **lab) == m["docs"]
        assert _value(samples, "preproc_input_bytes_total", **lab) == m["input_bytes"]
        assert _value(samples, "preproc_text_bytes_total", **lab) == m["text_bytes"]
        assert _value(samples, "preproc_index_success", **lab) == 1
        assert _value(samples, "preproc_index_attempt", **lab) == 1
        assert _value(samples, "preproc_index_duration_seconds", **lab) == pytest.approx(m["wall_time_s"], abs=1e-3)
    # Drops by kind and reason add up to stats.json, duplicates once (under exact_dedup).
    for reason, n in stats["rejected"].items():
        got = sum(v for name, l, v in samples if name == "preproc_documents_dropped_total"
                  and l["kind"] == "rejected" and l["reason"] == reason)
        assert got == n, reason
    dups = [(l, v) for name, l, v in samples if name == "preproc_documents_dropped_total" and l["kind"] == "duplicate"]
    assert {l["stage"] for l, _ in dups} == {"exact_dedup"} and {l["reason"] for l, _ in dups} == {"exact"}
    assert sum(v for _, v in dups) == stats["duplicates"]["exact"]
    tok = [(l, v) for name, l, v in samples if name == "preproc_tokens_total"]
    assert {l["stage"] for l, _ in tok} == {"tokenize"} and sum(v for _, v in tok) == stats["tokens"]
    written = sum(v for name, l, v in samples if name == "preproc_documents_written_total" and l["stage"] == "tokenize")
    assert written == stats["kept"]
    assert all(l["run_id"] == run_id for _, l, _ in samples)


def _check_run_gauges(samples, out: Path, run_id: str) -> None:
    stats = json.loads((out / "stats.json").read_text())
    assert _value(samples, "preproc_run_complete", run_id=run_id) == 1
    assert _value(samples, "preproc_run_info", run_id=run_id, executor="local") == 1
    for outcome, key in (("read", "read"), ("kept", "kept"), ("duplicates", "duplicates_total"),
                         ("rejected", "rejected_total"), ("filtered", "filtered_total")):
        assert _value(samples, "preproc_run_documents", run_id=run_id, outcome=outcome) == stats[key]
    assert _value(samples, "preproc_run_tokens", run_id=run_id) == stats["tokens"]
    for stage, n in (("clean", 3), ("exact_dedup", 1), ("tokenize", 3), ("finalize", 1)):
        assert _value(samples, "preproc_run_stage_indices", run_id=run_id, stage=stage) == n
        assert _value(samples, "preproc_run_stage_indices_done", run_id=run_id, stage=stage) == n
        assert _value(samples, "preproc_run_stage_indices_failed", run_id=run_id, stage=stage) == 0
        assert _value(samples, "preproc_run_stage_eta_seconds", run_id=run_id, stage=stage) == 0
    assert _value(samples, "preproc_run_stage_tokens_per_second", run_id=run_id, stage="tokenize") > 0


def test_textfile_metrics_after_a_run(tmp_path, demo_inputs):
    out = tmp_path / "out"
    r = preproc.run(_spec(out, demo_inputs), workers=2)
    files = sorted(p.name for p in (out / "_metrics").glob("*.prom"))
    assert files == ["clean-00000.prom", "clean-00001.prom", "clean-00002.prom", "coordinator.prom",
                     "exact_dedup-00000.prom",
                     "finalize-00000.prom", "tokenize-00000.prom", "tokenize-00001.prom", "tokenize-00002.prom"]
    workers = [s for f in files if f != "coordinator.prom" for s in _samples((out / "_metrics" / f).read_text())]
    _check_worker_metrics(workers, out, r.run_id)
    _check_run_gauges(_samples((out / "_metrics" / "coordinator.prom").read_text()), out, r.run_id)
    for name in metrics.WORKER_METRICS:
        assert any(s[0] == name for s in workers), name


class _Gateway:
    """The part of the Pushgateway API a client uses: PUT/POST /metrics/job/<j>/<k>/<v>..."""

    def __init__(self):
        self.groups: dict[tuple, str] = {}
        self.methods: list[str] = []
        gw = self

        class Handler(BaseHTTPRequestHandler):
            def _store(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = self.path.strip("/").split("/")
                assert parts[0] == "metrics"
                key = {}
                for k, v in zip(parts[1::2], parts[2::2]):
                    if k.endswith("@base64"):
                        k, v = k[:-7], base64.urlsafe_b64decode(v).decode()
                    key[k] = v
                gw.methods.append(self.command)
                gw.groups[tuple(sorted(key.items()))] = body.decode()
                self.send_response(200)
                self.end_headers()

            do_PUT = do_POST = _store

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_pushgateway_gets_one_group_per_index_and_the_coordinator(tmp_path, demo_inputs):
    out = tmp_path / "out"
    with _Gateway() as gw:
        r = preproc.run(_spec(out, demo_inputs, metrics={"pushgateway": gw.url}), workers=2)
    assert not (out / "_metrics").exists()       # pushed, not written
    assert set(gw.methods) == {"PUT"}            # a retried index replaces its group
    rid = r.run_id
    want = {(("index", str(i)), ("job", "preproc"), ("run_id", rid), ("stage", s))
            for s, n in (("clean", 3), ("exact_dedup", 1), ("tokenize", 3), ("finalize", 1)) for i in range(n)}
    coord = (("instance", "coordinator"), ("job", "preproc"), ("run_id", rid))
    assert set(gw.groups) == want | {coord}
    workers = [s for k, body in gw.groups.items() if k != coord for s in _samples(body)]
    _check_worker_metrics(workers, out, rid)
    _check_run_gauges(_samples(gw.groups[coord]), out, rid)
    # The spec's metrics section is not part of the run id: same run as without it.
    assert Plan.load(str(out)).run_id == preproc.plan(_spec(tmp_path / "x", demo_inputs)).run_id


def test_unreachable_pushgateway_and_metrics_off_never_fail_work(tmp_path, demo_inputs, monkeypatch, caplog):
    out = tmp_path / "out"
    r = preproc.run(_spec(out, demo_inputs, metrics=False), workers=1)
    assert not (out / "_metrics").exists()
    plan = Plan.load(str(out))
    # A gateway that hangs up on every connection: the push fails, is tried once (no retry
    # loop holding up the index: the connections are counted, not the seconds), and the work goes on.
    with socket.socket() as gw:
        gw.bind(("127.0.0.1", 0))
        gw.listen(8)
        gw.settimeout(0.05)
        monkeypatch.setenv("PREPROC_PUSHGATEWAY", f"http://127.0.0.1:{gw.getsockname()[1]}")
        monkeypatch.setenv("PREPROC_METRICS", "on")
        accepted = []

        def hang_up():
            while not stop.is_set():
                try:
                    conn, _ = gw.accept()
                except OSError:
                    continue
                accepted.append(1)
                conn.close()

        stop = threading.Event()
        t = threading.Thread(target=hang_up, daemon=True)
        t.start()
        metrics.publish_index(plan, "clean", 0, {"read": 1, "docs": 1}, ok=True, attempt=1, duration_s=0.1)
        stop.set()
        t.join()
    assert len(accepted) == 1
    assert "cannot push" in caplog.text
    monkeypatch.delenv("PREPROC_PUSHGATEWAY")
    monkeypatch.setenv("PREPROC_METRICS_DIR", str(tmp_path / "prom"))
    metrics.publish_index(plan, "tokenize", 2, None, ok=False, attempt=3, duration_s=1.5)
    s = _samples((tmp_path / "prom" / "tokenize-00002.prom").read_text())
    assert _value(s, "preproc_index_success", run_id=r.run_id, stage="tokenize", index=2) == 0
    assert _value(s, "preproc_index_attempt", run_id=r.run_id, stage="tokenize", index=2) == 3
