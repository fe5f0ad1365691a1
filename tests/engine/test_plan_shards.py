"""Default shard count: a small corpus is still cut so that workers do not idle, the same
whatever the worker count (outputs stay byte-identical), and the plan says why when a local
run gets fewer than two shards per worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import preproc
from preproc.engine.plan import MIN_SHARD_BYTES, MIN_SHARDS, default_shards
from preproc.engine.stages import later_fan_out, pipeline_stages
from preproc.spec import load_spec
from tests.conftest import ROOT


def _spec(paths, out, gpt2, **extra):
    return {"input": {"paths": paths}, "output": str(out), "tokenize": {"tokenizer": str(gpt2)}, **extra}


def test_default_shards_follow_the_input_not_the_workers():
    assert default_shards(36 * 2**20, 128 * 2**20) == MIN_SHARDS
    assert default_shards(3 * MIN_SHARD_BYTES + 5, 128 * 2**20) == 3
    assert default_shards(100, 128 * 2**20) == 1
    assert default_shards(10 * 2**30, 128 * 2**20) == 80      # big inputs: target_shard_bytes rules


def test_index_of_is_the_index_whose_shards_hold_it(tmp_path):
    from preproc.engine.plan import Plan, Shard, StagePlan
    spec = load_spec({"input": {"paths": ["x.jsonl"]}})
    for n in (1, 5, 16, 40, 257):
        for f in sorted({1, 3, 16, n} - {0}):
            if f > n:
                continue
            plan = Plan("r", str(tmp_path), spec, tuple(Shard(i, (), nbytes=1) for i in range(n)),
                        (StagePlan("near_drops", f),))
            assert [plan.index_of("near_drops", s) for s in range(n)] == \
                [i for i in range(f) for _ in plan.shards_of("near_drops", i)]


def test_later_stages_fan_out_over_the_data_not_the_shards():
    """Tokenize and near dedup's per-shard stages take one index per 32 MiB of input (at
    least 16, at most the shards), or the spec's value; clean follows the shards unless they
    are small (tests/clean/test_groups.py)."""
    mib = 2**20
    assert later_fan_out(8, 10 * mib) == 8 and later_fan_out(256, 10 * mib) == 16
    assert later_fan_out(256, 1000 * mib) == 32 and later_fan_out(10_000, 10**12) == 10_000 >= later_fan_out(100, 10**12)
    assert later_fan_out(256, 10 * mib, 200) == 200 and later_fan_out(40, 10 * mib, 200) == 40
    spec = load_spec({"input": {"paths": ["x.jsonl"]}, "dedup": {"near": True}})
    fan = {s.name: s.fan_out for s in pipeline_stages(spec, 256, 100 * mib)}
    assert fan["clean"] == 100 and fan["exact_dedup"] == 1 and fan["near_pairs"] == 1
    assert {fan[s] for s in ("near_signatures", "near_shingles", "near_verify", "near_drops", "tokenize")} == {16}
    spec = load_spec({"input": {"paths": ["x.jsonl"]}, "later_fan_out": 64})
    assert {s.name: s.fan_out for s in pipeline_stages(spec, 256, 100 * mib)}["tokenize"] == 64


def test_the_shared_corpus_gives_every_worker_work(tmp_path, corpus, gpt2):
    spec = _spec([str(corpus / "*.jsonl.gz")], tmp_path / "out", gpt2)
    two = preproc.plan(spec, workers=2)
    assert two.num_shards >= 4 and two.few_shards_reason() is None
    assert "note:" not in two.summary()
    # The worker count never changes the plan (nor, hence, the outputs).
    many = preproc.plan(spec, workers=16)
    assert [s.splits for s in many.shards] == [s.splits for s in two.shards]
    # 8 gzip files cannot make 32 shards: the plan says so.
    assert "compressed files are not cut" in many.few_shards_reason()
    assert f"note: {many.few_shards_reason()}" in many.summary()


def test_plan_says_why_a_small_input_gets_few_shards(tmp_path, gpt2):
    inp = tmp_path / "small.jsonl"
    line = json.dumps({"id": "x", "text": "word " * 200}) + "\n"
    inp.write_text(line * (int(2.5 * MIN_SHARD_BYTES) // len(line)))
    spec = _spec([str(inp)], tmp_path / "out", gpt2)
    p = preproc.plan(spec, workers=8)
    assert p.num_shards == 2
    assert "not cut into shards smaller than 1.0 MiB" in p.few_shards_reason()
    fixed = preproc.plan(spec, workers=8, shards=3)
    assert fixed.num_shards == 3 and "the spec sets shards: 3" in fixed.few_shards_reason()
    # On the command line.
    sp = tmp_path / "spec.json"
    sp.write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, "-m", "preproc", "plan", str(sp), "--workers", "8"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert "note: 2 shard(s) for 8 worker(s)" in out.stdout
