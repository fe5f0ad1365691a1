"""Readers against every faulty file in ../shared/data/bad, checked with bad/expected.json."""

import json
import os

import pyarrow as pa
import pytest

from preproc.io.readers import InputSplit, ReadLog, read_split
from preproc.spec.model import InputSpec
from tests.conftest import BAD, need

EXPECTED = json.loads((BAD / "expected.json").read_text()) if BAD.exists() else {}


def _read(path, spec=None):
    name = os.path.basename(path)
    fmt = "parquet" if name.endswith(".parquet") else "jsonl"
    comp = "gzip" if name.endswith(".gz") else None
    split = InputSplit(uri=str(path), rel=name, format=fmt, compression=comp, bytes=os.path.getsize(path))
    log = ReadLog()
    batches = list(read_split(split, spec or InputSpec(paths=["x"]), log))
    table = pa.Table.from_batches(batches) if batches else None
    return table, log


@pytest.mark.parametrize("name", sorted(EXPECTED) or ["(no shared data)"])
def test_bad_file_outcome_matches_expected(name):
    path = need(BAD / name)
    exp = EXPECTED[name]
    table, log = _read(path)
    accepted = table.num_rows if table is not None else 0
    # Every record we saw is either accepted or rejected with a reason.
    assert log.read == accepted + sum(log.rejected.values())
    if exp.get("accepted") is not None:
        assert accepted in {exp["accepted"], exp.get("accepted_alt")}, (accepted, exp)
    if exp.get("reject_reasons") and exp.get("rejected") is not None and accepted == exp["accepted"]:
        assert log.rejected == exp["reject_reasons"]
    if "file_error" in exp and name != "corrupt_gzip.jsonl.gz":
        errs = [e["error"] for e in log.file_errors]
        assert errs, f"{name}: a file error must be reported"
        if exp["file_error"] == "truncated_gzip":
            assert errs == ["truncated_gzip"]
            assert log.file_errors[0]["partial_tail_bytes"] == exp["partial_tail_bytes"]
    if exp.get("blank_lines"):
        assert log.blank_lines == exp["blank_lines"]
    if table is not None:
        # No emitted text is invalid: every string must round-trip through UTF-8.
        for t in table.column("text").to_pylist():
            t.encode("utf-8")
            assert t.strip()
    assert len(log.rejects) == sum(log.rejected.values())
    for r in log.rejects:
        assert r["reason"] and r["location"] and r["file"] == str(path)


def test_corrupt_gzip_reports_error_and_emits_no_garbage(bad):
    table, log = _read(bad / "corrupt_gzip.jsonl.gz")
    assert [e["error"] for e in log.file_errors] == ["corrupt_gzip"]
    if table is not None:
        for t in table.column("text").to_pylist():
            t.encode("utf-8")


def test_control_record_keeps_text_after_nul(bad):
    table, _ = _read(bad / "control_and_surrogates.jsonl")
    texts = table.column("text").to_pylist()
    assert any("\x00" in t and len(t.split("\x00")[1]) > 0 for t in texts), "NUL must not truncate text"


def test_configurable_text_field(bad):
    table, log = _read(bad / "missing_text.jsonl", InputSpec(paths=["x"], text_field="content"))
    assert table.num_rows == 2  # only the two records that use `content`


def test_replace_policy_keeps_invalid_utf8(bad):
    table, log = _read(bad / "invalid_utf8.jsonl", InputSpec(paths=["x"], invalid_utf8="replace"))
    assert table.num_rows == 25 and not log.rejected
    assert sum("\ufffd" in t for t in table.column("text").to_pylist()) == 5


def test_max_doc_bytes_rejects_huge_document(bad):
    table, log = _read(bad / "huge_doc_20MB.jsonl.gz", InputSpec(paths=["x"], max_doc_bytes="16MiB"))
    assert table.num_rows == 2 and log.rejected == {"doc_too_large": 1}


def test_generated_ids_are_stable_and_unique(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "one"}\n{"text": "two"}\n{"id": "x", "text": "three"}\n')
    t1, _ = _read(p)
    t2, _ = _read(p)
    ids = t1.column("id").to_pylist()
    assert ids == t2.column("id").to_pylist()
    assert ids == ["a.jsonl:0", "a.jsonl:16", "x"]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50])
def test_byte_range_splits_cover_every_line_once(tmp_path, n):
    lines = [json.dumps({"id": str(i), "text": "word " * (i % 13 + 1)}) for i in range(400)]
    p = tmp_path / "big.jsonl"
    data = ("\r\n".join(lines) + "\n").encode()
    p.write_bytes(data)
    size = len(data)
    step = -(-size // n)
    seen = []
    for start in range(0, size, step):
        split = InputSplit(uri=str(p), rel="big.jsonl", format="jsonl", bytes=step, start=start,
                           end=min(start + step, size))
        log = ReadLog()
        for b in read_split(split, InputSpec(paths=["x"]), log):
            seen += b.column("id").to_pylist()
    assert seen == [str(i) for i in range(400)]
