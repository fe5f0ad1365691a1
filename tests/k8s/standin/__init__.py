"""A stand-in for the Kubernetes API server and Job controller, for tests without a cluster.

It speaks the real REST wire format for the subset the coordinator uses, so the real
``kubernetes`` client talks to it through an ordinary kubeconfig (http, 127.0.0.1, a free
port, a bearer token):

* ``batch/v1`` Jobs: create (defaulting, schema + semantic validation → 422, 409 on a
  taken name), get, list, watch (chunked JSON lines from a ``resourceVersion``; ``410
  Expired`` once the history was compacted; bookmarks), delete with ``propagationPolicy``
  (Background, Foreground, Orphan);
* core/v1 Pods: get, list (label selectors), ``/log`` (``tailLines``), the ``eviction``
  subresource (which disrupts the pod with a ``DisruptionTarget`` condition);
* ``Status`` errors 400/401/403/404/405/409/410/422; RBAC by token: each token maps to a
  list of Role rules (e.g. the Role of ``manifests/base``) and anything else is 403.

Each pod "runs" as a local subprocess with the environment Kubernetes injects
(``JOB_COMPLETION_INDEX`` via the completion-index label, ``HOSTNAME=<job>-<index>``, the
completion-index annotation and label, ``env``/``envFrom``/``fieldRef`` resolved), its
output captured as the pod log. ``preproc`` as ``command[0]`` runs ``python -m preproc``.
A controller thread per Job honours ``parallelism``, ``backoffLimit``/``backoffLimitPerIndex``,
``podFailurePolicy`` (exit codes, pod conditions; Ignore/FailJob/FailIndex/Count),
``maxFailedIndexes``, ``activeDeadlineSeconds`` and ``ttlSecondsAfterFinished``, and writes
``status`` as the real one does (compressed ``completedIndexes``/``failedIndexes``, the
interim ``FailureTarget``/``SuccessCriteriaMet`` conditions, then ``Complete``/``Failed``
once no pod is left running).

Test hooks, as pod environment the stand-in interprets (a real kubelet ignores them):
``STANDIN_FAIL_ONCE=1,3`` SIGKILLs the first pod of those indices right after it starts
(exit 137, a retryable failure); ``STANDIN_DISRUPT_ONCE=2`` preempts the first pod of
index 2 (``DisruptionTarget``); ``STANDIN_EXIT=4:3`` makes every pod of index 4 exit 3
without running. An image containing ``does-not-exist`` cannot be pulled. Python-side:
:meth:`StandIn.evict`, :meth:`StandIn.compact`, :meth:`StandIn.drop_watches`.

Scale mode (stages of thousands of indices, tests/executors/test_coordinator_scale.py and
scripts/bench_coord.py): ``StandIn(pod_runner=f)`` runs a pod's container as ``f(command,
env, index)`` on a small thread pool of this process instead of a subprocess (its return
value is the exit code; no log; the ``STANDIN_*`` hooks do not apply), e.g.
tests/k8s/inprocess.py's ``run_index`` per pod; ``sync_period_s`` makes each Job controller
reconcile at most that often (as kube-controller-manager batches Job syncs), so the Job's
status changes a few times a second rather than once per pod.

The package: :mod:`.server` (state, pods as processes), :mod:`.controller` (the Job
controller), :mod:`.validation` (what the API server checks on create), :mod:`.selectors`,
:mod:`.api` (routes, RBAC, watch) and :mod:`.common` (constants, errors, and its own
index-set helpers: it plays the API server, so it never reuses ``preproc.k8s.indexes``,
the code under test).
"""

from tests.k8s.standin.api import rbac_rules_from
from tests.k8s.standin.common import ADMIN_TOKEN, ApiError, status_error
from tests.k8s.standin.server import StandIn

__all__ = ["StandIn", "ADMIN_TOKEN", "ApiError", "rbac_rules_from", "status_error"]
