"""KubeRay objects: strict validation against the v1 CRDs, restricted Pod Security, and the
CEL rules the schema cannot express."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

import preproc
from preproc.k8s.pss import check_restricted
from preproc.k8s.ray import render_raycluster, render_rayjob
from tests.conftest import ROOT
from tests.k8s.checks import assert_valid, kustomize
from tests.k8s.crd import crd_errors


def _spec(**kuberay):
    return preproc.load_spec({
        "input": {"paths": ["/data/in/*.jsonl.gz"]}, "output": "/data/out",
        "tokenize": {"tokenizer": "/data/gpt2/tokenizer.json"},
        "executor": {"kind": "ray", "retries": 3, "options": {"num_cpus": 1, "kuberay": {
            "namespace": "preproc", "image": "registry.example/preproc:0.1.0",
            "pvc": {"claim_name": "preproc-data", "mount_path": "/data"}, **kuberay}}}})


def _check(obj):
    errs = crd_errors(obj) + check_restricted(obj)
    assert not errs, "\n".join(errs)


def test_rayjob_with_its_own_cluster():
    (job,) = render_rayjob(_spec(workers={"replicas": 3, "cpu": "4", "memory": "8Gi"}))
    _check(job)
    s = job["spec"]
    assert s["entrypoint"] == 'preproc run "$PREPROC_SPEC" --executor ray --ray-address auto'
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] > 0
    assert "clusterSelector" not in s
    w = s["rayClusterSpec"]["workerGroupSpecs"][0]
    assert w["replicas"] == 3
    assert w["template"]["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "4", "memory": "8Gi", "ephemeral-storage": "1Gi"}
    # The spec travels inside the RayJob and is the same spec.
    env = yaml.safe_load(s["runtimeEnvYAML"])["env_vars"]
    assert preproc.load_spec(env["PREPROC_SPEC"]) == _spec(workers={"replicas": 3, "cpu": "4", "memory": "8Gi"})
    images = {c["image"] for p in (s["rayClusterSpec"]["headGroupSpec"]["template"], w["template"], s["submitterPodTemplate"])
              for c in p["spec"]["containers"]}
    assert images == {"registry.example/preproc:0.1.0"}


def test_rayjob_on_an_existing_cluster():
    (job,) = render_rayjob(_spec(cluster_selector={"ray.io/cluster": "shared-ray"}))
    _check(job)
    s = job["spec"]
    # CEL rules of the CRD, checked here: exactly one of rayClusterSpec and clusterSelector;
    # a TTL only with shutdownAfterJobFinishes.
    assert s["clusterSelector"] == {"ray.io/cluster": "shared-ray"} and "rayClusterSpec" not in s
    assert "ttlSecondsAfterFinished" not in s and "shutdownAfterJobFinishes" not in s


def test_raycluster():
    rc = render_raycluster(_spec())
    _check(rc)


def test_typo_in_kuberay_options_is_a_config_error():
    with pytest.raises(preproc.ConfigError, match="executor.options.kuberay.worker: unknown key"):
        render_rayjob(_spec(worker={"replicas": 3}))


def test_local_output_without_pvc_names_the_kuberay_key():
    spec = preproc.load_spec({
        "input": {"paths": ["/data/in/*.jsonl.gz"]}, "output": "/data/out",
        "tokenize": {"tokenizer": "/data/gpt2/tokenizer.json"},
        "executor": {"kind": "ray", "options": {"kuberay": {"image": "registry.example/preproc:0.1.0"}}}})
    with pytest.raises(preproc.ConfigError) as e:
        render_rayjob(spec)
    msg = str(e.value)
    assert msg.startswith("executor.options.kuberay.pvc: ") and "executor.options.pvc" not in msg
    # Following the message (the key it names) fixes it.
    fixed = spec.to_json()
    fixed["executor"]["options"]["kuberay"]["pvc"] = {"claim_name": "preproc-data", "mount_path": "/data"}
    (job,) = render_rayjob(preproc.load_spec(fixed))
    _check(job)


def test_strict_validator_catches_unknown_fields():
    (job,) = render_rayjob(_spec())
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    assert any("rayStartParam" in e for e in crd_errors(job))


def test_manifests_cli_renders_a_valid_rayjob(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_spec().to_json()))
    p = subprocess.run([sys.executable, "-m", "preproc", "manifests", str(spec), "--executor", "ray"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    (job,) = list(yaml.safe_load_all(p.stdout))
    _check(job)


def test_kuberay_overlay():
    objs = kustomize(ROOT / "manifests" / "overlays" / "kuberay")
    kinds = sorted(o["kind"] for o in objs)
    assert "RayJob" in kinds and "Job" not in kinds
    for o in objs:
        if o["kind"] == "RayJob":
            _check(o)
        else:
            assert_valid([o])
    role = next(o for o in objs if o["kind"] == "Role")
    ray_rules = [r for r in role["rules"] if "ray.io" in r["apiGroups"]]
    assert ray_rules == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                          "verbs": ["create", "get", "list", "watch", "delete"]}]


def test_kuberay_overlay_rayjob_is_the_rendered_spec():
    d = ROOT / "manifests" / "overlays" / "kuberay"
    (job,) = render_rayjob(preproc.load_spec(str(d / "spec.yaml")))
    (shipped,) = [o for o in yaml.safe_load_all((d / "rayjob.yaml").read_text()) if o]
    assert shipped == job
    images = {c["image"] for o in kustomize(d) if o["kind"] == "RayJob"
              for p in (o["spec"]["rayClusterSpec"]["headGroupSpec"]["template"],
                        o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"],
                        o["spec"]["submitterPodTemplate"])
              for c in p["spec"]["containers"]}
    assert images == {"preproc:0.1.0"}
