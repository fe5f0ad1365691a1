"""Validation and defaulting of Jobs, as the API server does on create (422 on what a real
one refuses)."""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

from tests.k8s.standin.common import MAX_INT32, ApiError, now

# -- validation and defaulting, as the API server does for Jobs ---------------------------------
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def validate_job(job: dict[str, Any], kube_version: str | None) -> None:
    """422 Invalid for what the real API server rejects (the subset we can hit)."""
    causes: list[tuple[str, str]] = []
    if kube_version:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(job, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            causes.append((path or "<root>", e.message[:300]))
    meta = job.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > 63 or not _DNS1123_SUBDOMAIN.match(name):
        causes.append(("metadata.name", f'Invalid value: "{name}": must be no more than 63 characters and a lowercase RFC 1123 subdomain'))
    for where, labels in (("metadata.labels", meta.get("labels") or {}),
                          ("spec.template.metadata.labels", (((job.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})):
        for k, v in labels.items():
            if len(str(v)) > 63 or not _LABEL_VALUE.match(str(v)):
                causes.append((f"{where}", f'Invalid value: "{v}": a valid label must be an empty string or consist of alphanumeric characters, \'-\', \'_\' or \'.\' (at most 63)'))
            if len(k.split("/")[-1]) > 63 or not _LABEL_NAME.match(k.split("/")[-1]):
                causes.append((f"{where}", f'Invalid value: "{k}": name part must consist of alphanumeric characters'))
    spec = job.get("spec") or {}
    tpl = spec.get("template") or {}
    pod = tpl.get("spec") or {}
    indexed = spec.get("completionMode") == "Indexed"
    if indexed and spec.get("completions") is None:
        causes.append(("spec.completions", "Required value: when completion mode is Indexed"))
    if spec.get("backoffLimitPerIndex") is not None:
        if not indexed:
            causes.append(("spec.backoffLimitPerIndex", "Forbidden: requires indexed completion mode"))
        if (spec.get("completions") or 0) > 100000:
            causes.append(("spec.completions", "Invalid value: must be less than or equal to 100000 when backoffLimitPerIndex is specified"))
    if spec.get("maxFailedIndexes") is not None:
        if spec.get("backoffLimitPerIndex") is None:
            causes.append(("spec.maxFailedIndexes", "Required value: when maxFailedIndexes is specified"))
        elif spec["maxFailedIndexes"] > (spec.get("completions") or 0):
            causes.append(("spec.maxFailedIndexes", "Invalid value: must be less than or equal to completions"))
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(("spec.template.spec.restartPolicy", 'Unsupported value: supported values: "OnFailure", "Never"'))
    pfp = spec.get("podFailurePolicy")
    if pfp:
        if pod.get("restartPolicy") != "Never":
            causes.append(("spec.template.spec.restartPolicy", "Invalid value: only \"Never\" is supported when podFailurePolicy is specified"))
        if spec.get("podReplacementPolicy") not in (None, "Failed"):
            causes.append(("spec.podReplacementPolicy", "Not supported: must be Failed when podFailurePolicy is specified"))
        names = {c.get("name") for c in pod.get("containers") or []} | {c.get("name") for c in pod.get("initContainers") or []}
        for n, rule in enumerate(pfp.get("rules") or []):
            at = f"spec.podFailurePolicy.rules[{n}]"
            if rule.get("action") == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
                causes.append((f"{at}.action", "Invalid value: requires the backoffLimitPerIndex to be set"))
            oec = rule.get("onExitCodes")
            if oec and rule.get("onPodConditions"):
                causes.append((at, "Invalid value: specifying both OnExitCodes and OnPodConditions is not supported"))
            if oec:
                vals = oec.get("values") or []
                if vals != sorted(set(vals)):
                    causes.append((f"{at}.onExitCodes.values", "Invalid value: must be ordered"))
                if oec.get("operator") == "In" and 0 in vals:
                    causes.append((f"{at}.onExitCodes.values", "Invalid value: must not be 0 for the In operator"))
                if oec.get("containerName") is not None and oec["containerName"] not in names:
                    causes.append((f"{at}.onExitCodes.containerName", "Invalid value: must be one of the container or initContainer names in the pod template"))
    for c in pod.get("containers") or []:
        if not c.get("image"):
            causes.append(("spec.template.spec.containers[0].image", "Required value"))
    if causes:
        msg = f'Job.batch "{name}" is invalid: ' + ", ".join(f"{f}: {m}" for f, m in causes)
        raise ApiError(422, "Invalid", msg, {"name": name, "group": "batch", "kind": "Job",
                                             "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                                                        for f, m in causes]})


def default_job(body: dict[str, Any], ns: str) -> dict[str, Any]:
    job = copy.deepcopy(body)
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    meta = job["metadata"]
    uid = str(uuid.uuid4())
    meta.update(namespace=ns, uid=uid, creationTimestamp=now(), generation=1)
    spec = job["spec"]
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", spec["parallelism"] if spec.get("completionMode") == "Indexed" else 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("backoffLimit", MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6)
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        if "onExitCodes" in rule:
            rule.setdefault("onPodConditions", [])  # the API server's default
    gen = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": meta["name"],
           "controller-uid": uid, "job-name": meta["name"]}
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    tmeta = spec["template"].setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), **gen}
    meta["labels"] = {**gen, **(meta.get("labels") or {})}
    pod = spec["template"]["spec"]
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("schedulerName", "default-scheduler")
    pod.setdefault("terminationGracePeriodSeconds", 30)
    for c in pod.get("containers") or []:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "Always" if c["image"].endswith(":latest") or ":" not in c["image"] else "IfNotPresent")
    job["status"] = {}
    return job
