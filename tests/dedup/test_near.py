"""Near-duplicate removal (MinHash LSH) on real data, end to end and piece by piece.

The ground truth is ``../shared/data/neardup`` (see its README): removal precision and
recall of the defaults (``near: true``: threshold 0.8, verified) and of the unverified
14 bands x 8 rows (datatrove's defaults), byte-identical drop lists and token files for any number of
workers and buckets, exact dedup first, accounting exact. Run with ``-s`` to see the
confusion figures.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import preproc
from preproc.dedup.components import components_by_rounds, local_components, node_partition
from preproc.dedup.drops import read_drops
from preproc.dedup.minhash import (
    MinHasher,
    MinHashParams,
    candidate_probability,
    jaccard,
    lsh_params,
    shingle_hashes,
    shingle_sets,
    unit_hashes,
)
from preproc.dedup.near import read_clusters
from preproc.engine.plan import Plan
from preproc.errors import ConfigError, StageFailed
from preproc.io.store import Store
from tests.conftest import CORPUS, DATA, GPT2, need, read_tree

NEARDUP = DATA / "neardup"
CLEAN = {"defaults": False, "normalize": True}     # independent of default-on quality filters
# Component rounds planned in the runs other than the first (which keeps the default): the
# neardup graph converges in 2, and each planned round is a stage the executor dispatches.
FEW = 6


@pytest.fixture(scope="module")
def neardup() -> Path:
    need(NEARDUP / "neardup.jsonl.gz")
    need(GPT2)
    return NEARDUP


@pytest.fixture(scope="module")
def gt(neardup) -> dict:
    return json.loads((neardup / "neardup_gt.json").read_text())


@pytest.fixture(scope="module")
def docs(neardup) -> dict[str, str]:
    with gzip.open(neardup / "neardup.jsonl.gz", "rt", encoding="utf-8") as f:
        return {d["id"]: d["text"] for d in map(json.loads, f)}


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory, neardup) -> Path:
    """The set uncompressed: a gzip file is one shard, plain JSONL is cut in byte ranges."""
    p = tmp_path_factory.mktemp("neardup") / "neardup.jsonl"
    with gzip.open(neardup / "neardup.jsonl.gz", "rb") as f:
        p.write_bytes(f.read())
    return p


@pytest.fixture(scope="module")
def small(tmp_path_factory, jsonl, gt) -> Path:
    """Every member of 25 ground-truth clusters and 100 other documents, in the set's order
    (about 1.6 MB, still cut in 4 shards, clusters across shards): for the runs that only
    compare outputs with each other."""
    clusters = [c for c in gt["clusters"] if len(c) >= 2][:25]
    members = {d for c in clusters for d in c}
    in_gt = {d for c in gt["clusters"] for d in c}
    lines, others = [], 0
    with open(jsonl, "rb") as f:
        for line in f:
            i = json.loads(line)["id"]
            if i in members or (i not in in_gt and others < 100):
                others += i not in members
                lines.append(line)
    assert len(lines) == len(members) + 100
    p = tmp_path_factory.mktemp("neardup-small") / "small.jsonl"
    p.write_bytes(b"".join(lines))
    return p


def _run(out: Path, near, *, workers: int, inputs: list[Path], shards: int = 4, **dedup):
    return preproc.run({"input": {"paths": [str(p) for p in inputs]}, "shards": shards,
                        "clean": CLEAN, "dedup": {"exact": True, "near": near, **dedup}},
                       output=str(out), tokenizer=str(GPT2), workers=workers)


def _removed(out: Path) -> list[str]:
    store = Store(str(out))
    plan = json.loads((out / "plan.json").read_text())
    stages = [s["name"] for s in plan["stages"] if s["name"] in ("exact_dedup", "near_drops")]
    removed = []
    for i in range(len(plan["shards"])):
        rows = read_drops(store, stages, i)
        ids = pq.read_table(out / "clean" / f"part-{i:05d}.parquet", columns=["id"]).column("id")
        removed += ids.take(pa.array(rows.astype(np.int64))).to_pylist()
    return removed


def confusion(removed: list[str], gt: dict) -> dict:
    """A removal is right when the document is in a ground-truth cluster and at most all
    but one of that cluster are removed; recall = right / documents to remove."""
    cluster = {d: i for i, c in enumerate(gt["clusters"]) for d in c}
    per: dict[int, int] = {}
    outside = 0
    for d in removed:
        if d in cluster:
            per[cluster[d]] = per.get(cluster[d], 0) + 1
        else:
            outside += 1
    right = sum(min(n, len(gt["clusters"][c]) - 1) for c, n in per.items())
    total = gt["n_docs_to_remove"]
    return {"removed": len(removed), "right": right, "wrong": len(removed) - right,
            "wrong_outside_clusters": outside, "missed": total - right,
            "precision": right / max(len(removed), 1), "recall": right / total}


def _print(label: str, c: dict) -> None:
    print(f"\n{label}: removed {c['removed']}, right {c['right']}, wrong {c['wrong']} "
          f"({c['wrong_outside_clusters']} outside any cluster), missed {c['missed']}; "
          f"precision {c['precision']:.4f}, recall {c['recall']:.4f}")


# -- end to end ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run08(tmp_path_factory, jsonl):
    """``near: true``: the defaults, which verify at threshold 0.8."""
    out = tmp_path_factory.mktemp("near08") / "out"
    r = _run(out, True, workers=2, inputs=[jsonl])
    assert r.stats["near"]["documents"] > 0 and len(json.loads((out / "plan.json").read_text())["shards"]) == 4
    return out, r


def test_defaults_precision_recall(run08, gt):
    """Issue #11: the default pipeline removes near duplicates with better precision than
    datatrove's defaults (0.764 here) at no worse recall (0.992); measured 1.000 / 0.997."""
    out, r = run08
    c = confusion(_removed(out), gt)
    _print("defaults (threshold 0.8, 16 bands x 6 rows, verified)", c)
    assert c["precision"] >= 0.99
    assert c["recall"] >= 0.992
    near = r.stats["near"]
    assert near["config"] == "minhash-5g-16b6r-s1-v0.8" and near["verify"] is True
    assert near["threshold"] == 0.8 and near["verified_pairs"] < near["candidate_pairs"]
    assert (out / "near" / near["config"] / "keys").is_dir()
    assert r.stats["duplicates"]["near"] == near["duplicates"] > 0


def test_exact_first_and_accounting(run08):
    out, r = run08
    s = r.stats
    assert s["read"] == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"]
    store = Store(str(out))
    sig = store.read_markers("near_signatures")
    clean_docs = sum(m["docs"] for m in store.read_markers("clean").values())
    # Near dedup saw exactly the documents exact dedup kept...
    assert sum(m["skipped_exact"] for m in sig.values()) == s["duplicates"]["exact"] > 0
    assert sum(m["docs"] for m in sig.values()) == clean_docs - s["duplicates"]["exact"]
    # ...so its drops never overlap exact dedup's, and each is counted once.
    for i in range(4):
        exact = read_drops(store, ["exact_dedup"], i)
        near = read_drops(store, ["near_drops"], i)
        assert not np.intersect1d(exact, near).size
        assert store.read_marker("near_drops", i)["duplicates"] == len(near)
    tok = store.read_markers("tokenize")
    assert sum(m["dropped"] for m in tok.values()) == s["duplicates_total"]


@pytest.mark.parametrize("near", [{}, {"bands": 14, "rows": 8}], ids=["defaults-verified", "unverified-14x8"])
def test_same_outputs_for_workers_and_buckets(tmp_path, small, near):
    """Byte-identical drop lists and token files for 1, 2 and 4 workers and 1 (the
    default for this little data), 3 and 7 buckets."""
    trees = []
    for workers, buckets in ((2, None), (1, 3), (4, 7)):
        o = tmp_path / f"w{workers}b{buckets}"
        r = _run(o, {**near, "buckets": buckets, "max_rounds": FEW}, workers=workers, inputs=[small])
        assert len([n for n in read_tree(o, "near_drops/drops") if n.endswith(".arrow")]) == 4
        assert r.stats["duplicates"]["near"] > 0
        trees.append((read_tree(o, "near_drops/drops"), read_tree(o, "tokens")))
    assert trees[1] == trees[0] and trees[2] == trees[0]


def _kept_tokens(out: Path) -> set[tuple[str, tuple[int, ...]]]:
    rows = set()
    for f in sorted((out / "tokens").glob("part-*.parquet")):
        t = pq.read_table(f, columns=["id", "input_ids"])
        rows |= {(i, tuple(ids)) for i, ids in zip(t.column("id").to_pylist(), t.column("input_ids").to_pylist())}
    return rows


def test_many_shards_run_in_groups_with_the_same_result(tmp_path, small):
    """40 shards: near dedup's per-shard stages and tokenize take 16 indices (the later
    stages' fan-out follows the data, not the shard count), each over a group of consecutive
    shards, and remove exactly the documents the 4-shard run removes, with the same tokens.
    (Verified, the default: every grouped stage runs.)"""
    near: dict = {}
    few, many = tmp_path / "few", tmp_path / "many"
    r4 = _run(few, {**near, "max_rounds": FEW}, workers=2, inputs=[small])
    r40 = _run(many, {**near, "max_rounds": FEW}, workers=2, inputs=[small], shards=40)
    plan = Plan.load(str(many))
    # (clean too takes groups of these small shards: tests/clean/test_groups.py)
    assert plan.num_shards == 40 and plan.stage("clean").fan_out == 16
    grouped = ["near_signatures", "near_shingles", "near_verify", "near_drops", "tokenize"]
    assert {s: plan.stage(s).fan_out for s in grouped} == {s: 16 for s in grouped}
    assert [list(plan.shards_of("near_drops", i)) for i in (0, 1, 15)] == [[0, 1], [2, 3, 4], [37, 38, 39]]
    m = json.loads((many / "near_drops" / "_done" / "00001.json").read_text())
    assert m["shards"] == [2, 5]
    # One drop file and one keys file per group; every shard's drops found by shard.
    assert len([n for n in read_tree(many, "near_drops/drops") if n.endswith(".arrow")]) == 16
    assert len([n for n in read_tree(many, f"near/{r40.stats['near']['config']}/keys") if n.endswith(".arrow")]) == 16
    assert len([n for n in read_tree(many, "clean/keys") if n.endswith(".arrow")]) == 16
    assert r40.stats["duplicates"] == r4.stats["duplicates"] and r4.stats["duplicates"]["near"] > 0
    assert sorted(_removed(many)) == sorted(_removed(few))
    assert _kept_tokens(many) == _kept_tokens(few)


def test_unverified_14x8_figures(tmp_path, gt, jsonl):
    """14 bands x 8 rows without verification (datatrove's defaults, and ours before
    verification became the default): figures printed; every candidate is a duplicate, so
    precision suffers (0.754 here)."""
    r = _run(tmp_path / "a", {"bands": 14, "rows": 8}, workers=2, inputs=[jsonl])
    c = confusion(_removed(tmp_path / "a"), gt)
    _print("14 bands x 8 rows, no verification", c)
    assert r.stats["near"]["config"] == "minhash-5g-14b8r-s1" and r.stats["near"]["verify"] is False
    assert "candidate_pairs" not in r.stats["near"]
    assert c["recall"] >= 0.95            # ~0.72 LSH threshold: finds all, and more
    assert c["precision"] < 0.9


def test_too_few_rounds_is_a_clear_error(tmp_path, jsonl):
    """The neardup graph needs two component steps; with one planned, the cluster stage
    refuses to guess and names the knob."""
    with pytest.raises(StageFailed) as e:
        _run(tmp_path / "o", {"threshold": 0.8, "max_rounds": 1, "local_max_edges": 0}, workers=2, inputs=[jsonl])
    assert e.value.stage == "near_clusters" and "dedup.near.max_rounds" in str(e.value)
    assert e.value.exit_code == 2


def test_keep_longest_and_clusters(tmp_path, gt, docs):
    """A subset: 40 ground-truth clusters and 100 other documents; keep the longest of each
    cluster; the clusters written with their member ids."""
    chosen = [c for c in gt["clusters"] if len(c) >= 2][:40]
    in_gt = {d for c in gt["clusters"] for d in c}
    ids = [d for c in chosen for d in c] + [d for d in docs if d not in in_gt][:100]
    inp = tmp_path / "subset.jsonl"
    inp.write_text("".join(json.dumps({"id": d, "text": docs[d]}) + "\n" for d in sorted(ids)))
    out = tmp_path / "out"
    r = _run(out, {"threshold": 0.8, "keep": "longest", "keep_clusters": True, "max_rounds": FEW},
             workers=2, shards=3, inputs=[inp])
    clusters = read_clusters(str(out)).to_pylist()
    assert clusters and r.stats["near"]["clusters"] == len(clusters)
    assert r.stats["near"]["config"].endswith("-v0.8-longest")
    clean = pa.concat_tables([pq.read_table(p) for p in sorted((out / "clean").glob("part-*.parquet"))])
    length = dict(zip(clean.column("id").to_pylist(), (len(t) for t in clean.column("text").to_pylist())))
    removed = set(_removed(out))
    for c in clusters:
        assert c["ids"][0] == c["kept_id"] and c["size"] == len(c["ids"]) >= 2
        # The longest (first in input order on a tie) stays; every other member is dropped.
        best = max(length[i] for i in c["ids"])
        assert length[c["kept_id"]] == best
        assert c["kept_id"] not in removed
        assert all(i in removed for i in c["ids"][1:] if i in length)
    near_only = sum(c["size"] - 1 for c in clusters)
    assert near_only == r.stats["duplicates"]["near"]


def test_plan_stages_and_config_errors(tmp_path, jsonl):
    base = {"input": {"paths": [str(jsonl)]}, "shards": 3}
    p = preproc.plan({**base, "dedup": {"near": {"threshold": 0.8, "buckets": 5, "max_rounds": 4}}},
                     output=str(tmp_path / "o"), tokenizer=str(GPT2))
    fan = {s.name: s.fan_out for s in p.stages}
    assert list(fan)[:9] == ["clean", "exact_dedup", "near_signatures", "near_pairs", "near_shingles",
                             "near_verify", "near_components", "near_cc_00", "near_cc_01"]
    assert fan["near_components"] == 1
    assert fan["near_signatures"] == fan["near_verify"] == fan["near_drops"] == 3
    assert fan["near_pairs"] == fan["near_cc_03"] == fan["near_clusters"] == 5
    assert "near_cc_04" not in fan
    p = preproc.plan({**base, "dedup": {"near": {"enabled": False}}}, output=str(tmp_path / "o"),
                     tokenizer=str(GPT2))
    assert not [s for s in p.stage_names if s.startswith("near")]
    for near, key in (({"threshold": 1.5}, "dedup.near.threshold:"), ({"bands": 8}, "dedup.near.rows:"),
                      ({"verify": "maybe"}, "dedup.near.verify:"), ({"shingles": "word"}, "dedup.near.shingles:"),
                      ({"keep": "oldest"}, "dedup.near.keep:"), ("yes", "dedup.near: must be")):
        with pytest.raises(ConfigError) as e:
            preproc.plan({**base, "dedup": {"near": near}}, output=str(tmp_path / "o"), tokenizer=str(GPT2))
        assert key in str(e.value) and "\n" not in str(e.value)


def test_default_is_verified_and_explicit_options_still_work():
    """``near: true`` verifies at 0.8; bands and rows alone, or ``verify: false``, keep the
    unverified LSH; the canonical name (the intermediates' folder) follows the resolution."""
    def resolve(near):
        return preproc.load_spec({"input": {"paths": ["x.jsonl"]}, "dedup": {"near": near}}).dedup.near

    default = resolve(True)
    assert (default.minhash.bands, default.minhash.rows) == lsh_params(0.8, 112, verify=True) == (16, 6)
    assert default.verify and default.threshold == 0.8 and default.canonical == "minhash-5g-16b6r-s1-v0.8"
    for same in ({}, {"threshold": 0.8}, {"verify": True}, {"enabled": True, "threshold": 0.8, "verify": True}):
        assert resolve(same) == default, same
    for near in ({"bands": 14, "rows": 8}, {"verify": False}):
        c = resolve(near)
        assert not c.verify and c.threshold is None and c.canonical == "minhash-5g-14b8r-s1", near
    c = resolve({"bands": 14, "rows": 8, "verify": True})
    assert c.verify and c.threshold == 0.8 and c.canonical == "minhash-5g-14b8r-s1-v0.8"
    c = resolve({"threshold": 0.7, "ngram": 3})
    assert c.verify and c.canonical == f"minhash-3g-{lsh_params(0.7, 112, verify=True)[0]}b" \
        f"{lsh_params(0.7, 112, verify=True)[1]}r-s1-v0.7"
    c = resolve({"threshold": 0.8, "verify": False})
    assert not c.verify and c.canonical == "minhash-5g-{}b{}r-s1".format(*lsh_params(0.8, 112))
    assert resolve(False) is None and resolve({"enabled": False}) is None


# -- pieces --------------------------------------------------------------------------------

def test_normalized_shingles_and_batch_independence():
    texts = ["The quick brown fox jumps over the lazy dog, again and again.",
             "the QUICK   brown fox -- jumps over\nthe lazy dog again, and again!!",
             "Ünïcödé wörds stay wörds: naïve café façade résumé Ελληνικά κείμενα εδώ",
             "ünïcödé WÖRDS stay wörds naïve café façade résumé ελληνικά ΚΕΊΜΕΝΑ εδώ",
             "", "!!! ...", "two words"]
    mh = MinHasher(MinHashParams(bands=14, rows=8))
    u, counts = unit_hashes(pa.array(texts))
    assert counts.tolist() == [12, 12, 11, 11, 0, 0, 2]
    sh, per_doc = shingle_hashes(u, counts, 5)
    assert per_doc.tolist() == [8, 8, 7, 7, 0, 0, 1]
    sig = mh.signatures(sh, per_doc)
    assert (sig[:, 0] == sig[:, 1]).all() and (sig[:, 2] == sig[:, 3]).all()
    assert (sig[:, 4] == np.iinfo(np.uint64).max).all()       # no shingles: never a candidate
    # Batch boundaries and chunking change nothing.
    one = np.concatenate([mh.signatures(*shingle_hashes(*unit_hashes(pa.array([t])), 5)) for t in texts], axis=1)
    assert (one == sig).all()
    assert (mh.signatures(sh, per_doc, chunk=5) == sig).all()
    keys = mh.band_keys(sig)
    assert keys.shape == (14, len(texts)) and (keys[:, 0] == keys[:, 1]).all()


def test_jaccard_matches_ground_truth(gt, docs):
    """Our exact Jaccard (word 5-gram sets) against the ground truth's, pair by pair; the
    only differences are scripts with combining marks (we keep marks inside words)."""
    ids = sorted(docs)
    pos = {d: i for i, d in enumerate(ids)}
    vals, off = shingle_sets(pa.array([docs[i] for i in ids]), unit="word", ngram=5)
    pairs = gt["generated_pairs"] + gt["sibling_pairs"] + gt["natural_pairs"]
    a = np.array([pos[p["a"]] for p in pairs])
    b = np.array([pos[p["b"]] for p in pairs])
    ours = jaccard(vals, off, a, vals, off, b)
    theirs = np.array([p["jaccard"] for p in pairs])
    same = np.abs(ours - theirs) < 1e-3
    assert same.mean() > 0.98
    assert all(pairs[k]["a"].startswith(("wikipedia-mr", "wikipedia-hi", "wikipedia-uk"))
               for k in np.flatnonzero(~same))
    # Signatures estimate it: the share of equal values tracks the exact Jaccard.
    mh = MinHasher(MinHashParams(bands=16, rows=8))
    sub = [pos[d] for p in pairs[:200] for d in (p["a"], p["b"])]
    sig = mh.signatures(*shingle_hashes(*unit_hashes(pa.array([docs[ids[i]] for i in sub])), 5))
    est = (sig[:, 0::2] == sig[:, 1::2]).mean(axis=0)
    err = est - ours[:200]
    assert abs(err.mean()) < 0.02 and np.abs(err).max() < 0.25


def test_char_shingles_for_cjk():
    """Japanese has no spaces: word units see whole sentences, character n-grams see the
    text; a lightly edited copy is found with ``shingle: char``."""
    with gzip.open(need(CORPUS / "wikipedia_7lang.jsonl.gz"), "rt", encoding="utf-8") as f:
        ja = [d["text"] for d in map(json.loads, f) if d["source"] == "wikipedia/ja" and len(d["text"]) > 5000][:3]
    assert ja
    text = ja[0]
    edited = text[:1000] + text[1010:3000] + "追加の文" + text[3000:]
    words = unit_hashes(pa.array([text]), "word")[1][0]
    chars = unit_hashes(pa.array([text]), "char")[1][0]
    assert chars > 5 * words
    vals, off = shingle_sets(pa.array([text, edited, ja[1]]), unit="char", ngram=5)
    j = jaccard(vals, off, np.array([0, 0]), vals, off, np.array([1, 2]))
    assert j[0] > 0.9 and j[1] < 0.2
    mh = MinHasher(MinHashParams(unit="char", bands=14, rows=8))
    sig = mh.signatures(*shingle_hashes(*unit_hashes(pa.array([text, edited, ja[1]]), "char"), 5))
    keys = mh.band_keys(sig)
    assert (keys[:, 0] == keys[:, 1]).any() and not (keys[:, 0] == keys[:, 2]).any()


def test_lsh_params():
    assert lsh_params(0.8, 112, verify=True) == (16, 6)
    b, r = lsh_params(0.8, 112, verify=True)
    assert candidate_probability(0.8, b, r) >= 0.99 and b * r <= 112
    b, r = lsh_params(0.8, 128)
    assert b * r <= 128 and 0.3 < candidate_probability(0.8, b, r) < 0.7      # balanced: S-curve at 0.8
    assert (1 / 14) ** (1 / 8) == pytest.approx(0.72, abs=0.005)     # the defaults' "threshold"
    assert 0.5 < candidate_probability(0.72, 14, 8) < 0.7


def test_components_rounds_match_union_find():
    """Large-star/small-star over any number of partitions = in-memory union-find, with the
    keeper chosen by priority then smallest id."""
    rng = np.random.default_rng(7)
    for n, e in ((200, 150), (20000, 18000)):
        a = rng.integers(0, n, e).astype(np.uint64)
        b = rng.integers(0, n, e).astype(np.uint64)
        keep = a != b
        a, b = a[keep], b[keep]
        nodes, roots = local_components(a, b)
        z = np.zeros(len(a), np.uint64)
        for parts in (1, 3, 16):
            m, k, rounds = components_by_rounds(a, b, z, z, parts=parts)
            assert (m == nodes).all() and (k == roots).all() and rounds <= 20
    chain = rng.permutation(1000).astype(np.uint64)
    z = np.zeros(999, np.uint64)
    m, k, rounds = components_by_rounds(chain[:-1], chain[1:], z, z, parts=8)
    assert (k == 0).all() and rounds <= 20
    prio = {1: 5, 2: 1, 3: 1, 4: 9}
    a, b = np.array([1, 2, 3], np.uint64), np.array([2, 3, 4], np.uint64)
    pa_, pb_ = (np.array([prio[int(x)] for x in v], np.uint64) for v in (a, b))
    m, k, _ = components_by_rounds(a, b, pa_, pb_, parts=2)
    assert m.tolist() == [1, 2, 3, 4] and k.tolist() == [2, 2, 2, 2]
    assert node_partition(np.arange(10, dtype=np.uint64), 4).max() < 4


@pytest.mark.parametrize("near", [{"buckets": 16}, {"buckets": 16, "bands": 14, "rows": 8}],
                         ids=["verified", "unverified"])
def test_more_buckets_than_shards_and_partitions_without_a_star_centre(tmp_path, gpt2, near):
    """Regression: a component partition holding edges but no star centre (many buckets,
    one shard) must yield no clusters there, not fail."""
    import json as _json

    import preproc as _p

    inp = tmp_path / "a.jsonl"
    base = " ".join(f"w{j}" for j in range(300))
    docs = [{"id": str(k), "text": base + f" tail{k}"} for k in range(6)] + \
           [{"id": f"u{k}", "text": " ".join(f"u{k}x{j}" for j in range(300))} for k in range(20)]
    inp.write_text("\n".join(_json.dumps(d) for d in docs) + "\n")
    r = _p.run({"input": {"paths": [str(inp)]}, "clean": {"defaults": False},
                "dedup": {"exact": True, "near": near}},
               output=str(tmp_path / "o"), tokenizer=str(gpt2), workers=1)
    assert r.stats["duplicates"]["near"] == 5 and r.stats["kept"] == 21


def test_rounds_after_convergence_run_in_the_coordinator(tmp_path, small, monkeypatch, caplog):
    """Component rounds after convergence only write markers: the runner writes them in the
    coordinator (no pool round-trip; on Kubernetes no Job and pods per round). Rounds that
    compute are dispatched to the executor as before."""
    from preproc.executors.local import LocalExecutor

    dispatched: list[str] = []
    run_stage = LocalExecutor.run_stage

    def recording(self, plan, stage, indices):
        dispatched.append(stage)
        return run_stage(self, plan, stage, indices)

    monkeypatch.setattr(LocalExecutor, "run_stage", recording)
    out = tmp_path / "o"
    with caplog.at_level(logging.INFO, logger="preproc"):
        r = _run(out, {"local_max_edges": 0}, workers=2, inputs=[small])
    assert r.stats["duplicates"]["near"] > 0
    plan = json.loads((out / "plan.json").read_text())
    rounds = [s["name"] for s in plan["stages"] if s["name"].startswith("near_cc_")]
    store = Store(str(out))
    states = {n: {m["state"] for m in store.read_markers(n).values()} for n in rounds}
    assert all(len(store.read_markers(n)) == plan["stages"][[s["name"] for s in plan["stages"]].index(n)]["fan_out"]
               for n in rounds)
    work = [n for n in rounds if states[n] == {"work"}]
    skip = [n for n in rounds if states[n] == {"skip"}]
    assert work and skip and rounds == work + skip
    assert [n for n in dispatched if n.startswith("near_cc_")] == work
    assert {"near_clusters", "near_drops", "tokenize"} <= set(dispatched)
    assert "near_components" not in dispatched and r.stats["near"]["components"] == "rounds"

    # The idle rounds: one INFO line in all, not "started" / "committed in 0.0s" per index.
    info = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.INFO]
    assert not [m for m in info if any(m.startswith(f"{n} ") for n in skip)], info
    # near_components (the in-memory path, off here) is idle too, in its own line: it is not
    # next to the idle rounds.
    idle = [m for m in info if "nothing left to compute" in m and "near_components" not in m]
    assert idle == [f"stage {skip[0]}..{skip[-1]} ({len(skip)} stages): nothing left to compute; "
                    "markers written by the coordinator"] if len(skip) > 1 else len(idle) == 1

    # Status and the report: one row for the rounds, the rounds inside.
    from preproc.observe.report import report_data
    from preproc.observe.status import format_status, run_status

    st = run_status(str(out))
    names = [s["stage"] for s in st["stages"]]
    assert "near_cc" in names and not any(n.startswith("near_cc_") for n in names)
    row = st["stages"][names.index("near_cc")]
    assert [x["stage"] for x in row["rounds"]] == rounds and row["state"] == "done"
    assert row["done"] == row["total"] == sum(s["fan_out"] for s in plan["stages"] if s["name"] in rounds)
    assert f"{len(rounds)} rounds" in format_status(st)
    p = Plan.load(str(out))
    times = report_data(p, p.store())["stage_times"]
    assert [t["stage"] for t in times].count("near_cc") == 1 and not any(t["stage"].startswith("near_cc_") for t in times)
    assert next(t for t in times if t["stage"] == "near_cc")["rounds"] == len(rounds)


def test_components_one_stage_or_rounds_same_clusters(tmp_path, small, monkeypatch):
    """When the candidate edges fit a worker (the default budget here), the components take
    one stage (``near_components``, one index) and no round is dispatched; with
    ``local_max_edges: 0`` the large-/small-star rounds do it. Same clusters, same keepers,
    byte-identical drop lists and tokens."""
    from preproc.dedup.near import read_clusters
    from preproc.executors.local import LocalExecutor

    dispatched: list[str] = []
    run_stage = LocalExecutor.run_stage

    def recording(self, plan, stage, indices):
        dispatched.append(stage)
        return run_stage(self, plan, stage, indices)

    monkeypatch.setattr(LocalExecutor, "run_stage", recording)
    outs = {}
    for name, budget in (("local", None), ("rounds", 0)):
        dispatched.clear()
        o = tmp_path / name
        near = {"keep_clusters": True, **({"local_max_edges": budget} if budget is not None else {})}
        r = _run(o, near, workers=2, inputs=[small])
        assert r.stats["near"]["components"] == name
        rounds = [s for s in dispatched if s.startswith("near_cc_")]
        if name == "local":
            assert "near_components" in dispatched and rounds == []
            assert r.stats["near"]["component_rounds"] == 0
        else:
            assert "near_components" not in dispatched and len(rounds) >= 2
        c = read_clusters(str(o))
        outs[name] = (sorted((k, tuple(v)) for k, v in zip(c.column("kept_id").to_pylist(), c.column("ids").to_pylist())),
                      read_tree(o, "near_drops/drops"), read_tree(o, "tokens"), r.stats["duplicates"])
    assert outs["local"][0] and outs["local"] == outs["rounds"]
