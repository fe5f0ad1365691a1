"""Executors: local processes (default), Kubernetes Indexed Jobs, Ray tasks.

The Kubernetes and Ray executors are imported only when a spec asks for them: their clients
(``kubernetes``, ``ray``) are optional dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from preproc import faults
from preproc.errors import ConfigError
from preproc.executors.base import Executor
from preproc.executors.local import LocalExecutor

if TYPE_CHECKING:
    from preproc.spec.model import Spec

__all__ = ["Executor", "LocalExecutor", "get_executor"]


def get_executor(spec: Spec, **opts: Any) -> Executor:
    """The executor the spec names (``executor.kind``), built from its options."""
    kind = spec.executor.kind
    faults.share_state()   # `times=` failpoint rules count across the workers this starts
    if kind == "local":
        return LocalExecutor(workers=spec.executor.workers, retries=spec.executor.retries,
                             threads=spec.executor.threads_per_worker, progress=opts.get("progress", True))
    if kind == "k8s":
        try:
            from preproc.executors.k8s import KubernetesExecutor
        except ImportError as e:
            raise ConfigError(f"executor.kind: k8s needs the kubernetes client: pip install 'preproc[k8s]' ({e})") from None
        return KubernetesExecutor(spec, context=opts.get("context"), kubeconfig=opts.get("kubeconfig"),
                                  progress=opts.get("progress", True))
    if kind == "ray":
        try:
            from preproc.executors.ray import RayExecutor
        except ImportError as e:
            raise ConfigError(f"executor.kind: ray needs Ray: pip install 'preproc[ray]' ({e})") from None
        return RayExecutor(spec, address=opts.get("address"), progress=opts.get("progress", True))
    raise ConfigError(f"executor.kind: unknown executor {kind!r}; known: local, k8s, ray")
