"""Every pod preproc ships or renders is inside the NetworkPolicies, bounded in ephemeral
storage and runs a pinned image; the policies admit exactly the traffic a run needs (DNS,
the API server for the coordinator, the object store, Ray among its own pods, and Ray's
dashboard/job API and client port only from the RayJob's submitter).

The policies are checked by evaluating them (a small evaluator of the NetworkPolicy rules
these manifests use: pod selectors with matchLabels/matchExpressions, ipBlock, ports), so
a label that drifts or a rule that widens fails here, not on a cluster."""

from __future__ import annotations

import re
from typing import Any

import pytest

import preproc
from preproc.engine.plan import Plan, StagePlan
from preproc.k8s.job import render_job
from preproc.k8s.ray import render_raycluster, render_rayjob
from tests.k8s.checks import MANIFESTS, assert_valid, kustomize

ALL = ["base", "overlays/pvc", "overlays/s3",
       # The demo's init container comes from a patch after the base's `images:` ran: the
       # demo overlay pins it with its own `images:` rule (issue 15).
       "overlays/demo",
       "overlays/refresh", "overlays/kuberay"]
_PINNED = re.compile(r"^[^:@\s]+(:[\w][\w.\-]{0,127})(@sha256:[0-9a-f]{64})?$|^[^:@\s]+@sha256:[0-9a-f]{64}$")


def _templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod template of an object (Job, CronJob, RayJob, RayCluster)."""
    s = obj.get("spec", {})
    if obj["kind"] == "Job":
        return [s["template"]]
    if obj["kind"] == "CronJob":
        return [s["jobTemplate"]["spec"]["template"]]
    out = []
    if obj["kind"] == "RayJob":
        out.append(s["submitterPodTemplate"])
        s = s.get("rayClusterSpec", {})
    if obj["kind"] in ("RayJob", "RayCluster") and s:
        out.append(s["headGroupSpec"]["template"])
        out += [g["template"] for g in s["workerGroupSpecs"]]
    return out


def _selects(sel: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for e in sel.get("matchExpressions") or []:
        has, val = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and val in e["values"]) or \
                (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def _ports_ok(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def _peer_ok(peers: list[dict[str, Any]] | None, labels: dict[str, str] | None) -> bool:
    """``labels``: a pod in the namespace; ``None``: an address outside the cluster's pods."""
    if not peers:
        return True
    for p in peers:
        if "ipBlock" in p and labels is None:
            return True
        if "podSelector" in p and "namespaceSelector" not in p and labels is not None and _selects(p["podSelector"], labels):
            return True
    return False


def allowed(policies: list[dict[str, Any]], direction: str, pod: dict[str, str], peer: dict[str, str] | None,
            port: int, protocol: str = "TCP") -> bool:
    """Whether ``pod`` may send (Egress) to / receive (Ingress) from ``peer`` on ``port``."""
    key = "egress" if direction == "Egress" else "ingress"
    peers_key = "to" if direction == "Egress" else "from"
    relevant = [p for p in policies if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], pod)]
    if not relevant:
        return True   # no policy isolates this pod in that direction
    return any(_ports_ok(r, port, protocol) and _peer_ok(r.get(peers_key), peer)
               for p in relevant for r in p["spec"].get(key) or [])


def _both(policies, src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    return allowed(policies, "Egress", src, dst, port) and allowed(policies, "Ingress", dst, src, port)


def _pod_checks(tpl: dict[str, Any], where: str, policies: list[dict[str, Any]]) -> None:
    labels = (tpl.get("metadata") or {}).get("labels") or {}
    assert labels.get("app.kubernetes.io/name") == "preproc", f"{where}: pod template without the policy labels"
    assert any(_selects(p["spec"]["podSelector"], labels) and p["spec"].get("ingress") == []
               for p in policies if p["metadata"]["name"] == "preproc"), f"{where}: outside the NetworkPolicy"
    spec = tpl["spec"]
    for c in spec.get("initContainers", []) + spec["containers"]:
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            assert "ephemeral-storage" in res.get(part, {}), f"{where}/{c['name']}: no ephemeral-storage {part}"
        img = c["image"]
        assert _PINNED.match(img) and not img.split("@")[0].endswith(":latest"), f"{where}/{c['name']}: image {img!r} not pinned"


@pytest.mark.parametrize("overlay", ALL)
def test_every_pod_template_is_labelled_bounded_and_pinned(overlay):
    objs = kustomize(MANIFESTS / overlay)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert_valid(policies)
    templates = [(f"{o['kind']}/{o['metadata']['name']}", t) for o in objs for t in _templates(o)]
    assert templates
    for where, tpl in templates:
        _pod_checks(tpl, where, policies)


def _demo_spec(kind: str = "k8s") -> Any:
    opts = {"pvc": {"claim_name": "preproc-data", "mount_path": "/data"}}
    if kind == "ray":
        opts = {"kuberay": opts}
    return preproc.load_spec({"input": {"paths": ["/data/in/*.jsonl"]}, "output": "/data/out",
                              "tokenize": {"tokenizer": "/data/tok.json"}, "executor": {"kind": kind, "options": opts}})


def test_rendered_pods_are_labelled_bounded_and_pinned():
    policies = [o for o in kustomize(MANIFESTS / "overlays" / "kuberay") if o["kind"] == "NetworkPolicy"]
    plan = Plan(run_id="3f2a9c0d1e4b", output="/data/out", spec=_demo_spec(), shards=[],
                stages=[StagePlan("clean", 4)])
    objs = [render_job(plan, "clean")] + render_rayjob(_demo_spec("ray")) + [render_raycluster(_demo_spec("ray"))]
    for o in objs:
        for t in _templates(o):
            _pod_checks(t, f"rendered {o['kind']}", policies)


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "preproc", "app.kubernetes.io/component": component}


def test_ray_dashboard_and_client_only_from_the_submitter():
    policies = [o for o in kustomize(MANIFESTS / "overlays" / "kuberay") if o["kind"] == "NetworkPolicy"]
    head, worker, submitter = _labels("ray-head"), _labels("ray-worker"), _labels("ray-submitter")
    stage_worker, stranger = _labels("worker"), {"app": "something-else"}
    for port in (8265, 10001):
        assert _both(policies, submitter, head, port)
        assert _both(policies, worker, head, port)
        assert not allowed(policies, "Ingress", head, stage_worker, port)
        assert not allowed(policies, "Ingress", head, stranger, port)
        assert not allowed(policies, "Ingress", head, None, port)       # nothing from outside the pods
    # Head and workers among themselves on Ray's own ports; the submitter only on the two.
    for port in (6379, 8076, 10002):
        assert _both(policies, worker, head, port) and _both(policies, head, worker, port)
        assert not _both(policies, submitter, head, port)
    assert not allowed(policies, "Ingress", worker, submitter, 8265)


@pytest.mark.parametrize("overlay, store", [("base", True), ("overlays/s3", True), ("overlays/pvc", False),
                                            ("overlays/demo", False), ("overlays/kuberay", True)])
def test_egress_is_dns_api_server_and_object_store_only(overlay, store):
    policies = [o for o in kustomize(MANIFESTS / overlay) if o["kind"] == "NetworkPolicy"]
    for component in ("worker", "coordinator", "refresh", "ray-head", "ray-worker", "ray-submitter"):
        pod = _labels(component)
        assert allowed(policies, "Egress", pod, None, 53, "UDP") and allowed(policies, "Egress", pod, None, 53)
        assert not allowed(policies, "Ingress", pod, None, 443)
        for port in (22, 80, 5432, 8080):
            assert not allowed(policies, "Egress", pod, None, port), (component, port)
        api = component in ("coordinator", "refresh")
        assert allowed(policies, "Egress", pod, None, 6443) == api, component
        assert allowed(policies, "Egress", pod, None, 443) == (store or api), component


def test_object_store_and_api_server_knobs_are_documented():
    text = (MANIFESTS / "base" / "networkpolicy.yaml").read_text()
    readme = (MANIFESTS / "README.md").read_text()
    for knob in ("preproc-object-store", "preproc-apiserver"):
        assert knob in text and knob in readme
    assert "digest" in (MANIFESTS / "base" / "kustomization.yaml").read_text() and "digest" in readme
