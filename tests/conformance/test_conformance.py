"""One conformance suite that every executor passes: local processes, Ray, and Kubernetes
(through the API-server stand-in). Kill anywhere, worker counts (1, 2, 4), S3 (moto's server),
refresh, bad input.

Each trial kills a real worker process (SIGKILL, like the OOM killer or a preempted node)
at a named point of the real code path (``preproc.faults``), then checks that the run,
resumed or retried, ends with token files byte-identical to an uninterrupted run, the same
statistics, and the same set of output ids: nothing lost, nothing doubled.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import preproc
from tests.conftest import read_tree
from tests.s3server import dummy_env

EXECUTORS = ["local", "ray", "k8s"]
TRIALS = {"local": 20, "ray": 5, "k8s": 5}
STAGES = ["clean", "exact_dedup", "tokenize", "finalize"]
POINTS = ["start", "commit", "marker"]
TIMING = ("stage_worker_time_s", "stage_span_s", "wall_time_s")


def _base_spec(demo_inputs, out, shards=4):
    return {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(out), "shards": shards,
            "clean": {"defaults": False, "normalize": True, "length": {"min_chars": 50}},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}


class Harness:
    """Runs a spec on one executor with failpoint rules that reach its worker processes."""

    def __init__(self, kind, tmp: Path, monkeypatch):
        self.kind = kind
        self.tmp = tmp
        self.rules = tmp / "rules.txt"
        self.state = tmp / "fault-state"
        self.rules.write_text("")
        self.env = {"PREPROC_FAILPOINTS": f"@{self.rules}", "PREPROC_FAILPOINT_STATE": str(self.state)}
        self.cluster = None
        self.s3_secret = None     # k8s: the Secret that gives pods S3 credentials
        self.opts = {}
        if kind == "local":
            for k, v in self.env.items():
                monkeypatch.setenv(k, v)
        elif kind == "ray":
            ray = pytest.importorskip("ray")
            if ray.is_initialized():
                ray.shutdown()
        elif kind == "k8s":
            from tests.k8s.checks import MANIFESTS
            from tests.k8s.standin import StandIn, rbac_rules_from

            self.cluster = StandIn(tokens={"t": rbac_rules_from(MANIFESTS / "base" / "rbac.yaml")})
            self.cluster.__enter__()
            self.opts = {"kubeconfig": self.cluster.write_kubeconfig(tmp / "kubeconfig", token="t", namespace="preproc")}

    def close(self):
        if self.kind == "ray":
            import ray

            ray.shutdown()
        if self.cluster is not None:
            self.cluster.__exit__(None, None, None)

    def executor(self, retries=2, workers=2):
        """``workers``: how many indices run at once (local processes, Ray CPUs, pods)."""
        if self.kind == "local":
            return {"kind": "local", "workers": workers, "retries": retries}
        if self.kind == "ray":
            return {"kind": "ray", "retries": retries,
                    "options": {"local_cpus": workers, "runtime_env": {"env_vars": self.env}}}
        return {"kind": "k8s", "retries": retries, "options": {
            "pvc": {"claim_name": "preproc-data", "mount_path": str(self.tmp)}, "parallelism": workers,
            "pod_check_interval_s": 0.5, "watch_timeout_s": 5, "env": self.env,
            **({"s3": {"secret": self.s3_secret}} if self.s3_secret else {})}}

    def run(self, spec, **kw):
        spec = dict(spec, executor=self.executor(**kw))
        return preproc.run(spec, executor_options=self.opts)

    def refresh(self, spec, **kw):
        spec = dict(spec, executor=self.executor(**kw))
        return preproc.refresh(spec, executor_options=self.opts)

    def arm(self, rule: str | None):
        self.rules.write_text(rule or "")
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir()

    def fired(self) -> int:
        return len(list(self.state.iterdir())) if self.state.exists() else 0


@pytest.fixture(params=EXECUTORS)
def harness(request, tmp_path, monkeypatch):
    h = Harness(request.param, tmp_path, monkeypatch)
    yield h
    h.close()


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    """A smaller demo corpus (800 documents): many trials, each a whole run."""
    from preproc.demo import make_corpus

    root = tmp_path_factory.mktemp("small")
    make_corpus(root / "input", docs=800, seed=1)
    return root


@pytest.fixture(scope="module")
def demo_small(small_inputs, demo_inputs):
    shutil.copy(demo_inputs / "tokenizer.json", small_inputs / "tokenizer.json")
    return small_inputs


@pytest.fixture(scope="module")
def reference(demo_small, tmp_path_factory):
    demo_inputs = demo_small
    out = tmp_path_factory.mktemp("reference") / "out"
    r = preproc.run(_base_spec(demo_inputs, out), workers=2)
    return out, r


def _ids(out: Path) -> list[str]:
    return [i for p in sorted((out / "tokens").glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]


def _same_as_reference(out: Path, stats, reference):
    ref_out, ref = reference
    assert read_tree(out) == read_tree(ref_out)
    assert {k: v for k, v in stats.items() if k not in TIMING} == {k: v for k, v in ref.stats.items() if k not in TIMING}
    ids = _ids(out)
    assert sorted(ids) == sorted(_ids(ref_out)) and len(ids) == len(set(ids))
    s = stats
    assert s["read"] == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"]


def test_kill_anywhere(harness, demo_small, reference, tmp_path):
    """SIGKILL a worker at a random stage, index and point (before the work, in the middle of
    committing an output, after the outputs but before the marker); the run recovers."""
    rng = random.Random(f"conformance-{harness.kind}")
    ref_plan = json.loads((reference[0] / "plan.json").read_text())
    fan = {s["name"]: s["fan_out"] for s in ref_plan["stages"]}
    report = []
    for trial in range(TRIALS[harness.kind]):
        stage = STAGES[trial % len(STAGES)]
        index = rng.randrange(fan[stage])
        point = POINTS[(trial // len(STAGES)) % len(POINTS)]
        # Local only: every other trial kills more often than the retries allow, so the run
        # fails and a second `run` resumes it from the markers.
        fail_run = harness.kind == "local" and trial % 2 == 1
        times = 3 if fail_run else 1
        harness.arm(f"point={point},stage={stage},index={index},action=kill,times={times}")
        out = tmp_path / f"t{trial}"
        spec = _base_spec(demo_small, out)
        if fail_run:
            with pytest.raises(preproc.StageFailed):
                harness.run(spec, retries=1)
            if stage != "finalize":   # finalize writes dataset.json before its own marker
                assert not (out / "dataset.json").exists()
            harness.arm(None)
        r = harness.run(spec)
        assert harness.fired() >= 1 or (fail_run and times > 0), f"trial {trial}: the failpoint never fired"
        _same_as_reference(out, r.stats, reference)
        report.append(f"{stage}[{index}]@{point}{' (run failed, resumed)' if fail_run else ''}")
        shutil.rmtree(out)
    print(f"{harness.kind}: {len(report)} kill trials recovered: " + ", ".join(report))


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_worker_counts(harness, demo_small, reference, tmp_path, workers):
    """Outputs do not depend on how many indices run at once, on any executor (small input:
    800 documents, 4 shards, so 4 workers have one index each)."""
    out = tmp_path / "o"
    r = harness.run(_base_spec(demo_small, out), workers=workers)
    _same_as_reference(out, r.stats, reference)


ACCOUNTING = ("read", "kept", "tokens", "filtered_total", "duplicates_total", "rejected_total")


def test_s3_every_executor(harness, s3, demo_small, reference, tmp_path):
    """Inputs, tokenizer and output on S3 (moto on loopback): the same tokens as the local run."""
    b = s3.bucket("conf")
    s3.upload(demo_small / "input", b, "corpus")
    s3.client.put_object(Bucket=b, Key="models/tokenizer.json", Body=(demo_small / "tokenizer.json").read_bytes())
    # Credentials never go in a spec: local workers and a local Ray inherit this process's
    # (dummy) keys from the `s3` fixture; pods get them from a Secret, the rest as plain env.
    creds = {k: v for k, v in dummy_env(s3.tmp).items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    if harness.kind == "k8s":
        harness.cluster.secrets[("preproc", "s3-creds")] = creds
        harness.s3_secret = "s3-creds"
        harness.env.update({k: v for k, v in dummy_env(s3.tmp).items() if k not in creds})
    spec = dict(_base_spec(demo_small, f"s3://{b}/out"), input={"paths": [f"s3://{b}/corpus/*"]},
                tokenize={"tokenizer": f"s3://{b}/models/tokenizer.json"}, storage=s3.storage)
    r = harness.run(spec)
    ref_out, ref = reference
    assert s3.tree(b, "out/tokens") == read_tree(ref_out)
    assert {k: r.stats[k] for k in ACCOUNTING} == {k: ref.stats[k] for k in ACCOUNTING}


def test_refresh_every_executor(harness, demo_small, reference, tmp_path):
    """Two generations (half the files, then the rest) hold as many documents and tokens as
    one run over everything: copies of the first generation's documents are dropped."""
    inp = tmp_path / "in"
    inp.mkdir()
    files = sorted((demo_small / "input").iterdir())
    for f in files[: len(files) // 2]:
        shutil.copy(f, inp)
    spec = dict(_base_spec(demo_small, tmp_path / "ds"), input={"paths": [str(inp / "*")]})
    assert harness.refresh(spec).generation == 1
    for f in files[len(files) // 2:]:
        shutil.copy(f, inp)
    r2 = harness.refresh(spec)
    assert r2.generation == 2 and r2.new_files == len(files) - len(files) // 2
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [g["generation"] for g in ds["generations"]] == [1, 2]
    assert ds["documents"] == reference[1].stats["kept"]


def test_bad_input_every_executor(harness, bad, gpt2, tmp_path):
    out = tmp_path / "bad-out"
    spec = {"input": {"paths": [str(bad / "*.jsonl"), str(bad / "*.jsonl.gz"), str(bad / "*.parquet")]},
            "output": str(out), "shards": 4, "clean": {"defaults": False, "normalize": True},
            "tokenize": {"tokenizer": str(gpt2)}}
    r = harness.run(spec)
    s = r.stats
    assert s["read"] == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"]
    rejects = pq.read_table(out / "rejects").to_pylist()
    assert len(rejects) == s["rejected_total"] > 0
    assert all(x["reason"] and x["file"] and x["location"] for x in rejects)
    errors = {(Path(e["file"]).name, e["error"]) for e in s["file_errors"]}
    assert ("truncated.jsonl.gz", "truncated_gzip") in errors
