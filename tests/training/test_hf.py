"""Hugging Face datasets in and out: ``save_to_disk`` folders, Arrow files and Parquet exports
of hub datasets as inputs (local and on S3); our token Parquet files through
``datasets.load_dataset("parquet")`` and ``preproc.to_hf_dataset``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

import preproc
from preproc.training.hf import parquet_files, to_hf_dataset
from preproc.training.megatron import IndexedDataset
from tests.conftest import read_tree

datasets = pytest.importorskip("datasets")

WORDS = "river city music water language market winter light garden library station bridge forest".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 40)))) + f" ({seed}:{i})" for i in range(n)]


@pytest.fixture(scope="module")
def hf_inputs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Three kinds of HF input under one folder; returns it and every document's id → text."""
    root = tmp_path_factory.mktemp("hf-inputs")
    expected: dict[str, str] = {}

    # 1. datasets.Dataset.save_to_disk: a folder of Arrow stream files named by state.json.
    t1 = _texts(300, 1)
    ds = datasets.Dataset.from_dict({"id": [f"saved-{i}" for i in range(300)], "text": t1,
                                     "meta": [{"n": i} for i in range(300)]})
    ds.save_to_disk(str(root / "saved"), num_shards=2)
    assert len(json.loads((root / "saved" / "state.json").read_text())["_data_files"]) == 2
    expected.update({f"saved-{i}": t for i, t in enumerate(t1)})

    # 2. Arrow files, IPC file and stream formats, without an id column (ids are generated).
    (root / "arrow").mkdir()
    t2 = _texts(200, 2)
    table = pa.table({"text": t2, "lang": ["en"] * 200})
    with pa.OSFile(str(root / "arrow" / "file-format.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table, max_chunksize=64)
    t3 = _texts(150, 3)
    table = pa.table({"text": t3})
    with pa.OSFile(str(root / "arrow" / "stream-format.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table, max_chunksize=50)
    expected.update({f"file-format.arrow:{i}": t for i, t in enumerate(t2)})
    expected.update({f"stream-format.arrow:{i}": t for i, t in enumerate(t3)})

    # 3. A hub Parquet export (refs/convert/parquet layout: <config>/<split>/NNNN.parquet).
    t4 = _texts(400, 4)
    for k, split in enumerate(("train", "train", "validation")):
        d = root / "export" / "default" / split
        d.mkdir(parents=True, exist_ok=True)
        part = t4[k * 100:(k + 1) * 100] if k < 2 else t4[200:]
        ids = [f"hub-{k}-{i}" for i in range(len(part))]
        n = len(list(d.glob("*.parquet")))
        pq.write_table(pa.table({"id": ids, "text": part}), d / f"{n:04d}.parquet", row_group_size=40)
        expected.update(dict(zip(ids, part)))
    return root, expected


def _spec(inputs: list[str], output: str, tokenizer: str, storage: dict | None = None) -> dict:
    return {"input": {"paths": inputs}, "output": output, "shards": 3, "clean": False, "dedup": {"exact": False},
            "tokenize": {"tokenizer": tokenizer}, "executor": {"workers": 2}, "storage": storage or {}}


@pytest.fixture(scope="module")
def local_out(hf_inputs, demo_inputs, tmp_path_factory) -> Path:
    root, _ = hf_inputs
    out = tmp_path_factory.mktemp("hf-out") / "out"
    preproc.run(_spec([str(root / "saved"), str(root / "arrow" / "*.arrow"), str(root / "export" / "**" / "*.parquet")],
                      str(out), str(demo_inputs / "tokenizer.json")))
    return out


def _our_tokens(out: Path) -> dict[str, list[int]]:
    """id → tokens, read our own way: the Megatron files and the ids of the Parquet files."""
    ds = json.loads((out / "dataset.json").read_text())
    got = {}
    for sh in ds["shards"]:
        ids = pq.read_table(out / sh["parquet"], columns=["id"]).column("id").to_pylist()
        mg = IndexedDataset(str(out / sh["megatron"]))
        assert len(mg) == len(ids)
        got.update({i: mg[k].tolist() for k, i in enumerate(ids)})
    return got


def test_hf_inputs_are_read_whole(local_out, hf_inputs, demo_inputs):
    _, expected = hf_inputs
    stats = json.loads((local_out / "stats.json").read_text())
    assert stats["read"] == stats["kept"] == len(expected) == 1050 and not stats["file_errors"]
    tok = Tokenizer.from_file(str(demo_inputs / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    got = _our_tokens(local_out)
    assert set(got) == set(expected)
    keys = sorted(expected)
    want = tok.encode_batch([expected[k] for k in keys], add_special_tokens=False)
    for k, w in zip(keys, want):
        assert got[k] == w.ids + [eos], k


def test_load_dataset_parquet_gives_our_tokens(local_out, tmp_path):
    ours = _our_tokens(local_out)
    files = [str(local_out / s["parquet"]) for s in json.loads((local_out / "dataset.json").read_text())["shards"]]
    hf = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(hf) == len(ours)
    assert {r["id"]: r["input_ids"] for r in hf} == ours
    assert all(r["num_tokens"] == len(r["input_ids"]) for r in hf.select(range(20)))

    via = to_hf_dataset(local_out, cache_dir=str(tmp_path / "hf2"))
    assert parquet_files(local_out) == files
    assert via["id"] == hf["id"] and via["input_ids"] == hf["input_ids"]
    stream = to_hf_dataset(str(local_out), streaming=True)
    assert next(iter(stream))["input_ids"] == hf[0]["input_ids"]


def test_hf_inputs_and_outputs_on_s3(s3, hf_inputs, demo_inputs, local_out, tmp_path):
    root, _ = hf_inputs
    b = s3.bucket()
    # save_to_disk straight to S3, as users do; the Arrow files and the export uploaded.
    saved = datasets.load_from_disk(str(root / "saved"))
    saved.save_to_disk(f"s3://{b}/in/saved", num_shards=2, storage_options={"endpoint_url": s3.endpoint_url})
    s3.upload(root / "arrow", b, "in/arrow")
    s3.upload(root / "export", b, "in/export")
    s3.client.put_object(Bucket=b, Key="tok.json", Body=(demo_inputs / "tokenizer.json").read_bytes())
    spec = _spec([f"s3://{b}/in/saved", f"s3://{b}/in/arrow/*.arrow", f"s3://{b}/in/export/**/*.parquet"],
                 f"s3://{b}/out", f"s3://{b}/tok.json", s3.storage)
    r = preproc.run(spec)
    assert r.stats["kept"] == 1050
    remote = s3.tree(b, "out/tokens")
    assert remote == read_tree(local_out)                     # byte-identical to the local run

    hf = to_hf_dataset(f"s3://{b}/out", storage=s3.storage, cache_dir=str(tmp_path / "hf"))
    local = to_hf_dataset(local_out, cache_dir=str(tmp_path / "hf-local"))
    assert hf["id"] == local["id"] and hf["input_ids"] == local["input_ids"]
