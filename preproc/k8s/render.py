"""Render the Kubernetes objects of a run: one Indexed Job per stage, the spec's ConfigMap.

Everything here is a pure function of (plan, stage, options): the coordinator creates exactly
what ``preproc manifests`` prints, and a restarted coordinator computes the same Job name and
finds the Job it launched before.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml

from preproc._version import __version__
from preproc.errors import EXIT_BAD_SHARD, EXIT_CONFIG
from preproc.io.s3 import worker_env
from preproc.k8s.options import KubernetesOptions, parse_options

__all__ = [
    "CONTAINER_NAME", "LABEL_RUN", "LABEL_STAGE", "job_name", "configmap_name", "common_labels",
    "render_job", "render_spec_configmap",
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


def pod_failure_policy() -> dict[str, Any]:
    """The exit-code contract of :mod:`preproc.errors`, as Kubernetes rules (first match wins).

    * a disruption (preemption, node drain, eviction: ``DisruptionTarget``) is ignored: the
      index is run again and the attempt does not count against its retries;
    * exit 2 (config error) fails the whole Job: retrying cannot help;
    * exit 3 (bad shard) fails this index only; the other indices go on;
    * anything else (exit 1, OOM-killed 137, ...) counts against ``backoffLimitPerIndex``.
    """
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {
            "containerName": CONTAINER_NAME, "operator": "In", "values": [EXIT_CONFIG]}},
        {"action": "FailIndex", "onExitCodes": {
            "containerName": CONTAINER_NAME, "operator": "In", "values": [EXIT_BAD_SHARD]}},
    ]}


def render_job(plan: Any, stage: str, options: KubernetesOptions | dict[str, Any] | None = None,
               *, retries: int | None = None) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs every index of ``stage`` of ``plan``.

    ``plan`` needs ``run_id``, ``output``, ``spec`` and ``stage(name).fan_out`` (a
    :class:`preproc.engine.plan.Plan`). Options default to ``plan.spec.executor.options`` and retries
    to ``plan.spec.executor.retries``.
    """
    spec = plan.spec
    opts = parse_options(spec.executor.options if options is None else options)
    retries = spec.executor.retries if retries is None else retries
    completions = _fan_out(plan, stage)
    name = job_name(plan.run_id, stage, opts.job_name_prefix)
    output = opts.worker_output(plan.output)

    labels = {**opts.labels, **common_labels(plan.run_id, "worker"), LABEL_STAGE: label_value(stage)}
    annotations = {**opts.annotations, ANNOTATION_RUN: plan.run_id, ANNOTATION_STAGE: stage,
                   ANNOTATION_OUTPUT: output}

    threads = str(opts.resources.threads())
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The root filesystem is read-only: anything that wants a home or a cache gets /tmp.
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        # Size the Rust (tokenizers), Arrow and OpenMP pools from the pod's CPUs, not the
        # node's: 64 threads in a 2-CPU pod only thrash.
        {"name": "RAYON_NUM_THREADS", "value": threads},
        {"name": "RAYON_RS_NUM_CPUS", "value": threads},
        {"name": "OMP_NUM_THREADS", "value": threads},
        {"name": "PREPROC_RUN_ID", "value": plan.run_id},
    ]
    # The spec's storage settings (S3 endpoint, region, retries; never a secret), which a
    # worker needs before it can read plan.json.
    env += [{"name": k, "value": v} for k, v in sorted(worker_env(spec.storage).items())]
    env_from = opts.secret_refs()   # credentials only ever come from Secrets
    env += [{"name": k, "value": v} for k, v in sorted(opts.env.items())]

    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": opts.tmp_size}}]
    if opts.pvc is not None:
        mount = {"name": "data", "mountPath": opts.pvc.mount_path}
        if opts.pvc.sub_path:
            mount["subPath"] = opts.pvc.sub_path
        mounts.append(mount)
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": opts.pvc.claim_name}})

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": opts.image,
        "imagePullPolicy": opts.image_pull_policy,
        # Explicit: never rely on the image's entrypoint. The index comes from
        # JOB_COMPLETION_INDEX, which the Job controller sets in every pod.
        "command": ["preproc", "worker", output, "--stage", stage],
        "env": env,
        "resources": opts.resources.to_k8s(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": opts.run_as_user,
            "runAsGroup": opts.run_as_group,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        # A failed pod's status then carries the tail of its log, even after the log is gone.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from

    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": opts.run_as_user,
        "runAsGroup": opts.run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if opts.fs_group is not None:
        pod_security["fsGroup"] = opts.fs_group
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": opts.automount_service_account_token,
        # Workers need no Service environment variables (thousands in a busy namespace).
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": opts.termination_grace_period_s,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if opts.service_account:
        pod_spec["serviceAccountName"] = opts.service_account
    if opts.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in opts.image_pull_secrets]
    if opts.node_selector:
        pod_spec["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        pod_spec["tolerations"] = [t.to_k8s() for t in opts.tolerations]
    if opts.affinity:
        pod_spec["affinity"] = opts.affinity
    if opts.priority_class_name:
        pod_spec["priorityClassName"] = opts.priority_class_name

    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": completions,
        "parallelism": min(opts.parallelism, completions),
        "backoffLimitPerIndex": retries,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "activeDeadlineSeconds": opts.active_deadline_s,
        "ttlSecondsAfterFinished": opts.ttl_after_finished_s,
        "template": {
            "metadata": {"labels": labels, "annotations": dict(annotations)},
            "spec": pod_spec,
        },
    }
    if opts.max_failed_indexes is not None:
        job_spec["maxFailedIndexes"] = min(opts.max_failed_indexes, completions)
    metadata: dict[str, Any] = {"name": name, "labels": labels, "annotations": annotations}
    if opts.namespace:
        metadata["namespace"] = opts.namespace
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


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


def _fan_out(plan: Any, stage: str) -> int:
    for s in plan.stages:
        if s.name == stage:
            return int(s.fan_out)
    names = ", ".join(s.name for s in plan.stages)
    from preproc.errors import ConfigError

    raise ConfigError(f"stage {stage!r} is not in this run's plan; stages: {names}")
