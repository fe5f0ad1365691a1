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

import pyarrow.parquet as pq
import pytest
import yaml

import preproc
from preproc.engine.plan import Plan
from preproc.engine.refresh import Lock, refresh
from preproc.io.store import Store
from tests.conftest import ROOT


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
    gen2_plan = Plan.load(str(tmp / "ds" / "generations" / "00002"))
    assert sorted({x.rel for s in gen2_plan.shards for x in s.splits}) == ["gutenberg_fr_es.jsonl.gz", "more.jsonl"]
    # Copies of earlier generations are dropped; fresh documents are added.
    assert r2.stats["duplicates"]["exact"] == len(copies)
    ds = json.loads((tmp / "ds" / "dataset.json").read_text())
    assert [g["generation"] for g in ds["generations"]] == [1, 2]
    ids = _all_ids(tmp / "ds")
    assert len(ids) == ds["documents"] == len(bible) + len(fr_es) + len(fresh)
    assert not any(i.startswith("copy-") for i in ids) and all(f"fresh-{k}" in ids for k in range(7))
    assert (tmp / "ds" / "_state" / "manifests" / "dataset-v00002.json").exists()

    # Nothing new: quick, no new generation.
    r3 = refresh(spec, workers=2)
    assert r3.generation is None and r3.new_files == 0 and "nothing new" in r3.message
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
    # The whole refresh (coordinator and workers) dies when generation 2's clean is done and
    # its tokenize is about to write its first marker: a failpoint, not a polled folder.
    proc = subprocess.run([sys.executable, "-m", "preproc", "refresh", str(spath), "--workers", "1"],
                          env=dict(os.environ, PYTHONPATH=str(ROOT),
                                   PREPROC_FAILPOINTS="point=marker,stage=tokenize,action=killpg"),
                          capture_output=True, start_new_session=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert any((tmp / "ds" / "generations" / "00002" / "clean" / "_done").iterdir())
    assert not (tmp / "ds" / "generations" / "00002" / "dataset.json").exists(), "killed too late"
    # The published dataset is untouched and readable.
    assert json.loads((tmp / "ds" / "dataset.json").read_text()) == before
    assert len(_all_ids(tmp / "ds")) == before["documents"]
    # A second refresh right away takes over the lease (its holder's process is gone:
    # preproc.io.lease; expiry on another machine is tested in test_safety_lease) and
    # finishes generation 2.
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
        assert "held by another refresh" in p.stderr and holder.owner in p.stderr
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


@pytest.mark.parametrize("near", [True, {"bands": 14, "rows": 8}], ids=["verified-default", "unverified-14x8"])
def test_refresh_near_duplicates_of_earlier_generations(setup, corpus, near):
    tmp, inp, spec, _ = setup
    spec = dict(spec, dedup={"exact": True, "near": near})
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
    state = json.loads((tmp / "ds" / "_state" / "state.json").read_text())
    # The segments name their documents only when verifying.
    seg = pq.read_table(tmp / "ds" / "_state" / "near" / "gen-00001" / "part-00000.parquet")
    assert ("doc" in seg.column_names) == (near is True)
    if near is True:
        assert state["near_canonical"] == "minhash-5g-16b6r-s1-v0.8"
        assert r2.stats["near"]["earlier_verified_pairs"] >= len(edited)
    else:
        assert state["near_canonical"] == "minhash-5g-14b8r-s1"


def test_refresh_of_a_dataset_made_with_the_old_default_names_the_way_on(setup):
    """A dataset refreshed with ``near: true`` before verification became its default has
    14 x 8 unverified generations: the new default is refused with the options to keep."""
    tmp, inp, spec, _ = setup
    refresh(dict(spec, dedup={"exact": True, "near": {"bands": 14, "rows": 8}}), workers=2)
    (inp / "more.jsonl").write_text(json.dumps({"id": "m", "text": "something else entirely " * 20}) + "\n")
    with pytest.raises(preproc.ConfigError) as e:
        refresh(dict(spec, dedup={"exact": True, "near": True}), workers=2)
    assert "minhash-5g-14b8r-s1" in str(e.value) and '{"bands": 14, "rows": 8}' in str(e.value)
    # ... and a refused refresh changed nothing: the old config goes on.
    r = refresh(dict(spec, dedup={"exact": True, "near": {"bands": 14, "rows": 8}}), workers=2)
    assert r.generation == 2 and r.stats["kept"] == 1


# -- verified near dedup against earlier generations ----------------------------------------

def _substitute(text: str, every: int, tag: str) -> str:
    """``text`` with one word in ``every`` replaced: word 5-gram Jaccard ~ (1 - 5/every) / (1 + 5/every)."""
    w = text.split(" ")
    return " ".join(f"{tag}x{i}" if i % every == every // 2 else x for i, x in enumerate(w))


def _near_copies(bible: list[dict], cfg) -> tuple[list[dict], list[dict]]:
    """Edited copies of long first-generation documents: ``close`` ones above the threshold
    (one word in 60 replaced, Jaccard ~0.85), and ``far`` ones below it (one in 30, ~0.71)
    that share at least one band key with their original: candidates that verification
    must reject. Checked here with the run's own MinHash and Jaccard."""
    import numpy as np
    import pyarrow as pa

    from preproc.dedup.minhash import MinHasher, jaccard, shingle_hashes, shingle_sets, unit_hashes

    long_ones = [d for d in bible if len(d["text"]) > 4000]
    close = [{"id": f"close-{k}", "text": _substitute(d["text"], 60, f"c{k}")} for k, d in enumerate(long_ones[:12])]
    far_all = [{"id": f"far-{k}", "text": _substitute(d["text"], 30, f"f{k}")} for k, d in enumerate(long_ones[12:40])]
    origs = long_ones[:40]
    texts = pa.array([d["text"] for d in origs] + [d["text"] for d in close + far_all])
    vals, off = shingle_sets(texts, unit=cfg.minhash.unit, ngram=cfg.minhash.ngram)
    n = len(origs)
    j = jaccard(vals, off, np.arange(n), vals, off, np.arange(n, 2 * n))
    mh = MinHasher(cfg.minhash)
    keys = mh.band_keys(mh.signatures(*shingle_hashes(*unit_hashes(texts, cfg.minhash.unit), cfg.minhash.ngram)))
    shares = (keys[:, :n] == keys[:, n:]).any(axis=0)
    assert (j[:12] >= cfg.threshold).all() and shares[:12].all()
    far = [d for d, jj, sh in zip(far_all, j[12:], shares[12:]) if sh and jj < cfg.threshold]
    assert len(far) >= 15 and max(j[12:]) < cfg.threshold
    return close, far


def _verified_gen2(inp, bible, cfg, files: int = 3) -> tuple[list[dict], list[dict], list[dict]]:
    close, far = _near_copies(bible, cfg)
    # Two near copies of one new document (the first stays), and fresh ones.
    base = " ".join(f"novel{j} text{j % 7}" for j in range(300))
    twins = [{"id": "twin-0", "text": base}, {"id": "twin-1", "text": "Reposted.\n" + base + "\nThe end."}]
    fresh = [{"id": f"fresh-{k}", "text": " ".join(f"word{k}x{j}" for j in range(200))} for k in range(5)]
    # Three files (or ``files``), so that generation 2 has as many shards (close and far in each).
    for k in range(files):
        docs = (close + far)[k::files] + (twins + fresh if k == files - 1 else [])
        (inp / f"gen2-{k}.jsonl").write_text("\n".join(json.dumps(x) for x in docs) + "\n")
    return close, far, twins + fresh


def test_verified_refresh_drops_only_true_near_duplicates_of_earlier_generations(setup, corpus):
    """Generation 2: edited copies of generation-1 documents above the threshold are
    dropped (the published original stays); copies that share a band key with their
    original but are below the threshold are kept, as are new documents; within the
    generation, one of two near copies stays. Generation 2 has 20 shards, so its near
    stages run 16 indices over groups of shards (the earlier generation's parts are read by
    shard)."""
    tmp, inp, spec, _ = setup
    shards = 20
    spec = dict(spec, shards=shards, dedup={"exact": True, "near": True})
    cfg = preproc.load_spec(spec).dedup.near
    assert cfg.verify and cfg.threshold == 0.8
    r1 = refresh(spec, workers=2)
    gen1_ids = set(_all_ids(tmp / "ds"))
    bible = _records(corpus / "bible_kjv_en.jsonl.gz")
    close, far, new = _verified_gen2(inp, bible, cfg, files=shards)
    r2 = refresh(spec, workers=2)
    assert r2.generation == 2 and r2.stats["read"] == len(close) + len(far) + len(new)
    gen2 = json.loads((tmp / "ds" / "generations" / "00002" / "plan.json").read_text())
    assert len(gen2["shards"]) == shards
    assert {s["name"]: s["fan_out"] for s in gen2["stages"]}["near_verify"] == min(shards, 16)
    near = r2.stats["near"]
    # Every far copy was a candidate against its original, and verification said no.
    assert near["earlier_candidate_pairs"] >= len(close) + len(far)
    assert near["earlier_verified_pairs"] == len(close)
    assert r2.stats["duplicates"]["near"] == len(close) + 1 and r2.stats["duplicates"]["exact"] == 0
    ids = _all_ids(tmp / "ds")
    assert gen1_ids <= set(ids) and len(gen1_ids) == r1.dataset["documents"]     # published stays
    assert not any(i.startswith("close-") for i in ids)
    assert {d["id"] for d in far} <= set(ids)
    assert {"twin-0", "fresh-0", "fresh-4"} <= set(ids) and "twin-1" not in ids
    assert len(ids) == len(set(ids)) == len(gen1_ids) + len(far) + len(new) - 1
    # The unverified 14 x 8 drops below-threshold copies as well (what verification buys).
    inp14 = tmp / "in14"
    inp14.mkdir()
    shutil.copy(corpus / "bible_kjv_en.jsonl.gz", inp14)
    spec14 = dict(spec, input={"paths": [str(inp14 / "*")]}, output=str(tmp / "ds14"),
                  dedup={"exact": True, "near": {"bands": 14, "rows": 8}})
    refresh(spec14, workers=2)
    for p in inp.glob("gen2-*.jsonl"):
        shutil.copy(p, inp14)
    r14 = refresh(spec14, workers=2)
    kept14 = set(_all_ids(tmp / "ds14"))
    assert sum(d["id"] not in kept14 for d in far) >= 3 and r14.stats["duplicates"]["near"] > len(close) + 1


def test_verified_refresh_killed_and_resumed_is_byte_identical(setup, corpus, monkeypatch):
    """Workers of generation 2 killed in near_pairs, near_shingles (which reads generation
    1's clean parts) and near_verify; the refresh fails, the next one resumes the pending
    generation from its markers: drop lists, tokens and the new index segment are
    byte-identical to an uninterrupted refresh."""
    from tests.conftest import read_tree

    tmp, inp, spec, _ = setup
    spec = dict(spec, dedup={"exact": True, "near": True})
    cfg = preproc.load_spec(spec).dedup.near
    bible = _records(corpus / "bible_kjv_en.jsonl.gz")
    ref = dict(spec, output=str(tmp / "ref"))
    refresh(ref, workers=2)
    refresh(spec, workers=2)
    _verified_gen2(inp, bible, cfg)
    r_ref = refresh(ref, workers=2)

    rules, state = tmp / "rules.txt", tmp / "fault-state"
    rules.write_text("point=marker,stage=near_pairs,index=2,action=kill,times=1;"
                     "point=commit,stage=near_shingles,index=2,action=kill,times=3")
    monkeypatch.setenv("PREPROC_FAILPOINTS", f"@{rules}")
    monkeypatch.setenv("PREPROC_FAILPOINT_STATE", str(state))
    killed = dict(spec, executor={"kind": "local", "workers": 2, "retries": 1})
    with pytest.raises(preproc.StageFailed) as e:
        refresh(killed)
    assert e.value.stage == "near_shingles"
    assert json.loads((tmp / "ds" / "_state" / "state.json").read_text())["pending"]["generation"] == 2
    assert len(list(state.iterdir())) == 3            # near_pairs once, near_shingles twice
    shutil.rmtree(state)
    rules.write_text("point=commit,stage=near_verify,index=1,action=kill,times=1")   # retried in the run
    r = refresh(killed)
    assert r.generation == 2 and "finished generation 2" in r.message and len(list(state.iterdir())) == 1
    g, gref = tmp / "ds" / "generations" / "00002", tmp / "ref" / "generations" / "00002"
    assert read_tree(g, "near_drops/drops") == read_tree(gref, "near_drops/drops")
    assert read_tree(g, "tokens") == read_tree(gref, "tokens")
    assert read_tree(tmp / "ds" / "_state" / "near", "gen-00002") == read_tree(tmp / "ref" / "_state" / "near", "gen-00002")
    stats = json.loads((g / "stats.json").read_text())
    assert stats["duplicates"] == r_ref.stats["duplicates"] and stats["kept"] == r_ref.stats["kept"]
    assert stats["near"]["earlier_verified_pairs"] == r_ref.stats["near"]["earlier_verified_pairs"] > 0


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
    # Verified (the default): the compacted segment still names every kept document, and a
    # generation-4 copy is checked against its generation-1 original through it.
    compacted = tmp / "ds" / state["segments"]["near"][0]
    assert compacted.name.startswith("compact-") and not (tmp / "ds" / "_state" / "near" / "gen-00001").exists()
    seg = pq.read_table(compacted)
    assert {"gen", "doc"} <= set(seg.column_names) and set(seg.column("gen").to_pylist()) == {1, 2}
    close, far = _near_copies(bible, preproc.load_spec(spec).dedup.near)
    (inp / "gen4.jsonl").write_text("\n".join(json.dumps(x) for x in close[:4] + far[:6]) + "\n")
    r4 = refresh(spec, workers=2, compact_after=2)      # compacts (compact + gen-3) again first
    state = json.loads((tmp / "ds" / "_state" / "state.json").read_text())
    assert state["segments"]["near"][0] == "_state/near/compact-00004"
    assert r4.stats["duplicates"]["near"] == 4 and r4.stats["kept"] == 6
    assert r4.stats["near"]["earlier_candidate_pairs"] >= 10


def test_verified_refresh_on_s3_with_compaction(setup, corpus, s3):
    """The dataset root on S3: earlier documents are read back from S3 for verification,
    and the compacted index keeps verifying against them."""
    tmp, inp, spec, _ = setup
    b = s3.bucket("ds")
    # Fewer buckets and rounds than the defaults: every index is a few S3 requests.
    spec = dict(spec, output=f"s3://{b}/ds", storage=s3.storage,
                dedup={"exact": {"buckets": 4}, "near": {"buckets": 4, "max_rounds": 4}})
    cfg = preproc.load_spec(spec).dedup.near
    bible = _records(corpus / "bible_kjv_en.jsonl.gz")
    refresh(spec, workers=2, compact_after=2)
    close, far, new = _verified_gen2(inp, bible, cfg)
    r2 = refresh(spec, workers=2, compact_after=2)
    assert r2.stats["duplicates"]["near"] == len(close) + 1 and r2.stats["near"]["earlier_verified_pairs"] == len(close)
    # Generation 3 compacts generations 1 and 2 first; copies of both are checked through it.
    again = [{"id": f"again-{k}", "text": "Again: " + d["text"]} for k, d in enumerate(far[:3])]
    long_ones = [d for d in bible if len(d["text"]) > 4000]
    reprints = [{"id": f"reprint-{k}", "text": f"Reprint {k}.\n" + d["text"]} for k, d in enumerate(long_ones[:3])]
    (inp / "gen3.jsonl").write_text("\n".join(json.dumps(x) for x in again + reprints) + "\n")
    r3 = refresh(spec, workers=2, compact_after=2)
    state = json.loads(s3.get(b, "ds/_state/state.json"))
    assert state["segments"]["near"][0] == "_state/near/compact-00003"
    assert not s3.keys(b, "ds/_state/near/gen-00001/")
    # again-k copies far-k, which generation 2 kept (its own original is below the
    # threshold); reprint-k copies a generation-1 document.
    assert r3.stats["duplicates"]["near"] == 6 and r3.stats["kept"] == 0
    assert r3.stats["near"]["earlier_verified_pairs"] >= 6
