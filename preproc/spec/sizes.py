"""Byte sizes as users write them in YAML: ``268435456``, ``"256MiB"``, ``"1GB"``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["parse_size", "Size"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(value: int | str) -> int:
    """``"256MiB"`` → 268435456; plain integers pass through. Decimal (MB) and binary (MiB) units."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 268435456 or '256MiB'")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a size such as 268435456 or '256MiB', got {value!r}")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _UNITS[unit])


def _positive_size(v: Any) -> int:
    n = parse_size(v)
    if n < 1:
        raise ValueError("must be a positive size")
    return n


# A byte count written as 268435456 or "256MiB" (YAML users write units).
Size = Annotated[int, BeforeValidator(_positive_size)]
