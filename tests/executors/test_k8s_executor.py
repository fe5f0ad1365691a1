"""The Kubernetes executor end to end, through the real ``kubernetes`` client, against the
API-server stand-in of tests/k8s/standin/ (pods are local ``preproc worker`` processes).

The coordinator authenticates with a token that may do only what the Role in
manifests/base/rbac.yaml allows, so these tests also prove that Role is enough.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from preproc.demo import demo_spec
from preproc.engine.runner import prepare, run
from preproc.errors import EXIT_CONFIG, ConfigError, StageFailed
from preproc.executors.k8s import KubernetesExecutor
from preproc.io.store import Store
from preproc.k8s import job_name
from preproc.spec import load_spec
from tests.conftest import wait_for
from tests.k8s.checks import MANIFESTS, REPO, assert_valid
from tests.k8s.standin import ADMIN_TOKEN, StandIn, rbac_rules_from

pytestmark = pytest.mark.timeout(180)
NS = "preproc"


@pytest.fixture
def cluster(tmp_path):
    rules = rbac_rules_from(MANIFESTS / "base" / "rbac.yaml")
    with StandIn(tokens={"coordinator-token": rules}) as s:
        s.kubeconfig = s.write_kubeconfig(tmp_path / "kubeconfig", token="coordinator-token", namespace=NS)
        yield s


def spec_dict(demo_inputs, out, *, retries=2, **options):
    spec = yaml.safe_load(demo_spec(str(demo_inputs)))
    spec["output"] = str(out)
    # The "PVC" is the test's tmp dir: the stand-in's pods see the host's files.
    spec["executor"] = {"kind": "k8s", "retries": retries, "options": {
        "pvc": {"claim_name": "preproc-data", "mount_path": str(out.parent)},
        "parallelism": 2, "pod_check_interval_s": 0.5, "watch_timeout_s": 5, **options}}
    return spec


def first_stage(cluster, demo_inputs, out, **kw):
    """A planned run and an executor; run only the first stage (it needs no earlier one)."""
    spec = load_spec(spec_dict(demo_inputs, out, **kw))
    plan = prepare(spec)
    ex = KubernetesExecutor(spec, kubeconfig=cluster.kubeconfig, progress=False)
    st = plan.stages[0]
    return ex, plan, st.name, list(range(st.fan_out))


def pods_by_index(cluster, job):
    out = {}
    for p in cluster.pods(NS, job):
        out.setdefault(int(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]), []).append(p)
    return out


def files(out, sub):
    """name -> bytes of the committed files of ``out/sub`` (markers hold timings: not compared)."""
    return {p.name: p.read_bytes() for p in sorted((out / sub).iterdir())
            if p.is_file() and not p.name.startswith(".")}


def exit_code(pod):
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]


# -- the demo pipeline ------------------------------------------------------------------------
def test_demo_on_k8s_is_byte_identical_to_local(tmp_path, demo_inputs, cluster, caplog):
    caplog.set_level(logging.INFO, logger="preproc")
    local = run(demo_spec(str(demo_inputs)), output=str(tmp_path / "local"), workers=2, executor="local")
    t0 = time.monotonic()
    k8s = run(spec_dict(demo_inputs, tmp_path / "k8s"), executor_options={"kubeconfig": cluster.kubeconfig})
    elapsed = time.monotonic() - t0
    assert k8s.run_id == local.run_id and k8s.tokens == local.tokens > 0
    for sub in ("tokens", "clean"):
        assert files(tmp_path / "k8s", sub) == files(tmp_path / "local", sub), sub
    assert files(tmp_path / "k8s", "tokens")
    timing = ("stage_worker_time_s", "stage_span_s", "wall_time_s")
    assert {k: v for k, v in k8s.stats.items() if k not in timing} == {
        k: v for k, v in local.stats.items() if k not in timing}

    plan_stages = [(s["name"], s["fan_out"]) for s in Store(str(tmp_path / "k8s")).read_json("plan.json")["stages"]]
    jobs = [cluster.job(job_name(k8s.run_id, s), NS) for s, _ in plan_stages]
    assert all(j is not None for j in jobs)
    for job, (_stage, n) in zip(jobs, plan_stages):
        status = job["status"]
        # The controller's bookkeeping, as a real cluster would show it.
        assert status["completedIndexes"] == ("0" if n == 1 else f"0-{n - 1}")
        assert status["failedIndexes"] == "" and status["succeeded"] == n and status["failed"] == 0
        assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
        assert cluster.max_active(job["metadata"]["name"], NS) == min(2, n)  # parallelism
        assert_valid([{k: v for k, v in job.items() if k != "status"}])
        # One pod per index; each got the environment Kubernetes injects, and nothing else
        # told it its index (the command has no --index).
        pods = cluster.pods(NS, job["metadata"]["name"])
        assert sorted(int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
                      for p in pods) == list(range(n))
        for p in pods:
            assert "--index" not in p["spec"]["containers"][0]["command"]
            assert p["spec"]["hostname"] == f"{job['metadata']['name']}-{p['metadata']['labels']['batch.kubernetes.io/job-completion-index']}"  # noqa: E501
    assert not cluster.deletions
    assert any("created Job preproc/" in r.getMessage() for r in caplog.records)
    print(f"k8s demo run: {len(plan_stages)} stages, {sum(n for _, n in plan_stages)} pods, {elapsed:.1f}s")


def test_restarted_coordinator_adopts_its_jobs(tmp_path, demo_inputs, cluster, caplog):
    """The coordinator is killed while its clean Job runs; a new one finds the Job (409),
    watches it instead of launching it again, and finishes the run. The clean pods hold at
    their start (a ``pause`` failpoint) until the second coordinator has asked for the Job,
    so the Job cannot finish unwatched in between, however slow the machine."""
    caplog.set_level(logging.INFO, logger="preproc")
    out = tmp_path / "out"
    state = tmp_path / "fault-state"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(demo_inputs, out, env={
        "PREPROC_FAILPOINTS": "point=start,stage=clean,action=pause", "PREPROC_FAILPOINT_STATE": str(state)})))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    first = subprocess.Popen([sys.executable, "-m", "preproc", "run", str(spec_path), "--kubeconfig", cluster.kubeconfig],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        jobs = cluster.wait_for(lambda: [j for j in cluster.list("jobs", NS) if j["status"].get("active")], 60)
    finally:
        first.send_signal(signal.SIGKILL)  # the coordinator dies mid-stage; its Job runs on
        first.wait()
    (adopted,) = jobs
    name = adopted["metadata"]["name"]

    def job_posts():
        return [r for r in cluster.requests if r[0] == "POST" and r[1].endswith("/jobs")]

    def release():     # once the second coordinator has asked for the clean Job
        wait_for(lambda: len(job_posts()) >= 2, 120)
        state.mkdir(exist_ok=True)
        (state / "resume").touch()

    t = threading.Thread(target=release, daemon=True)
    t.start()
    try:
        result = run(str(spec_path), executor_options={"kubeconfig": cluster.kubeconfig})
    finally:
        state.mkdir(exist_ok=True)
        (state / "resume").touch()
        t.join()
    assert result.tokens > 0
    # The second coordinator got 409 for the running Job and watched it: one Job, one pod
    # per index (nothing launched twice), nothing deleted.
    creates = [r for r in cluster.requests if r[0] == "POST" and r[1].endswith("/jobs")]
    assert len(creates) == len(Store(str(out)).read_json("plan.json")["stages"]) + 1
    assert all(len(pods) == 1 for pods in pods_by_index(cluster, name).values())
    assert not cluster.deletions
    assert any(f"Job preproc/{name} was already launched; watching it" in r.getMessage() for r in caplog.records)


# -- failures ---------------------------------------------------------------------------------
def test_an_index_that_fails_once_is_retried(tmp_path, demo_inputs, cluster):
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", retries=1,
                                           env={"STANDIN_FAIL_ONCE": "1"})
    ex.run_stage(plan, stage, indices)
    assert Store(plan.output).done_indices(stage) == set(indices)
    job = cluster.job(job_name(plan.run_id, stage), NS)
    assert job["status"]["failed"] == 1 and job["status"]["failedIndexes"] == ""
    pods = pods_by_index(cluster, job["metadata"]["name"])[1]
    assert [exit_code(p) for p in pods] == [137, 0]  # SIGKILLed, then a new pod for index 1
    assert pods[1]["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"] == "1"


def test_without_retries_a_failure_fails_the_index(tmp_path, demo_inputs, cluster, caplog):
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", retries=0,
                                           env={"STANDIN_FAIL_ONCE": "1"})
    with pytest.raises(StageFailed) as e:
        ex.run_stage(plan, stage, indices)
    assert list(e.value.failures) == [1]
    assert e.value.failures[1].startswith("exit 137 after 1 attempt(s)")
    assert Store(plan.output).done_indices(stage) == {0, 2, 3}  # the others went on


def test_a_disruption_does_not_consume_a_retry(tmp_path, demo_inputs, cluster):
    # No retries at all: if the preemption counted, index 2 would fail.
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", retries=0,
                                           env={"STANDIN_DISRUPT_ONCE": "2"})
    ex.run_stage(plan, stage, indices)
    assert Store(plan.output).done_indices(stage) == set(indices)
    job = cluster.job(job_name(plan.run_id, stage), NS)
    assert job["status"]["failed"] == 0
    first, second = pods_by_index(cluster, job["metadata"]["name"])[2]
    assert {"type": "DisruptionTarget", "status": "True"}.items() <= next(
        c for c in first["status"]["conditions"] if c["type"] == "DisruptionTarget").items()
    assert first["status"]["phase"] == "Failed" and second["status"]["phase"] == "Succeeded"
    assert second["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"] == "0"


def test_eviction_through_the_api_is_a_disruption(tmp_path, demo_inputs, cluster):
    """The same through the real eviction subresource, as `kubectl drain` does."""
    from kubernetes import client, config

    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", retries=0, parallelism=1)
    admin = config.new_client_from_config(cluster.write_kubeconfig(tmp_path / "admin", token=ADMIN_TOKEN),
                                          persist_config=False)
    name = job_name(plan.run_id, stage)

    def drain():
        pod = cluster.wait_for(lambda: next((p for p in cluster.pods(NS, name)
                                             if p["status"].get("phase") == "Running"), None), 60)
        client.CoreV1Api(admin).create_namespaced_pod_eviction(
            pod["metadata"]["name"], NS, {"apiVersion": "policy/v1", "kind": "Eviction",
                                          "metadata": {"name": pod["metadata"]["name"], "namespace": NS}})

    t = threading.Thread(target=drain)
    t.start()
    ex.run_stage(plan, stage, indices)
    t.join()
    job = cluster.job(name, NS)
    assert job["status"]["failed"] == 0 and len(cluster.pods(NS, name)) == len(indices) + 1
    assert Store(plan.output).done_indices(stage) == set(indices)


def test_a_bad_shard_fails_only_its_index_and_is_named(tmp_path, demo_inputs, cluster, caplog):
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", retries=2,
                                           env={"STANDIN_EXIT": "2:3"})
    with pytest.raises(StageFailed) as e:
        ex.run_stage(plan, stage, indices)
    assert list(e.value.failures) == [2]
    msg = e.value.failures[2]
    assert msg.startswith("BadShardError (exit 3, pod ") and msg.endswith("stand-in: exiting 3")
    assert e.value.exit_code != EXIT_CONFIG
    assert Store(plan.output).done_indices(stage) == {0, 1, 3}
    name = job_name(plan.run_id, stage)
    job = cluster.job(name, NS)
    assert job["status"]["failedIndexes"] == "2" and job["status"]["completedIndexes"] == "0-1,3"
    assert [c["type"] for c in job["status"]["conditions"]] == ["FailureTarget", "Failed"]
    assert job["status"]["conditions"][-1]["reason"] == "FailedIndexes"
    assert len(pods_by_index(cluster, name)[2]) == 1  # FailIndex: not retried
    text = caplog.text
    assert "failed indices: 2" in text and "log line(s) of pod" in text and "stand-in: exiting 3" in text

    # Fixed (here: without the injected exit) and run again: the failed Job is replaced,
    # only the missing index does real work.
    spec2 = load_spec(spec_dict(demo_inputs, tmp_path / "out", retries=2))
    ex2 = KubernetesExecutor(spec2, kubeconfig=cluster.kubeconfig, progress=False)
    ex2.run_stage(plan, stage, [2])
    assert Store(plan.output).done_indices(stage) == set(indices)
    assert cluster.deletions == [("jobs", name, "Background")]


def test_a_config_error_fails_the_whole_job(tmp_path, demo_inputs, cluster):
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", retries=3, parallelism=1,
                                           env={"STANDIN_EXIT": "0:2"})
    with pytest.raises(StageFailed) as e:
        ex.run_stage(plan, stage, indices)
    assert list(e.value.failures) == [0] and e.value.failures[0].startswith("ConfigError")
    assert e.value.exit_code == EXIT_CONFIG  # the CLI exits 2
    job = cluster.job(job_name(plan.run_id, stage), NS)
    assert job["status"]["conditions"][-1]["reason"] == "PodFailurePolicy"
    assert len(cluster.pods(NS, job["metadata"]["name"])) == 1  # FailJob: nothing else started


@pytest.mark.parametrize("options, reason", [
    ({"image": "registry.example.com/does-not-exist:1"}, "ImagePullBackOff"),
    ({"s3": {"secret": "no-such-secret"}}, "CreateContainerConfigError"),
])
def test_pods_that_cannot_start_fail_fast_as_config_errors(tmp_path, demo_inputs, cluster, options, reason):
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", pending_timeout_s=1.5, **options)
    with pytest.raises(StageFailed) as e:
        ex.run_stage(plan, stage, indices)
    (msg,) = e.value.failures.values()
    assert msg.startswith("ConfigError: pod ") and (reason in msg or "ErrImagePull" in msg)
    assert e.value.exit_code == EXIT_CONFIG
    assert cluster.deletions == [("jobs", job_name(plan.run_id, stage), "Background")]


def test_the_watch_survives_expiry_and_dropped_connections(tmp_path, demo_inputs, cluster):
    """Three times while the stage runs, the history is compacted and the open watch cut: the
    coordinator rereads the Job and watches again, and the stage finishes. Its pods hold at
    their start (a ``pause`` failpoint) until the third new watch is open, so the stage
    cannot end before the chaos, however fast the pods are."""
    state = tmp_path / "fault-state"
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", parallelism=1, env={
        "PREPROC_FAILPOINTS": "point=start,action=pause", "PREPROC_FAILPOINT_STATE": str(state)})

    def watches():
        return [r for r in cluster.requests if r[0] == "GET" and "watch=true" in r[2]]

    cuts = []

    def chaos():
        if not wait_for(lambda: state.is_dir() and any(state.glob("paused-*")), 120):
            return
        for k in range(3):
            if not wait_for(lambda k=k: len(watches()) > k, 60):
                return
            cluster.compact()        # every resourceVersion the client holds is now too old
            cluster.drop_watches()   # and the open stream is cut
            cuts.append(k)
        wait_for(lambda: len(watches()) > 3, 60)
        (state / "resume").touch()

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    try:
        ex.run_stage(plan, stage, indices)
    finally:
        (state / "resume").touch()
        t.join()
    assert Store(plan.output).done_indices(stage) == set(indices)
    rereads = [r for r in cluster.requests if r[0] == "GET" and r[1].endswith("/jobs/" + job_name(plan.run_id, stage))]
    assert cuts == [0, 1, 2] and len(watches()) >= 4 and rereads


def test_a_job_deleted_under_the_coordinator_is_reported(tmp_path, demo_inputs, cluster):
    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", parallelism=1)
    name = job_name(plan.run_id, stage)

    def delete_soon():
        cluster.wait_for(lambda: cluster.job(name, NS), 60)
        cluster.delete_job(NS, name, "Background")

    t = threading.Thread(target=delete_soon)
    t.start()
    with pytest.raises(StageFailed) as e:
        ex.run_stage(plan, stage, indices)
    t.join()
    assert all("was deleted while running" in m for m in e.value.failures.values())


def test_rbac_and_api_errors_are_one_line_config_errors(tmp_path, demo_inputs, cluster):
    cluster.tokens["nobody"] = []
    spec = load_spec(spec_dict(demo_inputs, tmp_path / "out"))
    plan = prepare(spec)
    ex = KubernetesExecutor(spec, kubeconfig=cluster.write_kubeconfig(tmp_path / "nobody", token="nobody"),
                            progress=False)
    with pytest.raises(ConfigError, match=r"forbidden .*manifests/base/rbac.yaml"):
        ex.run_stage(plan, plan.stages[0].name, [0])
    with pytest.raises(ConfigError, match="no usable Kubernetes configuration"):
        KubernetesExecutor(spec, kubeconfig=str(tmp_path / "missing-kubeconfig"))


@pytest.fixture
def sigint_handled():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal. A command started in the background
    by a non-interactive shell (`bash .ci/run &`) has SIGINT ignored, and then
    ``_thread.interrupt_main()`` does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("delete", [True, False])
def test_ctrl_c_deletes_the_running_job_unless_told_to_keep_it(tmp_path, demo_inputs, cluster, delete,
                                                             sigint_handled):
    import _thread

    ex, plan, stage, indices = first_stage(cluster, demo_inputs, tmp_path / "out", parallelism=1,
                                           delete_on_interrupt=delete)
    name = job_name(plan.run_id, stage)

    def interrupt():
        cluster.wait_for(lambda: cluster.job(name, NS), 60)
        _thread.interrupt_main()

    t = threading.Thread(target=interrupt)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        ex.run_stage(plan, stage, indices)
        time.sleep(30)  # not reached: the interrupt lands in the watch
    t.join()
    assert cluster.deletions == ([("jobs", name, "Background")] if delete else [])
