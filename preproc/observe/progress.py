"""How far a run is, live: the coordinator's display of one stage, for every executor.

:class:`Progress` is fed by its executor as indices finish (local pool futures, Ray task
results, Kubernetes ``completedIndexes`` plus each index's marker). A tqdm bar with docs/s
and tokens/s on a terminal; a log line every 30 s otherwise (with ``done``, ``total``,
``docs_per_s``, ``tokens_per_s``, ``eta_s`` as structured fields for JSON logs). Given the
plan, it also publishes the coordinator's run-level gauges (:mod:`preproc.observe.metrics`).

The API an executor uses::

    bar = Progress(stage, total=fan_out, done=fan_out - len(todo), plan=plan)
    bar.tick()              # often (each wait-loop turn): periodic log line, metrics
    bar.advance(marker)     # an index committed; ``marker`` is its stats dict (may be {})
    bar.fail(index, error)  # an index failed after its retries (optional)
    bar.snapshot()          # {"done", "total", "docs_per_s", "eta_s", ...}
    bar.close()

What ``preproc status`` prints, read from the output alone, is :mod:`preproc.observe.status`.

ETA is ``remaining indices × elapsed / indices done`` for the stage in progress: shards are
balanced by bytes, so indices are comparable; it is the stage's ETA, not the run's (later
stages have no history yet).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from preproc.observe.metrics import run_metrics
from preproc.observe.stats import documents_in

if TYPE_CHECKING:
    from preproc.engine.plan import Plan

__all__ = ["Progress", "fmt_duration", "fmt_count"]

log = logging.getLogger("preproc")

LOG_EVERY_S = 30.0


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_count(x: float) -> str:
    """1234 → 1.2k, 5_600_000 → 5.6M (for rates on one line)."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suf}"
    return f"{x:.0f}"


class Progress:
    """Per-stage progress on the coordinator (see the module docstring for the API)."""

    def __init__(self, stage: str, *, total: int, done: int, enabled: bool = True, plan: Plan | None = None):
        self.stage, self.total, self.done = stage, total, done
        self.done_at_start = done
        self.docs = 0
        self.tokens = 0
        self.bytes = 0
        self.failed: dict[int, str] = {}
        self.t0 = self.last_log = time.time()
        self.bar = None
        self.enabled = enabled
        self.plan = plan
        self._metrics = None
        if plan is not None:
            try:
                self._metrics = run_metrics(plan)
            except Exception:  # noqa: BLE001 - metrics must never stop a run
                log.debug("coordinator metrics unavailable", exc_info=True)
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=done, desc=f"{stage:<12}", unit="idx", leave=True,
                            dynamic_ncols=True)
        self._publish(force=True)

    # -- what executors call ----------------------------------------------------------------
    def advance(self, stats: dict[str, Any]) -> None:
        self.done += 1
        self.docs += documents_in(stats)
        self.tokens += int(stats.get("tokens", 0) or 0)
        self.bytes += int(stats.get("input_bytes", 0) or 0)
        if self.bar is not None:
            self.bar.set_postfix_str(self._rates(), refresh=False)
            self.bar.update(1)
        self.tick()

    def fail(self, index: int, error: str) -> None:
        self.failed[index] = error
        self._publish(force=True)

    def tick(self) -> None:
        if self.bar is None and self.enabled and time.time() - self.last_log >= LOG_EVERY_S:
            self._line()
        self._publish()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled:
            self._line()
        self._publish(force=True, closing=True)

    # -- numbers ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        el = max(time.time() - self.t0, 1e-6)
        new = self.done - self.done_at_start
        remaining = self.total - self.done
        eta = (remaining * el / new) if new and remaining else (0.0 if not remaining else None)
        return {"stage": self.stage, "done": self.done, "total": self.total, "failed": len(self.failed),
                "elapsed_s": round(el, 3), "docs": self.docs, "tokens": self.tokens,
                "docs_per_s": self.docs / el, "tokens_per_s": self.tokens / el, "bytes_per_s": self.bytes / el,
                "eta_s": None if eta is None else round(eta, 1)}

    def _rates(self) -> str:
        if self.total <= 1:
            return ""   # one short index (finalize): a rate would say nothing
        s = self.snapshot()
        parts = [f"{fmt_count(s['docs_per_s'])} docs/s"]
        if self.tokens:
            parts.append(f"{fmt_count(s['tokens_per_s'])} tok/s")
        if self.bytes:
            parts.append(f"{fmt_count(s['bytes_per_s'])}B/s")
        return ", ".join(parts)

    def _line(self) -> None:
        s = self.snapshot()
        pct = 100.0 * s["done"] / s["total"] if s["total"] else 100.0
        log.info("stage %s: %d/%d indices (%.0f%%), %selapsed %s, ETA %s", self.stage, s["done"], s["total"], pct,
                 (self._rates() + ", ") if self.total > 1 else "", fmt_duration(s["elapsed_s"]), fmt_duration(s["eta_s"]),
                 extra={"event": "progress", **{k: (round(v, 3) if isinstance(v, float) else v)
                                                for k, v in s.items()}})
        self.last_log = time.time()

    def _publish(self, *, force: bool = False, closing: bool = False) -> None:
        if self._metrics is None or not (force or self._metrics.due()):
            return   # tick() runs per index: a snapshot only when it would be sent
        try:
            self._metrics.update_stage(self.snapshot(), closing=closing)
            self._metrics.publish(force=force)
        except Exception:  # noqa: BLE001 - metrics must never stop a run
            log.debug("publishing coordinator metrics failed", exc_info=True)
