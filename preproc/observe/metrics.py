"""Prometheus metrics: what each index processed, and run-level gauges from the coordinator.

Workers are short-lived (a pod or a Ray task per index), so nothing is scraped from them:
when an index ends (committed or failed), :func:`publish_index` sends its metrics

* to a **Pushgateway** when one is configured — spec ``metrics: {pushgateway: URL}`` or
  ``PREPROC_PUSHGATEWAY`` — as the group ``job="preproc", run_id, stage, index`` (a PUT,
  so a retried index replaces its group instead of counting twice); basic auth comes from
  a file (``metrics.pushgateway_auth_file`` or ``PREPROC_PUSHGATEWAY_AUTH_FILE``, e.g. a
  mounted Secret holding ``user:password``), never from the URL;
* otherwise to a **textfile** ``<dir>/<stage>-<index:05d>.prom`` in the Prometheus text
  format, for node_exporter's textfile collector or for reading by hand: ``dir`` is
  spec ``metrics.textfile_dir`` or ``PREPROC_METRICS_DIR``, default ``<output>/_metrics``.

The coordinator (through :class:`preproc.observe.progress.Progress`, in every executor) publishes
run-level gauges the same way: group ``job="preproc", run_id, instance="coordinator"``, or
``<dir>/coordinator.prom``. ``metrics: false`` or ``PREPROC_METRICS=off`` turns it all off.
Publishing never fails an index or a run: an unreachable Pushgateway is a warning.

Worker metrics (labels ``run_id``, ``stage``, ``index``; one series per index — aggregate
with ``sum by (stage)``):

=======================================  ======  ==============================================
name                                     type    meaning
=======================================  ======  ==============================================
preproc_documents_read_total             counter documents the index took in (clean: records
                                                 read, rejected ones included; exact_dedup:
                                                 keys examined; tokenize: clean rows)
preproc_documents_written_total          counter documents the index kept/wrote
preproc_documents_dropped_total          counter by ``kind`` (``rejected``, ``filtered``,
                                                 ``duplicate``) and ``reason`` (``invalid_json``,
                                                 ``length_v1:min_chars``, ``exact``, ``near``)
preproc_input_bytes_total                counter clean: bytes of input the shard covers
preproc_text_bytes_total                 counter clean: UTF-8 bytes of the kept text
preproc_characters_total                 counter clean: characters of the kept text
preproc_tokens_total                     counter tokenize: tokens written (BOS/EOS included)
preproc_file_errors_total                counter clean: unreadable/corrupt input files
preproc_index_duration_seconds           gauge   wall time of the index's last attempt
preproc_index_success                    gauge   1 committed, 0 failed
preproc_index_attempt                    gauge   attempt number (see :mod:`preproc.observe.logs`)
preproc_index_finished_timestamp_seconds gauge   when the attempt ended (Unix time)
=======================================  ======  ==============================================

Tokenize's ``dropped`` rows are the dedup stages' duplicates applied; they are counted once,
under the dedup stage, not again under tokenize.

Coordinator gauges (label ``run_id``; ``stage`` where it applies):

==========================================  ================================================
name                                        meaning
==========================================  ================================================
preproc_run_info                            1, labels ``output``, ``executor``
preproc_run_start_timestamp_seconds         when this coordinator started the run
preproc_run_stage_indices                   the stage's fan-out
preproc_run_stage_indices_done              indices with a marker
preproc_run_stage_indices_failed            indices failed after their retries
preproc_run_stage_documents_per_second      stage throughput since this coordinator started it
preproc_run_stage_tokens_per_second         same, tokens
preproc_run_stage_eta_seconds               estimated time left in the stage (absent: unknown)
preproc_run_stage_elapsed_seconds           time since the stage started here
preproc_run_complete                        1 once finalize has written dataset.json
preproc_run_documents                       at completion, by ``outcome``: read, kept,
                                            filtered, duplicates, rejected
preproc_run_tokens                          at completion: tokens written
==========================================  ================================================
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import basic_auth_handler, default_handler

from preproc.io import layout
from preproc.io.store import Store
from preproc.observe.stats import documents_in

if TYPE_CHECKING:
    from preproc.engine.plan import Plan

__all__ = ["MetricsConfig", "metrics_config", "publish_index", "index_families", "run_metrics", "RunMetrics",
           "WORKER_METRICS", "RUN_METRICS"]

log = logging.getLogger("preproc.observe.metrics")

JOB = "preproc"
PUSH_TIMEOUT_S = 5.0
COORDINATOR_EVERY_S = 15.0
WORKER_METRICS = ("preproc_documents_read_total", "preproc_documents_written_total",
                  "preproc_documents_dropped_total", "preproc_input_bytes_total", "preproc_text_bytes_total",
                  "preproc_characters_total", "preproc_tokens_total", "preproc_file_errors_total",
                  "preproc_index_duration_seconds", "preproc_index_success", "preproc_index_attempt",
                  "preproc_index_finished_timestamp_seconds")
RUN_METRICS = ("preproc_run_info", "preproc_run_start_timestamp_seconds", "preproc_run_stage_indices",
               "preproc_run_stage_indices_done", "preproc_run_stage_indices_failed",
               "preproc_run_stage_documents_per_second", "preproc_run_stage_tokens_per_second",
               "preproc_run_stage_eta_seconds", "preproc_run_stage_elapsed_seconds", "preproc_run_complete",
               "preproc_run_documents", "preproc_run_tokens")
_warned: set[str] = set()


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool
    pushgateway: str | None
    textfile_dir: str | None     # None: <output>/_metrics
    auth_file: str | None = None  # "user:password" for the Pushgateway's basic auth


def metrics_config(plan: Plan) -> MetricsConfig:
    """The spec's ``metrics`` section, overridden by the environment."""
    m = getattr(plan.spec, "metrics", None)
    enabled = bool(getattr(m, "enabled", True))
    push = getattr(m, "pushgateway", None)
    tdir = getattr(m, "textfile_dir", None)
    env = os.environ.get("PREPROC_METRICS", "").strip().lower()
    if env in ("0", "off", "false", "no"):
        enabled = False
    elif env in ("1", "on", "true", "yes"):
        enabled = True
    push = os.environ.get("PREPROC_PUSHGATEWAY") or push
    tdir = os.environ.get("PREPROC_METRICS_DIR") or tdir
    auth = os.environ.get("PREPROC_PUSHGATEWAY_AUTH_FILE") or getattr(m, "pushgateway_auth_file", None)
    return MetricsConfig(enabled, push or None, tdir or None, auth or None)


def _push_handler(cfg: MetricsConfig) -> Any:
    """Basic auth from ``cfg.auth_file`` (a mounted Secret holding ``user:password``), read at
    each push so a rotated Secret is picked up; never from the URL, which is logged."""
    if not cfg.auth_file:
        return default_handler

    def handler(url: str, method: str, timeout: Any, headers: Any, data: bytes) -> Any:
        with open(cfg.auth_file) as f:   # noqa: PTH123 - a local mounted file, by design
            user, _, password = f.read().strip().partition(":")
        return basic_auth_handler(url, method, timeout, headers, data, username=user, password=password)

    return handler


def _warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


# -- building metric families -----------------------------------------------------------------

class _Families:
    """A prometheus-client collector over a fixed list of families (no ``_created`` series)."""

    def __init__(self, families: list[Any]):
        self.families = families

    def collect(self) -> Iterable[Any]:
        return iter(self.families)

    def registry(self):
        reg = CollectorRegistry(auto_describe=False)
        reg.register(self)  # type: ignore[arg-type]
        return reg


def _dropped(stage: str, stats: dict[str, Any]) -> list[tuple[str, str, int]]:
    out = []
    for reason, n in sorted((stats.get("rejected") or {}).items()):
        out.append(("rejected", reason, int(n)))
    for reason, n in sorted((stats.get("filtered") or {}).items()):
        out.append(("filtered", reason, int(n)))
    if "duplicates" in stats and stage in ("exact_dedup", "near_drops"):   # the stages whose drops apply
        out.append(("duplicate", "exact" if stage == "exact_dedup" else "near", int(stats["duplicates"] or 0)))
    return out


def _documents(stage: str, stats: dict[str, Any]) -> tuple[int | None, int | None]:
    """(read, written) of an index, whatever its stage."""
    if not stats:
        return None, None
    if stage == "exact_dedup" or ("keys" in stats and "docs" not in stats):
        keys = int(stats.get("keys", 0) or 0)
        return keys, keys - int(stats.get("duplicates", 0) or 0)
    written = stats.get("docs", stats.get("documents"))
    return documents_in(stats), None if written is None else int(written)


def index_families(plan_run_id: str, stage: str, index: int, stats: dict[str, Any] | None, *,
                   ok: bool, attempt: int, duration_s: float, finished_s: float | None = None) -> list[Any]:
    """The metric families of one index attempt (see the module docstring)."""
    base = ["run_id", "stage", "index"]
    lv = [plan_run_id, stage, str(index)]
    fams: list[Any] = []

    def counter(name: str, doc: str, value: Any) -> None:
        if value is not None:
            c = CounterMetricFamily(name, doc, labels=base)
            c.add_metric(lv, float(value))
            fams.append(c)

    stats = stats or {}
    read, written = _documents(stage, stats) if ok else (None, None)
    counter("preproc_documents_read", "Documents the index took in.", read)
    counter("preproc_documents_written", "Documents the index kept or wrote.", written)
    if ok:
        drops = _dropped(stage, stats)
        if drops:
            c = CounterMetricFamily("preproc_documents_dropped", "Documents dropped, by kind and reason.",
                                    labels=base + ["kind", "reason"])
            for kind, reason, n in drops:
                c.add_metric(lv + [kind, reason], float(n))
            fams.append(c)
        if stage == "clean":
            counter("preproc_input_bytes", "Input bytes the shard covers.", stats.get("input_bytes"))
            counter("preproc_text_bytes", "UTF-8 bytes of the kept text.", stats.get("text_bytes"))
            counter("preproc_characters", "Characters of the kept text.", stats.get("chars"))
            counter("preproc_file_errors", "Unreadable or corrupt input files.", len(stats.get("file_errors") or []))
        if "tokens" in stats and stage != "finalize":
            counter("preproc_tokens", "Tokens written.", stats.get("tokens"))
    for name, doc, value in (
            ("preproc_index_duration_seconds", "Wall time of the index's last attempt.", duration_s),
            ("preproc_index_success", "1 if the attempt committed, 0 if it failed.", 1.0 if ok else 0.0),
            ("preproc_index_attempt", "Attempt number of the index (1 = first try).", attempt),
            ("preproc_index_finished_timestamp_seconds", "When the attempt ended (Unix time).",
             finished_s if finished_s is not None else time.time())):
        g = GaugeMetricFamily(name, doc, labels=base)
        g.add_metric(lv, float(value))
        fams.append(g)
    return fams


# -- sending ----------------------------------------------------------------------------------

def _store(plan: Plan, uri: str | None):
    storage = getattr(plan.spec, "storage", None)
    if uri is None:
        return plan.store() if hasattr(plan, "store") else Store(plan.output)
    try:
        return Store(uri, storage)
    except TypeError:  # pragma: no cover - a Store without storage settings
        return Store(uri)


def _send(cfg: MetricsConfig, plan: Plan, families: list[Any], *, grouping: dict[str, str], filename: str) -> None:
    """Push ``families`` to the Pushgateway (replacing ``grouping``'s group) or write the textfile."""
    reg = _Families(families).registry()
    if cfg.pushgateway:
        try:
            push_to_gateway(cfg.pushgateway, job=JOB, registry=reg, grouping_key=grouping, timeout=PUSH_TIMEOUT_S,
                            handler=_push_handler(cfg))
        except Exception as e:  # noqa: BLE001 - metrics must not fail the work they describe
            _warn_once(f"push:{cfg.pushgateway}", "metrics: cannot push to %s (%s: %s); going on without",
                       cfg.pushgateway, type(e).__name__, e)
        return
    try:
        rel = filename if cfg.textfile_dir else f"{layout.METRICS}/{filename}"
        # A view, rewritten by every attempt: atomic (a scraper never sees half a file), no fsync.
        _store(plan, cfg.textfile_dir).write_bytes(rel, generate_latest(reg), durable=False)
    except Exception as e:  # noqa: BLE001
        _warn_once(f"textfile:{cfg.textfile_dir}", "metrics: cannot write %s (%s: %s); going on without",
                   filename, type(e).__name__, e)


def publish_index(plan: Plan, stage: str, index: int, stats: dict[str, Any] | None, *, ok: bool,
                  attempt: int, duration_s: float) -> None:
    """Publish one index attempt's metrics (called by :func:`preproc.engine.stages.run_index`)."""
    try:
        cfg = metrics_config(plan)
        if not cfg.enabled:
            return
        fams = index_families(plan.run_id, stage, index, stats, ok=ok, attempt=attempt, duration_s=duration_s)
    except Exception:  # noqa: BLE001
        log.warning("metrics: cannot build the metrics of %s %d", stage, index, exc_info=True)
        return
    _send(cfg, plan, fams, grouping={"run_id": plan.run_id, "stage": stage, "index": str(index)},
          filename=f"{stage}-{index:05d}.prom")


# -- the coordinator's run-level gauges -------------------------------------------------------

class RunMetrics:
    """Run-level gauges of one run, held by the coordinator process; fed by ``Progress``."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.cfg = metrics_config(plan)
        self.started_s = time.time()
        self.stages: dict[str, dict[str, Any]] = {}
        self.complete = False
        self.totals: dict[str, Any] | None = None
        self.last_publish = 0.0
        self._lock = threading.Lock()

    def update_stage(self, snap: dict[str, Any], *, closing: bool = False) -> None:
        with self._lock:
            self.stages[snap["stage"]] = dict(snap)
        last = self.plan.stages[-1].name if self.plan.stages else None
        if closing and snap["stage"] == last and snap["done"] == snap["total"]:
            self._read_totals()

    def _read_totals(self) -> None:
        try:
            stats = _store(self.plan, None).read_json(layout.STATS)
        except Exception:  # noqa: BLE001 - not there (yet): no totals
            return
        self.complete = True
        self.totals = stats

    def families(self) -> list[Any]:
        rid = self.plan.run_id
        ex = getattr(getattr(self.plan.spec, "executor", None), "kind", "")
        info = GaugeMetricFamily("preproc_run_info", "A preproc run (always 1).", labels=["run_id", "output", "executor"])
        info.add_metric([rid, self.plan.output, ex], 1.0)
        start = GaugeMetricFamily("preproc_run_start_timestamp_seconds", "When this coordinator started the run.",
                                  labels=["run_id"])
        start.add_metric([rid], self.started_s)
        fams = [info, start]
        per_stage = [
            ("preproc_run_stage_indices", "The stage's fan-out.", "total"),
            ("preproc_run_stage_indices_done", "Indices with a marker.", "done"),
            ("preproc_run_stage_indices_failed", "Indices failed after their retries.", "failed"),
            ("preproc_run_stage_documents_per_second", "Documents per second in the stage.", "docs_per_s"),
            ("preproc_run_stage_tokens_per_second", "Tokens per second in the stage.", "tokens_per_s"),
            ("preproc_run_stage_eta_seconds", "Estimated seconds left in the stage.", "eta_s"),
            ("preproc_run_stage_elapsed_seconds", "Seconds since the stage started here.", "elapsed_s"),
        ]
        with self._lock:
            stages = dict(self.stages)
        for name, doc, key in per_stage:
            g = GaugeMetricFamily(name, doc, labels=["run_id", "stage"])
            for st in self.plan.stages:
                snap = stages.get(st.name)
                if snap is None:
                    continue
                v = snap.get(key)
                if v is not None:
                    g.add_metric([rid, st.name], float(v))
            fams.append(g)
        c = GaugeMetricFamily("preproc_run_complete", "1 once finalize has written dataset.json.", labels=["run_id"])
        c.add_metric([rid], 1.0 if self.complete else 0.0)
        fams.append(c)
        if self.totals:
            s = self.totals
            d = GaugeMetricFamily("preproc_run_documents", "Documents of the run, by outcome.",
                                  labels=["run_id", "outcome"])
            for outcome, key in (("read", "read"), ("kept", "kept"), ("filtered", "filtered_total"),
                                 ("duplicates", "duplicates_total"), ("rejected", "rejected_total")):
                d.add_metric([rid, outcome], float(s.get(key, 0) or 0))
            t = GaugeMetricFamily("preproc_run_tokens", "Tokens written by the run.", labels=["run_id"])
            t.add_metric([rid], float(s.get("tokens", 0) or 0))
            fams += [d, t]
        return fams

    def due(self) -> bool:
        """Whether an unforced :meth:`publish` would send now (callers skip building a
        snapshot that would not be sent)."""
        return self.cfg.enabled and time.time() - self.last_publish >= COORDINATOR_EVERY_S

    def publish(self, *, force: bool = False) -> None:
        if not self.cfg.enabled:
            return
        now = time.time()
        if not force and now - self.last_publish < COORDINATOR_EVERY_S:
            return
        self.last_publish = now
        fams = self.families()
        _send(self.cfg, self.plan, fams, grouping={"run_id": self.plan.run_id, "instance": "coordinator"},
              filename=layout.COORDINATOR_METRICS)


_runs: dict[tuple[str, str], RunMetrics] = {}


def run_metrics(plan: Plan) -> RunMetrics:
    """The coordinator's :class:`RunMetrics` for ``plan`` (one per run and process)."""
    key = (plan.run_id, plan.output)
    rm = _runs.get(key)
    if rm is None:
        rm = _runs[key] = RunMetrics(plan)
    return rm
