"""Kubernetes objects without a cluster: every rendered object and every kustomize overlay
validates strictly against the Kubernetes 1.30 and 1.34 schemas and meets restricted PSS."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from preproc.engine.plan import Plan, StagePlan
from preproc.errors import EXIT_BAD_SHARD, EXIT_CONFIG, ConfigError
from preproc.k8s import format_indexes, job_name, parse_indexes, parse_options, render_job, render_manifests
from preproc.k8s.pss import check_restricted, check_worker_policy
from preproc.spec import load_spec
from tests.k8s.checks import MANIFESTS, OVERLAYS, REPO, assert_valid, kustomize, schema_errors

STAGES = [("clean", 4), ("exact_dedup", 4), ("tokenize", 4), ("finalize", 1)]


def make_plan(options=None, *, output="/data/runs/web", retries=2, run_id="3f2a9c0d1e4b", storage=None) -> Plan:
    spec = load_spec({"input": {"paths": ["/data/in/*.jsonl"]}, "output": output, "storage": storage or {},
                      "executor": {"kind": "k8s", "retries": retries,
                                   "options": {"pvc": {"claim_name": "preproc-data", "mount_path": "/data"}}
                                   if options is None else options}})
    return Plan(run_id=run_id, output=output, spec=spec, shards=[], stages=[StagePlan(n, k) for n, k in STAGES])


# -- the stage Job -----------------------------------------------------------------------------
def test_job_is_indexed_with_the_exit_code_contract():
    plan = make_plan()
    job = render_job(plan, "tokenize")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 4 and spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 2 and "backoffLimit" not in spec
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["activeDeadlineSeconds"] == 86400 and spec["ttlSecondsAfterFinished"] == 86400
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [EXIT_CONFIG]
    assert rules[2]["action"] == "FailIndex" and rules[2]["onExitCodes"]["values"] == [EXIT_BAD_SHARD]
    assert {r["onExitCodes"]["containerName"] for r in rules[1:]} == {"worker"}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    # Explicit command; the index comes from JOB_COMPLETION_INDEX (set by the Job controller).
    assert c["command"] == ["preproc", "worker", "/data/runs/web", "--stage", "tokenize"]
    assert "JOB_COMPLETION_INDEX" not in {e["name"] for e in c["env"]}
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "1Gi"},
                              "limits": {"memory": "2Gi", "ephemeral-storage": "1Gi"}}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RAYON_NUM_THREADS"] == "1" and env["HOME"] == "/tmp"
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "preproc" and labels["app.kubernetes.io/component"] == "worker"
    assert labels["preproc.io/run-id"] == "3f2a9c0d1e4b" and labels["preproc.io/stage"] == "tokenize"
    assert spec["template"]["metadata"]["labels"] == labels
    assert not check_restricted(job) and not check_worker_policy(job)


def test_options_reach_the_pod():
    plan = make_plan({
        "namespace": "data", "image": "reg.example.com/preproc:1.2", "image_pull_secrets": ["regcred"],
        "service_account": "preproc-worker", "parallelism": 2, "max_failed_indexes": 1,
        "resources": {"cpu": 3, "memory": "6Gi", "ephemeral_storage": "10Gi", "cpu_limit": "3500m"},
        "node_selector": {"pool": "cpu"}, "affinity": {"nodeAffinity": {}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"},
                        {"operator": "Exists", "tolerationSeconds": 60, "effect": "NoExecute"}],
        "pvc": {"claim_name": "corpus", "mount_path": "/mnt/corpus", "local_path": "/data"},
        "s3": {"secret": "s3-creds"},
        "env": {"HF_HOME": "/tmp/hf"}, "labels": {"team": "llm"}, "active_deadline_s": 600,
        "ttl_after_finished_s": 0, "priority_class_name": "batch-low"})
    job = render_job(plan, "clean", retries=0)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert job["metadata"]["namespace"] == "data"
    assert spec["parallelism"] == 2 and spec["maxFailedIndexes"] == 1 and spec["backoffLimitPerIndex"] == 0
    assert spec["activeDeadlineSeconds"] == 600 and spec["ttlSecondsAfterFinished"] == 0
    assert c["image"] == "reg.example.com/preproc:1.2" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "preproc-worker" and pod["priorityClassName"] == "batch-low"
    assert c["resources"] == {"requests": {"cpu": "3", "memory": "6Gi", "ephemeral-storage": "10Gi"},
                              "limits": {"memory": "6Gi", "ephemeral-storage": "10Gi", "cpu": "3500m"}}
    assert pod["tolerations"][1] == {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    # The coordinator sees the volume at /data; the pods mount it at /mnt/corpus.
    assert c["command"][2] == "/mnt/corpus/runs/web"
    assert {"name": "data", "mountPath": "/mnt/corpus"} in c["volumeMounts"]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HOME"] == "/tmp/hf" and "PREPROC_S3" in env
    assert env["RAYON_NUM_THREADS"] == "4"  # ceil(3.5): the pool matches the CPU limit
    assert job["metadata"]["labels"]["team"] == "llm"
    assert_valid([job])


def test_s3_with_workload_identity_has_no_secret():
    plan = make_plan({"s3": {}, "service_account": "preproc-worker"}, output="s3://bucket/run",
                     storage={"s3": {"endpoint_url": "http://minio:9000", "region": "eu-west-1"}})
    c = render_job(plan, "clean")["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in c and c["command"][2] == "s3://bucket/run"
    # The spec's S3 settings (no secret in them) reach the worker as the core exports them.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert json.loads(env["PREPROC_S3"]) == {"endpoint_url": "http://minio:9000", "region": "eu-west-1"}
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]


@pytest.mark.parametrize("options, output, message", [
    ({}, "/home/me/out", "executor.options.pvc"),
    ({"pvc": {"mount_path": "/data"}}, "/elsewhere/out", "not under the PVC path /data"),
    ({"pvc": {"mount_path": "/data"}}, "relative/out", "absolute path"),
    ({"bogus": 1}, "s3://b/o", "executor.options.bogus: unknown key; allowed: namespace, image"),
    ({"resources": {"memory": "lots"}}, "s3://b/o", "executor.options.resources.memory"),
    ({"resources": {"gpu": 1}}, "s3://b/o", "executor.options.resources.gpu: unknown key; allowed: cpu, memory"),
    ({"namespace": "Bad_NS"}, "s3://b/o", "executor.options.namespace"),
    ({"tolerations": [{"operator": "Exists", "value": "x"}]}, "s3://b/o", "executor.options.tolerations.0"),
    ({"pvc": {"claim_name": "UPPER"}}, "s3://b/o", "executor.options.pvc.claim_name"),
])
def test_bad_options_are_one_line_config_errors(options, output, message):
    with pytest.raises(ConfigError) as e:
        render_job(make_plan(options, output=output), "clean")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_job_names_are_deterministic_valid_and_distinct():
    names = {job_name("3f2a9c0d1e4b", s) for s, _ in STAGES}
    assert len(names) == len(STAGES)
    assert job_name("3f2a9c0d1e4b", "tokenize") == "preproc-3f2a9c0d1e4b-tokenize"
    assert job_name("3f2a9c0d1e4b", "exact_dedup") == job_name("3f2a9c0d1e4b", "exact_dedup")
    long = [job_name("x" * 80, f"stage_{i}" * 5, "averyverylongprefix1") for i in range(3)]
    for n in names | set(long):
        assert len(n) <= 52 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n), n
    assert len(set(long)) == 3
    # The hyphenated form of a stage never collides with a stage literally named that way.
    assert job_name("r", "exact_dedup") != job_name("r", "exact-dedup")


def test_index_sets_round_trip():
    assert format_indexes([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_indexes("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    assert parse_indexes("") == set() and parse_indexes(None) == set() and format_indexes([]) == ""


def test_render_manifests_validates_for_1_30_and_1_34():
    plan = make_plan()
    objects = render_manifests(plan.spec, plan)
    assert [o["kind"] for o in objects] == ["ConfigMap"] + ["Job"] * len(STAGES)
    assert [o["spec"]["completions"] for o in objects[1:]] == [k for _, k in STAGES]
    spec_back = load_spec(objects[0]["data"]["spec.yaml"])
    assert spec_back == plan.spec
    assert_valid(objects)
    assert all(not check_worker_policy(o) for o in objects[1:])


def test_schema_check_fails_on_a_missing_schema_and_on_unknown_fields():
    assert schema_errors({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}})
    job = render_job(make_plan(), "clean")
    job["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    assert any("bogusField" in e for e in schema_errors(job))


def test_pss_checker_catches_what_restricted_forbids():
    bad = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "hostNetwork": True, "securityContext": {"runAsUser": 0},
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "n", "nfs": {"server": "x", "path": "/"}}],
        "containers": [{"name": "c", "securityContext": {
            "privileged": True, "allowPrivilegeEscalation": True, "capabilities": {"add": ["SYS_ADMIN"]},
            "seccompProfile": {"type": "Unconfined"}}, "ports": [{"containerPort": 80, "hostPort": 80}]}]}}
    found = "\n".join(check_restricted(bad))
    for rule in ("hostNetwork", "hostPath", "nfs", "privileged", "allowPrivilegeEscalation", "runAsNonRoot",
                 "pod runAsUser", "seccompProfile", "capabilities.drop", "capabilities.add", "hostPort"):
        assert rule in found, rule


# -- kustomize base and overlays -----------------------------------------------------------------
@pytest.mark.parametrize("overlay", ["base"] + [f"overlays/{o}" for o in OVERLAYS])
def test_kustomize_output_validates(overlay):
    objects = kustomize(MANIFESTS / overlay)
    assert_valid(objects)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job", "NetworkPolicy"} <= kinds
    assert ("PersistentVolumeClaim" in kinds) == (overlay != "overlays/s3")
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    ns = by_kind[("Namespace", "preproc")]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"].get("namespace") == "preproc" for o in objects if o["kind"] != "Namespace")
    coordinator = by_kind[("Job", "preproc-coordinator")]
    assert not check_worker_policy(coordinator, api_token=True)
    pod = coordinator["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "preproc-coordinator"
    assert pod["containers"][0]["command"][:2] == ["preproc", "run"]
    cm = next(o for o in objects if o["kind"] == "ConfigMap")
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in pod["volumes"])
    # The spec in the ConfigMap is a valid k8s spec whose pods see its output.
    spec = load_spec(cm["data"]["spec.yaml"])
    assert spec.executor.kind == "k8s"
    opts = parse_options(spec.executor.options)
    assert opts.worker_output(spec.output)
    if overlay == "overlays/s3":
        assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
        assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "preproc-s3", "optional": True}}]
    else:
        pvc = by_kind[("PersistentVolumeClaim", "preproc-data")]
        assert pvc["spec"]["accessModes"] == (["ReadWriteMany"] if overlay == "base" else ["ReadWriteOnce"])
        assert opts.pvc.claim_name == "preproc-data"
    if overlay == "overlays/demo":
        (init,) = pod["initContainers"]
        assert init["command"] == ["python", "-m", "preproc.k8s.demo", "/data/demo"]


def _container_images(obj, where=""):
    """(path, image) of every container, init container and ephemeral container at any depth
    (Jobs, CronJobs, RayJob head/worker/submitter templates)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("containers", "initContainers", "ephemeralContainers") and isinstance(v, list):
                for c in v:
                    if isinstance(c, dict) and "image" in c:
                        yield f"{where}/{k}/{c.get('name')}", c["image"]
            yield from _container_images(v, f"{where}/{k}")
    elif isinstance(obj, list):
        for v in obj:
            yield from _container_images(v, where)


@pytest.mark.parametrize("overlay", ["base"] + sorted(f"overlays/{d.name}" for d in (MANIFESTS / "overlays").iterdir()
                                                       if (d / "kustomization.yaml").exists()))
def test_every_rendered_container_image_is_the_released_tag(overlay):
    """The base's `images:` rule reaches only the base's own containers; a container an
    overlay adds (the demo's init container, the RayJob's pods) would otherwise run
    `preproc` untagged, i.e. `:latest`."""
    from preproc import __version__

    images = [(f"{o['kind']}/{o['metadata']['name']}{w}", img)
              for o in kustomize(MANIFESTS / overlay) for w, img in _container_images(o)]
    assert images, overlay
    wrong = [(w, img) for w, img in images if img != f"preproc:{__version__}"]
    assert not wrong, wrong


def test_role_allows_exactly_what_the_coordinator_calls():
    objects = kustomize(MANIFESTS / "base")
    role = next(o for o in objects if o["kind"] == "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")} | {
        ("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "preproc-coordinator", "namespace": "preproc"}]
    sas = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    assert sas["preproc-worker"]["automountServiceAccountToken"] is False


def test_network_policy_allows_dns_and_https_egress_only():
    objects = kustomize(MANIFESTS / "base")
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {"preproc", "preproc-apiserver", "preproc-object-store"}
    spec = policies["preproc"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    ports = {(p["protocol"], p["port"]) for s in policies.values() for rule in s["egress"] for p in rule["ports"]}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443)}
    assert all("to" not in rule for rule in spec["egress"])
    assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "preproc"}}
    # (tests/k8s/test_manifest_policy.py evaluates who may reach what.)
    # ... and that selector picks the stage Jobs' pods too.
    job = render_job(make_plan(), "clean")
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "preproc"


def test_overlays_only_patch():
    for overlay in OVERLAYS:
        k = yaml.safe_load((MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text())
        assert all(r.startswith("..") for r in k.get("resources", [])), overlay
        for gen in k.get("configMapGenerator", []):
            assert gen.get("behavior") == "replace"
        assert (MANIFESTS / "overlays" / overlay / "README.md").exists()


# -- the CLI and the image ---------------------------------------------------------------------
def test_preproc_manifests_prints_a_valid_stream(tmp_path, demo_inputs):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "input": {"paths": [f"{demo_inputs}/input/*"]}, "output": f"{demo_inputs}/out-manifests", "shards": 3,
        "tokenize": {"tokenizer": f"{demo_inputs}/tokenizer.json"},
        "executor": {"kind": "k8s", "options": {"namespace": "preproc",
                                                "pvc": {"mount_path": "/data", "local_path": str(demo_inputs)}}}}))
    out = subprocess.run([sys.executable, "-m", "preproc", "manifests", str(spec)], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    objects = [d for d in yaml.safe_load_all(out) if d]
    assert objects[0]["kind"] == "ConfigMap" and all(o["kind"] == "Job" for o in objects[1:])
    assert len(objects) >= 4
    assert objects[1]["spec"]["template"]["spec"]["containers"][0]["command"][2] == "/data/out-manifests"
    assert_valid(objects)


def test_dockerfile_one_non_root_image_without_build_tools():
    text = (REPO / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    final = stages[-1]
    # Every stage's base is the ARG pinned by tag and digest.
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text).group(1)
    assert re.fullmatch(r"python:3\.11[\w.\-]*-slim[\w.\-]*@sha256:[0-9a-f]{64}", base), base
    assert all(st.split()[0] == "${PYTHON_IMAGE}" for st in stages)
    assert re.search(r"(?m)^USER 1000(:1000)?\s*$", final)
    for tool in ("gcc", "build-essential", "g++", "make ", "cargo", "rustc"):
        assert tool not in final, tool
    assert re.search(r'pip install .*"preproc\[\$\{EXTRAS\}\]"', final)   # what EXTRAS holds: test_readme.py
    ignore = (REPO / ".dockerignore").read_text().split()
    assert {".git", "tests"} <= set(ignore)
