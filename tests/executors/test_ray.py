"""The Ray executor on a real local Ray (2 CPUs): same outputs as local, retries, resume."""

from __future__ import annotations

import pytest

import preproc
from tests.conformance.shared import shared_ray, stop_shared_ray
from tests.conftest import read_tree

ray = pytest.importorskip("ray")


def _spec(demo_inputs, out, **extra):
    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(out), "shards": 6,
            "clean": {"defaults": False, "normalize": True, "length": {"min_chars": 50}},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}
    spec.update(extra)
    return spec


@pytest.fixture
def fresh_ray():
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ref(demo_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    preproc.run(_spec(demo_inputs, out), workers=2)
    return read_tree(out)


def _ray_executor(retries=2, **env):
    opts = {"local_cpus": 2}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return {"kind": "ray", "retries": retries, "options": opts}


def test_ray_outputs_identical_and_a_crash_is_retried(tmp_path, demo_inputs, local_ref, fresh_ray):
    out = tmp_path / "out"
    state = tmp_path / "faults"
    # The task for tokenize index 1 dies (process exit) the first time it runs.
    ex = _ray_executor(PREPROC_FAILPOINTS="point=start,stage=tokenize,index=1,action=exit,times=1",
                       PREPROC_FAILPOINT_STATE=str(state))
    r = preproc.run(_spec(demo_inputs, out, executor=ex))
    assert sorted(p.name for p in state.iterdir()) == ["rule0-0"]   # it did crash once
    assert read_tree(out) == local_ref
    assert r.stats["read"] == r.stats["kept"] + r.stats["filtered_total"] + r.stats["duplicates_total"] + r.stats["rejected_total"]


def test_ray_rerun_after_failed_run_skips_finished_indices(tmp_path, tmp_path_factory, demo_inputs, local_ref, fresh_ray):
    """A failed run and its rerun on one Ray (the cluster a rerun meets; the executor's own
    start of a local Ray is the test above): one Ray start, not two. Its workers read the
    failpoint rules from a file (tests/conformance/shared.py), emptied for the rerun."""
    home = shared_ray(tmp_path_factory, 2)
    try:
        out = tmp_path / "out"
        (home / "rules.txt").write_text("point=start,stage=tokenize,index=2,action=raise")
        with pytest.raises(preproc.StageFailed) as e:
            preproc.run(_spec(demo_inputs, out, executor={"kind": "ray", "retries": 0}))
        assert list(e.value.failures) == [2]
        assert not (out / "dataset.json").exists()
        clean_done = {p.name: p.stat().st_mtime_ns for p in (out / "clean" / "_done").iterdir()}
        tok_done = {p.name: p.stat().st_mtime_ns for p in (out / "tokenize" / "_done").iterdir()}
        assert "00002.json" not in tok_done and len(tok_done) == 5
        (home / "rules.txt").write_text("")
        preproc.run(_spec(demo_inputs, out, executor={"kind": "ray", "retries": 2}))
    finally:
        stop_shared_ray()
    # Finished indices were not run again; the failed one was, and the outputs are identical.
    assert {p.name: p.stat().st_mtime_ns for p in (out / "clean" / "_done").iterdir()} == clean_done
    after = {p.name: p.stat().st_mtime_ns for p in (out / "tokenize" / "_done").iterdir()}
    assert {k: v for k, v in after.items() if k != "00002.json"} == tok_done
    assert read_tree(out) == local_ref


def test_ray_config_error_is_not_retried(tmp_path, demo_inputs, fresh_ray):
    with pytest.raises(preproc.ConfigError, match="executor.options.num_cpu: unknown option"):
        preproc.run(_spec(demo_inputs, tmp_path / "o", executor={"kind": "ray", "options": {"num_cpu": 1}}))
