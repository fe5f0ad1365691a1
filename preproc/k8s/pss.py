"""A checker for the *restricted* Pod Security Standard, and for this project's own pod rules.

The rules are those the Pod Security admission controller enforces at ``restricted`` (which
includes ``baseline``), latest version, read from
https://kubernetes.io/docs/concepts/security/pod-security-standards/. Having them here lets
the tests (and ``preproc manifests`` users) check every rendered object without a cluster.

>>> check_restricted({"kind": "Pod", "spec": {"containers": [{"name": "c"}]}})[:1]
['Pod/?: container c: allowPrivilegeEscalation must be false']
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["pod_specs", "check_restricted", "check_worker_policy"]

_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                    "persistentVolumeClaim", "projected", "secret"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                 "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                 "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                 "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_POD_KINDS = {"Pod"}
_TEMPLATE_KINDS = {"Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"}


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``(pod metadata, pod spec)`` of a Pod, a workload's template or a CronJob's job template."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in _POD_KINDS:
        yield obj.get("metadata") or {}, spec
    elif kind in _TEMPLATE_KINDS:
        tpl = spec.get("template") or {}
        yield tpl.get("metadata") or {}, tpl.get("spec") or {}
    elif kind == "CronJob":
        tpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        yield tpl.get("metadata") or {}, tpl.get("spec") or {}
    elif kind == "RayJob":  # KubeRay: the head and worker group templates
        cluster = spec.get("rayClusterSpec") or {}
        groups = [cluster.get("headGroupSpec") or {}] + list(cluster.get("workerGroupSpecs") or [])
        for g in groups:
            tpl = g.get("template") or {}
            yield tpl.get("metadata") or {}, tpl.get("spec") or {}


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            yield f"{'container' if key == 'containers' else key[:-1]} {c.get('name', '?')}", c


def check_restricted(obj: dict[str, Any]) -> list[str]:
    """Violations of the restricted profile in ``obj`` (empty list: it would be admitted)."""
    where = f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
    out: list[str] = []
    for meta, spec in pod_specs(obj):
        out += [f"{where}: {v}" for v in _check_pod(meta, spec)]
    return out


def _check_pod(meta: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    v: list[str] = []
    psc = spec.get("securityContext") or {}
    # --- baseline --------------------------------------------------------------------
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            v.append(f"{field} must be unset or false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        v.append("pod windowsOptions.hostProcess must be false")
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if "hostPath" in kinds:
            v.append(f"volume {vol.get('name')}: hostPath volumes are forbidden")
        elif not kinds <= _ALLOWED_VOLUMES:
            v.append(f"volume {vol.get('name')}: type {sorted(kinds - _ALLOWED_VOLUMES)} not allowed "
                     f"(allowed: {', '.join(sorted(_ALLOWED_VOLUMES))})")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in _SAFE_SYSCTLS:
            v.append(f"sysctl {s.get('name')} is not in the safe set")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            v.append(f"annotation {key}: AppArmor profile {value!r} not allowed")
    v += _selinux("pod", psc)
    v += _apparmor("pod", psc)

    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    pod_nonroot = psc.get("runAsNonRoot")
    if psc.get("runAsUser") == 0:
        v.append("pod runAsUser must not be 0")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        v.append(f"pod seccompProfile.type must be RuntimeDefault or Localhost, got {pod_seccomp}")

    for what, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            v.append(f"{what}: privileged must be false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            v.append(f"{what}: windowsOptions.hostProcess must be false")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                v.append(f"{what}: hostPort must be unset or 0")
        if sc.get("procMount") not in (None, "Default"):
            v.append(f"{what}: procMount must be Default")
        v += _selinux(what, sc)
        v += _apparmor(what, sc)
        # --- restricted ------------------------------------------------------------------
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{what}: allowPrivilegeEscalation must be false")
        nonroot = sc.get("runAsNonRoot", pod_nonroot)
        if nonroot is not True:
            v.append(f"{what}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            v.append(f"{what}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            v.append(f"{what}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{what}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            v.append(f"{what}: capabilities.add may only hold NET_BIND_SERVICE, got {sorted(extra)}")
    return v


def _selinux(what: str, sc: dict[str, Any]) -> list[str]:
    se = sc.get("seLinuxOptions") or {}
    out = []
    if se.get("type", "") not in _SELINUX_TYPES:
        out.append(f"{what}: seLinuxOptions.type {se.get('type')!r} not allowed")
    if se.get("user") or se.get("role"):
        out.append(f"{what}: seLinuxOptions.user and .role must be unset")
    return out


def _apparmor(what: str, sc: dict[str, Any]) -> list[str]:
    t = (sc.get("appArmorProfile") or {}).get("type")
    return [] if t in (None, "RuntimeDefault", "Localhost") else [f"{what}: appArmorProfile.type {t} not allowed"]


def check_worker_policy(obj: dict[str, Any], *, api_token: bool = False) -> list[str]:
    """This project's rules on top of restricted: a read-only root filesystem with an
    emptyDir on ``/tmp``, requests set and memory limit = request, an explicit command,
    ``restartPolicy: Never``, and no service-account token unless ``api_token`` (the
    coordinator talks to the API server; workers never do)."""
    where = f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"
    v: list[str] = []
    for _meta, spec in pod_specs(obj):
        if spec.get("restartPolicy") not in ("Never", "OnFailure"):
            v.append("restartPolicy must be Never or OnFailure")
        if not api_token and spec.get("automountServiceAccountToken") is not False:
            v.append("automountServiceAccountToken must be false")
        vols = {vol.get("name"): vol for vol in spec.get("volumes") or []}
        for what, c in _containers(spec):
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                v.append(f"{what}: readOnlyRootFilesystem must be true")
            tmp = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp"]
            if not tmp or "emptyDir" not in vols.get(tmp[0].get("name"), {}):
                v.append(f"{what}: /tmp must be an emptyDir mount")
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            if not req.get("cpu") or not req.get("memory"):
                v.append(f"{what}: cpu and memory requests must be set")
            if lim.get("memory") != req.get("memory"):
                v.append(f"{what}: memory limit must equal the memory request")
            if not c.get("command"):
                v.append(f"{what}: command must be explicit (never the image entrypoint)")
    return [f"{where}: {x}" for x in v]
