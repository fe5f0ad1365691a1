"""KubeRay: a ``ray.io/v1`` RayJob (or a RayCluster) that runs the pipeline on Ray.

The RayJob's entrypoint is ``preproc run "$PREPROC_SPEC" --executor ray --ray-address
auto``: the spec travels inside the RayJob itself (``runtimeEnvYAML`` → an environment
variable of the entrypoint), so the same object works with a cluster it creates
(``rayClusterSpec``, sized from the spec, shut down after the job with a TTL) and with an
existing cluster (``clusterSelector``), with no ConfigMap to mount. Head, workers and the
submitter pod meet the restricted Pod Security Standard, like the Jobs of the k8s executor.

Options, in the spec under ``executor.options.kuberay`` (plus every pod setting of the
k8s executor: namespace, image, pvc, s3, node_selector, tolerations, ...)::

    executor:
      kind: ray
      options:
        num_cpus: 1                       # per task (the Ray executor's own options)
        kuberay:
          image: registry/preproc:0.1.0
          head: {cpu: "2", memory: 4Gi}
          workers: {replicas: 4, min_replicas: 1, max_replicas: 8, cpu: "4", memory: 8Gi}
          pvc: {claim_name: preproc-data, mount_path: /data}
          ttl_after_finished_s: 3600
          cluster_selector: null          # {ray.io/cluster: my-cluster}: use an existing one
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml
from pydantic import Field, ValidationError

from preproc.errors import ConfigError
from preproc.io.s3 import worker_env
from preproc.k8s.options import KubernetesOptions, Resources
from preproc.k8s.ray_options import ray_options
from preproc.k8s.render import common_labels, job_name

__all__ = ["KubeRayOptions", "render_rayjob", "render_raycluster"]

RAY_VERSION = "2.60.0"


class WorkerGroup(Resources):
    replicas: int = Field(default=2, ge=0)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=8, ge=1)


class KubeRayOptions(KubernetesOptions):
    head: Resources = Resources(cpu="1", memory="4Gi")
    workers: WorkerGroup = WorkerGroup()
    # The RayJob's own lifetime: delete the cluster when the job ends, the RayJob after this.
    ttl_after_finished_s: int = Field(default=3600, ge=1)
    cluster_selector: dict[str, str] | None = None
    ray_version: str = RAY_VERSION
    submitter: Resources = Resources(cpu="500m", memory="512Mi")
    shm_size: str = "1Gi"


def parse_kuberay(spec: Any) -> KubeRayOptions:
    raw = dict(spec.executor.options.get("kuberay") or {})
    try:
        return KubeRayOptions.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"] if err["type"] != "extra_forbidden" else \
            f"unknown key; allowed: {', '.join(KubeRayOptions.model_fields)}"
        raise ConfigError(f"executor.options.kuberay.{loc}: {msg}") from None


def _security(o: KubeRayOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = {"runAsNonRoot": True, "runAsUser": o.run_as_user, "runAsGroup": o.run_as_group,
           "seccompProfile": {"type": "RuntimeDefault"}}
    if o.fs_group is not None:
        pod["fsGroup"] = o.fs_group
    container = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                 "runAsUser": o.run_as_user, "runAsGroup": o.run_as_group, "capabilities": {"drop": ["ALL"]},
                 "seccompProfile": {"type": "RuntimeDefault"}}
    return pod, container


def _pod(o: KubeRayOptions, spec: Any, name: str, res: Resources, *, run_id: str,
         extra_env: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None,
         shm: bool = False) -> dict[str, Any]:
    pod_sc, c_sc = _security(o)
    env = {"HOME": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "RAYON_NUM_THREADS": str(res.threads()),
           **worker_env(spec.storage), **o.env, **(extra_env or {})}
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": o.tmp_size}}]
    if shm:
        # Ray's object store lives in /dev/shm; the container default (64 MiB) is too small.
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": o.shm_size}})
    if o.pvc is not None:
        mounts.append({"name": "data", "mountPath": o.pvc.mount_path})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": o.pvc.claim_name}})
    container: dict[str, Any] = {
        "name": name, "image": o.image, "imagePullPolicy": o.image_pull_policy,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": res.to_k8s(), "securityContext": c_sc, "volumeMounts": mounts,
    }
    if ports:
        container["ports"] = ports
    if o.secret_refs():   # credentials only ever come from Secrets
        container["envFrom"] = o.secret_refs()
    pod: dict[str, Any] = {"securityContext": pod_sc, "containers": [container], "volumes": volumes,
                           "automountServiceAccountToken": False, "enableServiceLinks": False}
    if o.service_account:
        pod["serviceAccountName"] = o.service_account
    if o.node_selector:
        pod["nodeSelector"] = dict(o.node_selector)
    if o.tolerations:
        pod["tolerations"] = [t.to_k8s() for t in o.tolerations]
    if o.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in o.image_pull_secrets]
    # The labels the NetworkPolicies select (app.kubernetes.io/name: preproc; the component
    # ray-head / ray-worker / ray-submitter decides who may reach the dashboard and client).
    meta: dict[str, Any] = {"labels": {**o.labels, **common_labels(run_id, name.replace("ray-job-", "ray-"))}}
    if o.annotations:
        meta["annotations"] = dict(o.annotations)
    return {"metadata": meta, "spec": pod}


def _cluster_spec(o: KubeRayOptions, spec: Any, run_id: str) -> dict[str, Any]:
    head = _pod(o, spec, "ray-head", o.head, run_id=run_id, ports=[
        {"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"}], shm=True)
    worker = _pod(o, spec, "ray-worker", o.workers, run_id=run_id, shm=True)
    w = o.workers
    return {
        "rayVersion": o.ray_version,
        "headGroupSpec": {
            # Tasks run on the workers; the head keeps its CPUs for the driver and the GCS.
            # The dashboard (job API) listens on the pod's interfaces because the submitter
            # reaches it through the head Service; the NetworkPolicy admits only the
            # submitter and the cluster's own pods (manifests/overlays/kuberay).
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": head,
        },
        "workerGroupSpecs": [{
            "groupName": "workers",
            "replicas": min(max(w.replicas, w.min_replicas), w.max_replicas),
            "minReplicas": w.min_replicas,
            "maxReplicas": w.max_replicas,
            "rayStartParams": {},
            "template": worker,
        }],
    }


def _meta(o: KubeRayOptions, name: str, run_id: str) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "labels": {**o.labels, **common_labels(run_id, "rayjob")}}
    if o.namespace:
        m["namespace"] = o.namespace
    if o.annotations:
        m["annotations"] = dict(o.annotations)
    return m


def render_rayjob(spec: Any, run_id: str | None = None) -> list[dict[str, Any]]:
    """The RayJob that runs ``spec`` on KubeRay (as a one-element list, like other renderers)."""
    if spec.executor.kind != "ray":
        spec = spec.model_copy(update={"executor": spec.executor.model_copy(update={"kind": "ray"})})
    o = parse_kuberay(spec)
    ray_options(spec)   # the Ray executor's own options must be valid where the job runs
    if not spec.output:
        raise ConfigError("output: no output location; set `output:` in the spec or pass --output")
    o.worker_output(spec.output, key="executor.options.kuberay")  # pods must see the output (a PVC path or s3://)
    run_id = run_id or _spec_id(spec)
    # Only what differs from the defaults: the object stays small and stable across versions.
    text = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False, allow_unicode=True)
    runtime_env = yaml.safe_dump({"env_vars": {"PREPROC_SPEC": text, **worker_env(spec.storage)}},
                                 sort_keys=True, allow_unicode=True)
    submitter = _pod(o, spec, "ray-job-submitter", o.submitter, run_id=run_id)
    submitter["spec"]["restartPolicy"] = "Never"
    body: dict[str, Any] = {
        "entrypoint": 'preproc run "$PREPROC_SPEC" --executor ray --ray-address auto',
        "runtimeEnvYAML": runtime_env,
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": submitter,
        "activeDeadlineSeconds": o.active_deadline_s,
        "backoffLimit": 0,
    }
    if o.cluster_selector:
        body["clusterSelector"] = dict(o.cluster_selector)
    else:
        body["rayClusterSpec"] = _cluster_spec(o, spec, run_id)
        body["shutdownAfterJobFinishes"] = True
        body["ttlSecondsAfterFinished"] = o.ttl_after_finished_s
    name = job_name(run_id, "ray", o.job_name_prefix)
    return [{"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(o, name, run_id), "spec": body}]


def render_raycluster(spec: Any, name: str = "preproc") -> dict[str, Any]:
    """A long-lived RayCluster sized like the RayJob's, for ``clusterSelector`` jobs or
    ``preproc run --executor ray --ray-address ray://<name>-head-svc:10001``."""
    o = parse_kuberay(spec)
    run_id = _spec_id(spec)
    m = _meta(o, name, run_id)
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": m, "spec": _cluster_spec(o, spec, run_id)}


def _spec_id(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:12]
