"""SIGTERM (what Kubernetes sends before killing a pod): the worker stops at once, exits 143
(retryable), and leaves no partial output and no marker."""

from __future__ import annotations

import os
import subprocess
import sys

import preproc
from preproc.engine.runner import prepare
from preproc.engine.stages import run_index
from tests.conftest import ROOT


def test_sigterm_stops_worker_without_partial_outputs(tmp_path, corpus, gpt2):
    out = tmp_path / "out"
    # One small file of the corpus: the signal arrives at the first commit whatever the input's size.
    spec = preproc.load_spec({"input": {"paths": [str(corpus / "wikitext2_en.jsonl.gz")]}, "shards": 1, "clean": False,
                              "dedup": {"exact": False}, "tokenize": {"backend": "hf", "batch_size": 64}},
                             output=str(out), tokenizer=str(gpt2))
    plan = prepare(spec)
    run_index(plan, "clean", 0)
    # The worker sends itself SIGTERM once, at its first commit: its first output is fully written,
    # not yet published (the exact moment a pod's grace period begins is not the test's guess).
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAYON_NUM_THREADS="1",
               PREPROC_FAILPOINTS="point=commit,stage=tokenize,action=signal,signal=TERM,times=1",
               PREPROC_FAILPOINT_STATE=str(tmp_path / "failpoints"))
    proc = subprocess.run([sys.executable, "-m", "preproc", "worker", str(out), "--stage", "tokenize", "--index", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    tokens = out / "tokens"
    err = proc.stderr
    assert proc.returncode == 143, err
    assert "SIGTERM" in err
    assert list(tokens.iterdir()) == []                        # nothing partial, not even temp files
    assert not (out / "tokenize" / "_done").exists()           # and no marker: the index reruns
    assert "Terminated" in (out / "tokenize" / "_failed" / "00000.json").read_text()
    # The next attempt runs it to completion.
    assert run_index(preproc.Plan.load(str(out)), "tokenize", 0)["docs"] == 122
    assert sorted(p.name for p in tokens.iterdir()) == ["part-00000.bin", "part-00000.idx", "part-00000.parquet"]
