"""The Job template: the ``batch/v1`` Indexed Job that runs every index of one stage.

:func:`render_job` is what the Kubernetes executor creates and what ``preproc manifests``
prints (a pure function of plan, stage and options); :func:`pod_failure_policy` maps the
exit-code contract of :mod:`preproc.errors` onto Kubernetes' pod failure policy. Names and
labels come from :mod:`preproc.k8s.render`.
"""

from __future__ import annotations

from typing import Any

from preproc.errors import EXIT_BAD_SHARD, EXIT_CONFIG, ConfigError
from preproc.io.s3 import worker_env
from preproc.k8s.options import KubernetesOptions, parse_options
from preproc.k8s.render import (
    ANNOTATION_OUTPUT,
    ANNOTATION_RUN,
    ANNOTATION_STAGE,
    CONTAINER_NAME,
    LABEL_STAGE,
    common_labels,
    job_name,
    label_value,
)

__all__ = ["pod_failure_policy", "render_job"]


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


def _fan_out(plan: Any, stage: str) -> int:
    for s in plan.stages:
        if s.name == stage:
            return int(s.fan_out)
    names = ", ".join(s.name for s in plan.stages)
    raise ConfigError(f"stage {stage!r} is not in this run's plan; stages: {names}")
