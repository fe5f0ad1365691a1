"""End to end on real data: tokens exact, Megatron layout, accounting, dedup, determinism."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

import preproc
from preproc.training.megatron import IndexedDataset
from tests.conftest import demo_run_spec, read_tree
from tests.tokenize.test_megatron import _parse


def _corpus_docs(corpus, files):
    docs = {}
    for name in files:
        with gzip.open(corpus / name, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                docs[d["id"]] = d["text"]
    return docs


def _check_tokens(out, docs, tokenizer_path, eos_id, dtype):
    ref = Tokenizer.from_file(str(tokenizer_path))
    ref.encode_special_tokens = True   # the default: text never forges special ids
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["dtype"] == dtype
    seen = 0
    for sh in ds["shards"]:
        t = pq.read_table(out / sh["parquet"])
        assert str(t.schema.field("input_ids").type.value_type) == dtype
        ids = t.column("id").to_pylist()
        toks = t.column("input_ids").to_pylist()
        texts = [docs[i] for i in ids]
        # The reference: the tokenizer's own ids for the raw text, plus EOS.
        want = [e.ids + [eos_id] for e in ref.encode_batch_fast(texts)]   # (the same ids, no offsets)
        assert toks == want
        assert t.column("num_tokens").to_pylist() == [len(w) for w in want]
        # The Megatron pair holds the same tokens, parsed by the documented layout.
        idx = _parse((out / (sh["megatron"] + ".idx")).read_bytes())
        assert idx[1] == (8 if dtype == "uint16" else 4)
        assert idx[2] == [len(w) for w in want]
        mdt = np.uint16 if dtype == "uint16" else np.int32
        flat = np.frombuffer((out / (sh["megatron"] + ".bin")).read_bytes(), dtype=mdt)
        assert flat.tolist() == [x for w in want for x in w]
        mg = IndexedDataset(str(out / sh["megatron"]))
        assert [mg[i].tolist() for i in range(len(mg))] == want
        seen += len(ids)
    assert seen == len(docs) == ds["documents"]


def test_corpus_gpt2_tokens_exact(tmp_path, corpus, gpt2):
    out = tmp_path / "out"
    r = preproc.run({"input": {"paths": [str(corpus / "*.jsonl.gz")]}, "clean": False,
                     "dedup": {"exact": False}, "shards": 6},
                    output=str(out), tokenizer=str(gpt2), workers=2)
    docs = _corpus_docs(corpus, [p.name for p in corpus.glob("*.jsonl.gz")])
    assert r.stats["read"] == r.stats["kept"] == len(docs) == 3517
    # GPT-2 is byte-level BPE with one regex: the plan proves tiktoken exact and uses it;
    # the check below compares every document with HF tokenizers' own ids.
    plan = json.loads((out / "plan.json").read_text())
    assert plan["tokenizer"]["backend"] == "tiktoken", plan["tokenizer"]
    _check_tokens(out, docs, gpt2, 50256, "uint16")
    # Loadable by HF datasets as Parquet, same tokens.
    datasets = pytest.importorskip("datasets")
    ds = json.loads((out / "dataset.json").read_text())
    hf = datasets.load_dataset("parquet", data_files=[str(out / s["parquet"]) for s in ds["shards"]],
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert len(hf) == 3517
    first = pq.read_table(out / ds["shards"][0]["parquet"]).slice(0, 3)
    assert hf[:3]["input_ids"] == first.column("input_ids").to_pylist()


def test_corpus_deepseek_uint32(tmp_path, corpus, deepseek):
    out = tmp_path / "out"
    files = ["wikipedia_7lang.jsonl.gz", "code.jsonl.gz"]
    preproc.run({"input": {"paths": [str(corpus / f) for f in files]}, "clean": False,
                 "dedup": {"exact": False}},
                output=str(out), tokenizer=str(deepseek), workers=2)
    ref = Tokenizer.from_file(str(deepseek))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["tokenizer"]["backend"] == "hf" and "not a single regex" in plan["tokenizer"]["backend_reason"]
    _check_tokens(out, _corpus_docs(corpus, files), deepseek, ref.token_to_id("<｜end▁of▁sentence｜>"), "uint32")


def test_bad_inputs_accounting(tmp_path, bad, gpt2):
    out = tmp_path / "out"
    r = preproc.run({"input": {"paths": [str(bad / "*.jsonl"), str(bad / "*.jsonl.gz"), str(bad / "*.parquet")]},
                     "shards": 5}, output=str(out), tokenizer=str(gpt2), workers=2)
    s = r.stats
    assert s["read"] == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"]
    expected = json.loads((bad / "expected.json").read_text())
    # Reject reasons summed over the files whose expectation is exact.
    want: dict[str, int] = {}
    for name, e in expected.items():
        if name == "corrupt_gzip.jsonl.gz":
            continue
        for k, v in e.get("reject_reasons", {}).items():
            want[k] = want.get(k, 0) + v
    got = dict(s["rejected"])
    corrupt = json.loads((out / "stats.json").read_text())
    # The corrupt gzip's garbage lines are rejected too; take them out before comparing.
    import pyarrow.parquet as pq2
    rej = pq2.read_table(out / "rejects").to_pylist() if (out / "rejects").is_dir() else []
    for r_ in rej:
        if r_["file"].endswith("corrupt_gzip.jsonl.gz"):
            got[r_["reason"]] -= 1
    assert {k: v for k, v in got.items() if v} == want
    assert len(rej) == s["rejected_total"]
    errs = {(e["file"].rsplit("/", 1)[-1], e["error"]) for e in corrupt["file_errors"]}
    assert ("truncated.jsonl.gz", "truncated_gzip") in errs
    assert ("corrupt_gzip.jsonl.gz", "corrupt_gzip") in errs
    assert ("no_text_column.parquet", "schema_missing_text") in errs
    # duplicate_ids.jsonl: the two exact copies are removed by exact dedup, nothing else.
    assert s["duplicates"]["exact"] >= expected["duplicate_ids.jsonl"]["exact_duplicates"]


def test_exact_duplicates_across_shards_keep_first(tmp_path, gpt2):
    inp = tmp_path / "in"
    inp.mkdir()
    a = [{"id": f"a{i}", "text": f"document number {i} with some words"} for i in range(20)]
    b = [{"id": f"b{i}", "text": f"document number {i} with some words"} for i in range(0, 20, 2)]
    b += [{"id": "b-own", "text": "only in file b"}]
    (inp / "a.jsonl").write_text("\n".join(json.dumps(x) for x in a))
    (inp / "b.jsonl").write_text("\n".join(json.dumps(x) for x in b))
    out = tmp_path / "out"
    r = preproc.run({"input": {"paths": [str(inp / "*.jsonl")]}, "shards": 2, "dedup": {"exact": {"buckets": 3}},
                     "clean": {"defaults": False, "normalize": True}},
                    output=str(out), tokenizer=str(gpt2), workers=1)
    assert r.stats["duplicates"]["exact"] == 10
    kept = [i for p in sorted((out / "tokens").glob("*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    assert kept == [x["id"] for x in a] + ["b-own"]   # the first copy (input order) is kept


def _demo_spec(demo_inputs, out, **extra):
    return demo_run_spec(demo_inputs, out, **extra)


def test_one_and_two_workers_and_bucket_counts_are_byte_identical(tmp_path, demo_inputs, demo_run):
    # demo_run: 2 workers, the default bucket count; this one: 1 worker, 3 buckets.
    out = tmp_path / "w1"
    preproc.run(_demo_spec(demo_inputs, out, dedup={"exact": {"buckets": 3}}), workers=1)
    fan_out = [{s["name"]: s["fan_out"] for s in json.loads((o / "plan.json").read_text())["stages"]} for o in (out, demo_run)]
    assert fan_out[0]["exact_dedup"] == 3 != fan_out[1]["exact_dedup"]
    outs = [read_tree(out), read_tree(demo_run)]
    assert outs[0] == outs[1]
    n = json.loads((out / "dataset.json").read_text())["shards"]
    assert len(outs[0]) == 3 * len(n) and len(n) >= 6


def test_rerun_is_a_noop_and_other_spec_is_refused(tmp_path, demo_inputs, demo_run):
    out = tmp_path / "o"
    shutil.copytree(demo_run, out)                         # a finished run (2 workers)
    before = {p: p.stat().st_mtime_ns for p in (out / "tokens").iterdir()}
    r = preproc.run(_demo_spec(demo_inputs, out), workers=1)   # another worker count resumes the same run
    assert {p: p.stat().st_mtime_ns for p in (out / "tokens").iterdir()} == before
    assert r.stats["kept"] == json.loads((demo_run / "dataset.json").read_text())["documents"]
    with pytest.raises(preproc.ConfigError, match="--force"):
        preproc.run(_demo_spec(demo_inputs, out, clean={"length": {"min_chars": 999}}), workers=1)
    r = preproc.run(_demo_spec(demo_inputs, out, clean={"length": {"min_chars": 999}}), workers=1, force=True)
    assert r.stats["filtered"]


def test_resume_after_losing_markers_gives_identical_outputs(tmp_path, demo_inputs, demo_run):
    out = tmp_path / "out"
    shutil.copytree(demo_run, out)
    # As if killed mid-stage: some tokenize indices never committed, a stray temp file left.
    for i in (1, 5):
        (out / "tokenize" / "_done" / f"{i:05d}.json").unlink()
        (out / "tokens" / f"part-{i:05d}.bin").unlink()
    (out / "finalize" / "_done" / "00000.json").unlink()
    (out / "dataset.json").unlink()
    (out / "tokens" / ".part-00001.parquet.tmp-deadbeef").write_bytes(b"partial")
    preproc.run(_demo_spec(demo_inputs, out), workers=2)
    assert {k: v for k, v in read_tree(out).items()} == read_tree(demo_run)


def test_special_token_text_never_becomes_a_special_id(tmp_path, gpt2):
    inp = tmp_path / "a.jsonl"
    inp.write_text(json.dumps({"id": "x", "text": "before <|endoftext|> after"}) + "\n")
    for backend in ("hf", "tiktoken"):
        out = tmp_path / backend
        preproc.run({"input": {"paths": [str(inp)]}, "tokenize": {"backend": backend}, "clean": False}, output=str(out),
                    tokenizer=str(gpt2), workers=1)
        ids = pq.read_table(out / "tokens" / "part-00000.parquet").column("input_ids").to_pylist()[0]
        assert ids.count(50256) == 1 and ids[-1] == 50256     # only the EOS we appended
        ref = Tokenizer.from_file(str(gpt2))
        assert ref.decode(ids[:-1]) == "before <|endoftext|> after"


def test_forcing_tiktoken_on_an_incompatible_tokenizer_is_a_config_error(tmp_path, deepseek):
    inp = tmp_path / "a.jsonl"
    inp.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(preproc.ConfigError, match="tokenize.backend: tiktoken cannot reproduce"):
        preproc.run({"input": {"paths": [str(inp)]}, "tokenize": {"backend": "tiktoken"}},
                    output=str(tmp_path / "o"), tokenizer=str(deepseek), workers=1)


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("special", [True, False])
def test_tiktoken_batches_equal_hf_with_one_and_many_threads(monkeypatch, corpus, gpt2, threads, special):
    """One thread takes the direct path, more the tiktoken thread pool: both give HF's ids,
    with special strings as text (the default) or as their special ids."""
    from preproc.tokenize import tiktoken_backend

    monkeypatch.setenv("RAYON_NUM_THREADS", threads)
    texts = list(_corpus_docs(corpus, ["wikitext2_en.jsonl.gz", "wikipedia_7lang.jsonl.gz"]).values())[:300] + tiktoken_backend.PROBES
    enc, why = tiktoken_backend.build(gpt2.read_text())
    assert why is None
    ref = Tokenizer.from_file(str(gpt2))
    ref.encode_special_tokens = special
    want = [e.ids for e in ref.encode_batch_fast(texts, add_special_tokens=False)]
    got = tiktoken_backend.encode_batch(enc, texts, encode_special_tokens=special)
    assert got == want
    assert any(50256 in ids for ids in got) != special   # the probe spelling <|endoftext|>


def test_dataset_json_names_the_inputs_up_to_a_bound(demo_run, monkeypatch):
    """dataset.json's provenance: the spec and every input file; past PROVENANCE_MAX_INPUTS
    files, their count and where the per-shard lists are (training loads dataset.json; a
    million names would make it ~100 MB, and finalize would read every shard's list)."""
    from preproc.engine import finalize
    from preproc.engine.plan import Plan

    ds = json.loads((demo_run / "dataset.json").read_text())
    prov = ds["provenance"]
    assert prov["input_files"] == len(prov["inputs"]) == 4 and prov["spec"]["shards"] == 8
    assert [u.rsplit("/", 1)[-1] for u in prov["inputs"]] == sorted(u.rsplit("/", 1)[-1] for u in prov["inputs"])
    plan = Plan.load(str(demo_run))
    monkeypatch.setattr(finalize, "PROVENANCE_MAX_INPUTS", 3)
    loaded = []
    for sh in plan.shards:      # no shard's file list is read for it
        monkeypatch.setattr(sh, "_load", lambda sh=sh: loaded.append(sh.index) or ())
    small = finalize._provenance(plan)
    assert small == {"input_files": 4, "input_lists": "_plan/", "spec": prov["spec"]} and loaded == []
