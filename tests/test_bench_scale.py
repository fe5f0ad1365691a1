"""scripts/bench_scale.py, the scale-out harness (issue 18): its unique input survives dedup
and does not depend on how many processes write it; the ceiling runs real processes; the
other benchmarks' rows are guarded. (Timings themselves are benchmarks, not tests.)"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import preproc
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_scale  # noqa: E402

SHARED = Path(bench_scale.bench.SHARED)
TOKENIZER = bench_scale.bench.TOKENIZER


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """The first 40 documents of each shared corpus file, as a corpus folder."""
    d = tmp_path_factory.mktemp("corpus")
    for p in sorted((SHARED / "data" / "corpus").glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            lines = [line for _, line in zip(range(40), f)]
        with gzip.open(d / p.name, "wt", encoding="utf-8") as f:
            f.writelines(lines)
    return d


def _corpus_mb(corpus: Path) -> float:
    """Just under the text bytes of ``corpus``, in MB: one whole copy of it."""
    return (sum(len(json.loads(x)["text"].encode()) for p in corpus.glob("*.gz")
                for x in gzip.open(p, "rt", encoding="utf-8")) - 0.5) / 1e6


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.jsonl")))).hexdigest()


def _removed_ids(out: Path) -> set[str]:
    kept = {i for p in sorted((out / "tokens").glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()}
    clean = {i for p in sorted((out / "clean").glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()}
    return clean - kept


def test_worker_counts_double_up_to_the_cores_and_end_at_them():
    assert bench_scale.worker_counts(16) == [1, 2, 4, 8, 16]
    assert bench_scale.worker_counts(2) == [1, 2]
    assert bench_scale.worker_counts(6) == [1, 2, 4, 6]
    assert bench_scale.worker_counts(1) == [1]


def test_unique_input_is_the_same_for_any_number_of_writers(small_corpus, tmp_path):
    corpus_mb = _corpus_mb(small_corpus)
    a = bench_scale.make_unique_input(small_corpus, tmp_path / "a", mb=2.5 * corpus_mb, shards=4, procs=1)
    b = bench_scale.make_unique_input(small_corpus, tmp_path / "b", mb=2.5 * corpus_mb, shards=4, procs=3)
    assert a == b and a["copies"] == 3 and a["files"] == 4
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    docs = [json.loads(x) for p in sorted((tmp_path / "a").glob("*.jsonl")) for x in p.open()]
    assert len(docs) == a["docs"] and len({d["id"] for d in docs}) == len(docs)
    assert abs(sum(len(d["text"].encode()) for d in docs) / 1e6 - a["text_mb"]) < 0.01
    # A copy keeps the layout and the frequent words, not the rare ones.
    by_id = {d["id"]: d["text"] for d in docs}
    base = next(i for i in by_id if i.endswith("#0") and len(by_id[i].split()) > 50)
    other = base[:-2] + "#1"
    x, y = by_id[base], by_id[other]
    assert len(x) == len(y) and x != y
    assert [w.isspace() for w in x] == [w.isspace() for w in y]


def test_copies_of_the_unique_input_are_not_duplicates_of_each_other(small_corpus, tmp_path):
    """Dedup removes from three copies at most three times what it removes from one: no
    copy is a duplicate of another (the corpus has its own duplicates, in every copy)."""
    mb = _corpus_mb(small_corpus)
    one = bench_scale.make_unique_input(small_corpus, tmp_path / "one", mb=mb, shards=2)
    three = bench_scale.make_unique_input(small_corpus, tmp_path / "three", mb=3 * mb, shards=2)
    assert one["copies"] == 1 and three["copies"] == 3 and three["docs"] == 3 * one["docs"]
    removed = {}
    for name in ("one", "three"):
        spec = {"input": {"paths": [str(tmp_path / name / "*.jsonl")]}, "clean": False,
                "dedup": {"exact": True, "near": True}}
        preproc.run(spec, output=str(tmp_path / f"out-{name}"), tokenizer=str(TOKENIZER), workers=1, shards=2)
        removed[name] = _removed_ids(tmp_path / f"out-{name}")
    # (Were copies duplicates of copy 0, two thirds of the documents would go.)
    assert len(removed["three"]) <= 3 * len(removed["one"]) < one["docs"] // 2


def test_ceiling_runs_one_process_alone_and_n_at_once(small_corpus):
    res = bench_scale.ceiling(small_corpus, [1, 2], mb_per_process=0.2, rounds=1, timeout_s=300)
    one, two = res["rows"]
    assert one["label"].startswith("ceiling: 1 process") and one["seconds"] > 0
    assert one["clean_s"] > 0 and one["signatures_s"] > 0 and one["tokenize_s"] > 0
    assert two["label"] == "ceiling: 2 processes at once" and two["speedup"] == res["speedup"][2] > 0


def test_other_benchmarks_are_guarded(tmp_path, monkeypatch):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "bench_ok_x.py").write_text(
        "def run(work, *, timeout_s=600):\n    return {'rows': [{'label': 'a', 'seconds': 1.5}]}\n")
    (tmp_path / "mods" / "bench_fails_x.py").write_text(
        "def run(work, *, timeout_s=600):\n    raise RuntimeError('broken')\n")
    (tmp_path / "mods" / "bench_shapeless_x.py").write_text(
        "def run(work, *, timeout_s=600):\n    return {'rows': [{'seconds': 1}]}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    res = bench_scale.other_rows(tmp_path / "w", modules=("bench_missing_x", "bench_fails_x", "bench_ok_x",
                                                          "bench_shapeless_x"))
    labels = [r["label"] for r in res["rows"]]
    assert labels == ["bench_missing_x", "bench_fails_x", "bench_ok_x: a", "bench_shapeless_x"]
    assert "error" in res["rows"][0] and "broken" in res["rows"][1]["error"] and "error" in res["rows"][3]
    text = bench_scale.render(res["rows"])
    assert text.count("failed:") == 3 and "bench_ok_x: a" in text and "seconds 1.5" in text
