"""Integrity: markers record size and xxh3 of every committed file; resume redoes an index
whose files are missing or of the wrong size, or whose marker is corrupt; `preproc verify`
checks hashes; commits fsync; stale temporaries are swept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

import preproc
from preproc.observe.status import run_status
from tests.conftest import ROOT


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "preproc", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)


def _spec(demo_inputs: Path) -> dict:
    return {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "clean": {"defaults": False},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}


@pytest.fixture
def done_run(tmp_path, demo_inputs):
    out = tmp_path / "out"
    r = preproc.run(_spec(demo_inputs), output=str(out), workers=1, shards=2)
    return out, r


def test_markers_record_size_and_xxh3_of_every_committed_file(done_run):
    out, r = done_run
    seen = set()
    for marker in sorted(out.glob("*/_done/*.json")):
        m = json.loads(marker.read_text())
        assert m["run_id"] == r.run_id and m["files"], marker
        for rel, rec in m["files"].items():
            data = (out / rel).read_bytes()
            assert rec == {"bytes": len(data), "xxh3": xxhash.xxh3_64(data).hexdigest()}, rel
            seen.add(rel)
    assert {"clean/part-00000.parquet", "tokens/part-00001.bin", "tokens/part-00001.idx",
            "tokens/part-00000.parquet", "dataset.json", "stats.json"} <= seen
    assert not any("_done" in s for s in seen)


def test_a_truncated_file_is_not_complete_and_resume_redoes_its_index(done_run, demo_inputs):
    out, r = done_run
    good = (out / "tokens" / "part-00001.bin").read_bytes()
    (out / "tokens" / "part-00001.bin").write_bytes(good[: len(good) // 2])
    st = run_status(str(out))
    assert not st["complete"]
    tok = next(s for s in st["stages"] if s["stage"] == "tokenize")
    assert tok["done"] == 1 and tok["damaged"][0]["index"] == 1 and "part-00001.bin" in tok["damaged"][0]["problem"]
    p = _cli("status", out)
    assert "will be redone" in p.stdout and "not complete" in p.stdout
    preproc.run(_spec(demo_inputs), output=str(out), workers=1, shards=2)
    assert (out / "tokens" / "part-00001.bin").read_bytes() == good
    assert run_status(str(out))["complete"]


def test_a_missing_file_is_redone(done_run, demo_inputs):
    out, r = done_run
    good = (out / "clean" / "part-00000.parquet").read_bytes()
    os.remove(out / "clean" / "part-00000.parquet")
    assert not run_status(str(out))["complete"]
    preproc.run(_spec(demo_inputs), output=str(out), workers=1, shards=2)
    assert (out / "clean" / "part-00000.parquet").read_bytes() == good


@pytest.mark.parametrize("damage", [b"", b'{"read": 3, "docs', b"\xff\xfe"], ids=["empty", "truncated", "binary"])
def test_a_corrupt_marker_means_the_index_is_redone(done_run, demo_inputs, damage):
    out, r = done_run
    marker = out / "clean" / "_done" / "00001.json"
    marker.write_bytes(damage)
    assert not run_status(str(out))["complete"]
    r2 = preproc.run(_spec(demo_inputs), output=str(out), workers=1, shards=2)
    assert json.loads(marker.read_text())["run_id"] == r.run_id
    assert r2.stats["read"] == r.stats["read"]


def test_verify_checks_hashes_and_repair_makes_the_next_run_redo(done_run, demo_inputs):
    out, r = done_run
    p = _cli("verify", out)
    assert p.returncode == 0 and "all match" in p.stdout, p.stdout + p.stderr
    f = out / "tokens" / "part-00000.bin"
    good = f.read_bytes()
    f.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])         # same size: only the hash can tell
    assert run_status(str(out))["complete"]                   # (status checks sizes only)
    p = _cli("verify", out)
    assert p.returncode == 1 and "tokens/part-00000.bin" in p.stdout and "xxh3" in p.stdout
    p = _cli("verify", out, "--repair")
    assert p.returncode == 1 and not (out / "tokenize" / "_done" / "00000.json").exists()
    preproc.run(_spec(demo_inputs), output=str(out), workers=1, shards=2)
    assert f.read_bytes() == good
    assert _cli("verify", out).returncode == 0


def test_stale_temporaries_are_swept_once_every_index_is_done(done_run, demo_inputs):
    """Killed attempts leave ``.<name>.tmp-<hex>`` files; inside an index commits do not list
    their folder for them (O(files) per write), finalize removes them all once, and nothing
    else (not a name that is not a temporary of ours)."""
    out, r = done_run
    stale = [out / "tokens" / ".part-00001.bin.tmp-0123456789ab", out / "tokens" / ".part-00001.idx.tmp-ba9876543210",
             out / "tokens" / ".part-00000.bin.tmp-0123456789ab",      # an index that is not rerun
             out / "clean" / "_done" / ".00000.json.tmp-00aa00aa00aa", out / ".stats.json.tmp-0123456789ab",
             out / "_metrics" / ".tokenize-00001.prom.tmp-0123456789ab"]
    kept = [out / "tokens" / ".part-00001.bin.tmp-notours",          # not a hex token: not ours
            out / "tokens" / "part-00001.bin.tmp-0123456789ab"]       # not hidden: not ours
    for p in stale + kept:
        p.write_bytes(b"")
    os.remove(out / "tokenize" / "_done" / "00001.json")
    preproc.run(_spec(demo_inputs), output=str(out), workers=1, shards=2)
    assert [p.name for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)
    fin = json.loads((out / "finalize" / "_done" / "00000.json").read_text())
    assert fin["temporaries_swept"] == len(stale)


def test_the_sweep_spares_what_a_live_writer_may_be_committing(tmp_path):
    """At the top of an output the coordinator's heartbeat may be mid-commit while finalize
    sweeps: a restricted sweep removes only the temporaries of the names it is given."""
    from preproc.io.store import Store

    store = Store(str(tmp_path))
    (tmp_path / "sub").mkdir()
    ours = [tmp_path / ".stats.json.tmp-0123456789ab", tmp_path / "sub" / ".a.bin.tmp-00ff"]
    live = tmp_path / "._coordinator.json.tmp-0123456789ab"
    for p in ours + [live]:
        p.write_bytes(b"")
    assert store.sweep_leftovers(["sub", "missing"]) == 1
    assert store.sweep_leftovers([""], only={"stats.json"}.__contains__) == 1
    assert not any(p.exists() for p in ours) and live.exists()


def test_indices_in_threads_each_name_their_own_and_leave_nothing_behind():
    """The failpoint context of an index is its thread's: indices running in threads of one
    process (the API stand-in's in-process pods) never see each other's, and none is left
    when they end, in whatever order they end."""
    import threading

    from preproc import faults

    inside, go = {}, threading.Barrier(2)

    def one(i: int, hold: threading.Event) -> None:
        with faults.running("tokenize", i):
            go.wait()
            hold.wait(5)
            inside[i] = (faults.context.stage, faults.context.index)

    first, second = threading.Event(), threading.Event()
    a = threading.Thread(target=one, args=(1, first))
    b = threading.Thread(target=one, args=(2, second))
    a.start(), b.start()
    first.set()             # the first to start ends first (a process-wide value would
    a.join()                # now be the other's for it, and the other would restore it)
    second.set()
    b.join()
    assert inside == {1: ("tokenize", 1), 2: ("tokenize", 2)}
    assert (faults.context.stage, faults.context.index) == (None, None)


def _spy_fsync(monkeypatch) -> list[str]:
    """The paths os.fsync is called on from now on, in call order (fsync still happens)."""
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def test_local_commits_fsync_the_file_and_its_folder_before_publishing(tmp_path, monkeypatch):
    from preproc.io.store import Store

    synced = _spy_fsync(monkeypatch)
    store = Store(str(tmp_path / "o"))
    with store.open_atomic("a/b.bin") as f:
        f.write(b"x" * 10)
        assert synced == []
    assert synced[0].startswith(str(tmp_path / "o" / "a" / ".b.bin.tmp-"))
    assert synced[1] == str(tmp_path / "o" / "a")
    assert (tmp_path / "o" / "a" / "b.bin").read_bytes() == b"x" * 10


def test_integrity_on_s3(s3, demo_inputs):
    bucket = s3.bucket()
    out = f"s3://{bucket}/run"
    spec = dict(_spec(demo_inputs), storage=s3.storage)
    preproc.run(spec, output=out, workers=1, shards=2)
    m = json.loads(s3.get(bucket, "run/tokenize/_done/00000.json"))
    data = s3.get(bucket, "run/tokens/part-00000.bin")
    assert m["files"]["tokens/part-00000.bin"] == {"bytes": len(data), "xxh3": xxhash.xxh3_64(data).hexdigest()}
    s3.client.put_object(Bucket=bucket, Key="run/tokens/part-00000.bin", Body=data[:-8])
    from preproc.engine.plan import Plan
    from preproc.io.integrity import verify

    plan = Plan.load(out, s3.storage)
    r = verify(plan.store(), plan)
    # (the size differs: found from the listing, before any hashing)
    assert len(r["bad"]) == 1 and "tokens/part-00000.bin has" in r["bad"][0]["problem"] and r["files"] > 5
    preproc.run(spec, output=out, workers=1, shards=2)       # resume: size differs, index redone
    assert s3.get(bucket, "run/tokens/part-00000.bin") == data


def test_a_running_index_syncs_its_files_and_folders_together_before_the_block_ends(tmp_path, monkeypatch):
    from preproc.io.store import Store, deferred_sync

    synced = _spy_fsync(monkeypatch)
    store = Store(str(tmp_path / "o"))
    with deferred_sync():
        for rel in ("a/x.bin", "a/y.bin", "b/z.bin"):
            with store.open_atomic(rel) as f:
                f.write(b"x" * 10)
        assert synced == []                                  # renamed, not yet synced
        assert (tmp_path / "o" / "a" / "x.bin").read_bytes() == b"x" * 10
    root = tmp_path / "o"
    # The final files (not temporaries) and each folder once, all before the block ended.
    assert sorted(synced) == sorted(str(p) for p in (root / "a" / "x.bin", root / "a" / "y.bin",
                                                     root / "b" / "z.bin", root / "a", root / "b"))
    synced.clear()
    with pytest.raises(RuntimeError), deferred_sync():
        with store.open_atomic("c/w.bin") as f:
            f.write(b"1")
        raise RuntimeError("the index failed")
    assert synced == []                  # a failed index writes no marker: nothing to make durable


def test_index_markers_come_after_their_outputs_are_synced(tmp_path, demo_inputs, monkeypatch):
    """Every fsync of an index's outputs happens before its marker is written."""
    from preproc.engine.plan import Plan
    from preproc.engine.runner import build_plan, prepare
    from preproc.engine.stages import run_index
    from preproc.io.store import Store
    from preproc.spec.load import load_spec

    s = load_spec(_spec(demo_inputs), output=str(tmp_path / "o"), shards=1, workers=1)
    prepare(s, planned=build_plan(s))
    plan = Plan.load(str(tmp_path / "o"))
    events = []
    real = os.fsync

    def spy(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    real_replace = os.replace

    def spy_replace(a, b):
        events.append(("rename", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", spy)
    monkeypatch.setattr(os, "replace", spy_replace)
    run_index(plan, "clean", 0)
    marker = str(tmp_path / "o" / "clean" / "_done" / "00000.json")
    at = events.index(("rename", marker))
    part = str(tmp_path / "o" / "clean" / "part-00000.parquet")
    assert ("fsync", part) in events[:at] and ("fsync", str(tmp_path / "o" / "clean")) in events[:at]
    # The metrics textfile is written but not fsynced (a view); nor is the marker: one that a
    # crash loses or empties makes its index run again (an empty one is not a marker).
    assert any("metrics" in p for e, p in events if e == "rename")
    assert not any("metrics" in p or "_done" in p for e, p in events if e == "fsync")
    (tmp_path / "o" / "clean" / "_done" / "00000.json").write_bytes(b"")
    assert Store(str(tmp_path / "o")).read_marker("clean", 0) is None
    # The process that ran the index does not go on committing as that index (a failpoint
    # rule for clean 0 would otherwise fire on this process's later writes).
    from preproc import faults
    assert (faults.context.stage, faults.context.index) == (None, None)
