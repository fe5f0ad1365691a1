"""The Kubernetes executor's options: ``executor.options`` of a spec, validated.

A spec that runs on Kubernetes says where and how its pods run::

    executor:
      kind: k8s
      retries: 2                     # per index: backoffLimitPerIndex
      options:
        namespace: preproc
        image: registry.example.com/preproc:0.1.0
        service_account: preproc-worker
        parallelism: 16
        resources: {cpu: 2, memory: 4Gi}
        pvc: {claim_name: preproc-data, mount_path: /data}

Every key is optional; :data:`KubernetesOptions` documents the defaults. A wrong key or value
is a :class:`~preproc.errors.ConfigError` that names ``executor.options.<key>``.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from preproc._version import __version__
from preproc.errors import ConfigError

__all__ = ["KubernetesOptions", "Resources", "PVCVolume", "S3Access", "Toleration", "parse_options"]

# Kubernetes resource.Quantity, the forms people write: 500m, 2, 1.5, 4Gi, 512M, 1e3.
_QUANTITY_RE = re.compile(r"^(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_MULTIPLIERS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: Any) -> str:
    """Normalise a resource quantity (``2`` → ``"2"``, ``"4Gi"`` stays) or raise ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("expected a quantity such as 2, 500m or 4Gi")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not _QUANTITY_RE.match(text):
        raise ValueError(f"expected a Kubernetes quantity such as 2, 500m or 4Gi, got {value!r}")
    return text


def quantity_value(text: str) -> float:
    """The number a quantity stands for (``"500m"`` → 0.5, ``"1Gi"`` → 1073741824)."""
    m = _QUANTITY_RE.match(text)
    assert m, text
    suffix = m.group(3) or ""
    if suffix[:1] in ("e", "E"):
        return float(m.group(1) + suffix)
    return float(m.group(1)) * _MULTIPLIERS[suffix]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Resources(_Model):
    """Requests (and limits) of one worker pod.

    Memory limit = memory request: a worker that grows past its request is OOM-killed (exit
    137, retried) instead of being evicted at random under node pressure. CPU has no limit
    unless ``cpu_limit`` is set (a limit throttles the Rust tokenizer threads for nothing);
    the worker's thread pools are sized from ``cpu`` all the same. Ephemeral storage (the
    container's writable layer and logs; ``/tmp`` is an emptyDir bounded by ``tmp_size``) is
    requested and limited too, so a runaway writer is evicted instead of filling the node.
    """

    cpu: str = "1"
    memory: str = "2Gi"
    ephemeral_storage: str = "1Gi"
    cpu_limit: str | None = None

    @field_validator("cpu", "memory", "ephemeral_storage", "cpu_limit", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        return None if v is None else quantity(v)   # a null ephemeral_storage is refused

    def threads(self) -> int:
        """Threads one worker should use: the CPU limit, else the request, rounded up, >= 1."""
        return max(1, math.ceil(quantity_value(self.cpu_limit or self.cpu)))

    def to_k8s(self) -> dict[str, Any]:
        requests = {"cpu": self.cpu, "memory": self.memory, "ephemeral-storage": self.ephemeral_storage}
        limits = {"memory": self.memory, "ephemeral-storage": self.ephemeral_storage}
        if self.cpu_limit:
            limits["cpu"] = self.cpu_limit
        return {"requests": requests, "limits": limits}


class PVCVolume(_Model):
    """The run's output (and usually its inputs) on a ReadWriteMany PersistentVolumeClaim.

    Pods mount ``claim_name`` at ``mount_path``. The coordinator must see the same files: it
    runs in-cluster with the same mount (the base's coordinator Job), or on a machine where
    the volume is mounted at ``local_path`` (NFS, a kind host path); paths under
    ``local_path`` are rewritten to ``mount_path`` for the pods.
    """

    claim_name: str = "preproc-data"
    mount_path: str = "/data"
    local_path: str | None = None
    sub_path: str | None = None

    @field_validator("claim_name")
    @classmethod
    def _claim(cls, v: str) -> str:
        if len(v) > 253 or not _DNS_SUBDOMAIN_RE.match(v):
            raise ValueError(f"must be a Kubernetes object name (lowercase DNS subdomain), got {v!r}")
        return v

    @field_validator("mount_path", "local_path")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("/"):
            raise ValueError(f"must be an absolute path, got {v!r}")
        return posixpath.normpath(v)


class S3Access(_Model):
    """Where the pods' S3 credentials come from (endpoint, region and the rest of the S3
    settings are the spec's ``storage.s3``, the same for every executor).

    ``secret`` names a Secret whose keys become the pod's environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_SESSION_TOKEN``). With no secret the pods use
    workload identity (EKS IRSA / Pod Identity, GKE Workload Identity): the worker service
    account carries the role and no key is stored anywhere.
    """

    secret: str | None = None

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _DNS_SUBDOMAIN_RE.match(v)):
            raise ValueError(f"must be a Secret name (lowercase DNS subdomain), got {v!r}")
        return v


class Toleration(_Model):
    """A pod toleration; keys as in Kubernetes (``tolerationSeconds``) or snake_case."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists")
        return self

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {"operator": self.operator}
        for name, val in (("key", self.key), ("value", self.value), ("effect", self.effect),
                          ("tolerationSeconds", self.toleration_seconds)):
            if val is not None:
                out[name] = val
        return out


class KubernetesOptions(_Model):
    """``executor.options`` for ``kind: k8s``. Every field has a default that runs on kind."""

    # Where: the namespace of the Jobs (default: the kubeconfig context's, in-cluster the
    # pod's own, else "default").
    namespace: str | None = None
    image: str = f"preproc:{__version__}"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = []
    # Workers' service account (none: the namespace's "default"); its token is not mounted
    # unless asked (workers never talk to the API server).
    service_account: str | None = None
    automount_service_account_token: bool = False
    # How many pods of one stage run at once (capped at the stage's index count).
    parallelism: int = Field(default=16, ge=1)
    resources: Resources = Resources()
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    # Passed through as Kubernetes writes them (camelCase), not checked here.
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    # Output volume: a PVC, or S3 (credentials from a Secret or workload identity).
    pvc: PVCVolume | None = None
    s3: S3Access | None = None
    # Scratch space for /tmp (the root filesystem is read-only).
    tmp_size: str = "1Gi"
    # Extra environment for the workers (a test harness, proxies, HF_HOME, ...); never a
    # credential (refused: the spec is copied everywhere).
    env: dict[str, str] = {}
    # Secrets whose keys become the workers' environment (``envFrom: secretRef``): the safe
    # way to give pods credentials (HF_TOKEN, a database password, S3 keys).
    env_from: list[str] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    run_as_user: int = Field(default=1000, ge=1)
    run_as_group: int = Field(default=1000, ge=1)
    fs_group: int | None = Field(default=1000, ge=1)
    # Per stage Job: activeDeadlineSeconds, ttlSecondsAfterFinished, maxFailedIndexes
    # (none: every index runs even if others failed, so a rerun redoes only the failed).
    active_deadline_s: int = Field(default=24 * 3600, ge=1)
    ttl_after_finished_s: int = Field(default=24 * 3600, ge=0)
    max_failed_indexes: int | None = Field(default=None, ge=0)
    termination_grace_period_s: int = Field(default=30, ge=0)
    job_name_prefix: str = "preproc"
    # Coordinator behaviour.
    log_tail_lines: int = Field(default=20, ge=0)
    # A pod that cannot start (image pull error, missing Secret) this long fails the stage.
    pending_timeout_s: float = Field(default=300.0, gt=0)
    # Server-side timeout of one watch request; the coordinator re-watches from the last
    # resourceVersion (and re-lists on 410 Gone).
    watch_timeout_s: int = Field(default=60, ge=1)
    # How often the coordinator looks at the pods of a running Job (stuck pods, progress).
    pod_check_interval_s: float = Field(default=30.0, gt=0)
    # Ctrl-C on the coordinator deletes the running Job (propagationPolicy Background);
    # false leaves it running for a later `preproc run` to adopt.
    delete_on_interrupt: bool = True

    @field_validator("tmp_size", mode="before")
    @classmethod
    def _tmp(cls, v: Any) -> Any:
        return quantity(v)

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 63 or not _DNS_LABEL_RE.match(v)):
            raise ValueError(f"must be a lowercase DNS label (a-z, 0-9, '-'; at most 63), got {v!r}")
        return v

    @field_validator("service_account", "priority_class_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _DNS_SUBDOMAIN_RE.match(v)):
            raise ValueError(f"must be a Kubernetes object name, got {v!r}")
        return v

    @field_validator("job_name_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if len(v) > 20 or not _DNS_LABEL_RE.match(v):
            raise ValueError(f"must be a lowercase DNS label of at most 20 characters, got {v!r}")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME_RE.match(name):
                raise ValueError(f"not a valid environment variable name: {name!r}")
        return {k: str(x) for k, x in v.items()}

    @field_validator("env_from")
    @classmethod
    def _env_from(cls, v: list[str]) -> list[str]:
        for name in v:
            if len(name) > 253 or not _DNS_SUBDOMAIN_RE.match(name):
                raise ValueError(f"must be Secret names (lowercase DNS subdomains), got {name!r}")
        return v

    def secret_refs(self) -> list[dict[str, Any]]:
        """``envFrom`` of every container: ``s3.secret`` then ``env_from``, each once."""
        names = ([self.s3.secret] if self.s3 is not None and self.s3.secret else []) + list(self.env_from)
        return [{"secretRef": {"name": n}} for n in dict.fromkeys(names)]

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v or v != v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"must be an image reference such as registry/preproc:0.1.0, got {v!r}")
        return v

    def worker_output(self, output: str, *, key: str = "executor.options") -> str:
        """The output URI as the pods see it; raises :class:`ConfigError` if they cannot.

        Remote URIs (``s3://``, ``gs://``) are the same everywhere. A local path must lie on
        the PVC: under ``pvc.local_path`` (rewritten to ``pvc.mount_path``) or under
        ``pvc.mount_path`` itself. ``key`` is where these options live in the spec
        (``executor.options.kuberay`` for a RayJob), so the error names the key to set.
        """
        if "://" in output and not output.startswith("file://"):
            return output
        path = output[len("file://"):] if output.startswith("file://") else output
        if self.pvc is None:
            raise ConfigError(
                f"{key}.pvc: the output {output!r} is a local path, which pods cannot "
                f"see; put it on a ReadWriteMany PVC ({key}.pvc: {{claim_name, "
                "mount_path}) or use an s3:// output")
        if not path.startswith("/"):
            raise ConfigError(f"output: {output!r} must be an absolute path under the PVC mount "
                              f"{self.pvc.mount_path} for the k8s executor")
        path = posixpath.normpath(path)
        for base in filter(None, (self.pvc.local_path, self.pvc.mount_path)):
            if path == base or path.startswith(base.rstrip("/") + "/"):
                rel = posixpath.relpath(path, base)
                return self.pvc.mount_path if rel == "." else posixpath.join(self.pvc.mount_path, rel)
        where = self.pvc.local_path or self.pvc.mount_path
        raise ConfigError(f"output: {output!r} is not under the PVC path {where}; pods would not "
                          f"see it (set {key}.pvc.local_path to where the volume is "
                          "mounted here)")


def parse_options(options: dict[str, Any] | KubernetesOptions | None) -> KubernetesOptions:
    """Validate ``executor.options``; a problem is a one-line :class:`ConfigError`."""
    if isinstance(options, KubernetesOptions):
        return options
    try:
        return KubernetesOptions.model_validate(options or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent: Any = KubernetesOptions
            for part in err["loc"][:-1]:
                if isinstance(part, int):
                    continue
                ann = parent.model_fields[part].annotation
                parent = next((a for a in getattr(ann, "__args__", (ann,))
                               if isinstance(a, type) and issubclass(a, BaseModel)), None)
                if parent is None:
                    break
            allowed = ", ".join(parent.model_fields) if parent is not None else ""
            msg = "unknown key" + (f"; allowed: {allowed}" if allowed else "")
        elif "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {err['input']!r:.80})"
        more = f" (+{len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise ConfigError(f"executor.options.{loc}: {msg}{more}") from None
