"""The API-server stand-in itself, through the real client: the wire format and the Job
controller semantics the executor tests rely on (no preproc pipeline involved)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.k8s.standin import StandIn

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(tmp_path):
    with StandIn() as s:
        c = config.new_client_from_config(s.write_kubeconfig(tmp_path / "kc"), persist_config=False)
        yield s, client.BatchV1Api(c), client.CoreV1Api(c)


def job(name, script, *, completions=4, parallelism=2, per_index=1, rules=None, **spec):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {
        "completionMode": "Indexed", "completions": completions, "parallelism": parallelism,
        "backoffLimitPerIndex": per_index, "podFailurePolicy": {"rules": rules or [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailIndex", "onExitCodes": {"containerName": "w", "operator": "In", "values": [3]}}]},
        **spec,
        "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "w", "image": "busybox:1", "command": ["python", "-c", script]}]}}}}


def wait_done(batch, name):
    w = watch.Watch()
    conditions = []
    for ev in w.stream(batch.list_namespaced_job, "default", field_selector=f"metadata.name={name}",
                       timeout_seconds=30):
        conditions = [c["type"] for c in ev["raw_object"]["status"].get("conditions", [])]
        if {"Complete", "Failed"} & set(conditions):
            w.stop()
            return ev["raw_object"], conditions
    raise AssertionError(f"job {name} did not finish: {conditions}")


IDX = "import os, sys; i = int(os.environ['JOB_COMPLETION_INDEX']); print('index', i, os.environ['HOSTNAME']); "


def test_status_like_the_job_controller(api):
    s, batch, core = api
    batch.create_namespaced_job("default", job("j", IDX + "sys.exit({1: 1, 3: 3}.get(i, 0))", completions=6))
    final, conds = wait_done(batch, "j")
    st = final["status"]
    assert st["completedIndexes"] == "0,2,4-5" and st["failedIndexes"] == "1,3"
    assert st["failed"] == 3  # index 1 twice (one retry), index 3 once (FailIndex)
    assert conds == ["FailureTarget", "Failed"] and st["conditions"][0]["reason"] == "FailedIndexes"
    pods = json.loads(core.list_namespaced_pod("default", label_selector="batch.kubernetes.io/job-completion-index in (1,3)",
                                               _preload_content=False).data)["items"]
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["1", "1", "3"]
    log = core.read_namespaced_pod_log(pods[0]["metadata"]["name"], "default", tail_lines=1)
    assert log.startswith("index ") and f"j-{pods[0]['metadata']['labels']['batch.kubernetes.io/job-completion-index']}" in log


def test_max_failed_indexes_stops_early(api):
    s, batch, _ = api
    batch.create_namespaced_job("default", job("m", IDX + "sys.exit(3)", completions=6, parallelism=1,
                                               maxFailedIndexes=1))
    final, conds = wait_done(batch, "m")
    assert final["status"]["failedIndexes"] == "0-1" and conds[-1] == "Failed"
    assert final["status"]["conditions"][-1]["reason"] == "MaxFailedIndexesExceeded"


def test_errors_are_kubernetes_status_objects(api):
    s, batch, core = api
    bad = job("bad", "pass", rules=[{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}])
    del bad["spec"]["backoffLimitPerIndex"]
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job("default", bad)
    body = json.loads(e.value.body)
    assert e.value.status == 422 and body["kind"] == "Status" and body["reason"] == "Invalid"
    assert "backoffLimitPerIndex" in body["message"]
    long = job("x" * 70, "pass")
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job("default", long)
    assert e.value.status == 422 and "metadata.name" in json.loads(e.value.body)["message"]
    for call in (lambda: batch.read_namespaced_job("nope", "default"),
                 lambda: batch.delete_namespaced_job("nope", "default"),
                 lambda: core.read_namespaced_pod_log("nope", "default")):
        with pytest.raises(ApiException) as e:
            call()
        assert e.value.status == 404 and json.loads(e.value.body)["reason"] == "NotFound"
    batch.create_namespaced_job("default", job("dup", "pass", completions=1))
    with pytest.raises(ApiException) as e:
        batch.create_namespaced_job("default", job("dup", "pass", completions=1))
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"


def test_watch_from_a_compacted_version_is_410(api):
    s, batch, _ = api
    created = json.loads(batch.create_namespaced_job("default", job("w", "pass", completions=1),
                                                     _preload_content=False).data)
    wait_done(batch, "w")
    s.compact()
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(batch.list_namespaced_job, "default", timeout_seconds=5,
                                      resource_version=created["metadata"]["resourceVersion"]):
            pass
    assert e.value.status == 410


def test_delete_propagation(api):
    s, batch, core = api
    for name, policy in (("bg", "Background"), ("orphan", None)):
        batch.create_namespaced_job("default", job(name, "import time; time.sleep(30)", completions=2))
        s.wait_for(lambda: len([p for p in s.pods(job=name) if p["status"]["phase"] == "Running"]) == 2)
        batch.delete_namespaced_job(name, "default", propagation_policy=policy)
    s.wait_for(lambda: not s.pods(job="bg"))  # the garbage collector removed its pods
    assert all(p["status"]["phase"] == "Running" for p in s.pods(job="orphan"))
    assert s.deletions == [("jobs", "bg", "Background"), ("jobs", "orphan", "Orphan")]
