"""Poison documents: one that makes a step raise is rejected with a reason, its batch
goes on; deeply nested JSON, a 100 MB line and pathological Unicode never fail a shard."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

import preproc
from preproc.clean.stage import clean_isolating
from preproc.clean.steps import CleanPipeline, Filter, StepOptions, build_steps
from preproc.io.readers import InputSplit, ReadLog


class Explodes(Filter):
    name = "explodes_test_v1"
    family = "explodes_test"
    order = 30
    Options = StepOptions

    def reasons(self, batch):
        texts = batch.column("text").to_pylist()
        if any("POISON" in t for t in texts):
            raise ValueError("cannot handle this document")
        return np.array([2 if "short" in t else 0 for t in texts]), ("x", "too_short")


def test_poison_document_is_rejected_and_the_batch_goes_on():
    pipe = CleanPipeline([*build_steps({"defaults": False, "normalize": True}), Explodes(StepOptions())])
    texts = [f"document {i}" + (" POISON" if i in (3, 17) else "") + (" short" if i == 5 else "") for i in range(40)]
    batch = pa.record_batch({"id": [str(i) for i in range(40)], "text": texts, "source": ["s"] * 40})
    log = ReadLog(read=40)
    split = InputSplit(uri="mem://x", rel="x", format="jsonl")
    res = clean_isolating(pipe, batch, log, split)
    assert res.kept.column("id").to_pylist() == [str(i) for i in range(40) if i not in (3, 5, 17)]
    # Which input rows were kept, through the bisection too (groups of shards split by it).
    assert res.kept_rows.tolist() == [i for i in range(40) if i not in (3, 5, 17)]
    assert res.filtered == {"explodes_test_v1:too_short": 1}
    assert log.rejected == {"poison:ValueError": 2} and log.read == 40   # read once, then rejected
    assert [r["location"] for r in log.rejects] == ["id 3", "id 17"]


def test_pathological_inputs_never_fail_a_shard(tmp_path, gpt2):
    inp = tmp_path / "p.jsonl"
    nested = "[" * 100_000 + "]" * 100_000
    with open(inp, "w") as f:
        f.write(json.dumps({"id": "ok-1", "text": "a normal document with words"}) + "\n")
        f.write('{"id": "nested", "text": "x", "deep": ' + nested + "}\n")
        f.write(json.dumps({"id": "huge", "text": "a" * (100 * 2**20)}) + "\n")       # a 100 MB line
        f.write(json.dumps({"id": "combining", "text": "e" + "\u0301" * 200_000 + " zalgo"}) + "\n")
        f.write(json.dumps({"id": "rtl", "text": "\u202e\u2066" * 50_000 + "mixed \U0001F600 \ufffd"}) + "\n")
        f.write(json.dumps({"id": "ok-2", "text": "another normal document"}) + "\n")
    r = preproc.run({"input": {"paths": [str(inp)]}, "clean": {"defaults": False, "normalize": True}},
                    output=str(tmp_path / "o"), tokenizer=str(gpt2), workers=1)
    s = r.stats
    assert s["rejected"].get("invalid_json") == 1 and s["rejected"].get("doc_too_large") == 1
    assert s["read"] == 6 == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"]
    assert s["kept"] >= 3
