"""The coordinator at many indices (issue 18): API calls O(stages), not O(indices); no-op
indices through the real runner, markers, progress and finalize. Not timed: the CPU and
memory figures are scripts/bench_coord.py's.

Indices are no-ops through the ``skip`` failpoint (:mod:`preproc.faults`): each writes only
its marker. On Kubernetes the stand-in's pods run in this process (tests/k8s/inprocess.py),
so a stage of hundreds of indices takes seconds, not 1,000 subprocesses.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from preproc.engine.runner import run
from tests.k8s.checks import MANIFESTS
from tests.k8s.inprocess import InProcessPods, skip_rules
from tests.k8s.standin import StandIn, rbac_rules_from

pytestmark = pytest.mark.timeout(300)
NS = "preproc"


def one_doc_files(folder, n):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"d{i:05d}.jsonl").write_text(json.dumps({"id": f"d{i}", "text": f"document {i} here"}) + "\n")
    return str(folder / "*.jsonl")


def spec_dict(inputs, out, n, gpt2, executor):
    return {"input": {"paths": [inputs]}, "output": str(out), "shards": n, "clean_fan_out": n, "later_fan_out": n,
            "dedup": {"exact": False},
            "tokenize": {"tokenizer": str(gpt2)}, "executor": executor}


def k8s_run(tmp_path, n, gpt2, monkeypatch):
    """A run of N no-op indices per stage on the stand-in; (its result, the API requests)."""
    monkeypatch.setenv("PREPROC_FAILPOINTS", skip_rules("clean", "tokenize"))
    work = tmp_path / f"n{n}"
    inputs = one_doc_files(work / "in", n)
    pods = InProcessPods()
    # pod_check_interval_s beyond the run: no pod list, one watch per stage (a watch that
    # ends on its timeout is resumed and the pods are looked at: fine, but time-dependent).
    executor = {"kind": "k8s", "options": {"namespace": NS, "parallelism": 64, "pod_check_interval_s": 600,
                                           "watch_timeout_s": 600,
                                           "pvc": {"claim_name": "data", "mount_path": str(work)}}}
    with StandIn(tokens={"coordinator": rbac_rules_from(MANIFESTS / "base" / "rbac.yaml")},
                 pod_runner=pods, sync_period_s=0.1, validate_schema=False, history=100000) as s:
        kubeconfig = s.write_kubeconfig(tmp_path / f"kubeconfig-{n}", token="coordinator", namespace=NS)
        result = run(spec_dict(inputs, work / "out", n, gpt2, executor), executor_options={"kubeconfig": kubeconfig})
        requests = list(s.requests)
    assert Counter(st for st, _ in pods.ran) == {"clean": n, "tokenize": n, "finalize": 1}
    return result, requests


def kinds(requests):
    """(method, what) per request: a Job or Pod collection (list/create/watch) or one item."""
    out = Counter()
    for method, path, query in requests:
        parts = path.strip("/").split("/")
        what = parts[-1] if parts[-1] in ("jobs", "pods") else f"{parts[-2]}/<name>"
        verb = "watch" if "watch=true" in query or "watch=1" in query else method
        out[(verb, what)] += 1
    return out


def test_k8s_api_calls_do_not_grow_with_indices(tmp_path, gpt2, monkeypatch):
    # Ten times the indices, the same requests (50 and 500: the ratio is what is checked).
    small, small_req = k8s_run(tmp_path, 50, gpt2, monkeypatch)
    big, big_req = k8s_run(tmp_path, 500, gpt2, monkeypatch)
    for result, n in ((small, 50), (big, 500)):
        # finalize ran for real over every no-op marker
        assert len(result.dataset["shards"]) == n and result.documents == 0
    stages = 3   # clean, tokenize, finalize: one Job each
    for req in (small_req, big_req):
        k = kinds(req)
        writes = {key: v for key, v in k.items() if key[0] in ("POST", "PUT", "PATCH", "DELETE")}
        assert writes == {("POST", "jobs"): stages}, writes
        # Watched, not polled: no GET of one Job or one Pod, whatever the index count.
        assert not [key for key in k if key[1].endswith("/<name>")], k
        assert stages <= k[("watch", "jobs")] <= 2 * stages
    assert kinds(small_req) == kinds(big_req)


def test_local_noop_indices_run_through_the_real_runner(tmp_path, gpt2, monkeypatch):
    monkeypatch.setenv("PREPROC_FAILPOINTS", skip_rules("clean", "tokenize"))
    n = 300
    inputs = one_doc_files(tmp_path / "in", n)
    out = tmp_path / "out"
    result = run(spec_dict(inputs, out, n, gpt2, {"kind": "local", "workers": 2}))
    assert len(result.dataset["shards"]) == n and result.documents == 0 and result.tokens == 0
    for stage in ("clean", "tokenize"):
        markers = sorted((out / stage / "_done").iterdir())
        assert len(markers) == n
        m = json.loads(markers[-1].read_text())
        assert m["files"] == {} and m["run_id"] == result.run_id   # a marker and nothing else
        assert not list((out / stage).glob("part-*"))
    assert result.stats["stage_worker_time_s"].keys() == {"clean", "tokenize"}


def test_k8s_pod_checks_list_only_pending_pods(tmp_path, gpt2, monkeypatch):
    """The periodic look for pods that cannot start asks the API server for pending pods
    only: at 10,000 indices a list of every pod would be tens of MB each time."""
    monkeypatch.setenv("PREPROC_FAILPOINTS", skip_rules("clean", "tokenize"))
    n = 200
    inputs = one_doc_files(tmp_path / "in", n)
    executor = {"kind": "k8s", "options": {"namespace": NS, "parallelism": 8, "pod_check_interval_s": 0.1,
                                           "watch_timeout_s": 1,
                                           "pvc": {"claim_name": "data", "mount_path": str(tmp_path)}}}
    with StandIn(tokens={"coordinator": rbac_rules_from(MANIFESTS / "base" / "rbac.yaml")},
                 pod_runner=InProcessPods(), sync_period_s=0.1, validate_schema=False) as s:
        kubeconfig = s.write_kubeconfig(tmp_path / "kubeconfig", token="coordinator", namespace=NS)
        run(spec_dict(inputs, tmp_path / "out", n, gpt2, executor), executor_options={"kubeconfig": kubeconfig})
        pod_lists = [q for m, p, q in s.requests if m == "GET" and p.endswith("/pods")]
    assert pod_lists
    assert all("fieldSelector=status.phase%3DPending" in q for q in pod_lists), pod_lists
