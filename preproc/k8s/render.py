"""Names, labels and the spec's ConfigMap of a run's Kubernetes objects.

The Job template itself is :mod:`preproc.k8s.job`. Everything here is a pure function of
(run id, stage, options): the coordinator creates exactly what ``preproc manifests`` prints,
and a restarted coordinator computes the same Job name and finds the Job it launched before.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml

from preproc._version import __version__
from preproc.k8s.options import KubernetesOptions, parse_options

__all__ = [
    "CONTAINER_NAME", "LABEL_RUN", "LABEL_STAGE", "ANNOTATION_RUN", "ANNOTATION_STAGE", "ANNOTATION_OUTPUT",
    "job_name", "configmap_name", "common_labels", "label_value", "render_spec_configmap",
]

CONTAINER_NAME = "worker"
LABEL_RUN = "preproc.io/run-id"
LABEL_STAGE = "preproc.io/stage"
ANNOTATION_RUN = "preproc.io/run-id"
ANNOTATION_STAGE = "preproc.io/stage"
ANNOTATION_OUTPUT = "preproc.io/output"
# A Job's pods are named <job>-<index>-<5 random>, and an Indexed Job's pod hostname is
# <job>-<index> (a DNS label, <= 63). Indexes stay below 10^5 (the cap on completions with
# backoffLimitPerIndex), so 63 - len("-99999") = 57; 52 matches CronJob's own limit.
MAX_JOB_NAME = 52
_NON_DNS = re.compile(r"[^a-z0-9-]+")
_NON_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


def _dns(text: str) -> str:
    return _NON_DNS.sub("-", text.lower()).strip("-")


def label_value(text: str) -> str:
    """A valid label value for ``text`` (<= 63, alphanumeric at both ends), stable."""
    value = _NON_LABEL.sub("-", text).strip("-_.")
    if len(value) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = value[:54].rstrip("-_.") + "-" + digest
    return value


def job_name(run_id: str, stage: str, prefix: str = "preproc") -> str:
    """The deterministic Job name of a (run, stage): ``preproc-3f2a9c0d1e4b-tokenize``.

    Names that would pass :data:`MAX_JOB_NAME` are shortened and given a hash of the full
    name, so two stages never share a name.
    """
    name = "-".join(p for p in (_dns(prefix), _dns(run_id), _dns(stage)) if p)
    if len(name) > MAX_JOB_NAME or _dns(stage) != stage.lower():
        digest = hashlib.sha256(f"{prefix}\0{run_id}\0{stage}".encode()).hexdigest()[:6]
        name = name[: MAX_JOB_NAME - 7].rstrip("-") + "-" + digest
    return name


def configmap_name(run_id: str, prefix: str = "preproc") -> str:
    return f"{_dns(prefix)}-{_dns(run_id)}-spec"[:253]


def common_labels(run_id: str, component: str) -> dict[str, str]:
    """``app.kubernetes.io/*`` plus the run id: what ``kubectl get -l`` filters on."""
    return {
        "app.kubernetes.io/name": "preproc",
        "app.kubernetes.io/instance": label_value(f"preproc-{run_id}"),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "preproc",
        "app.kubernetes.io/version": label_value(__version__),
        "app.kubernetes.io/managed-by": "preproc",
        LABEL_RUN: label_value(run_id),
    }


def render_spec_configmap(plan: Any, options: KubernetesOptions | dict[str, Any] | None = None,
                          *, spec: Any = None) -> dict[str, Any]:
    """The ConfigMap holding the run's spec as ``spec.yaml`` (what a coordinator Job mounts)."""
    spec = plan.spec if spec is None else spec
    opts = parse_options(spec.executor.options if options is None else options)
    text = yaml.safe_dump(spec.to_json(), sort_keys=False, allow_unicode=True)
    metadata: dict[str, Any] = {
        "name": configmap_name(plan.run_id, opts.job_name_prefix),
        "labels": {**opts.labels, **common_labels(plan.run_id, "spec")},
        "annotations": {ANNOTATION_RUN: plan.run_id, ANNOTATION_OUTPUT: plan.output},
    }
    if opts.namespace:
        metadata["namespace"] = opts.namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"spec.yaml": text}}
