"""Tokenize fans out over the clean output's sizes, not the input files' (issue 18): 8 gzip
files of very unequal sizes (compressed files are never cut, so 8 unequal clean parts) give
8 tokenize indices with about the same text, and the same documents and token ids as any
other cut."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow.parquet as pq

import preproc
from preproc.dedup.drops import read_drops
from preproc.engine.plan import Plan
from preproc.engine.stages import run_index
from preproc.io import integrity, layout
from preproc.io.slices import read_slices
from preproc.training.loader import TokenDataset


def _unequal_inputs(corpus, root, unit_bytes=12_000):
    """8 gzip JSONL files of 1:2:4:...:128 x ``unit_bytes`` of text, in documents of a
    paragraph or a few; some documents repeat earlier ones (exact dedup drops them across
    clean parts)."""
    paras = []
    for p in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                paras += [x for x in json.loads(line)["text"].split("\n\n") if len(x.strip()) > 20]
    r = random.Random(5)
    docs, k = [], 0
    root.mkdir()
    for i in range(8):
        lines, size = [], 0
        while size < unit_bytes * 2**i:
            if docs and r.random() < 0.03:
                text = r.choice(docs)                       # an exact duplicate of an earlier document
            else:
                text = "\n\n".join(paras[(k + j) % len(paras)] for j in range(r.randrange(1, 4)))[:3000]
                k += 3
            docs.append(text)
            lines.append(json.dumps({"id": f"f{i}-{len(lines)}", "text": text}))
            size += len(text.encode())
        with gzip.open(root / f"in-{i}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def _run(inputs, out, gpt2, shards, workers):
    return preproc.run({"input": {"paths": [str(inputs / "*.jsonl.gz")]}, "clean": False, "shards": shards,
                        "tokenize": {"backend": "hf"}},
                       output=str(out), tokenizer=str(gpt2), workers=workers)


def _tokens(out):
    """(id, token ids) of every document, in the order of the token files."""
    ds = json.loads((out / "dataset.json").read_text())
    rows = []
    for sh in ds["shards"]:
        t = pq.read_table(out / sh["parquet"])
        rows += zip(t.column("id").to_pylist(), map(tuple, t.column("input_ids").to_pylist()))
    return rows


def _kept_clean_ids(out):
    """The ids of the clean output, part after part, minus the rows dedup dropped."""
    plan = Plan.load(str(out))
    store = plan.store()
    ids = []
    for i in range(plan.num_shards):
        drops = set(read_drops(store, plan.drop_stages, i).tolist())
        col = pq.read_table(out / layout.clean_part(i), columns=["id"]).column("id").to_pylist()
        ids += [x for row, x in enumerate(col) if row not in drops]
    return ids


def _max_over_mean(xs):
    return max(xs) / (sum(xs) / len(xs))


def test_unequal_gzip_inputs_tokenize_in_balanced_slices(tmp_path, corpus, gpt2):
    inputs = tmp_path / "in"
    _unequal_inputs(corpus, inputs)
    out = tmp_path / "out8"
    r = _run(inputs, out, gpt2, shards=8, workers=2)
    plan = Plan.load(str(out))
    store = plan.store()
    assert plan.num_shards == 8 and plan.stage("tokenize").fan_out == 8
    clean = store.read_markers("clean")
    tok = store.read_markers("tokenize")
    # The clean parts are as unequal as the files; tokenize's indices are not.
    assert _max_over_mean([clean[i]["text_bytes"] for i in range(8)]) > 3.5
    tok_bytes = [tok[i]["text_bytes"] for i in range(8)]
    assert _max_over_mean(tok_bytes) <= 1.25, tok_bytes
    assert r.stats["duplicates"]["exact"] > 0
    assert sum(tok_bytes) == sum(clean[i]["text_bytes"] for i in range(8)) - sum(
        int(b) for b in _dropped_bytes(out, plan))
    # Some index reads more than one clean part, and one part is read by several indices.
    pieces = [tok[i]["slice"] for i in range(8)]
    assert any(len(p) > 1 for p in pieces)
    assert sum(1 for p in pieces for x in p if x[0] == 7) >= 3
    # The token files, in index order, hold the clean output in order minus the duplicates.
    rows = _tokens(out)
    assert [i for i, _ in rows] == _kept_clean_ids(out)
    assert len(rows) == r.documents
    # Everything committed checks out (`preproc verify`), and training code reads it.
    v = integrity.verify(store, plan)
    assert not v["bad"] and not v["not_done"] and not v["unrecorded"]
    windows = [w.size for w in TokenDataset(str(out), 64, drop_last=True)]
    assert len(windows) == r.tokens // 64 and set(windows) == {65}     # 64 inputs + the next token

    # A worker that finds no stored cut (run by hand) computes the same one from the
    # markers, and writes the same bytes.
    stored = read_slices(store, "tokenize", "clean", 8, 8)
    before = {n: (out / "tokens" / n).read_bytes() for n in ("part-00003.parquet", "part-00003.bin")}
    (out / layout.slices("tokenize")).unlink()
    (out / layout.marker("tokenize", 3)).unlink()
    for n in before:
        (out / "tokens" / n).unlink()
    assert read_slices(store, "tokenize", "clean", 8, 8) == stored
    run_index(plan, "tokenize", 3, store)
    assert {n: (out / "tokens" / n).read_bytes() for n in before} == before

    # Another cut (2 shards, each several files; 1 worker): the same (id, token ids).
    other = tmp_path / "out2"
    r2 = _run(inputs, other, gpt2, shards=2, workers=1)
    assert Plan.load(str(other)).num_shards == 2
    assert _tokens(other) == rows
    assert (r2.documents, r2.tokens, r2.stats["duplicates"]) == (r.documents, r.tokens, r.stats["duplicates"])


def _dropped_bytes(out, plan):
    store = plan.store()
    for i in range(plan.num_shards):
        drops = read_drops(store, plan.drop_stages, i)
        if len(drops):
            text = pq.read_table(out / layout.clean_part(i), columns=["text"]).column("text")
            yield from (len(text[int(d)].as_py().encode()) for d in drops)
