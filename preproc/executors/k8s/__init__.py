"""Kubernetes executor: one Indexed Job per stage, watched to the end with the real client.

For each stage the coordinator creates the Job of :func:`preproc.k8s.job.render_job`
(``completionMode: Indexed``, ``completions`` = the stage's index count; each pod runs
``preproc worker OUTPUT --stage S`` and takes its index from ``JOB_COMPLETION_INDEX``), then
watches it:

* **Deterministic names.** The Job name comes from the run id and the stage. A coordinator
  that restarts gets ``409 AlreadyExists`` on create and adopts the running Job instead of
  launching a second one. A finished Job left from an earlier attempt (failed, or complete
  while markers are missing) is deleted (``propagationPolicy: Background``) and created anew.
* **Watch, not poll.** ``list?watch=true&fieldSelector=metadata.name=<job>`` from the last
  ``resourceVersion``; a watch that times out is resumed, one that expired (``410 Gone``)
  re-reads the Job and resumes from its version, a dropped connection reconnects.
* **Progress** from ``status.completedIndexes`` (each newly completed index's marker gives
  its document count). Pods that cannot start (image pull errors, a missing Secret) for
  ``pending_timeout_s`` fail the stage with a config error instead of hanging.
* **Failures** come from ``status.failedIndexes`` and the Failed condition; each failed
  index is named with its exit code and the last line of its pod's log, and the tail of each
  failed pod's log is printed. Success is checked against the markers: a pod that exited 0
  without a marker (an output the pods cannot share) is a failure, not a success.

Laptop (kubeconfig, ``--context``) or in-cluster (the pod's service account), whichever
applies; the coordinator needs only: create/get/list/watch/delete Jobs, get/list/watch Pods,
get Pods/log in its namespace (``manifests/base/rbac.yaml``).

The package: :mod:`.executor` creates, adopts and deletes Jobs (:class:`KubernetesExecutor`);
:mod:`.watch` follows one stage's Job to its verdict (:class:`~.watch.StageRun`);
:mod:`.client` loads the API client and holds the helpers that read API objects (conditions,
pod indices, exit codes) and map API errors. The ``kubernetes`` client is an optional
dependency: this package imports it at module level, and :func:`preproc.executors.get_executor`
imports the package only for ``executor.kind: k8s`` (turning an ImportError into a ConfigError).
"""

from preproc.executors.k8s.client import load_api_client
from preproc.executors.k8s.executor import KubernetesExecutor

__all__ = ["KubernetesExecutor", "load_api_client"]
