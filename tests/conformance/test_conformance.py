"""One conformance suite that every executor passes: local processes, Ray, and Kubernetes
(through the API-server stand-in). Kill anywhere, worker counts (1, 2, 4), S3 (moto's server),
refresh, bad input.

Kill anywhere kills a real worker process (SIGKILL, like the OOM killer or a preempted node)
at named points of the real code path (``preproc.faults``), then checks that the run,
retried or resumed, ends with token files byte-identical to an uninterrupted run, the same
statistics, and the same set of output ids: nothing lost, nothing doubled.

Cost: a run of the small input is mostly start-up (worker processes, Ray, pods), so the
kills are chained: every kill point is armed at once in one run (each fires once, its index
is retried), and the kills that make a run fail are one chain of resumes (each resume
proceeds to the next point and fails there). The uninterrupted reference is computed once
per test session and shared by the xdist workers (tests/conformance/shared.py), and the Ray
cases of one xdist worker share one Ray (see ``shared_ray``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import preproc
from tests.conformance.shared import Reference, shared_ray, small_reference, stop_shared_ray
from tests.conftest import read_tree
from tests.s3server import dummy_env

EXECUTORS = ["local", "ray", "k8s"]
STAGES = ["clean", "exact_dedup", "tokenize", "finalize"]
POINTS = ["start", "commit", "marker"]
TIMING = ("stage_worker_time_s", "stage_span_s", "wall_time_s")
# The kills of the trials this suite ran one run each before they were chained (20 local,
# 5 Ray, 5 Kubernetes; local's odd trials failed the run and resumed it): still all killed.
TRIALS = {"local": 20, "ray": 5, "k8s": 5}
RAY_CPUS = 4     # the shared Ray's CPUs: a task asks for RAY_CPUS // workers of them


def _base_spec(small: Path, out, shards=4):
    return {"input": {"paths": [str(small / "input" / "*")]}, "output": str(out), "shards": shards,
            "clean": {"defaults": False, "normalize": True, "length": {"min_chars": 50}},
            "tokenize": {"tokenizer": str(small / "tokenizer.json")}}


class Harness:
    """Runs a spec on one executor with failpoint rules that reach its worker processes."""

    def __init__(self, kind, tmp: Path, monkeypatch, ray_home: Path | None = None):
        self.kind = kind
        self.tmp = tmp
        home = ray_home if kind == "ray" else tmp   # Ray's workers read the shared Ray's rules file
        assert home is not None
        self.rules = home / "rules.txt"
        self.state = home / "fault-state"
        self.rules.write_text("")
        self.env = {"PREPROC_FAILPOINTS": f"@{self.rules}", "PREPROC_FAILPOINT_STATE": str(self.state)}
        self.cluster = None
        self.s3_secret = None     # k8s: the Secret that gives pods S3 credentials
        self.opts = {}
        if kind == "local":
            for k, v in self.env.items():
                monkeypatch.setenv(k, v)
        elif kind == "k8s":
            from tests.k8s.checks import MANIFESTS
            from tests.k8s.standin import StandIn, rbac_rules_from

            self.cluster = StandIn(tokens={"t": rbac_rules_from(MANIFESTS / "base" / "rbac.yaml")})
            self.cluster.__enter__()
            self.opts = {"kubeconfig": self.cluster.write_kubeconfig(tmp / "kubeconfig", token="t", namespace="preproc")}

    def close(self):
        self.arm(None)            # a shared Ray outlives this test: leave it no rules
        if self.cluster is not None:
            self.cluster.__exit__(None, None, None)

    def executor(self, retries=2, workers=2):
        """``workers``: how many indices run at once (local processes, Ray CPUs, pods)."""
        if self.kind == "local":
            return {"kind": "local", "workers": workers, "retries": retries}
        if self.kind == "ray":
            # The Ray is already up (shared_ray): at most `workers` tasks fit in its CPUs at once.
            return {"kind": "ray", "retries": retries, "options": {"num_cpus": RAY_CPUS // workers}}
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

    def arm(self, *rules: str | None):
        """Write the rules (rule ``k`` counts its firings as ``rule{k}-*`` in the state folder)."""
        self.rules.write_text("\n".join(r for r in rules if r))
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir()

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.state.iterdir()) if self.state.exists() else []


@pytest.fixture(params=EXECUTORS)
def harness(request, tmp_path, monkeypatch):
    ray_home = request.getfixturevalue("ray_home") if request.param == "ray" else None
    h = Harness(request.param, tmp_path, monkeypatch, ray_home)
    yield h
    h.close()


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left():
    """Other modules expect no Ray running: the shared one goes when this module's tests do."""
    yield
    stop_shared_ray()


@pytest.fixture
def ray_home(tmp_path_factory):
    """The folder of this xdist worker's shared Ray (its failpoint rules and state)."""
    pytest.importorskip("ray")
    return shared_ray(tmp_path_factory, RAY_CPUS)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, demo_inputs) -> Reference:
    """The small input (800 documents, 4 shards: every stage, several indices) and its
    uninterrupted local run, made once per session for all xdist workers."""
    return small_reference(tmp_path_factory, demo_inputs / "tokenizer.json", _base_spec)


def _ids(out: Path) -> list[str]:
    return [i for p in sorted((out / "tokens").glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]


def _same_as_reference(out: Path, stats, reference: Reference):
    assert read_tree(out) == read_tree(reference.out)
    assert {k: v for k, v in stats.items() if k not in TIMING} == {k: v for k, v in reference.stats.items() if k not in TIMING}
    ids = _ids(out)
    assert sorted(ids) == sorted(_ids(reference.out)) and len(ids) == len(set(ids))
    s = stats
    assert s["read"] == s["kept"] + s["filtered_total"] + s["duplicates_total"] + s["rejected_total"]


def _kill_points(kind: str, fan: dict[str, int]) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """(kills a retry recovers, kills that fail the run) as (stage, index, point).

    Every kill of the former one-run-per-trial suite (same seed, same draws): local's odd
    trials (exact_dedup and finalize) killed more often than the retries allow, the rest
    recovered. Ray and Kubernetes also recover from a kill at every stage and point (the
    former suite killed them at 5 of the 12); local's 12 are its two kinds together."""
    rng = random.Random(f"conformance-{kind}")
    recover: list[tuple[str, int, str]] = []
    fail: list[tuple[str, int, str]] = []
    for trial in range(TRIALS[kind]):
        stage = STAGES[trial % len(STAGES)]
        index = rng.randrange(fan[stage])
        point = POINTS[(trial // len(STAGES)) % len(POINTS)]
        (fail if kind == "local" and trial % 2 == 1 else recover).append((stage, index, point))
    for stage in STAGES:
        for point in POINTS:
            if not any(s == stage and p == point for s, _, p in recover + fail):
                recover.append((stage, rng.randrange(fan[stage]), point))
    order = {s: k for k, s in enumerate(STAGES)}
    key = lambda k: (order[k[0]], k[1], POINTS.index(k[2]))
    return sorted(set(recover), key=key), sorted(set(fail), key=key)


def _rule(stage: str, index: int, point: str, times: int) -> str:
    return f"point={point},stage={stage},index={index},action=kill,times={times}"


def test_kill_anywhere(harness, reference, tmp_path):
    """SIGKILL a worker at every stage and point (before the work, in the middle of committing
    an output, after the outputs but before the marker); the run recovers.

    One run with every kill armed (each once; an index takes at most one kill per point, so
    retries=3 covers them all): each kill fires, its index is retried, and the outputs equal
    the uninterrupted run's. Local also kills past the retries (at exact_dedup and finalize):
    each run of a chain of resumes is killed twice at its point (retries=1), fails, and the
    next resume goes on from the markers to the next point; the last resume finishes with the
    same outputs."""
    plan = json.loads((reference.out / "plan.json").read_text())
    fan = {s["name"]: s["fan_out"] for s in plan["stages"]}
    recover, fail = _kill_points(harness.kind, fan)
    assert {(s, p) for s, _, p in recover + fail} == {(s, p) for s in STAGES for p in POINTS}

    out = tmp_path / "recover"
    harness.arm(*(_rule(*k, times=1) for k in recover))
    r = harness.run(_base_spec(reference.small, out), retries=3)
    missing = [k for n, k in enumerate(recover) if f"rule{n}-0" not in harness.fired()]
    assert not missing, f"these failpoints never fired: {missing}"
    _same_as_reference(out, r.stats, reference)

    out = tmp_path / "resumed"
    spec = _base_spec(reference.small, out)
    for stage, index, point in fail:
        harness.arm(_rule(stage, index, point, times=2))
        with pytest.raises(preproc.StageFailed) as e:
            # One worker: the killed stages have one index, a second worker would idle.
            harness.run(spec, retries=1, workers=1)
        assert e.value.stage == stage and list(e.value.failures) == [index]
        assert harness.fired() == ["rule0-0", "rule0-1"], f"{stage}[{index}]@{point}: killed {harness.fired()}"
        if stage != "finalize":   # finalize writes dataset.json before its own marker
            assert not (out / "dataset.json").exists()
    if fail:
        harness.arm(None)
        r = harness.run(spec)
        _same_as_reference(out, r.stats, reference)
    print(f"{harness.kind}: recovered from kills at " + ", ".join(f"{s}[{i}]@{p}" for s, i, p in recover)
          + "".join(f"; resumed after the run failed at {s}[{i}]@{p}" for s, i, p in fail))


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_worker_counts(harness, reference, tmp_path, workers):
    """Outputs do not depend on how many indices run at once, on any executor (small input:
    800 documents, 4 shards, so 4 workers have one index each)."""
    out = tmp_path / "o"
    r = harness.run(_base_spec(reference.small, out), workers=workers)
    _same_as_reference(out, r.stats, reference)


ACCOUNTING = ("read", "kept", "tokens", "filtered_total", "duplicates_total", "rejected_total")


def test_s3_every_executor(harness, s3, reference, tmp_path):
    """Inputs, tokenizer and output on S3 (moto on loopback): the same tokens as the local run."""
    small = reference.small
    b = s3.bucket("conf")
    s3.upload(small / "input", b, "corpus")
    s3.client.put_object(Bucket=b, Key="models/tokenizer.json", Body=(small / "tokenizer.json").read_bytes())
    # Credentials never go in a spec: local workers inherit this process's (dummy) keys from
    # the `s3` fixture, the shared Ray's workers were given the same dummy keys when it
    # started (shared_ray); pods get them from a Secret, the rest as plain env.
    creds = {k: v for k, v in dummy_env(s3.tmp).items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    if harness.kind == "k8s":
        harness.cluster.secrets[("preproc", "s3-creds")] = creds
        harness.s3_secret = "s3-creds"
        harness.env.update({k: v for k, v in dummy_env(s3.tmp).items() if k not in creds})
    spec = dict(_base_spec(small, f"s3://{b}/out"), input={"paths": [f"s3://{b}/corpus/*"]},
                tokenize={"tokenizer": f"s3://{b}/models/tokenizer.json"}, storage=s3.storage)
    r = harness.run(spec)
    assert s3.tree(b, "out/tokens") == read_tree(reference.out)
    assert {k: r.stats[k] for k in ACCOUNTING} == {k: reference.stats[k] for k in ACCOUNTING}


def test_refresh_every_executor(harness, reference, tmp_path):
    """Two generations (half the files, then the rest) hold as many documents and tokens as
    one run over everything: copies of the first generation's documents are dropped."""
    inp = tmp_path / "in"
    inp.mkdir()
    files = sorted((reference.small / "input").iterdir())
    for f in files[: len(files) // 2]:
        shutil.copy(f, inp)
    spec = dict(_base_spec(reference.small, tmp_path / "ds"), input={"paths": [str(inp / "*")]})
    assert harness.refresh(spec).generation == 1
    for f in files[len(files) // 2:]:
        shutil.copy(f, inp)
    r2 = harness.refresh(spec)
    assert r2.generation == 2 and r2.new_files == len(files) - len(files) // 2
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [g["generation"] for g in ds["generations"]] == [1, 2]
    assert ds["documents"] == reference.stats["kept"] and ds["tokens"] == reference.stats["tokens"]


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
