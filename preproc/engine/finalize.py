"""Stage ``finalize``: the manifest training reads first (``dataset.json``), the run's
statistics (``stats.json``), the report, and the accounting check that no document was lost
or doubled (:mod:`preproc.engine.stats`): if it does not add up, the stage fails and the run
says so.
"""

from __future__ import annotations

import logging
import posixpath
import time
from typing import TYPE_CHECKING, Any

from preproc.dedup.near import summary as near_summary
from preproc.engine.stats import check_accounting, collect_stats, read_all_markers
from preproc.io import layout
from preproc.observe.report import write_report

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

DATASET_FORMAT = 1


def _write_report(plan: Plan, store: Store, stats: dict[str, Any]) -> None:
    """``report.html``; a report that cannot be drawn is a warning, never a failed run."""
    try:
        write_report(store, plan, stats)
    except Exception:  # noqa: BLE001
        logging.getLogger("preproc").warning("report.html not written", exc_info=True)


def run(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    markers = read_all_markers(plan, store)   # 2 x N markers at N shards: read once, not per use
    stats = collect_stats(plan, store, markers)
    check_accounting(stats)
    for k in [k for k in stats if k.startswith("_")]:
        del stats[k]
    if "near_drops" in plan.stage_names:
        stats["near"] = near_summary(plan, store)   # config, candidates, clusters, component rounds
    tok = markers.get("tokenize", {})
    formats = plan.spec.tokenize.formats
    shards = []
    for i in range(plan.stage("tokenize").fan_out):
        m = tok[i]
        entry: dict[str, Any] = {"index": i, "documents": m.get("docs", 0), "tokens": m.get("tokens", 0)}
        if "parquet" in formats:
            entry["parquet"] = f"{layout.tokens(i)}.parquet"
        if "megatron" in formats:
            entry["megatron"] = layout.tokens(i)
        shards.append(entry)
    info = plan.tokenizer
    dataset = {
        "format_version": DATASET_FORMAT,
        "run_id": plan.run_id,
        "created_s": round(time.time(), 3),
        "documents": stats["kept"],
        "tokens": stats["tokens"],
        "dtype": info["dtype"],
        "megatron_dtype": tok[0].get("megatron_dtype") if tok else None,
        "formats": formats,
        "tokenizer": {k: info.get(k) for k in ("path", "source", "sha256", "vocab_size", "eos_id", "eos_token",
                                               "bos_id", "bos_token")},
        "shards": shards,
        "provenance": _provenance(plan),
    }
    store.write_json(layout.STATS, stats)
    store.write_json(layout.DATASET, dataset)
    _write_report(plan, store, stats)
    # Temporaries killed attempts left (atomic writes inside an index do not sweep: see
    # preproc.io.store.sweep_deferred). At the top and in _metrics only those of names an
    # index writes: the coordinator's heartbeat and gauges may be mid-commit there.
    swept = store.sweep_leftovers(_written_folders(plan, markers))
    swept += store.sweep_leftovers([""], only={layout.STATS, layout.DATASET, layout.REPORT}.__contains__)
    swept += store.sweep_leftovers([layout.METRICS], only=lambda n: n != layout.COORDINATOR_METRICS)
    return {"documents": stats["kept"], "tokens": stats["tokens"], "temporaries_swept": swept}


# dataset.json names every input file up to this many; beyond, the count and where the
# lists are (training loads dataset.json: 1M file names would make it ~100 MB, and
# finalize would read every shard's list to write them).
PROVENANCE_MAX_INPUTS = 10_000


def _provenance(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"input_files": plan.input_files}
    if plan.input_files <= PROVENANCE_MAX_INPUTS:
        out["inputs"] = sorted({s.uri for sh in plan.shards for s in sh.splits})
    else:
        out["input_lists"] = f"{layout.PLAN_SPLITS}/"     # per shard: its files and their byte ranges
    out["spec"] = plan.spec.to_json()
    return out


def _written_folders(plan: Plan, markers: dict[str, dict[int, dict[str, Any]]]) -> set[str]:
    """The folders of the output the indices of this run wrote to: each stage's markers and
    failure records, and the folder of every file a marker lists (an index writes the same files at each attempt, so a killed attempt's
    temporaries lie beside what its successful retry committed)."""
    folders = set()
    for st in plan.stages:
        folders |= {layout.done_dir(st.name), layout.failed_dir(st.name)}
    for by_index in markers.values():
        for m in by_index.values():
            files = m.get("files")
            if isinstance(files, dict):
                folders.update(posixpath.dirname(f) for f in files)
    return folders
