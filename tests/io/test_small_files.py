"""Many small input files: plan.json stays small (the file lists live in one file per shard,
read only by that shard's worker), and small files are read together (one batch across
files, bytes fetched ahead) with exactly the documents, ids, order and rejects of reading
them one by one, locally and on S3 (moto's server on loopback)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preproc.engine.plan import Plan
from preproc.engine.runner import prepare
from preproc.engine.stages import run_index
from preproc.errors import ConfigError
from preproc.io import layout
from preproc.io.readers import ReadLog, read_split
from preproc.io.readers.small import SMALL_FILE_BYTES, runs
from preproc.spec import load_spec

# Every file this process opens, while `_OPENED` is a list (an audit hook cannot be removed,
# so it records only when asked): which of the plan's files a worker really reads.
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _files(folder: Path, n: int, *, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc-{i:06d}.jsonl").write_text(json.dumps({"id": f"doc{i}", "text": f"document {i} " * (1 + i % 7)}) + "\n")
    return folder


def _spec(inp: str, out: str, gpt2: Path, *, shards: int, storage: dict | None = None) -> object:
    d = {"input": {"paths": [inp]}, "output": out, "shards": shards, "clean": False,
         "dedup": {"exact": False}, "tokenize": {"tokenizer": str(gpt2)}, "executor": {"workers": 1}}
    if storage:
        d["storage"] = storage
    return load_spec(d)


def test_plan_json_stays_small_and_a_worker_reads_only_its_own_file_list(tmp_path, gpt2):
    global _OPENED
    inp = _files(tmp_path / "in", 20_000)
    spec = _spec(str(inp), str(tmp_path / "out"), gpt2, shards=8)
    planned = prepare(spec)
    out = tmp_path / "out"
    size = (out / layout.PLAN).stat().st_size
    assert size < 20_000, size     # was 4.7 MB for 20,000 files (every split inline)
    assert sorted(os.listdir(out / layout.PLAN_SPLITS)) == [f"shard-{i:05d}.json" for i in range(8)]
    d = json.loads((out / layout.PLAN).read_text())
    assert d["input_files"] == 20_000 and len(d["shards"]) == 8 and sum(n for _, n, _ in d["shards"]) == 20_000

    _OPENED = []
    try:
        plan = Plan.load(str(out))
        assert plan.num_shards == 8 and plan.input_bytes == planned.input_bytes and "20000 file(s)" in plan.summary()
        assert not [p for p in _OPENED if f"/{layout.PLAN_SPLITS}/" in p]      # counts and bytes need no list
        splits = plan.shards[5].splits
        lists = [p for p in _OPENED if f"/{layout.PLAN_SPLITS}/" in p]
    finally:
        _OPENED = None
    assert lists == [str(out / layout.plan_splits(5))]
    assert splits == planned.shards[5].splits and len(splits) == planned.shards[5].num_splits > 2000


def test_a_missing_or_foreign_file_list_fails_the_worker_clearly(tmp_path, gpt2):
    inp = _files(tmp_path / "in", 40)
    out = tmp_path / "out"
    prepare(_spec(str(inp), str(out), gpt2, shards=2))
    side = out / layout.plan_splits(1)
    data = side.read_bytes()
    side.write_bytes(data.replace(b"doc-000039", b"doc-000038"))
    with pytest.raises(ConfigError, match="does not match plan.json"):
        run_index(Plan.load(str(out)), "clean", 1)
    side.unlink()
    with pytest.raises(ConfigError, match="shard-00001.json: missing"):
        run_index(Plan.load(str(out)), "clean", 1)
    side.write_bytes(data)
    run_index(Plan.load(str(out)), "clean", 1)     # the right list again: the index runs


def test_file_lists_written_before_a_crash_do_not_make_the_output_foreign(tmp_path, gpt2):
    inp = _files(tmp_path / "in", 30)
    out = tmp_path / "out"
    spec = _spec(str(inp), str(out), gpt2, shards=3)
    prepare(spec)
    (out / layout.PLAN).unlink()          # killed after the lists, before plan.json
    (out / layout.TOKENIZER).unlink()
    assert prepare(spec).num_shards == 3  # planned again into the same folder
    prepare(spec, force=True)             # --force removes _plan/ too (recorded in `writes`)
    assert layout.PLAN_SPLITS in json.loads((out / layout.PLAN).read_text())["writes"]


def _mixed(folder: Path) -> Path:
    """Small files of every kind a reader meets, among bigger ones that are read alone."""
    folder.mkdir(parents=True)
    for i in range(120):
        p = folder / f"f{i:04d}.jsonl"
        if i % 17 == 3:
            p.write_bytes(b'{"text": "ok before a bad line"}\n{not json\n{"text": ""}\n\n{"text": "after"}')
        elif i % 23 == 5:
            p.write_bytes(gzip.compress(json.dumps({"text": f"gzipped {i}"}).encode() + b"\n"))
            p = p.rename(folder / f"f{i:04d}.jsonl.gz")
        elif i % 31 == 7:
            p.write_text("".join(json.dumps({"text": f"big {i} line {k} " + "x" * 200}) + "\n" for k in range(400)))
        else:
            p.write_text("".join(json.dumps({"id": f"r{i}-{k}", "text": f"small {i} doc {k}"}) + "\n"
                                 for k in range(1 + i % 3)))
    return folder


def _one_by_one(plan: Plan, index: int) -> tuple[pa.Table, list[dict]]:
    log = ReadLog()
    batches = [b for s in plan.shards[index].splits for b in read_split(s, plan.spec.input, log, plan.spec.storage)]
    return pa.Table.from_batches(batches), log.rejects


def _check_same_as_one_by_one(out: str, storage: dict | None = None) -> None:
    plan = Plan.load(out, storage)
    got_rows = 0
    for i in range(plan.num_shards):
        stats = run_index(plan, "clean", i)
        ref, ref_rejects = _one_by_one(plan, i)
        t = pq.read_table(_local_or_s3(plan, layout.clean_part(i)))
        for col in ("id", "text", "source"):
            assert t.column(col).to_pylist() == ref.column(col).to_pylist(), (i, col)
        rejects = pq.read_table(_local_or_s3(plan, layout.rejects(i))).to_pylist() if ref_rejects else []
        assert rejects == ref_rejects
        assert stats["read"] == ref.num_rows + len(ref_rejects)
        got_rows += t.num_rows
    assert got_rows > 100


def _local_or_s3(plan: Plan, rel: str):
    return plan.store().open(rel)


def test_small_files_read_together_give_the_documents_of_reading_them_one_by_one(tmp_path, gpt2):
    inp = _mixed(tmp_path / "in")
    out = str(tmp_path / "out")
    prepare(_spec(str(inp), out, gpt2, shards=3))
    plan = Plan.load(out)
    groups = [p for s in plan.shards for p in runs(s.splits) if isinstance(p, tuple)]
    assert groups and sum(len(g) for g in groups) > 90     # most files are read in runs
    assert any(not isinstance(p, tuple) and p.bytes >= SMALL_FILE_BYTES for s in plan.shards for p in runs(s.splits))
    _check_same_as_one_by_one(out)
    # Far fewer row groups than files: the batches span files.
    md = pq.ParquetFile(str(tmp_path / "out" / layout.clean_part(0))).metadata
    assert md.num_row_groups < 10


def test_a_small_file_grown_since_the_plan_is_streamed_whole(tmp_path, gpt2):
    inp = _files(tmp_path / "in", 20)
    out = str(tmp_path / "out")
    prepare(_spec(str(inp), out, gpt2, shards=1))
    grown = inp / "d000" / "doc-000007.jsonl"
    with grown.open("a") as f:
        f.write("".join(json.dumps({"text": f"added {k}"}) + "\n" for k in range(5)))
    run_index(Plan.load(out), "clean", 0)
    texts = pq.read_table(str(tmp_path / "out" / layout.clean_part(0))).column("text").to_pylist()
    assert len(texts) == 25 and texts[8:13] == [f"added {k}" for k in range(5)]


def test_many_small_files_on_s3_give_the_local_documents(s3, tmp_path, gpt2):
    inp = _mixed(tmp_path / "in")
    b = s3.bucket("small")
    s3.upload(inp, b, "corpus")
    out = f"s3://{b}/out"
    prepare(_spec(f"s3://{b}/corpus/*", out, gpt2, shards=3, storage=s3.storage))
    _check_same_as_one_by_one(out, s3.storage)
    local = str(tmp_path / "out")
    prepare(_spec(str(inp / "*"), local, gpt2, shards=3))
    for i in range(3):
        run_index(Plan.load(local), "clean", i)
        remote = pq.read_table(Plan.load(out, s3.storage).store().open(layout.clean_part(i)))
        here = pq.read_table(str(Path(local) / layout.clean_part(i)))
        assert remote.column("text").to_pylist() == here.column("text").to_pylist()
        assert remote.column("id").to_pylist() == here.column("id").to_pylist()


def test_a_data_error_in_one_small_file_costs_that_file_only(tmp_path, gpt2, monkeypatch):
    inp = _files(tmp_path / "in", 30)
    out = str(tmp_path / "out")
    prepare(_spec(str(inp), out, gpt2, shards=1))
    monkeypatch.setenv("PREPROC_FAILPOINTS", "point=read_batch,file=d000/doc-000005.jsonl,action=data_error")
    stats = run_index(Plan.load(out), "clean", 0)
    ids = pq.read_table(str(tmp_path / "out" / layout.clean_part(0))).column("id").to_pylist()
    assert ids == [f"doc{i}" for i in range(30) if i != 5]
    assert stats["read"] == 29 and [(e["file"].rsplit("/", 1)[1], e["error"]) for e in stats["file_errors"]] == \
        [("doc-000005.jsonl", "unreadable")]
