"""Errors and the worker exit-code contract.

Every process that runs a stage index (a local pool worker, a Kubernetes pod, a Ray task)
ends with one of these codes, and the executors act on them:

====  ==================  ================================================================
code  name                meaning and what an executor does
====  ==================  ================================================================
0     EXIT_OK             the index committed its outputs and its marker
1     EXIT_RETRYABLE      an unexpected error (I/O hiccup, bug, OOM-ish): retry the index
2     EXIT_CONFIG         the spec, plan, tokenizer or credentials are wrong: retrying
                          cannot help, stop the whole run (k8s: ``FailJob``)
3     EXIT_BAD_SHARD      this index's data cannot be processed (e.g. a Parquet footer is
                          garbage): fail this index only, keep the others (k8s:
                          ``FailIndex``)
====  ==================  ================================================================

Killed processes (SIGKILL, OOM killer: 137) are retryable like code 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # pydantic is not imported here: training code imports these errors
    from pydantic import BaseModel, ValidationError

EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_CONFIG = 2
EXIT_BAD_SHARD = 3


class PreprocError(Exception):
    """Base of errors that carry a one-line message for the user and an exit code."""

    exit_code = EXIT_RETRYABLE


class ConfigError(PreprocError):
    """The spec, the plan or an input the run depends on is wrong; fatal before any work.

    The message is one line that says what and where (``clean.length.min_chars: must be an
    integer >= 0, got 'ten'``).
    """

    exit_code = EXIT_CONFIG


class BadShardError(PreprocError):
    """One index's data cannot be processed; the other indices may go on."""

    exit_code = EXIT_BAD_SHARD


class StageFailed(PreprocError):
    """Some indices of a stage failed after their retries."""

    exit_code = EXIT_RETRYABLE

    def __init__(self, stage: str, failures: dict[int, str]):
        self.stage = stage
        self.failures = dict(sorted(failures.items()))
        shown = "; ".join(f"index {i}: {msg}" for i, msg in list(self.failures.items())[:5])
        more = f" (+{len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"stage {stage!r}: {len(self.failures)} index(es) failed: {shown}{more}")
        if any(_is_config(m) for m in self.failures.values()):
            self.exit_code = EXIT_CONFIG


def _is_config(msg: str) -> bool:
    return msg.startswith("ConfigError")


class AccountingError(PreprocError):
    """read != kept + filtered + duplicates + rejected: a document went missing or doubled."""

    exit_code = EXIT_RETRYABLE


def format_error(err: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    """One line for a pydantic validation error: ``<where>: <dotted key>: <what is wrong>``.

    Shared by every validated settings object (the spec, the storage settings), so that all
    of them name the key the same way. ``model`` is the root that was validated: an unknown
    key's message then lists the keys allowed at its place.
    """
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "union[", "literal[")))
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, e["loc"][:-1])
        msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif "input" in e and e["type"] not in ("missing",):
        got = repr(e["input"])
        msg = f"{msg} (got {got[:80]})"
    more = f" (+{len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{where}: {loc or '<top>'}: {msg}{more}"


def _allowed_keys(root: type[BaseModel] | None, loc: tuple) -> list[str]:
    model: Any = root
    if model is None:
        return []
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and hasattr(ann, "model_fields") else None   # a pydantic model
        if model is None:
            return []
    return list(model.model_fields)
