"""Offline checks of Kubernetes objects: the official schemas (strict) and restricted PSS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from preproc.k8s.pss import check_restricted

KUBE_VERSIONS = ("1.30", "1.34")
REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = ("pvc", "s3", "demo")


def schema_errors(obj: dict[str, Any], versions=KUBE_VERSIONS) -> list[str]:
    """Strict validation against each version; a missing schema is an error, not a warning."""
    import kubernetes_validate

    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    out = []
    for v in versions:
        try:
            kubernetes_validate.validate(obj, v, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            out.append(f"{name} @ {v}: no schema: {e.message}")
        except kubernetes_validate.ValidationError as e:
            out.append(f"{name} @ {v}: {'.'.join(map(str, e.path))}: {e.message}")
    return out


def assert_valid(objects: list[dict[str, Any]]) -> None:
    errors = [e for o in objects for e in schema_errors(o)]
    errors += [e for o in objects for e in check_restricted(o)]
    assert not errors, "\n".join(errors)


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise AssertionError("kubectl is needed for `kubectl kustomize` (offline)")
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]
