"""The run's statistics, added up from its markers, and the accounting check.

``read == kept + filtered + duplicates + rejected`` must hold exactly, where ``read`` counts
every record the readers saw (blank lines excluded), ``filtered`` what the clean steps
dropped (by ``step:reason``), ``duplicates`` what exact and near dedup dropped, ``rejected``
bad records (by reason). The finalize stage writes these into ``stats.json``; ``preproc
report`` adds them up the same way for a run that has not finished.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from preproc.errors import AccountingError
from preproc.observe.stats import add_counts

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["collect_stats", "check_accounting", "read_all_markers"]


def _dup_kind(stage: str) -> str:
    return "exact" if stage == "exact_dedup" else "near"


def collect_stats(plan: Plan, store: Store,
                  markers: dict[str, dict[int, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The run's statistics from its markers (``markers``: each stage's, when the caller
    has read them already; each marker is read once either way). A marker without a
    count (an index run with ``action=skip``, see :mod:`preproc.faults`) counts 0."""
    if markers is None:
        markers = read_all_markers(plan, store)
    clean = markers.get("clean", {})
    tok = markers.get("tokenize", {})
    duplicates = {"exact": 0, "near": 0}
    for stage in plan.drop_stages:
        for m in markers.get(stage, {}).values():
            duplicates[_dup_kind(stage)] += int(m.get("duplicates", 0))
    filtered = add_counts(m.get("filtered") for m in clean.values())
    rejected = add_counts(m.get("rejected") for m in clean.values())
    read = sum(m.get("read", 0) for m in clean.values())
    kept = sum(m.get("docs", 0) for m in tok.values())
    file_errors = [e for i in sorted(clean) for e in clean[i].get("file_errors", [])]
    # Worker time: the indices' own times added up (N workers busy for 10 s = 10×N s).
    worker_time = {k: round(sum(m.get("wall_time_s", 0.0) for m in ms.values()), 3) for k, ms in markers.items()}
    # Wall time: first index started to last index finished, what a user waited.
    wall = {k: _span(ms) for k, ms in markers.items()}
    return {
        "run_id": plan.run_id,
        "read": read,
        "kept": kept,
        "filtered": filtered,
        "filtered_total": sum(filtered.values()),
        "duplicates": duplicates,
        "duplicates_total": sum(duplicates.values()),
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "tokens": sum(m.get("tokens", 0) for m in tok.values()),
        "blank_lines": sum(m.get("blank_lines", 0) for m in clean.values()),
        "counters": add_counts(m.get("counters") for m in clean.values()),
        "file_errors": file_errors,
        "input_bytes": sum(m.get("input_bytes", 0) for m in clean.values()),
        "text_bytes_after_clean": sum(m.get("text_bytes", 0) for m in clean.values()),
        "stage_worker_time_s": worker_time,
        "stage_span_s": wall,
        "_clean_docs": sum(m.get("docs", 0) for m in clean.values()),
        "_tokenize_dropped": sum(m.get("dropped", 0) for m in tok.values()),
    }


def read_all_markers(plan: Plan, store: Store) -> dict[str, dict[int, dict[str, Any]]]:
    """Every stage's markers but finalize's, by stage and index (one listing and one read
    per marker)."""
    return {s.name: store.read_markers(s.name) for s in plan.stages if s.name != "finalize"}


def _span(markers: dict[int, dict[str, Any]]) -> float:
    starts = [float(m["started_s"]) for m in markers.values() if m.get("started_s")]
    ends = [float(m["finished_s"]) for m in markers.values() if m.get("finished_s")]
    return round(max(ends) - min(starts), 3) if starts and ends else 0.0


def check_accounting(stats: dict[str, Any]) -> None:
    read, kept = stats["read"], stats["kept"]
    accounted = kept + stats["filtered_total"] + stats["duplicates_total"] + stats["rejected_total"]
    if read != accounted:
        raise AccountingError(
            f"accounting does not add up: read {read} != kept {kept} + filtered {stats['filtered_total']} "
            f"+ duplicates {stats['duplicates_total']} + rejected {stats['rejected_total']} (= {accounted})")
    if stats["_tokenize_dropped"] != stats["duplicates_total"]:
        raise AccountingError(f"tokenize dropped {stats['_tokenize_dropped']} rows but dedup stages "
                              f"report {stats['duplicates_total']} duplicates")
