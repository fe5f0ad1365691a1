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
from preproc.observe.report import write_report
from preproc.observe.stats import collect_stats
from preproc.tokenize.stage import drop_stages

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

DATASET_FORMAT = 1


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
        write_report(store, plan, stats)
    except Exception:  # noqa: BLE001
        logging.getLogger("preproc").warning("report.html not written", exc_info=True)


def run(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    stats = collect_stats(plan, store, drop_stages(plan))
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
