"""The Kubernetes API client and what reads its objects: loading the client (kubeconfig or
in-cluster), one-line API errors, and helpers over raw Job and Pod JSON (conditions, the
completion index of a pod, a failed pod's exit code, the last line of a log).

Objects are read as raw JSON (``_preload_content=False``): what the server sent, whatever
the client's models know.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from preproc.errors import ConfigError
from preproc.k8s.render import CONTAINER_NAME

__all__ = [
    "load_api_client", "open_api_client", "body_json", "condition", "terminal", "pod_index", "attempt_order",
    "terminated", "failed_exit", "last_line", "api_error",
    "STUCK_REASONS", "TRANSIENT_STATUS", "INDEX_LABEL", "UID_LABEL",
]

SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Container waiting reasons that do not fix themselves: the image or the pod's config is wrong.
STUCK_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                  "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
UID_LABEL = "batch.kubernetes.io/controller-uid"


def load_api_client(*, context: str | None = None, kubeconfig: str | None = None) -> tuple[Any, str | None]:
    """``(ApiClient, namespace or None)``: from a kubeconfig, or in-cluster from the pod's
    service account. Nothing global is touched (no ``kubernetes.config.load_*`` defaults),
    so a host program's own client stays as it was.

    A kubeconfig is used when ``kubeconfig`` or ``context`` is given, or when not running in
    a pod; otherwise the in-cluster service account.
    """
    api, namespace, _ = open_api_client(context=context, kubeconfig=kubeconfig)
    return api, namespace


def open_api_client(*, context: str | None, kubeconfig: str | None) -> tuple[Any, str | None, bool]:
    """:func:`load_api_client`, plus whether the client is the in-cluster one."""
    cfg = client.Configuration()
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (kubeconfig or context)
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
            namespace = None
            if os.path.exists(SA_NAMESPACE):
                with open(SA_NAMESPACE) as f:
                    namespace = f.read().strip() or None
            return client.ApiClient(cfg), namespace, True
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg,
                                persist_config=False)
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, FileNotFoundError, OSError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ConfigError(f"no usable Kubernetes configuration ({where}"
                          f"{', context ' + context if context else ''}): {e}") from None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return client.ApiClient(cfg), namespace, False


def body_json(resp: Any) -> dict[str, Any]:
    data = resp.data if hasattr(resp, "data") else resp.read()
    return json.loads(data)


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def terminal(job: dict[str, Any]) -> str | None:
    for t in ("Complete", "Failed"):
        if condition(job, t):
            return t
    return None


def pod_index(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    raw = (meta.get("labels") or {}).get(INDEX_LABEL) or (meta.get("annotations") or {}).get(INDEX_LABEL)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def attempt_order(pod: dict[str, Any]) -> tuple[str, int]:
    # Creation times have second resolution; the controller's per-index failure count breaks ties.
    meta = pod.get("metadata") or {}
    count = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-index-failure-count", "0")
    return meta.get("creationTimestamp") or "", int(count) if count.isdigit() else 0


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER_NAME:
            return (cs.get("state") or {}).get("terminated")
    return None


def failed_exit(pod: dict[str, Any]) -> int | None:
    """The worker's exit code if this pod failed (None: running, succeeded or disrupted)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    if any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in status.get("conditions") or []):
        return None
    term = terminated(pod)
    return int(term.get("exitCode", -1)) if term else -1


def last_line(text: str | None) -> str | None:
    for line in reversed((text or "").splitlines()):
        if line.strip():
            return line.strip()[:500]
    return None


def api_error(e: Any, doing: str) -> Exception:
    """An ApiException as one line; config-type errors (403, 404 namespace, 422) as ConfigError."""
    message = e.reason or ""
    try:
        body = json.loads(e.body or "{}")
        message = body.get("message") or message
    except (ValueError, TypeError):
        pass
    if e.status == 403:
        return ConfigError(f"{doing}: forbidden ({message}); the coordinator's account needs the Role in "
                           "manifests/base/rbac.yaml")
    if e.status in (400, 404, 422):
        return ConfigError(f"{doing}: the API server said {e.status}: {message}")
    if e.status == 401:
        return ConfigError(f"{doing}: unauthorized ({message}); check the kubeconfig credentials")
    return RuntimeError(f"{doing}: the API server said {e.status}: {message}")
