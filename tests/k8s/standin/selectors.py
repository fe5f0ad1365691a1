"""Label and field selectors, as the API server parses and applies them."""

from __future__ import annotations

import re
from typing import Any, Callable

from tests.k8s.standin.common import ApiError


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector(text: str | None) -> Callable[[dict[str, str]], bool]:
    """A matcher for ``a=b,c!=d,e in (x,y),f notin (z),g,!h``."""
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for part in _split_selector(text or ""):
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\((.*)\)$", part)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            reqs.append((lambda k, vs: lambda l: l.get(k) in vs)(key, vals) if op == "in"
                        else (lambda k, vs: lambda l: l.get(k) not in vs)(key, vals))
        elif "!=" in part:
            k, v = (s.strip() for s in part.split("!=", 1))
            reqs.append((lambda k, v: lambda l: l.get(k) != v)(k, v))
        elif "=" in part:
            k, v = (s.strip() for s in part.replace("==", "=").split("=", 1))
            reqs.append((lambda k, v: lambda l: l.get(k) == v)(k, v))
        elif part.startswith("!"):
            reqs.append((lambda k: lambda l: k not in l)(part[1:].strip()))
        else:
            reqs.append((lambda k: lambda l: k in l)(part))
    return lambda labels: all(r(labels or {}) for r in reqs)


def field_selector(text: str | None) -> Callable[[dict[str, Any]], bool]:
    reqs = []
    for part in _split_selector(text or ""):
        neg = "!=" in part
        k, v = (s.strip() for s in part.replace("==", "=").split("!=" if neg else "=", 1))
        if k not in ("metadata.name", "metadata.namespace", "status.phase"):
            raise ApiError(400, "BadRequest", f"field label not supported: {k}")
        reqs.append((k, v, neg))

    def get(obj, path):
        for p in path.split("."):
            obj = (obj or {}).get(p)
        return obj

    return lambda obj: all((get(obj, k) == v) != neg for k, v, neg in reqs)
