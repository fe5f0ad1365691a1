"""Logging: readable lines on a terminal, one JSON object per line in pods.

Every record logged while an index runs carries the index's context — ``run_id``, ``stage``,
``index``, ``attempt`` — set by :func:`preproc.engine.stages.run_index` with :func:`context`, so a
log pipeline (Loki, Cloud Logging, Elasticsearch) can select one run, stage or retry.

The format is chosen by ``PREPROC_LOG_FORMAT``:

* ``json`` — one JSON object per line::

      {"ts": "2025-01-31T12:00:03.512Z", "level": "INFO", "logger": "preproc", "msg": "...",
       "run_id": "6e03622190b6", "stage": "clean", "index": 3, "attempt": 1, "pid": 17,
       "host": "preproc-6e03-clean-3-x8k2p"}

  plus any ``extra=`` fields a call passes (progress lines add ``done``, ``total``,
  ``docs_per_s``, ``eta_s``, ...) and ``exc`` with the traceback of an exception.
* ``text`` — ``2025-01-31 12:00:03 INFO [clean 3 attempt 1] message``.
* ``auto`` (default) — ``json`` inside a Kubernetes pod (``KUBERNETES_SERVICE_HOST`` is set),
  ``text`` otherwise.

**Attempt** (1 for the first try of an index): ``PREPROC_ATTEMPT`` when an executor sets it;
else ``PREPROC_INDEX_FAILURE_COUNT`` + 1, the Kubernetes per-index failure count exposed to
the pod through the downward API (the Job controller's annotation
``batch.kubernetes.io/job-index-failure-count``); else one more than the attempt recorded
in the index's failure record ``<stage>/_failed/<index>.json`` (1 if there is none). The
failure record survives until the index succeeds, so this counts tries across processes,
pods and executors.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from preproc.spec.secrets import install_log_redaction

if TYPE_CHECKING:
    from preproc.io.store import Store

__all__ = ["setup", "context", "current_context", "attempt_number", "JsonFormatter", "TextFormatter"]

CONTEXT_KEYS = ("run_id", "stage", "index", "attempt")
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("preproc_log_context", default={})  # noqa: B039  (never mutated: context() sets a new dict)
# LogRecord attributes that are not user "extra" fields.
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
HOST = socket.gethostname()


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Add ``fields`` (run_id, stage, index, attempt, ...) to every record logged inside."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


def attempt_number(store: Store, stage: str, index: int) -> int:
    """This try's number, 1-based (see the module docstring for where it comes from)."""
    for var, add in (("PREPROC_ATTEMPT", 0), ("PREPROC_INDEX_FAILURE_COUNT", 1)):
        v = os.environ.get(var, "").strip()
        if v.isdigit():
            return max(1, int(v) + add)
    try:
        rec = store.read_json(store.failure_rel(stage, index))
    except Exception:  # noqa: BLE001 - absent (the usual case) or unreadable: a first try
        return 1
    prev = rec.get("attempt") if isinstance(rec, dict) else None
    return (int(prev) if isinstance(prev, int) else 1) + 1


class _ContextFilter(logging.Filter):
    """Copies the current index context onto each record (as attributes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in _context.get().items():
            if not hasattr(record, k):
                setattr(record, k, v)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v
        out.setdefault("pid", record.process)
        out.setdefault("host", HOST)
        if record.exc_text:       # already redacted (preproc.spec.secrets.install_log_redaction)
            out["exc"] = record.exc_text
        elif record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2025-01-31 12:00:03 INFO [clean 3 attempt 2] message`` (context only when set)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        stage = getattr(record, "stage", None)
        if stage is None or getattr(record, "index", None) is None:
            return line   # only a running index's lines get the [stage index] prefix
        where = [str(stage), str(record.index)]  # type: ignore[attr-defined]
        attempt = getattr(record, "attempt", None)
        if attempt not in (None, 1):
            where.append(f"attempt {attempt}")
        head, sep, rest = line.partition(f" {record.levelname} ")
        return f"{head}{sep}[{' '.join(where)}] {rest}" if sep else line


def log_format() -> str:
    """``json`` or ``text``, from ``PREPROC_LOG_FORMAT`` (``auto``: json in a pod)."""
    f = os.environ.get("PREPROC_LOG_FORMAT", "auto").strip().lower()
    if f in ("json", "text"):
        return f
    return "json" if os.environ.get("KUBERNETES_SERVICE_HOST") else "text"


def setup(*, verbose: bool = False, fmt: str | None = None, stream: Any = None) -> logging.Handler:
    """Configure the root logger for a ``preproc`` process (the CLI calls this once).

    Replaces handlers a previous call installed, leaves others alone (a host program's).
    """
    fmt = fmt or log_format()
    install_log_redaction()   # URL user info, signed headers, session tokens: at every verbosity
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    handler._preproc = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_preproc", False):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
