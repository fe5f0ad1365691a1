"""What ``report.html`` shows, as one JSON-able dict: the run's totals (``stats.json``, or
added up from the markers of a run that has not finished) and the per-index statistics the
stages put in their markers (:mod:`preproc.observe.stats`), merged across indices."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from preproc.engine.stats import collect_stats
from preproc.io import layout
from preproc.io.layout import slice_label, split_label
from preproc.observe.stats import EXAMPLES_PER_REASON, ROUNDS_ROW, SHARD_STAGES, SLICE_STAGES, group_rounds, merge_histograms

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["report_data"]


def _span(markers: dict[int, dict[str, Any]]) -> float | None:
    starts = [m["started_s"] for m in markers.values() if m.get("started_s")]
    ends = [m["finished_s"] for m in markers.values() if m.get("finished_s")]
    return round(max(ends) - min(starts), 3) if starts and ends else None


def report_data(plan: Plan, store: Store, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the page shows, from ``stats.json`` (or the markers) and the markers."""
    markers = {st.name: store.read_markers(st.name) for st in plan.stages}
    complete = store.exists(layout.DATASET)
    if stats is None:
        try:
            stats = store.read_json(layout.STATS)
        except FileNotFoundError:
            stats = {k: v for k, v in collect_stats(plan, store).items()
                     if not k.startswith("_")}
    clean = markers.get("clean", {})
    tok = markers.get("tokenize", {})
    # Each clean index's token sample stands for all documents that entered its steps.
    weights = [(sum(m.get("hist_chars_in") or []) / m["sample_docs"]) if m.get("sample_docs") else 0.0
               for m in clean.values()]
    src: dict[str, list[int]] = {}
    for m in clean.values():
        for k, (a, b) in (m.get("by_source") or {}).items():
            cur = src.setdefault(k, [0, 0])
            cur[0] += a
            cur[1] += b
    lang: dict[str, int] = {}
    lang_from = None
    for m in clean.values():
        lang_from = lang_from or m.get("language_from")
        for k, v in (m.get("by_language") or {}).items():
            lang[k] = lang.get(k, 0) + v
    examples: dict[str, list[dict[str, Any]]] = {}
    for i in sorted(clean):
        for r, ex in (clean[i].get("examples") or {}).items():
            have = examples.setdefault(r, [])
            have += ex[: EXAMPLES_PER_REASON - len(have)]
    slow = []
    for stage in [s for s in SHARD_STAGES + SLICE_STAGES if s in markers]:
        for i, m in markers[stage].items():
            if stage in SLICE_STAGES:    # a slice of the clean output: its rows and text bytes
                inputs = [slice_label(*p[:3]) for p in m.get("slice") or []]
                nbytes = int(m.get("text_bytes", 0) or 0)
            else:
                inputs = []    # filled below for the rows shown only (their file lists are read then)
                nbytes = int(m.get("input_bytes", 0) or 0) or sum(plan.shards[sh].bytes for sh in plan.shards_of(stage, i))
            slow.append({"stage": stage, "index": i, "wall_time_s": float(m.get("wall_time_s", 0.0)),
                         "docs": int(m.get("read", m.get("docs", 0)) or 0), "tokens": int(m.get("tokens", 0) or 0),
                         "input_bytes": nbytes, "inputs": inputs})
    slow.sort(key=lambda r: -r["wall_time_s"])
    del slow[10:]
    for r in slow:    # only the rows shown read their shard's file list (preproc.io.splitlists)
        if r["stage"] not in SLICE_STAGES:
            r["inputs"] = [split_label(x) for sh in plan.shards_of(r["stage"], r["index"])
                           for x in plan.shards[sh].splits[:20]][:20]
    stage_times = [{"stage": st.name, "indices": st.fan_out, "done": len(markers[st.name]),
                    "busy_s": round(sum(float(m.get("wall_time_s", 0.0)) for m in markers[st.name].values()), 3),
                    "span_s": _span(markers[st.name])} for st in plan.stages]
    stage_times = group_rounds(stage_times, lambda rounds: {
        "stage": ROUNDS_ROW, "indices": sum(r["indices"] for r in rounds), "done": sum(r["done"] for r in rounds),
        "busy_s": round(sum(r["busy_s"] for r in rounds), 3),
        "span_s": _span({(r["stage"], i): m for r in rounds for i, m in markers[r["stage"]].items()}),
        "rounds": len(rounds)})
    return {
        "run_id": plan.run_id, "output": plan.output, "complete": complete, "generated_s": round(time.time(), 3),
        "shards": plan.num_shards, "input_bytes": plan.input_bytes, "tokenizer": {
            k: (plan.tokenizer or {}).get(k) for k in ("path", "source", "vocab_size", "dtype", "eos_token")},
        "stats": stats,
        "hist": {"chars_in": merge_histograms(m.get("hist_chars_in") for m in clean.values()),
                 "chars_out": merge_histograms(m.get("hist_chars_out") for m in clean.values()),
                 "tokens_in": merge_histograms((m.get("hist_tokens_in") for m in clean.values()), weights),
                 "tokens_out": merge_histograms(m.get("hist_tokens") for m in tok.values())},
        "token_sample_docs": sum(int(m.get("sample_docs", 0) or 0) for m in clean.values()),
        "by_source": dict(sorted(src.items(), key=lambda kv: (-kv[1][0], kv[0]))),
        "by_language": dict(sorted(lang.items(), key=lambda kv: (-kv[1], kv[0]))),
        "language_from": lang_from,
        "examples": dict(sorted(examples.items())),
        "slowest": slow,
        "stage_times": stage_times,
    }
