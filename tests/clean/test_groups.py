"""Clean over groups of small shards: an index that cleans several consecutive shards (their
documents in batches across the shards' boundaries) writes, shard by shard, what one index
per shard writes, and the run's result is the same."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

import preproc
from preproc.engine import stages
from preproc.engine.plan import Plan
from preproc.engine.stages import MIN_LATER_FAN_OUT, clean_fan_out, pipeline_stages
from preproc.spec import load_spec

MIB = 2**20


def test_small_shards_are_cleaned_in_groups_by_the_data_volume():
    assert clean_fan_out(8, 100) == 8                      # up to 16 shards: one index each
    assert clean_fan_out(256, 8 * MIB) == MIN_LATER_FAN_OUT == 16
    assert clean_fan_out(256, 100 * MIB) == 100            # one index per MiB of small shards
    assert clean_fan_out(256, 10**9) == 256                # shards of a few MB: one index each
    spec = load_spec({"input": {"paths": ["x.jsonl"]}})
    assert {s.name: s.fan_out for s in pipeline_stages(spec, 256, 8 * MIB)}["clean"] == 16
    assert "clean_fan_out" not in spec.to_json()           # unset: specs from before it stay as they were
    # The spec's value, at most the shards.
    assert clean_fan_out(256, 8 * MIB, 200) == 200 and clean_fan_out(40, 8 * MIB, 200) == 40
    spec = load_spec({"input": {"paths": ["x.jsonl"]}, "clean_fan_out": 256})
    assert {s.name: s.fan_out for s in pipeline_stages(spec, 256, 8 * MIB)}["clean"] == 256


def _inputs(demo_inputs: Path, root: Path, files: int) -> Path:
    """The demo's JSONL file (bad records and duplicates) cut into ``files`` small files, in
    order, with a document the clean steps drop in every third file."""
    lines = (demo_inputs / "input" / "web-a.jsonl").read_bytes().splitlines(keepends=True)
    root.mkdir(parents=True)
    per = -(-len(lines) // files)
    for k in range(files):
        junk = [json.dumps({"id": f"junk-{k}", "text": "# " * 40}).encode() + b"\n"] if k % 3 == 0 else []
        (root / f"part-{k:03d}.jsonl").write_bytes(b"".join(lines[k * per:(k + 1) * per] + junk))
    return root


def _spec(inputs: Path, out: Path, demo_inputs: Path) -> dict:
    return {"input": {"paths": [str(inputs / "*.jsonl")]}, "output": str(out), "shards": 40,
            "clean": {"keep_removed": True}, "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}


def _rows(folder: Path) -> list[tuple]:
    out = []
    for f in sorted(folder.glob("part-*.parquet")):
        t = pq.read_table(f)
        out += [tuple(sorted(r.items())) for r in t.to_pylist()]
    return sorted(out, key=repr)


def test_a_group_writes_what_one_index_per_shard_writes(tmp_path, demo_inputs, monkeypatch):
    inputs = _inputs(demo_inputs, tmp_path / "in", 40)
    # One index per shard: what clean wrote before it took groups.
    monkeypatch.setattr(stages, "INPUT_BYTES_PER_CLEAN_INDEX", 1)
    single = preproc.run(_spec(inputs, tmp_path / "single", demo_inputs), workers=2)
    monkeypatch.undo()
    # In groups, with the worker of index 3 killed as it commits its first file (the retry
    # starts the whole group again; nothing of the killed attempt is trusted).
    monkeypatch.setenv("PREPROC_FAILPOINTS", "point=commit,stage=clean,index=3,action=kill,times=1")
    grouped = preproc.run(_spec(inputs, tmp_path / "grouped", demo_inputs), workers=2)

    a, b = Plan.load(str(tmp_path / "single")), Plan.load(str(tmp_path / "grouped"))
    assert a.num_shards == b.num_shards == 40
    assert a.stage("clean").fan_out == 40 and b.stage("clean").fan_out == 16
    # Each index names its shards; together they are every shard once, in order.
    ranges = [json.loads((tmp_path / "grouped" / "clean" / "_done" / f"{i:05d}.json").read_text())["shards"]
              for i in range(16)]
    assert ranges[0][0] == 0 and ranges[-1][1] == 40
    assert all(r[1] == n[0] and r[1] - r[0] in (2, 3) for r, n in zip(ranges, ranges[1:]))
    assert json.loads((tmp_path / "grouped" / "clean" / "_done" / "00003.json").read_text())["shards"] == [7, 10]

    # Every shard's clean part holds the same rows in the same order, whoever cleaned it.
    for s in range(40):
        name = f"clean/part-{s:05d}.parquet"
        ta, tb = pq.read_table(tmp_path / "single" / name), pq.read_table(tmp_path / "grouped" / name)
        assert ta.schema == tb.schema and ta.to_pylist() == tb.to_pylist(), name
    # The same records rejected and removed (per index files: compared as sets), the same
    # counts, drops and tokens.
    assert _rows(tmp_path / "single" / "rejects") == _rows(tmp_path / "grouped" / "rejects")
    assert _rows(tmp_path / "single" / "removed") == _rows(tmp_path / "grouped" / "removed")
    for k in ("read", "kept", "filtered", "rejected", "duplicates", "tokens", "blank_lines"):
        assert single.stats[k] == grouped.stats[k], k
    assert single.stats["rejected_total"] > 0 and single.stats["filtered_total"] > 0
    assert single.stats["duplicates"]["exact"] > 0
    assert _rows(tmp_path / "single" / "tokens") == _rows(tmp_path / "grouped" / "tokens")
