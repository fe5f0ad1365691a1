"""Stage ``finalize``: the manifest training reads first, the run's statistics, and the
accounting check that no document was lost or doubled.

``read == kept + filtered + duplicates + rejected`` must hold exactly, where ``read`` counts
every record the readers saw (blank lines excluded), ``filtered`` what the clean steps
dropped (by ``step:reason``), ``duplicates`` what exact and near dedup dropped, ``rejected``
bad records (by reason). If it does not, the stage fails and the run says so.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from preproc.errors import AccountingError
from preproc.tokenize.stage import drop_stages

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

DATASET_FORMAT = 1


def _merge(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _dup_kind(stage: str) -> str:
    return "exact" if stage == "exact_dedup" else "near"


def collect_stats(plan: "Plan", store: "Store") -> dict[str, Any]:
    clean = store.read_markers("clean")
    tok = store.read_markers("tokenize")
    duplicates = {"exact": 0, "near": 0}
    for stage in drop_stages(plan):
        for m in store.read_markers(stage).values():
            duplicates[_dup_kind(stage)] += int(m.get("duplicates", 0))
    filtered = _merge(m.get("filtered") for m in clean.values())
    rejected = _merge(m.get("rejected") for m in clean.values())
    read = sum(m["read"] for m in clean.values())
    kept = sum(m["docs"] for m in tok.values())
    file_errors = [e for i in sorted(clean) for e in clean[i].get("file_errors", [])]
    markers = {s.name: store.read_markers(s.name) for s in plan.stages if s.name != "finalize"}
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
        "tokens": sum(m["tokens"] for m in tok.values()),
        "blank_lines": sum(m.get("blank_lines", 0) for m in clean.values()),
        "counters": _merge(m.get("counters") for m in clean.values()),
        "file_errors": file_errors,
        "input_bytes": sum(m.get("input_bytes", 0) for m in clean.values()),
        "text_bytes_after_clean": sum(m.get("text_bytes", 0) for m in clean.values()),
        "stage_worker_time_s": worker_time,
        "stage_span_s": wall,
        "_clean_docs": sum(m["docs"] for m in clean.values()),
        "_tokenize_dropped": sum(m.get("dropped", 0) for m in tok.values()),
    }


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


def _write_report(plan: "Plan", store: "Store", stats: dict[str, Any]) -> None:
    """``report.html``; a report that cannot be drawn is a warning, never a failed run."""
    try:
        from preproc.observe.report import write_report

        write_report(store, plan, stats)
    except Exception:  # noqa: BLE001
        logging.getLogger("preproc").warning("report.html not written", exc_info=True)


def run(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    stats = collect_stats(plan, store)
    check_accounting(stats)
    for k in [k for k in stats if k.startswith("_")]:
        del stats[k]
    if "near_drops" in plan.stage_names:
        from preproc.dedup.near import summary

        stats["near"] = summary(plan, store)   # config, candidates, clusters, component rounds
    tok = store.read_markers("tokenize")
    formats = plan.spec.tokenize.formats
    shards = []
    for i in range(plan.num_shards):
        m = tok[i]
        entry: dict[str, Any] = {"index": i, "documents": m["docs"], "tokens": m["tokens"]}
        if "parquet" in formats:
            entry["parquet"] = f"tokens/part-{i:05d}.parquet"
        if "megatron" in formats:
            entry["megatron"] = f"tokens/part-{i:05d}"
        shards.append(entry)
    info = plan.tokenizer
    dataset = {
        "format_version": DATASET_FORMAT,
        "run_id": plan.run_id,
        "created_s": round(time.time(), 3),
        "documents": stats["kept"],
        "tokens": stats["tokens"],
        "dtype": info["dtype"],
        "megatron_dtype": tok[0]["megatron_dtype"] if tok else None,
        "formats": formats,
        "tokenizer": {k: info.get(k) for k in ("path", "source", "sha256", "vocab_size", "eos_id", "eos_token",
                                               "bos_id", "bos_token")},
        "shards": shards,
        "provenance": {"inputs": sorted({s.uri for sh in plan.shards for s in sh.splits}),
                       "spec": plan.spec.to_json()},
    }
    store.write_json("stats.json", stats)
    store.write_json("dataset.json", dataset)
    _write_report(plan, store, stats)
    return {"documents": stats["kept"], "tokens": stats["tokens"]}
