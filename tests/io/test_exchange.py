"""The exchange between stages (:mod:`preproc.io.exchange`): O(N + B) metadata operations,
consumers never open producers' footers, and results that do not depend on how finely the
input is cut or on the bucket counts.

Store operations are counted by wrapping the real :class:`~preproc.io.store.Store` methods
(every call still goes to the real filesystem); stages run in this process through a
small in-process executor, so every operation is seen.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import preproc
from preproc.engine.runner import execute, prepare
from preproc.engine.stages import run_index
from preproc.errors import ConfigError
from preproc.io import exchange as partitions
from preproc.io.store import Store
from preproc.spec import load_spec
from tests.conftest import GPT2, need

OPS = ("open", "exists", "ls", "read_bytes", "open_atomic")


@pytest.fixture
def counted(monkeypatch):
    """``counts[stage][op]``: Store calls, by the stage the coordinator or a worker is on;
    ``counts[stage]["ranges"]``: byte ranges read through ``read_ranges``."""
    counts: dict[str, Counter] = {}
    state = {"stage": "plan"}

    def wrap(name):
        orig = getattr(Store, name)

        def counting(self, *a, **k):
            counts.setdefault(state["stage"], Counter())[name] += 1
            return orig(self, *a, **k)
        return counting

    for name in OPS:
        monkeypatch.setattr(Store, name, wrap(name))
    orig_ranges = Store.read_ranges

    def ranges(self, rels, starts, ends):
        c = counts.setdefault(state["stage"], Counter())
        c["read_ranges"] += 1
        c["ranges"] += len(rels)
        return orig_ranges(self, rels, starts, ends)

    monkeypatch.setattr(Store, "read_ranges", ranges)
    footers = []
    orig_pf = pq.ParquetFile.__init__

    def pf_init(self, *a, **k):
        footers.append(state["stage"])
        return orig_pf(self, *a, **k)

    monkeypatch.setattr(pq.ParquetFile, "__init__", pf_init)
    return counts, state, footers


class InProcess:
    """An executor that runs every index here, one after the other (for counting)."""

    def __init__(self, state=None):
        self.state = state

    def run_stage(self, plan, stage, indices):
        for i in indices:
            run_index(plan, stage, i)

    def close(self):
        pass


def _corpus(root: Path, files: int, docs_per_file: int, seed: int = 7) -> list[str]:
    """``files`` JSONL files of one-line documents of ~60 words, with exact copies and
    near copies (last word changed) spread across files."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    base = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(files * docs_per_file // 2)]
    docs = []
    for k in range(files * docs_per_file):
        r = rng.random()
        t = rng.choice(base[: max(1, k // 2)]) if r < 0.2 else base[k // 2] if k % 2 == 0 else \
            " ".join(base[k // 2].split()[:-1] + ["tail"]) if r < 0.4 else \
            " ".join(rng.choice(vocab) for _ in range(60))
        docs.append({"id": f"d{k}", "text": t})
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        chunk = docs[f * docs_per_file:(f + 1) * docs_per_file]
        (root / f"f{f:04d}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chunk))
    return [d["id"] for d in docs]


def _run(inp: Path, out: Path, *, shards: int, exact_buckets=None, near=None, state=None):
    near_opts = dict(near or {})
    spec = load_spec({"input": {"paths": [str(inp)]}, "shards": shards, "clean": {"defaults": False},
                      "dedup": {"exact": {"buckets": exact_buckets} if exact_buckets else True,
                                "near": near_opts if near is not None else False}},
                     output=str(out), tokenizer=str(GPT2), workers=1)
    p = prepare(spec)
    assert p.num_shards == shards

    def on_stage(name):
        if state is not None:
            state["stage"] = name
    return execute(p, spec, executor=InProcess(), on_stage=on_stage)


def _kept(out: Path) -> set[tuple[str, tuple[int, ...]]]:
    files = sorted((out / "tokens").glob("part-*.parquet"))
    t = pa.concat_tables([pq.read_table(f, columns=["id", "input_ids"]) for f in files])
    return set(zip(t.column("id").to_pylist(), map(tuple, t.column("input_ids").to_pylist())))


def test_exchange_round_trip_and_stale_index(tmp_path):
    """Every consumer gets exactly the rows sent to it, in producer order; a producer file
    rewritten after the index was built is caught by the crc and the index rebuilt."""
    store = Store(str(tmp_path))
    rng = np.random.default_rng(1)
    n, b = 5, 7
    sent = {}
    for p in range(n):
        c = np.sort(rng.integers(0, b, 200).astype(np.uint32))
        v = rng.integers(0, 2**63, 200, dtype=np.uint64)
        sent[p] = (c, v)
        partitions.write_partitioned(store, "x", p, pa.table({"c": c, "v": v}), {"p": str(p)})
    partitions.build_index(store, "x", n, b)
    info = partitions.index_info(store, "x")
    assert info["rows"] == 200 * n and [m["p"] for m in info["metadata"]] == [str(p) for p in range(n)]
    for j in range(b):
        got = partitions.read_partitions(store, "x", j)
        assert [p for p, _ in got] == [p for p in range(n) if (sent[p][0] == j).any()]
        for p, t in got:
            assert t.column("v").to_numpy().tolist() == sent[p][1][sent[p][0] == j].tolist()
    assert partitions.read_partition(store, "x", b + 3) is None
    assert partitions.read_all(store, "x", 2).num_rows == 200
    # Producer 0 rewritten with other data after the index: the crc check rebuilds it.
    c = np.zeros(10, np.uint32)
    partitions.write_partitioned(store, "x", 0, pa.table({"c": c, "v": np.arange(10, dtype=np.uint64)}))
    t = partitions.read_partition(store, "x", 0, ["v"], producers=n, consumers=b, producer_column="p")
    first = t.filter(pa.compute.equal(t.column("p"), 0))
    assert first.column("v").to_numpy().tolist() == list(range(10))
    # Producers that write the producer column themselves (a clean index holding several
    # shards names each row's shard) keep their values.
    for p, vals in ((0, [7, 7, 8]), (1, [9, 9])):
        partitions.write_partitioned(store, "y", p, pa.table({"c": np.zeros(len(vals), np.uint32),
                                                              "p": np.array(vals, np.uint32)}))
    t = partitions.read_partition(store, "y", 0, ["c"], producers=2, consumers=1, producer_column="p")
    assert t.column_names == ["c", "p"] and t.column("p").to_pylist() == [7, 7, 8, 9, 9]
    # Producers of one folder that wrote different columns (two versions of preproc) are refused.
    partitions.write_partitioned(store, "y", 1, pa.table({"c": np.zeros(2, np.uint32)}))
    with pytest.raises(ConfigError, match="producer 1 wrote other columns than producer 0.*--force"):
        partitions.build_index(store, "y", 2, 1)
    # A folder with more producers than the run's stage has (a preproc that cut the stage
    # otherwise wrote it) is refused, not read in part.
    with pytest.raises(ConfigError, match="5 producers where this run has 3.*--force"):
        partitions.build_index(store, "x", 3, b)


def test_prefetched_consumer_ranges_read_once_and_answer_the_same(tmp_path, counted):
    """A group index's partitions, read ahead: one index read and one range per producer
    for the whole consumer range, the same tables as reading consumer by consumer, no I/O
    inside the block; bytes that no longer match the index fall back to the normal path."""
    counts, state, _ = counted
    store = Store(str(tmp_path))
    rng = np.random.default_rng(2)
    n, b = 6, 20
    for p in range(n):
        c = np.sort(rng.integers(0, b, 300).astype(np.uint32))
        partitions.write_partitioned(store, "x", p, pa.table({"c": c, "v": rng.integers(0, 2**63, 300, dtype=np.uint64)}))
    partitions.build_index(store, "x", n, b)
    group = range(5, 13)
    expect = {j: partitions.read_partitions(store, "x", j) for j in group}
    state["stage"] = "ahead"
    with partitions.prefetched(store, ["x", "not-an-exchange"], group):
        before = dict(counts["ahead"])
        got = {j: partitions.read_partitions(store, "x", j) for j in group}
        assert dict(counts["ahead"]) == before                  # answered from memory
    # One open of the index per folder (the missing one's fails: nothing else is asked of it).
    assert before["read_ranges"] == 1 and before["ranges"] == n and before["open"] == 2 and "exists" not in before
    assert {j: [(p, t.to_pylist()) for p, t in v] for j, v in got.items()} == \
           {j: [(p, t.to_pylist()) for p, t in v] for j, v in expect.items()}
    # A producer rewritten after the index: the read-ahead is dropped, the normal path rebuilds.
    partitions.write_partitioned(store, "x", 0, pa.table({"c": np.full(3, 7, np.uint32), "v": np.arange(3, dtype=np.uint64)}))
    with partitions.prefetched(store, ["x"], group):
        t = partitions.read_partition(store, "x", 7, ["v"], producers=n, consumers=b, producer_column="p")
    assert t.filter(pa.compute.equal(t.column("p"), 0)).column("v").to_pylist() == [0, 1, 2]


def test_the_index_reads_the_sidecars_concurrently_on_s3(s3, monkeypatch):
    """On S3 the coordinator fetches the producers' sidecars with concurrent requests (not
    one round trip after the other); a missing producer is named."""
    import s3fs

    store = Store(f"s3://{s3.bucket()}/x", s3.storage)
    n, b = 24, 3
    for p in range(n):
        partitions.write_partitioned(store, "ex", p, pa.table({"c": np.arange(b, dtype=np.uint32),
                                                                "v": np.full(b, p, np.uint64)}))
    inflight = {"now": 0, "max": 0}
    real = s3fs.S3FileSystem._cat_file

    async def counting(self, path, *a, **k):
        inflight["now"] += 1
        inflight["max"] = max(inflight["max"], inflight["now"])
        try:
            return await real(self, path, *a, **k)
        finally:
            inflight["now"] -= 1

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counting)
    partitions.build_index(store, "ex", n, b)
    assert inflight["max"] > 1
    t = partitions.read_partition(store, "ex", 1, ["v"])
    assert sorted(t.column("v").to_pylist()) == list(range(n))
    with pytest.raises(RuntimeError, match="producer 24 has not written"):
        partitions.build_index(store, "ex", n + 1, b)


def test_metadata_operations_are_linear_in_shards_and_buckets(tmp_path, counted):
    """With B = N (the old default: N x B footer reads per exchange), every stage's Store
    metadata operations stay within a small constant times N + B, no consumer of an
    exchange opens a producer's footer, and each consumer reads at most one byte range
    per producer."""
    need(GPT2)
    counts, state, footers = counted
    n = 48
    _corpus(tmp_path / "in", n, 6)
    _run(tmp_path / "in", tmp_path / "o", shards=n, exact_buckets=n,
         near={"buckets": n, "local_max_edges": 0, "max_rounds": 6}, state=state)
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    fan = {s["name"]: s["fan_out"] for s in plan["stages"]}
    exchanges = {"exact_dedup", "near_pairs", "near_shingles", "near_verify", "near_clusters", "near_drops",
                 "tokenize", "near_signatures", *(s for s in fan if s.startswith("near_cc_"))}
    worst = 0.0
    for stage, c in counts.items():
        if stage == "plan":
            continue
        meta = sum(c[o] for o in OPS)
        # producers + consumers (+ the previous stage's markers); finalize reads every marker
        bound = sum(fan.values()) if stage == "finalize" else n + fan[stage] + n
        worst = max(worst, meta / bound)
        assert meta <= 12 * bound, (stage, dict(c))
        if stage in exchanges:
            assert c["ranges"] <= n * fan[stage] and c["read_ranges"] <= 2 * fan[stage] * 2, (stage, dict(c))
    # Footers opened: only clean parts (by near_signatures, tokenize and verification), about
    # one per shard an index reads (near dedup's indices read groups of shards, tokenize's
    # slices span parts), never one per (producer, consumer).
    per_stage = Counter(footers)
    for stage, k in per_stage.items():
        assert k <= 2 * max(fan.get(stage, 1), n) + 2, (stage, k)
    assert per_stage.get("exact_dedup", 0) == 0 and per_stage.get("near_pairs", 0) == 0
    print(f"\nworst metadata ops / (2N + B) = {worst:.2f}")


def test_same_results_whatever_shards_and_buckets(tmp_path):
    """The same documents cut into 16 or 64 shards, with default and explicit bucket
    counts: the same kept (id, input_ids) and the same exact and near drop counts."""
    need(GPT2)
    ids = _corpus(tmp_path / "in", 64, 8, seed=3)
    results = []
    for shards, eb, nb in ((16, None, None), (64, None, None), (16, 5, 3), (64, 64, 64)):
        out = tmp_path / f"o{shards}-{eb}-{nb}"
        near = {"threshold": 0.8, **({"buckets": nb} if nb else {})}
        r = _run(tmp_path / "in", out, shards=shards, exact_buckets=eb, near=near)
        results.append((_kept(out), r.stats["duplicates"]["exact"], r.stats["duplicates"]["near"]))
    kept, exact, near = results[0]
    assert exact > 0 and near > 0 and 0 < len(kept) < len(ids)
    for other in results[1:]:
        assert other == results[0]


def test_bucket_counts_follow_the_data_not_the_shards(tmp_path):
    need(GPT2)
    _corpus(tmp_path / "in", 32, 4)
    fans = []
    for shards in (4, 32):
        p = preproc.plan({"input": {"paths": [str(tmp_path / "in")]}, "shards": shards,
                          "dedup": {"exact": True, "near": True}}, output=str(tmp_path / "o"), tokenizer=str(GPT2))
        fans.append({s.name: s.fan_out for s in p.stages})
    assert fans[0]["clean"] == 4 and fans[1]["clean"] == 16    # (32 small shards: clean takes groups)
    for name in ("exact_dedup", "near_pairs", "near_clusters", "near_cc_00"):
        assert fans[0][name] == fans[1][name] == 1
    p = preproc.plan({"input": {"paths": [str(tmp_path / "in")]}, "shards": 4,
                      "dedup": {"exact": {"buckets": 9}, "near": {"buckets": 6}}}, output=str(tmp_path / "o"),
                     tokenizer=str(GPT2))
    assert p.stage("exact_dedup").fan_out == 9 and p.stage("near_pairs").fan_out == 6
    from preproc.dedup import exact, near
    assert exact.buckets_for(3 * exact.INPUT_BYTES_PER_BUCKET + 1) == 4
    assert near.buckets_for(near.INPUT_BYTES_PER_BUCKET) == 1
