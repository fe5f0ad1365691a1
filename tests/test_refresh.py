"""Incremental refresh: only new inputs, dedup against earlier generations, atomic publish,
resume after a kill, and one refresh at a time."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

import preproc
from preproc.refresh import Lock, refresh
from preproc.storage import Store

from .conftest import ROOT


def _records(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(l) for l in f]


@pytest.fixture
def setup(tmp_path, corpus, gpt2):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(corpus / "bible_kjv_en.jsonl.gz", inp)
    spec = {"input": {"paths": [str(inp / "*")]}, "output": str(tmp_path / "ds"), "shards": 3,
            "clean": {"defaults": False, "normalize": True},
            "tokenize": {"tokenizer": str(gpt2)}}
    spath = tmp_path / "spec.yaml"
    spath.write_text(yaml.safe_dump(spec))
    return tmp_path, inp, spec, spath


def _all_ids(ds_root):
    ds = json.loads((ds_root / "dataset.json").read_text())
    return [i for sh in ds["shards"] for i in pq.read_table(ds_root / sh["parquet"]).column("id").to_pylist()]


def test_refresh_generations(setup, corpus):
    tmp, inp, spec, _ = setup
    r1 = refresh(spec, workers=2)
    assert r1.generation == 1 and r1.new_files == 1
    bible = _records(corpus / "bible_kjv_en.jsonl.gz")
    assert r1.dataset["documents"] == len(bible) == 1189

    # New data: a fresh file, and a file of exact copies (new ids) of first-generation documents.
    shutil.copy(corpus / "gutenberg_fr_es.jsonl.gz", inp)
    copies = [{"id": f"copy-{k}", "text": d["text"]} for k, d in enumerate(bible[:30])]
    fresh = [{"id": f"fresh-{k}", "text": f"A new document number {k} that nobody has seen."} for k in range(7)]
    (inp / "more.jsonl").write_text("\n".join(json.dumps(x) for x in copies + fresh) + "\n")
    r2 = refresh(spec, workers=2)
    assert r2.generation == 2 and r2.new_files == 2
    fr_es = _records(corpus / "gutenberg_fr_es.jsonl.gz")
    # Only the new files were read.
    assert r2.stats["read"] == len(fr_es) + len(copies) + len(fresh)
    gen2_plan = json.loads((tmp / "ds" / "generations" / "00002" / "plan.json").read_text())
    assert sorted({x["rel"] for s in gen2_plan["shards"] for x in s["splits"]}) == ["gutenberg_fr_es.jsonl.gz", "more.jsonl"]
    # Copies of earlier generations are dropped; fresh documents are added.
    assert r2.stats["duplicates"]["exact"] == len(copies)
    ds = json.loads((tmp / "ds" / "dataset.json").read_text())
    assert [g["generation"] for g in ds["generations"]] == [1, 2]
    ids = _all_ids(tmp / "ds")
    assert len(ids) == ds["documents"] == len(bible) + len(fr_es) + len(fresh)
    assert not any(i.startswith("copy-") for i in ids) and all(f"fresh-{k}" in ids for k in range(7))
    assert (tmp / "ds" / "_state" / "manifests" / "dataset-v00002.json").exists()

    # Nothing new: quick, no new generation.
    t0 = time.time()
    r3 = refresh(spec, workers=2)
    assert r3.generation is None and r3.new_files == 0 and "nothing new" in r3.message
    assert time.time() - t0 < 10
    assert not (tmp / "ds" / "generations" / "00003").exists()


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "preproc", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def test_killed_refresh_leaves_previous_generation_and_is_resumed(setup, corpus):
    tmp, inp, spec, spath = setup
    assert _cli("refresh", spath, "--workers", "2").returncode == 0
    before = json.loads((tmp / "ds" / "dataset.json").read_text())
    shutil.copy(corpus / "wikitext2_en.jsonl.gz", inp)
    shutil.copy(corpus / "manpages_en.jsonl.gz", inp)
    proc = subprocess.Popen([sys.executable, "-m", "preproc", "refresh", str(spath), "--workers", "1", "--lock-ttl", "2"],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    done = tmp / "ds" / "generations" / "00002" / "clean" / "_done"
    t0 = time.time()
    while not (done.exists() and any(done.iterdir())) and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp / "ds" / "generations" / "00002" / "dataset.json").exists(), "killed too late"
    # The published dataset is untouched and readable.
    assert json.loads((tmp / "ds" / "dataset.json").read_text()) == before
    assert len(_all_ids(tmp / "ds")) == before["documents"]
    # A second refresh right away finds the dead holder's lock still valid ...
    p = _cli("refresh", spath)
    assert p.returncode == 75 and "another refresh" in p.stderr
    time.sleep(2.5)    # ... and after its expiry takes over and finishes generation 2.
    p = _cli("refresh", spath, "--workers", "2")
    assert p.returncode == 0, p.stderr
    ds = json.loads((tmp / "ds" / "dataset.json").read_text())
    assert [g["generation"] for g in ds["generations"]] == [1, 2]
    added = len(_records(corpus / "wikitext2_en.jsonl.gz")) + len(_records(corpus / "manpages_en.jsonl.gz"))
    gen2 = ds["generations"][1]
    # (the two files share a couple of identical texts: exact dedup keeps one of each)
    assert gen2["read"] == added and ds["documents"] == 1189 + added - gen2["duplicates"]["exact"]
    assert len(_all_ids(tmp / "ds")) == ds["documents"]


def test_two_refreshes_one_runs_the_other_says_why(setup):
    tmp, inp, spec, spath = setup
    holder = Lock(Store(spec["output"]), ttl_s=60)
    holder.acquire()
    try:
        p = _cli("refresh", spath)
        assert p.returncode == 75
        assert "another refresh" in p.stderr and "holds the lock" in p.stderr
        assert not (tmp / "ds" / "generations").exists()
    finally:
        holder.release()
    assert _cli("refresh", spath, "--workers", "2").returncode == 0


def test_refresh_refuses_a_plain_run_output(tmp_path, demo_inputs):
    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(tmp_path / "o"),
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}, "clean": {"defaults": False}}
    preproc.run(spec, workers=2)
    with pytest.raises(preproc.ConfigError, match="plain run"):
        refresh(spec)


def test_refresh_near_duplicates_of_earlier_generations(setup, corpus):
    tmp, inp, spec, _ = setup
    spec = dict(spec, dedup={"exact": True, "near": True})
    r1 = refresh(spec, workers=2)
    assert r1.generation == 1
    bible = _records(corpus / "bible_kjv_en.jsonl.gz")
    long_ones = [d for d in bible if len(d["text"]) > 4000][:25]
    # Lightly edited copies (a new header and footer) of published documents, plus fresh ones.
    edited = [{"id": f"edit-{k}", "text": f"Reprinted edition, page {k}.\n{d['text']}\nEnd of page {k}."}
              for k, d in enumerate(long_ones)]
    fresh = [{"id": f"fresh-{k}", "text": " ".join(f"word{k}x{j}" for j in range(200))} for k in range(5)]
    (inp / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in edited + fresh) + "\n")
    r2 = refresh(spec, workers=2)
    assert r2.generation == 2 and r2.stats["read"] == len(edited) + len(fresh)
    assert r2.stats["duplicates"]["near"] == len(edited) and r2.stats["duplicates"]["exact"] == 0
    ids = _all_ids(tmp / "ds")
    assert not any(i.startswith("edit-") for i in ids) and sum(i.startswith("fresh-") for i in ids) == 5
    # Changing the near-dedup config of an existing dataset is refused.
    (inp / "more.jsonl").write_text(json.dumps({"id": "m", "text": "something else entirely " * 20}) + "\n")
    with pytest.raises(preproc.ConfigError, match="dedup.near"):
        refresh(dict(spec, dedup={"exact": True, "near": {"bands": 9, "rows": 13}}), workers=2)


def test_index_compaction_keeps_dedup_against_all_generations(setup, corpus):
    tmp, inp, spec, _ = setup
    spec = dict(spec, dedup={"exact": True, "near": True})
    refresh(spec, workers=2, compact_after=2)                      # generation 1: bible
    shutil.copy(corpus / "wikitext2_en.jsonl.gz", inp)
    refresh(spec, workers=2, compact_after=2)                      # generation 2
    state = json.loads((tmp / "ds" / "_state" / "state.json").read_text())
    assert len(state["segments"]["exact"]) == 2
    bible = _records(corpus / "bible_kjv_en.jsonl.gz")
    wiki = _records(corpus / "wikitext2_en.jsonl.gz")
    copies = [{"id": f"c{k}", "text": d["text"]} for k, d in enumerate(bible[:10] + wiki[:10])]
    edited = [{"id": f"e{k}", "text": "Reprint.\n" + d["text"] + "\nEnd."} for k, d in
              enumerate([d for d in bible if len(d["text"]) > 4000][:5])]
    (inp / "copies.jsonl").write_text("\n".join(json.dumps(x) for x in copies + edited) + "\n")
    r3 = refresh(spec, workers=2, compact_after=2)                 # compacts first, then generation 3
    state = json.loads((tmp / "ds" / "_state" / "state.json").read_text())
    assert state["segments"]["exact"][0].startswith("_state/exact/compact-")
    # gen-3 segments were added after the compaction
    assert len(state["segments"]["exact"]) == 2 and len(state["segments"]["near"]) == 2
    assert not (tmp / "ds" / "_state" / "exact" / "gen-00001").exists()
    assert r3.stats["duplicates"]["exact"] == 20 and r3.stats["duplicates"]["near"] == 5
    assert r3.stats["kept"] == 0
