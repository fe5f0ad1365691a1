"""What every part of the stand-in shares: constants, ``Status`` errors, index sets.

The index-set helpers (``format_indexes``, ``index_set``, ``index_map``) are the stand-in's
own on purpose: it plays the API server and the Job controller, so it must not reuse
``preproc.k8s.indexes``, the code under test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "standin-admin-token"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
FAILURE_COUNT_KEY = "batch.kubernetes.io/job-index-failure-count"
MAX_INT32 = 2**31 - 1


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status_error(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.body = status_error(code, reason, message, details)
        self.code = code


# -- index sets and selectors -------------------------------------------------------------------
def format_indexes(indexes) -> str:
    runs: list[list[int]] = []
    for i in sorted(set(indexes)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def index_set(text: str | None) -> set[int]:
    return {int(x) for x in (text or "").replace(" ", "").split(",") if x}


def index_map(text: str | None) -> dict[int, int]:
    out = {}
    for part in (text or "").replace(" ", "").split(","):
        if part:
            i, _, code = part.partition(":")
            out[int(i)] = int(code)
    return out
