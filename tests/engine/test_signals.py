"""SIGTERM (what Kubernetes sends before killing a pod): the worker stops at once, exits 143
(retryable), and leaves no partial output and no marker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import preproc
from preproc.engine.runner import prepare
from preproc.engine.stages import run_index

from tests.conftest import ROOT


def test_sigterm_stops_worker_without_partial_outputs(tmp_path, corpus, gpt2):
    out = tmp_path / "out"
    spec = preproc.load_spec({"input": {"paths": [str(corpus / "*.jsonl.gz")]}, "shards": 1, "clean": False,
                              "dedup": {"exact": False}, "tokenize": {"backend": "hf", "batch_size": 64}},
                             output=str(out), tokenizer=str(gpt2))
    plan = prepare(spec)
    run_index(plan, "clean", 0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAYON_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "preproc", "worker", str(out), "--stage", "tokenize", "--index", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tokens = out / "tokens"
    t0 = time.time()
    # Wait until it is writing its outputs (temporary files exist), then ask it to stop.
    while not (tokens.exists() and any(p.name.startswith(".") for p in tokens.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 120
        time.sleep(0.02)
    time.sleep(0.3)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.time() - sent < 10, "must stop well within a pod's grace period"
    assert proc.returncode == 143, err
    assert "SIGTERM" in err
    assert list(tokens.iterdir()) == []                        # nothing partial, not even temp files
    assert not (out / "tokenize" / "_done").exists()           # and no marker: the index reruns
    assert "Terminated" in (out / "tokenize" / "_failed" / "00000.json").read_text()
    # The next attempt runs it to completion.
    assert run_index(preproc.Plan.load(str(out)), "tokenize", 0)["docs"] == 3517
