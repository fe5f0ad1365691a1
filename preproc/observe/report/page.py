"""``OUTPUT/report.html``: one self-contained page on what a run did.

The page (written by finalize and by ``preproc report OUTPUT``) shows the funnel from
documents read to tokens written, what was removed by rule and by reason, per-language and
per-source counts, document length histograms (characters and tokens, before and after
cleaning), time per stage, the slowest shards, and a few truncated examples of removed
documents per rule. Charts are inline SVG (:mod:`preproc.observe.report.charts`; no script,
no font or stylesheet from the network: a Content-Security-Policy forbids any fetch), so the
file opens anywhere, offline, and is small. The numbers the page shows
(:func:`preproc.observe.report.data.report_data`) are embedded as JSON
(``<script type="application/json" id="report-data">``) for tools.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from preproc.io import layout
from preproc.observe.report.charts import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    RED,
    bin_label,
    clip,
    esc,
    fmt_bytes,
    fmt_int,
    fmt_secs,
    svg_hbars,
    svg_histogram,
)
from preproc.observe.report.data import report_data
from preproc.observe.stats import EXAMPLE_CHARS, EXAMPLES_PER_REASON, SAMPLE_DOCS

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["render_report", "write_report"]


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "", num_cols: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for j, c in enumerate(r):
            if isinstance(c, tuple):       # (text, data-stat key)
                cells.append(f'<td class="num" data-stat="{esc(c[1])}">{esc(c[0])}</td>')
            else:
                cells.append(f'<td class="num">{esc(c)}</td>' if j in num_cols else f"<td>{esc(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.warn{background:#fff4e5;border:1px solid #f0c36d;padding:8px 12px;border-radius:6px}
.ex{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word;background:#fafafa;border:1px solid #eee;padding:6px;margin:4px 0;max-height:9em;overflow:hidden}
.meta{color:#777;font-size:12px}svg.chart{display:block;margin:6px 0 10px}
"""


def render_report(data: dict[str, Any]) -> str:
    """The HTML page for :func:`report_data`'s result."""
    s = data["stats"]
    parts: list[str] = []
    a = parts.append
    a("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
      "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
      f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>preproc run {esc(data['run_id'])}</title>"
      f"<style>{_CSS}</style></head><body>")
    a(f"<h1>preproc run <code>{esc(data['run_id'])}</code></h1>")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["generated_s"]))
    a(f"<p class='sub'>{esc(data['output'])} · {data['shards']:,} shard(s), {fmt_bytes(data['input_bytes'])} of input · "
      f"report generated {when}</p>")
    if not data["complete"]:
        a("<p class='warn' id='incomplete'>This run is not complete: the numbers below cover the indices "
          "finished so far.</p>")
    cards = [("read", s.get("read", 0), "documents read"), ("kept", s.get("kept", 0), "documents kept"),
             ("tokens", s.get("tokens", 0), "tokens written"), ("filtered_total", s.get("filtered_total", 0), "filtered"),
             ("duplicates_total", s.get("duplicates_total", 0), "duplicates"),
             ("rejected_total", s.get("rejected_total", 0), "rejected")]
    a("<div class='cards'>" + "".join(f"<div class='card'><b data-stat='{k}'>{fmt_int(v)}</b><span>{esc(lbl)}</span></div>"
                                      for k, v, lbl in cards) + "</div>")

    # -- funnel
    read = s.get("read", 0)
    accepted = read - s.get("rejected_total", 0)
    after_filters = accepted - s.get("filtered_total", 0)
    a("<h2 id='funnel'>Funnel: from documents read to tokens written</h2>")
    a(svg_hbars([("read", read), ("valid records", accepted), ("after clean steps", after_filters),
                 ("after dedup = kept", s.get("kept", 0))], title="documents remaining after each step",
                color=[GREY, BLUE, BLUE, GREEN]))
    dup = s.get("duplicates", {}) or {}
    rows: list[Sequence[Any]] = [("documents read", (fmt_int(read), "read")),
                                 ("rejected (bad records)", (fmt_int(s.get("rejected_total", 0)), "rejected_total")),
                                 ("filtered (clean steps)", (fmt_int(s.get("filtered_total", 0)), "filtered_total")),
                                 ("exact duplicates", (fmt_int(dup.get("exact", 0)), "duplicates.exact")),
                                 ("near duplicates", (fmt_int(dup.get("near", 0)), "duplicates.near")),
                                 ("documents kept", (fmt_int(s.get("kept", 0)), "kept")),
                                 ("tokens written", (fmt_int(s.get("tokens", 0)), "tokens"))]
    a(_table(["step", "documents"], rows, cls="funnel"))
    if s.get("blank_lines"):
        a(f"<p class='meta'>{fmt_int(s['blank_lines'])} blank line(s) skipped (not documents).</p>")

    # -- removed, by reason
    a("<h2 id='removed'>What was removed, and why</h2>")
    removed = ([(f"filtered · {k}", v, "filtered." + k) for k, v in (s.get("filtered") or {}).items()]
               + [(f"duplicate · {k}", v, "duplicates." + k) for k, v in dup.items() if v]
               + [(f"rejected · {k}", v, "rejected." + k) for k, v in (s.get("rejected") or {}).items()])
    removed.sort(key=lambda r: -r[1])
    if removed:
        cmap = {"filtered": ORANGE, "duplicate": BLUE, "rejected": RED}
        a(svg_hbars([(r[0], r[1]) for r in removed], title="documents removed by rule",
                    color=[cmap[r[0].split(" ·")[0]] for r in removed]))
        a(_table(["rule", "documents", "share of read"],
                 [(r[0], (fmt_int(r[1]), r[2]), f"{100 * r[1] / read:.2f}%" if read else "–") for r in removed],
                 cls="removed", num_cols=(2,)))
    else:
        a("<p>Nothing was removed.</p>")
    if s.get("file_errors"):
        a("<h3>Files that could not be read (fully)</h3>")
        a(_table(["file", "error", "detail"], [(e.get("file"), e.get("error"), clip(str(e.get("detail", "")), 160))
                                               for e in s["file_errors"][:50]], cls="file-errors"))

    # -- languages and sources
    lang = data["by_language"]
    what = "language" if data.get("language_from") == "language" else "script"
    a(f"<h2 id='languages'>Kept documents per {what}</h2>")
    if what == "script":
        a("<p class='meta'>No language filter ran, so documents are grouped by the dominant Unicode script of "
          "their first characters (Han: Chinese characters; Kana: Japanese).</p>")
    if lang:
        top = list(lang.items())[:25]
        a(svg_hbars(top, title=f"kept documents per {what}"))
        a(_table([what, "documents", "share"], [(k, fmt_int(v), f"{100 * v / max(1, sum(lang.values())):.1f}%")
                                              for k, v in lang.items()], cls="languages", num_cols=(1, 2)))
    else:
        a("<p>No data (markers from an older version).</p>")
    src = data["by_source"]
    a("<h2 id='sources'>Documents per source</h2>")
    if src:
        top = list(src.items())[:25]
        a(svg_hbars([(k, v[1]) for k, v in top], title="kept documents per source (top 25)"))
        a(_table(["source", "entering clean steps", "kept", "kept share"],
                 [(k, fmt_int(v[0]), fmt_int(v[1]), f"{100 * v[1] / v[0]:.1f}%" if v[0] else "–") for k, v in src.items()],
                 cls="sources", num_cols=(1, 2, 3)))
    else:
        a("<p>No data (markers from an older version).</p>")

    # -- lengths
    h = data["hist"]
    a("<h2 id='lengths'>Document length</h2>")
    chart = svg_histogram({"before cleaning": h["chars_in"], "after cleaning": h["chars_out"]},
                          title="document length in characters", xlabel="characters")
    a("<h3>In characters</h3>" + (chart or "<p>No data.</p>"))
    chart = svg_histogram({"before cleaning (sample)": h["tokens_in"], "after cleaning and dedup": h["tokens_out"]},
                          title="document length in tokens", xlabel="tokens")
    a("<h3>In tokens</h3>" + (chart or "<p>No data.</p>"))
    if data.get("token_sample_docs"):
        a(f"<p class='meta'>Before cleaning: a random sample of {data['token_sample_docs']:,} documents "
          f"(at most {SAMPLE_DOCS} per shard), tokenized with the run's tokenizer and weighted by shard; "
          "after: every kept document (BOS/EOS included).</p>")
    a(_length_table(h))

    # -- time
    a("<h2 id='time'>Time per stage</h2>")
    st = data["stage_times"]
    a(svg_hbars([(r["stage"], r["busy_s"]) for r in st], title="worker time per stage (sum over indices)",
                fmt=fmt_secs))
    a(_table(["stage", "indices", "done", "worker time (sum)", "wall clock (first start to last end)"],
             [(r["stage"] + (f" ({r['rounds']} rounds)" if r.get("rounds") else ""), r["indices"], r["done"],
               fmt_secs(r["busy_s"]), fmt_secs(r["span_s"])) for r in st],
             cls="stage-times", num_cols=(1, 2, 3, 4)))
    if data["slowest"]:
        a("<h3 id='slowest'>Slowest shards</h3>")
        a(_table(["stage", "index", "time", "documents", "input", "throughput", "inputs"],
                 [(r["stage"], r["index"], fmt_secs(r["wall_time_s"]), fmt_int(r["docs"]), fmt_bytes(r["input_bytes"]),
                   f"{fmt_bytes(r['input_bytes'] / r['wall_time_s'])}/s" if r["wall_time_s"] and r["input_bytes"] else "–",
                   clip(", ".join(r["inputs"]), 160)) for r in data["slowest"]],
                 cls="slowest", num_cols=(1, 2, 3, 4, 5)))

    # -- examples
    a("<h2 id='examples'>Examples of removed documents</h2>")
    if data["examples"]:
        a(f"<p class='meta'>Up to {EXAMPLES_PER_REASON} per rule, cut at {EXAMPLE_CHARS} characters.</p>")
        for reason, exs in data["examples"].items():
            a(f"<h3>{esc(reason)}</h3>")
            for ex in exs:
                more = f" · {ex['chars']:,} chars" if ex.get("chars") is not None else ""
                cut = "…" if ex.get("chars") and ex["chars"] > len(ex.get("text") or "") else ""
                a(f"<div class='meta'>{esc(ex.get('id'))} · {esc(ex.get('source'))}{more}</div>"
                  f"<div class='ex'>{esc(ex.get('text'))}{cut}</div>")
    else:
        a("<p>None.</p>")
    # Every "<" escaped: "</script" would end the element and "<!--<script" would make the
    # parser swallow the rest of the page (HTML's script-data escaped states).
    blob = json.dumps(data, ensure_ascii=False, default=str).replace("<", "\\u003c")
    a(f"<script type='application/json' id='report-data'>{blob}</script>")
    a("</body></html>")
    return "".join(parts)


def _length_table(h: dict[str, list[float]]) -> str:
    n = max((len(v) for v in h.values()), default=0)
    if not n:
        return ""
    cols = [("chars_in", "chars, before"), ("chars_out", "chars, after"), ("tokens_in", "tokens, before (est.)"),
            ("tokens_out", "tokens, after")]
    rows = []
    for k in range(n):
        if not any(k < len(h[c]) and h[c][k] for c, _ in cols):
            continue
        rng = f"{bin_label(k)}–{bin_label(k + 1)}" if k else "0"
        rows.append([rng] + [fmt_int(h[c][k]) if k < len(h[c]) else "0" for c, _ in cols])
    return _table(["length"] + [lbl for _, lbl in cols], rows, cls="lengths", num_cols=(1, 2, 3, 4))


def write_report(store: Store, plan: Plan, stats: dict[str, Any] | None = None, *,
                 rel: str = layout.REPORT) -> str:
    """Build and write the report under the output (atomically); return its location."""
    page = render_report(report_data(plan, store, stats))
    store.write_bytes(rel, page.encode("utf-8"))
    return store.url(rel)
