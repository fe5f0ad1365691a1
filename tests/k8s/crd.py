"""Validate objects against the KubeRay v1 CRD schemas in ../shared/schemas/kuberay, strictly:
unknown fields are errors (a real API server would prune them silently)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import SHARED, need

CRDS = SHARED / "schemas" / "kuberay"


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in node and "additionalProperties" not in node and not preserve:
            node["additionalProperties"] = False
        for k in [k for k in node if k.startswith("x-kubernetes-")]:
            del node[k]
    elif isinstance(node, list):
        node = [_strict(v) for v in node]
    return node


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    path = need(CRDS / f"ray.io_{kind.lower()}s.yaml")
    crd = yaml.safe_load(Path(path).read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(v1["schema"]["openAPIV3Schema"])
    schema = _strict(schema)
    # metadata is not described by the CRD; the API server validates it itself.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def crd_errors(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    v = jsonschema.Draft7Validator(crd_schema(obj["kind"]))
    return [f"{obj['kind']}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(obj)]
