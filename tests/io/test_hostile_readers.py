"""Hostile inputs at the readers: one bad file costs its own rows, counted, never the run;
memory stays bounded on a line of any length; odd but valid Arrow types are read."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import preproc
from preproc.io.readers import InputSplit, ReadLog, read_split, stream
from preproc.spec import InputSpec
from tests.conftest import BAD, ROOT, need


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A ``string`` array holding bytes that are not UTF-8 (what a careless writer leaves)."""
    b = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(values), b.buffers())


def _read(path, *, fmt="parquet", comp=None, **spec) -> tuple[pa.Table | None, ReadLog]:
    split = InputSplit(uri=str(path), rel=path.name, format=fmt, compression=comp)
    log = ReadLog()
    batches = list(read_split(split, InputSpec(paths=["x"], **spec), log))
    return (pa.Table.from_batches(batches) if batches else None), log


def _invariant(s: dict) -> None:
    assert s["read"] == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"], s


def _run(tmp_path, gpt2, paths, **input_opts):
    return preproc.run({"input": {"paths": [str(p) for p in paths], **input_opts},
                        "clean": {"defaults": False, "normalize": True}},
                       output=str(tmp_path / "out"), tokenizer=str(gpt2), workers=1).stats


# --- accounting by construction --------------------------------------------------------

def test_parquet_with_invalid_utf8_rejects_those_rows_and_the_run_adds_up(tmp_path, gpt2):
    p = tmp_path / "bad_utf8.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"],
                             "text": _invalid_utf8_strings([b"good one", b"bad \xff\xfe here", b"good two"])}), p)
    table, log = _read(p)
    assert table.column("id").to_pylist() == ["a", "c"]
    assert log.rejected == {"invalid_utf8": 1} and log.read == 3
    s = _run(tmp_path, gpt2, [p])
    _invariant(s)
    assert s["read"] == 3 and s["kept"] == 2 and s["rejected"] == {"invalid_utf8": 1}
    # The CLI on the same input (once exit 1 on every run and rerun) exits 0 with the same answer.
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"input": {"paths": [str(p)]}, "clean": {"defaults": False, "normalize": True}}))
    out2 = tmp_path / "out2"
    r = subprocess.run([sys.executable, "-m", "preproc", "run", str(spec), "--output", str(out2), "--workers", "1",
                        "--tokenizer", str(gpt2)], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    s2 = json.loads((out2 / "stats.json").read_text())
    assert (s2["read"], s2["kept"], s2["rejected"]) == (3, 2, {"invalid_utf8": 1})


def test_invalid_utf8_in_an_id_column_rejects_the_row_or_replaces_under_policy(tmp_path):
    p = tmp_path / "bad_id.parquet"
    pq.write_table(pa.table({"id": _invalid_utf8_strings([b"ok", b"\xc0\xaf"]), "text": ["one", "two"]}), p)
    table, log = _read(p)
    assert table.column("id").to_pylist() == ["ok"] and log.rejected == {"invalid_utf8": 1}
    table, log = _read(p, invalid_utf8="replace")
    assert table.column("id").to_pylist() == ["ok", "\ufffd\ufffd"] and not log.rejected


def test_every_bad_file_ends_in_a_run_that_adds_up(tmp_path, gpt2):
    need(BAD / "expected.json")
    inputs = tmp_path / "bad"
    inputs.mkdir()
    for f in BAD.iterdir():
        if f.name.endswith((".jsonl", ".jsonl.gz", ".parquet")):
            shutil.copy(f, inputs / f.name)
    s = _run(tmp_path, gpt2, [inputs], max_doc_bytes="16MiB")
    _invariant(s)
    expected = json.loads((BAD / "expected.json").read_text())
    # Rows of the schema-broken Parquet files are rejected, not lost.
    assert s["rejected"]["missing_text"] >= 10 and s["rejected"]["text_not_string"] >= 10
    assert s["rejected"]["doc_too_large"] == 1
    # Every record of every file is read (this reader takes UTF-16 and a plain file named .gz);
    # the corrupt gzip gives what decoded before its fault.
    known = sum((e.get("accepted_alt") or e["accepted"]) + (e["rejected"] or 0)
                for name, e in expected.items() if name != "corrupt_gzip.jsonl.gz")
    assert known <= s["read"] <= known + expected["corrupt_gzip.jsonl.gz"]["lines"]


def _three_groups(tmp_path):
    p = tmp_path / "groups.parquet"
    t = pa.table({"id": [f"r{i}" for i in range(15)], "text": [f"document number {i}" for i in range(15)]})
    pq.write_table(t, p, row_group_size=5)     # one batch per row group: boundaries 0..3
    return p


@pytest.mark.parametrize("boundary", [0, 1, 2, 3])
def test_a_data_error_at_each_reader_batch_boundary_costs_only_the_unread_rows(tmp_path, gpt2, monkeypatch,
                                                                               boundary):
    p = _three_groups(tmp_path)
    j = tmp_path / "other.jsonl"
    j.write_text("".join(json.dumps({"text": f"jsonl document {i}"}) + "\n" for i in range(4)))
    monkeypatch.setenv("PREPROC_FAILPOINTS", f"point=read_batch,file=groups.parquet,batch={boundary},"
                                             "action=data_error")
    s = _run(tmp_path, gpt2, [p, j])
    _invariant(s)
    lost = 15 - 5 * boundary
    assert s["read"] == 19
    assert s["kept"] == 4 + 5 * boundary
    assert s["rejected"] == ({"file_error:unreadable": lost} if lost else {})
    assert [e["error"] for e in s["file_errors"]] == ["unreadable"]


def test_a_data_error_mid_jsonl_keeps_what_was_handed_on(tmp_path, monkeypatch):
    j = tmp_path / "a.jsonl"
    j.write_text("".join(json.dumps({"text": f"jsonl document {i}"}) + "\n" for i in range(50)))
    monkeypatch.setenv("PREPROC_FAILPOINTS", "point=read_batch,batch=1,action=data_error")
    split = InputSplit(uri=str(j), rel="a.jsonl", format="jsonl")
    log = ReadLog()
    got = list(read_split(split, InputSpec(paths=["x"]), log, batch_bytes=200))
    assert len(got) == 1 and log.read == got[0].num_rows   # only what was handed on is read
    assert [e["error"] for e in log.file_errors] == ["unreadable"]


def test_a_list_typed_id_column_is_read_not_dropped(tmp_path, gpt2):
    p = tmp_path / "list_ids.parquet"
    pq.write_table(pa.table({"id": [[i, i + 1] for i in range(10)], "text": [f"good row {i}" for i in range(10)]}), p)
    table, log = _read(p)
    assert table.num_rows == 10 and not log.file_errors
    assert table.column("id").to_pylist()[:2] == ["[0, 1]", "[1, 2]"]   # as a JSONL reader would
    s = _run(tmp_path, gpt2, [p])
    _invariant(s)
    assert s["read"] == 10 and s["kept"] == 10


# --- odd but valid types, and what is not JSON -------------------------------------------

@pytest.mark.parametrize("typ", [pa.dictionary(pa.int32(), pa.string()), pa.string_view(), pa.large_string(),
                                 pa.dictionary(pa.int8(), pa.large_string())])
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_string_like_text_columns_are_read(tmp_path, typ, fmt):
    t = pa.table({"id": pa.array(["a", "b", "c"]).cast(typ), "text": pa.array(["x y", "z", None]).cast(typ),
                  "source": pa.array(["s1", "s1", "s2"]).cast(typ)})
    p = tmp_path / f"t.{fmt}"
    if fmt == "parquet":
        pq.write_table(t, p)
    else:
        with pa.OSFile(str(p), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
            w.write_table(t)
    table, log = _read(p, fmt=fmt)
    assert not log.file_errors and log.rejected == {"null_text": 1}
    assert table.column("text").to_pylist() == ["x y", "z"]
    assert table.column("id").to_pylist() == ["a", "b"] and table.column("source").to_pylist() == ["s1", "s1"]
    assert table.schema.field("text").type == pa.string()


def test_nan_and_infinity_are_not_json(tmp_path):
    p = tmp_path / "nan.jsonl"
    p.write_text('{"text": "fine", "score": 1.5}\n{"text": "a", "score": NaN}\n'
                 '{"text": "b", "score": Infinity}\n{"text": "c", "score": -Infinity}\n'
                 '{"text": "d \xe9", "score": NaN}\n', encoding="latin-1")
    table, log = _read(p, fmt="jsonl", invalid_utf8="replace")
    assert table.column("text").to_pylist() == ["fine"]
    assert log.rejected == {"invalid_json": 4}


# --- bounded memory ----------------------------------------------------------------------

def _peak_while(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("comp", [None, "gzip"])
def test_a_line_longer_than_max_doc_bytes_is_skipped_while_scanned(tmp_path, monkeypatch, comp):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 16 * 2**10)
    monkeypatch.setattr(stream, "GZ_READ_BYTES", 4 * 2**10)
    limit = 64 * 2**10
    huge = b'{"id": "huge", "text": "' + b"a" * (8 * 2**20) + b'"}\n'
    good = b'{"id": "after", "text": "a good document after the bomb"}\n'
    data = b'{"id": "before", "text": "first"}\n' + huge + good
    p = tmp_path / ("bomb.jsonl.gz" if comp else "bomb.jsonl")
    p.write_bytes(gzip.compress(data) if comp else data)
    del huge, data
    sizes: list[int] = []
    real = stream.lines

    def spy(chunks, *a, **kw):
        def seen():
            for c in chunks:
                sizes.append(len(c))
                yield c
        return real(seen(), *a, **kw)

    monkeypatch.setattr(stream, "lines", spy)
    (table, log), peak = _peak_while(lambda: _read(p, fmt="jsonl", comp=comp, max_doc_bytes=limit))
    assert table.column("id").to_pylist() == ["before", "after"]
    assert log.rejected == {"doc_too_large": 1} and log.rejects[0]["head"].startswith('{"id": "huge"')
    assert max(sizes) <= 16 * 2**10                  # every piece the reader sees is one chunk at most
    # What was held at once: the limit plus a few chunks, not the 8 MiB line.
    assert peak < limit + 40 * 16 * 2**10, peak


@pytest.mark.parametrize("comp", [None, "gzip"])
def test_text_files_obey_max_doc_bytes_and_stream(tmp_path, monkeypatch, comp):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 16 * 2**10)
    big = b"word " * (2 * 2**20)
    p = tmp_path / ("big.txt.gz" if comp else "big.txt")
    p.write_bytes(gzip.compress(big) if comp else big)
    small = tmp_path / "small.txt"
    small.write_bytes(b"a small text file")
    (table, log), peak = _peak_while(lambda: _read(p, fmt="text", comp=comp, max_doc_bytes=64 * 2**10))
    assert table is None and log.rejected == {"doc_too_large": 1}
    assert peak < 2 * 2**20, peak                     # the 10 MiB file was never held whole
    table, log = _read(small, fmt="text", max_doc_bytes=64 * 2**10)
    assert table.column("text").to_pylist() == ["a small text file"] and log.read == 1
