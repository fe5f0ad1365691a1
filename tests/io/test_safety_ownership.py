"""preproc writes and deletes only what it owns: first runs into empty folders only, --force
removes only what the recorded plan wrote, and never an output that holds or lies in its inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import preproc
from preproc.errors import ConfigError
from preproc.io.ownership import check_paths
from preproc.spec import load_spec
from tests.conftest import ROOT


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "preproc", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)


def _spec(tmp_path: Path, demo_inputs: Path, inputs: str | None = None) -> Path:
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"input": {"paths": [inputs or str(demo_inputs / "input" / "*")]},
                                "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")},
                                "clean": {"defaults": False}}))
    return spec


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [False, True], ids=["first-run", "force"])
def test_a_foreign_folder_is_refused_and_left_alone(tmp_path, demo_inputs, force):
    out = tmp_path / "mine"
    for rel, data in {"clean/important.txt": b"keep me", "tokens/model.bin": b"\x00\x01",
                      "near/x": b"n", "report.html": b"<p>my report</p>", "stats.json": b"{}"}.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    before = _tree(out)
    p = _cli("run", _spec(tmp_path, demo_inputs), "--output", out, "--workers", "1", *(["--force"] if force else []))
    assert p.returncode == 2, p.stderr
    assert "first foreign entry: 'clean'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert _tree(out) == before and sorted(os.listdir(out)) == ["clean", "near", "report.html", "stats.json", "tokens"]


def test_a_json_file_named_plan_json_is_not_a_run_record(tmp_path, demo_inputs):
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text('{"my": "plan"}')
    p = _cli("run", _spec(tmp_path, demo_inputs), "--output", out, "--force")
    assert p.returncode == 2 and "not a preproc run record" in p.stderr
    assert (out / "plan.json").read_text() == '{"my": "plan"}'


def test_force_removes_only_what_the_recorded_plan_wrote(tmp_path, demo_inputs):
    spec = _spec(tmp_path, demo_inputs)
    out = tmp_path / "o"
    preproc.run(str(spec), output=str(out), workers=1)
    rec = json.loads((out / "plan.json").read_text())
    assert "tokens" in rec["writes"] and "clean" in rec["writes"] and "plan.json" in rec["writes"]
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "keep.bin").write_bytes(b"k")
    r = preproc.run(str(spec), output=str(out), workers=1, force=True, **{"clean.length.min_chars": 50})
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra" / "keep.bin").read_bytes() == b"k"
    assert json.loads((out / "plan.json").read_text())["run_id"] == r.run_id != rec["run_id"]


def test_a_killed_first_run_is_still_ours(tmp_path, demo_inputs):
    """plan.json is written first; a run killed right after it (or with a temporary file of
    it left behind) is resumed, not refused as foreign."""
    spec = _spec(tmp_path, demo_inputs)
    out = tmp_path / "o"
    s = load_spec(str(spec), output=str(out))
    from preproc.engine.runner import prepare

    prepare(s)
    os.remove(out / "tokenizer.json")
    (out / ".plan.json.tmp-0123456789ab").write_bytes(b"")
    r = preproc.run(str(spec), output=str(out), workers=1)
    assert r.documents > 0 and (out / "tokenizer.json").exists()


def test_corpus_inside_the_output_with_force_is_refused(tmp_path, demo_inputs):
    corpus = tmp_path / "corpus"
    (corpus / "clean").mkdir(parents=True)
    src = demo_inputs / "input" / "web-a.jsonl"
    (corpus / "clean" / "a.jsonl").write_bytes(src.read_bytes())
    before = _tree(corpus)
    p = _cli("run", _spec(tmp_path, demo_inputs, str(corpus / "clean" / "*.jsonl")), "--output", corpus, "--force")
    assert p.returncode == 2 and "contains the input" in p.stderr, p.stderr
    assert _tree(corpus) == before
    # `preproc plan` refuses it too.
    p = _cli("plan", _spec(tmp_path, demo_inputs, str(corpus / "clean" / "*.jsonl")), "--output", corpus)
    assert p.returncode == 2 and "contains the input" in p.stderr


def _check(tmp_path, inputs, output):
    check_paths(load_spec({"input": {"paths": inputs}, "output": output}))


def test_output_vs_input_paths(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.jsonl").write_text("{}\n")
    link = tmp_path / "link"
    link.symlink_to(data)
    refused = [
        ([str(data)], str(data)),                                  # equals
        ([str(data / "*.jsonl")], str(data)),                      # equals the glob's folder
        ([str(data / "sub" / "*.jsonl")], str(data)),              # contains
        ([str(data)], str(data / "out")),                          # inside a folder input (read recursively)
        ([str(data / "**" / "*.jsonl")], str(data / "out")),       # inside, and ** reaches into it
        ([str(data / "*" / "*.jsonl")], str(data / "out")),        # inside, two levels
        ([str(link / "*.jsonl")], str(data)),                      # links resolved
        ([str(data / "*.jsonl")], str(link)),
        (["s3://bkt/corpus/clean/*.jsonl"], "s3://bkt/corpus"),    # object-store prefixes alike
        (["s3a://bkt/corpus/"], "s3://bkt/corpus/out"),
        (["s3://bkt/c/x.jsonl"], "s3://bkt"),
        ([str(data)], "/"),
        ([str(data)], os.path.expanduser("~")),
    ]
    for inputs, output in refused:
        with pytest.raises(ConfigError, match="^output: "):
            _check(tmp_path, inputs, output)
    allowed = [
        ([str(data / "*.jsonl")], str(data / "out")),              # one level: never matches inside out/
        ([str(data / "a.jsonl")], str(data / "out")),              # a file input beside the output
        ([str(data)], str(tmp_path / "out")),
        (["s3://bkt/corpus/*.jsonl"], "s3://bkt/corpus-out"),      # a prefix, not a path component
        (["s3://bkt/corpus/*.jsonl"], "s3://other/corpus"),
        (["s3://bkt/corpus/*.jsonl"], str(tmp_path / "corpus")),
    ]
    for inputs, output in allowed:
        _check(tmp_path, inputs, output)


def test_refresh_refuses_a_foreign_folder(tmp_path, demo_inputs):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "dataset.json").write_text('{"mine": true}')
    p = _cli("refresh", _spec(tmp_path, demo_inputs), "--output", out)
    assert p.returncode == 2 and "first foreign entry: 'dataset.json'" in p.stderr, p.stderr
    assert sorted(os.listdir(out)) == ["dataset.json"]


@pytest.mark.parametrize("entry", ["_plan/notes.txt", "_lease/owner.txt", "_plan"], ids=["plan-dir", "lease-dir", "plan-file"])
def test_a_users_folder_named_like_preprocs_leftovers_is_foreign(tmp_path, demo_inputs, entry):
    """A killed first run may leave only its shard lists (_plan/) or its lease (_lease/):
    preproc takes a folder holding just those as its own. A user's folder (or file) of the
    same name holding anything else is foreign: refused with --force too, left as it was."""
    out = tmp_path / "o"
    (out / entry).parent.mkdir(parents=True, exist_ok=True)
    (out / entry).write_bytes(b"mine")
    before = _tree(out)
    for force in ([], ["--force"]):
        p = _cli("run", _spec(tmp_path, demo_inputs), "--output", out, "--workers", "1", *force)
        assert p.returncode == 2 and f"first foreign entry: '{entry}'" in p.stderr, p.stderr
        assert _tree(out) == before


def test_a_killed_first_runs_shard_lists_alone_are_taken_as_its_own(tmp_path, demo_inputs):
    out = tmp_path / "o"
    (out / "_plan").mkdir(parents=True)
    (out / "_plan" / "shard-00000.json").write_text("{}")
    (out / "_plan" / ".shard-00001.json.tmp-0123456789ab").write_text("")
    p = _cli("run", _spec(tmp_path, demo_inputs), "--output", out, "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert (out / "plan.json").exists() and json.loads((out / "_plan" / "shard-00000.json").read_text())
