"""``OUTPUT/report.html``: one self-contained page on what a run did, and the bounded
statistics the stages collect for it.

The page (written by finalize and by ``preproc report OUTPUT``) shows the funnel from
documents read to tokens written, what was removed by rule and by reason, per-language and
per-source counts, document length histograms (characters and tokens, before and after
cleaning), time per stage, the slowest shards, and a few truncated examples of removed
documents per rule. Charts are inline SVG drawn here (no plotting library, no script, no
font or stylesheet from the network: a Content-Security-Policy forbids any fetch), so the
file opens anywhere, offline, and is small. The numbers the page shows are embedded as JSON
(``<script type="application/json" id="report-data">``) for tools.

What the stages add to their markers for it, each of bounded size whatever the shard size:

* clean: ``hist_chars_in`` / ``hist_chars_out`` (document length in characters entering the
  clean steps and kept; :func:`log2_histogram` bins), ``hist_tokens_in`` (token lengths of a
  reservoir sample of at most :data:`SAMPLE_DOCS` documents entering the steps, tokenized
  with the run's tokenizer — the first :data:`SAMPLE_HEAD_CHARS` characters, scaled to the
  document's length; ``sample_docs`` of ``sample_of``), ``by_source``
  (``{source: [in, kept]}``, top :data:`TOP_KEYS` plus ``(other)``), ``by_language``
  (``{language: kept}`` from the ``language`` column a language filter adds, else the
  dominant Unicode script of the first characters, ``language_from: "script"``), and
  ``examples`` (per drop reason, :data:`EXAMPLES_PER_REASON` documents truncated to
  :data:`EXAMPLE_CHARS` characters).
* tokenize: ``hist_tokens`` (tokens per kept document, BOS/EOS included).

Missing fields (markers of an older run) just leave their section empty.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["CleanProfile", "log2_histogram", "merge_histograms", "report_data", "render_report", "write_report"]

log = logging.getLogger("preproc")

HIST_BINS = 40                # bin 0: length 0; bin k: [2**(k-1), 2**k)
SAMPLE_DOCS = 128             # documents tokenized per clean index for "tokens before cleaning"
SAMPLE_HEAD_CHARS = 2048      # a longer sampled document: tokens of its head, scaled by its length
TOP_KEYS = 50                 # sources / languages kept per marker
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 240
MAX_REASONS = 40
SCRIPT_HEAD_CHARS = 100
_SCRIPTS = ("Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Han (CJK)", "Kana (Japanese)",
            "Hangul", "Thai")


def _lead_table() -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 lead byte → script position in ``_SCRIPTS`` (len: none), and which lead
    bytes need the next byte to decide."""
    t = np.full(256, len(_SCRIPTS), dtype=np.uint8)
    t[0x41:0x5B] = t[0x61:0x7B] = t[0xC3:0xCA] = 0      # ASCII letters, Latin-1 and Latin Extended
    t[0xCE:0xD0] = 2                                    # Greek
    t[0xD0:0xD4] = 1                                    # Cyrillic
    t[0xD7] = 4                                         # Hebrew
    t[0xD8:0xDC] = 3                                    # Arabic
    t[0xE4:0xEA] = 6                                    # CJK unified ideographs
    t[0xEB:0xED] = 8                                    # Hangul syllables
    amb = np.zeros(256, dtype=bool)
    amb[[0xCD, 0xD6, 0xE0, 0xE3, 0xEA, 0xED]] = True
    return t, amb


_LEAD, _AMBIGUOUS = _lead_table()


# == collecting (in the stages) ===============================================================

def log2_histogram(lengths: np.ndarray) -> list[int]:
    """Counts per log2 bin (bin 0: 0; bin k: [2**(k-1), 2**k)), trailing zeros trimmed."""
    x = np.asarray(lengths, dtype=np.int64)
    if x.size == 0:
        return []
    bins = np.zeros(x.shape, dtype=np.int64)
    pos = x > 0
    bins[pos] = np.minimum(np.floor(np.log2(x[pos])).astype(np.int64) + 1, HIST_BINS - 1)
    counts = np.bincount(bins, minlength=HIST_BINS)
    nz = np.flatnonzero(counts)
    return [int(c) for c in counts[: nz[-1] + 1]] if nz.size else []


def merge_histograms(hists: Iterable[Sequence[float] | None], weights: Iterable[float] | None = None) -> list[float]:
    out: list[float] = []
    ws = iter(weights) if weights is not None else None
    for h in hists:
        w = next(ws) if ws is not None else 1.0
        if not h:
            continue
        if len(h) > len(out):
            out += [0] * (len(h) - len(out))
        for i, v in enumerate(h):
            out[i] += v * w if ws is not None else v
    return out


def _count_into(acc: dict[str, int], col: pa.Array | pa.ChunkedArray) -> None:
    if len(col) == 0:
        return
    vc = pc.value_counts(pc.fill_null(col.cast(pa.string()), "(none)"))
    for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        acc[v] = acc.get(v, 0) + int(n)
    if len(acc) > 20 * TOP_KEYS:   # very many distinct values: fold the small ones now
        _fold(acc, 10 * TOP_KEYS)


def _fold(acc: dict[str, int], keep: int) -> None:
    if len(acc) <= keep:
        return
    top = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))
    other = sum(n for _, n in top[keep:])
    acc.clear()
    acc.update(top[:keep])
    acc["(other)"] = acc.get("(other)", 0) + other


def dominant_script(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Per document, the Unicode script with most letters among its first characters.

    One vectorized pass over the UTF-8 bytes of each document's head: a letter's script is
    read from its lead byte (and the next byte where a lead byte covers several blocks).
    """
    head = pc.utf8_slice_codeunits(text, 0, SCRIPT_HEAD_CHARS)
    if isinstance(head, pa.ChunkedArray):
        head = head.combine_chunks()
    head = head.cast(pa.large_string())
    n = len(head)
    if n == 0:
        return pa.array([], type=pa.string())
    offsets = np.frombuffer(head.buffers()[1], dtype=np.int64)[head.offset:head.offset + n + 1]
    data = head.buffers()[2]
    b = (np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8))[offsets[0]:offsets[-1]]
    doc = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    k = len(_SCRIPTS)
    cls = _LEAD[b]                                      # k: not a letter we classify
    amb = np.flatnonzero(_AMBIGUOUS[b])                 # lead bytes shared by several blocks
    if amb.size:
        lead = b[amb]
        nx = b[np.minimum(amb + 1, len(b) - 1)]
        fix = np.full(amb.size, k, dtype=np.uint8)
        fix[(lead == 0xCD) & (nx >= 0xB0)] = 2                                   # Greek
        fix[(lead == 0xD6) & (nx >= 0x90)] = 4                                   # Hebrew
        fix[(lead == 0xE0) & ((nx == 0xA4) | (nx == 0xA5))] = 5                  # Devanagari
        fix[(lead == 0xE0) & ((nx == 0xB8) | (nx == 0xB9))] = 9                  # Thai
        fix[(lead == 0xE3) & (nx >= 0x90)] = 6                                   # CJK ext. A
        fix[(lead == 0xE3) & (nx >= 0x81) & (nx <= 0x83)] = 7                    # kana
        fix[((lead == 0xEA) & (nx >= 0xB0)) | ((lead == 0xED) & (nx <= 0x9E))] = 8  # Hangul
        cls[amb] = fix
    counts = np.bincount(doc * (k + 1) + cls.astype(np.int64), minlength=n * (k + 1)).reshape(n, k + 1)[:, :k]
    names = np.array(list(_SCRIPTS) + ["other"], dtype=object)
    best = counts.argmax(axis=1)
    best[counts.max(axis=1) == 0] = k
    # Japanese mixes Han and kana: any real share of kana makes it Japanese, not Chinese.
    han, kana = counts[:, 6], counts[:, 7]
    best[(best == 6) & (kana * 5 >= han) & (kana > 0)] = 7
    return pa.array(names[best], type=pa.string())


class CleanProfile:
    """Bounded statistics of one clean index for the report (see the module docstring)."""

    def __init__(self, index: int):
        self.hist_in: list[float] = []
        self.hist_out: list[float] = []
        self.src_in: dict[str, int] = {}
        self.src_out: dict[str, int] = {}
        self.lang: dict[str, int] = {}
        self.lang_from: str | None = None
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.rng = np.random.default_rng(index)
        self.sample: list[str] = []       # heads of the sampled documents
        self.sample_chars: list[int] = []  # and their full lengths
        self.seen = 0

    def observe_in(self, batch: pa.RecordBatch) -> None:
        """A batch as read, before the clean steps."""
        text = batch.column("text")
        self.hist_in = merge_histograms([self.hist_in, log2_histogram(pc.utf8_length(text).to_numpy(zero_copy_only=False))])
        if "source" in batch.schema.names:
            _count_into(self.src_in, batch.column("source"))
        self._reservoir(text)

    def observe_out(self, kept: pa.RecordBatch) -> None:
        """The rows the clean steps kept."""
        text = kept.column("text")
        self.hist_out = merge_histograms([self.hist_out, log2_histogram(pc.utf8_length(text).to_numpy(zero_copy_only=False))])
        if "source" in kept.schema.names:
            _count_into(self.src_out, kept.column("source"))
        if "language" in kept.schema.names:
            self.lang_from = "language"
            _count_into(self.lang, kept.column("language"))
        elif self.lang_from != "language":
            self.lang_from = "script"
            _count_into(self.lang, dominant_script(text))

    def observe_removed(self, removed: pa.Table | pa.RecordBatch | None) -> None:
        """Rows a step dropped (``reason`` column ``step:reason``), for examples."""
        if removed is None or removed.num_rows == 0:
            return
        reasons = removed.column("reason")
        for r in pc.unique(reasons).to_pylist():
            have = self.examples.get(r)
            if (have is not None and len(have) >= EXAMPLES_PER_REASON) or (have is None and len(self.examples) >= MAX_REASONS):
                continue
            have = self.examples.setdefault(r, [])
            rows = removed.filter(pc.equal(reasons, r)).slice(0, EXAMPLES_PER_REASON - len(have))
            names = rows.schema.names
            for k in range(rows.num_rows):
                text = rows.column("text")[k].as_py() or ""
                have.append({"id": rows.column("id")[k].as_py() if "id" in names else None,
                             "source": rows.column("source")[k].as_py() if "source" in names else None,
                             "text": text[:EXAMPLE_CHARS], "chars": len(text)})

    def observe_rejects(self, rejects: list[dict[str, Any]]) -> None:
        for r in rejects:
            key = f"rejected:{r.get('reason')}"
            have = self.examples.get(key)
            if (have is not None and len(have) >= EXAMPLES_PER_REASON) or (have is None and len(self.examples) >= MAX_REASONS):
                continue
            self.examples.setdefault(key, []).append({"id": r.get("location"), "source": r.get("file"),
                                                      "text": str(r.get("head", ""))[:EXAMPLE_CHARS]})

    def _reservoir(self, text: pa.Array | pa.ChunkedArray) -> None:
        n = len(text)
        if n == 0:
            return
        take: list[tuple[int, int]] = []          # (slot, row)
        fill = max(0, min(SAMPLE_DOCS - self.seen, n))
        take += [(self.seen + r, r) for r in range(fill)]
        if fill < n:   # Algorithm R, vectorized: row at stream position p replaces slot j < k
            pos = np.arange(self.seen + fill, self.seen + n, dtype=np.int64)
            j = self.rng.integers(0, pos + 1)
            hit = np.flatnonzero(j < SAMPLE_DOCS)
            take += [(int(j[h]), fill + int(h)) for h in hit]
        for slot, row in take:
            s = text[row].as_py() or ""
            if slot < len(self.sample):
                self.sample[slot], self.sample_chars[slot] = s[:SAMPLE_HEAD_CHARS], len(s)
            else:
                self.sample.append(s[:SAMPLE_HEAD_CHARS])
                self.sample_chars.append(len(s))
        self.seen += n

    def to_stats(self, tokenizer: Any = None, *, special_tokens: int = 0) -> dict[str, Any]:
        """The marker fields; ``tokenizer(texts) -> list of id lists`` measures the sample."""
        _fold(self.src_in, TOP_KEYS)
        src = {k: [v, self.src_out.get(k, 0)] for k, v in self.src_in.items()}
        folded_out = sum(v for k, v in self.src_out.items() if k not in src)
        if folded_out:
            src.setdefault("(other)", [0, 0])[1] += folded_out
        _fold(self.lang, TOP_KEYS)
        out: dict[str, Any] = {"hist_chars_in": self.hist_in, "hist_chars_out": self.hist_out,
                               "by_source": src, "by_language": dict(self.lang),
                               "language_from": self.lang_from, "examples": self.examples}
        if tokenizer is not None and self.sample:
            try:
                ids = tokenizer(self.sample)
                # Bounded cost: a long document's count is its head's, scaled by its length.
                lens = np.array([round(len(x) * max(1.0, n / max(1, len(h)))) + special_tokens
                                 for x, h, n in zip(ids, self.sample, self.sample_chars)], dtype=np.int64)
                out.update(hist_tokens_in=log2_histogram(lens), sample_docs=len(self.sample), sample_of=self.seen)
            except Exception:  # noqa: BLE001 - the sample is for a chart only
                log.debug("token sample failed", exc_info=True)
        return out

    def finish(self, plan: "Plan", store: "Store") -> dict[str, Any]:
        """:meth:`to_stats` with the run's tokenizer (if it can be loaded)."""
        tok = None
        info = plan.tokenizer or {}
        if self.sample and info.get("sha256"):
            special_text = plan.spec.tokenize.encode_special_tokens
            try:
                from preproc.tokenize.tokenizer import Encoder

                tok = Encoder(store, info, encode_special_tokens=special_text).ids
            except Exception:  # noqa: BLE001
                log.debug("no tokenizer for the length sample", exc_info=True)
        special = (info.get("bos_id") is not None) + (info.get("eos_id") is not None)
        return self.to_stats(tok, special_tokens=special)


# == aggregating (at finalize, or `preproc report`) ===========================================

def _span(markers: dict[int, dict[str, Any]]) -> float | None:
    starts = [m["started_s"] for m in markers.values() if m.get("started_s")]
    ends = [m["finished_s"] for m in markers.values() if m.get("finished_s")]
    return round(max(ends) - min(starts), 3) if starts and ends else None


def report_data(plan: "Plan", store: "Store", stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the page shows, from ``stats.json`` (or the markers) and the markers."""
    from preproc.observe.progress import ROUNDS_ROW, SHARD_STAGES, _split_label, group_rounds

    markers = {st.name: store.read_markers(st.name) for st in plan.stages}
    complete = store.exists("dataset.json")
    if stats is None:
        try:
            stats = store.read_json("stats.json")
        except FileNotFoundError:
            from preproc.engine.stats import collect_stats

            stats = {k: v for k, v in collect_stats(plan, store).items() if not k.startswith("_")}
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
    for stage in [s for s in SHARD_STAGES if s in markers]:
        for i, m in markers[stage].items():
            inputs = [_split_label(x) for x in plan.shards[i].splits] if i < plan.num_shards else []
            slow.append({"stage": stage, "index": i, "wall_time_s": float(m.get("wall_time_s", 0.0)),
                         "docs": int(m.get("read", m.get("docs", 0)) or 0), "tokens": int(m.get("tokens", 0) or 0),
                         "input_bytes": int(m.get("input_bytes", 0) or 0) or (plan.shards[i].bytes if i < plan.num_shards else 0),
                         "inputs": inputs})
    slow.sort(key=lambda r: -r["wall_time_s"])
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
        "slowest": slow[:10],
        "stage_times": stage_times,
    }


# == rendering ==================================================================================

_BLUE, _ORANGE, _RED, _GREEN, _GREY = "#3b6ea8", "#e08a2c", "#c0392b", "#2e8b57", "#8a8a8a"
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _int(x: float) -> str:
    return f"{int(round(x)):,}"


def _bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def _secs(s: float | None) -> str:
    if s is None:
        return "–"
    from preproc.observe.progress import fmt_duration

    return f"{s:.2f}s" if s < 10 else fmt_duration(s)


def _clip(s: str, n: int = 42) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def svg_hbars(rows: Sequence[tuple[str, float]], *, title: str, color: str | Sequence[str] = _BLUE,
              fmt=_int, width: int = 760) -> str:
    """A horizontal bar chart as an inline ``<svg>`` (labels left, values right)."""
    if not rows:
        return ""
    bar_h, gap, top = 20, 6, 8
    label_w = min(300, 12 + 7 * max(len(_clip(r[0])) for r in rows))
    value_w = 110
    plot_w = width - label_w - value_w
    vmax = max((r[1] for r in rows), default=0) or 1
    h = top * 2 + len(rows) * (bar_h + gap)
    colors = [color] * len(rows) if isinstance(color, str) else list(color)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}" style="{_FONT};font-size:12px"><title>{_e(title)}</title>']
    for k, (label, v) in enumerate(rows):
        y = top + k * (bar_h + gap)
        w = max(0.0, plot_w * v / vmax)
        out.append(f'<g><title>{_e(label)}: {_e(fmt(v))}</title>'
                   f'<text x="{label_w - 6}" y="{y + bar_h * 0.72:.1f}" text-anchor="end" fill="#222">{_e(_clip(label))}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2" fill="{colors[k]}"/>'
                   f'<text x="{label_w + w + 5:.1f}" y="{y + bar_h * 0.72:.1f}" fill="#222">{_e(fmt(v))}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _bin_label(k: int) -> str:
    if k == 0:
        return "0"
    v = 2 ** (k - 1)
    for div, suf in ((2**30, "G"), (2**20, "M"), (2**10, "k")):
        if v >= div:
            return f"{v // div}{suf}"
    return str(v)


def svg_histogram(series: dict[str, Sequence[float]], *, title: str, xlabel: str, width: int = 760,
                  colors: Sequence[str] = (_GREY, _BLUE)) -> str:
    """Grouped bars per log2 bin, each series as a share of its total (they differ in size)."""
    series = {k: list(v) for k, v in series.items() if v and sum(v) > 0}
    if not series:
        return ""
    nb = max(len(v) for v in series.values())
    lo = min(next(i for i, x in enumerate(v) if x > 0) for v in series.values())
    fracs = {k: [(v[i] / sum(v)) if i < len(v) else 0.0 for i in range(lo, nb)] for k, v in series.items()}
    n = nb - lo
    ml, mr, mt, mb = 48, 12, 30, 44
    h = 260
    pw, ph = width - ml - mr, h - mt - mb
    ymax = max(max(f) for f in fracs.values()) or 1
    ymax = math.ceil(ymax * 10) / 10 if ymax > 0.1 else math.ceil(ymax * 100) / 100
    bw = pw / n
    ns = len(fracs)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}" style="{_FONT};font-size:11px"><title>{_e(title)}</title>']
    for t in range(5):   # grid and y labels
        yv = ymax * t / 4
        y = mt + ph - ph * t / 4
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{ml - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{yv * 100:.0f}%</text>')
    for s, (name, f) in enumerate(fracs.items()):
        for i, v in enumerate(f):
            if v <= 0:
                continue
            x = ml + i * bw + bw * 0.08 + s * (bw * 0.84 / ns)
            bh = ph * v / ymax
            k = lo + i
            rng = f"{_bin_label(k)}–{_bin_label(k + 1)}" if k else "0"
            out.append(f'<rect x="{x:.1f}" y="{mt + ph - bh:.1f}" width="{bw * 0.84 / ns:.1f}" height="{bh:.1f}" '
                       f'fill="{colors[s % len(colors)]}"><title>{_e(name)}, {rng} {xlabel}: {v * 100:.1f}%</title></rect>')
    step = max(1, math.ceil(n / 16))
    for i in range(0, n, step):
        x = ml + i * bw
        out.append(f'<text x="{x:.1f}" y="{mt + ph + 14}" text-anchor="middle" fill="#555">{_bin_label(lo + i)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{h - 8}" text-anchor="middle" fill="#333">{_e(xlabel)} (log scale, '
               f'bins of powers of 2)</text>')
    lx = ml + 8
    for s, name in enumerate(fracs):
        out.append(f'<rect x="{lx}" y="8" width="12" height="12" fill="{colors[s % len(colors)]}"/>'
                   f'<text x="{lx + 16}" y="18" fill="#222">{_e(name)}</text>')
        lx += 24 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "", num_cols: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for j, c in enumerate(r):
            if isinstance(c, tuple):       # (text, data-stat key)
                cells.append(f'<td class="num" data-stat="{_e(c[1])}">{_e(c[0])}</td>')
            else:
                cells.append(f'<td class="num">{_e(c)}</td>' if j in num_cols else f"<td>{_e(c)}</td>")
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
      f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>preproc run {_e(data['run_id'])}</title>"
      f"<style>{_CSS}</style></head><body>")
    a(f"<h1>preproc run <code>{_e(data['run_id'])}</code></h1>")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["generated_s"]))
    a(f"<p class='sub'>{_e(data['output'])} · {data['shards']:,} shard(s), {_bytes(data['input_bytes'])} of input · "
      f"report generated {when}</p>")
    if not data["complete"]:
        a("<p class='warn' id='incomplete'>This run is not complete: the numbers below cover the indices "
          "finished so far.</p>")
    cards = [("read", s.get("read", 0), "documents read"), ("kept", s.get("kept", 0), "documents kept"),
             ("tokens", s.get("tokens", 0), "tokens written"), ("filtered_total", s.get("filtered_total", 0), "filtered"),
             ("duplicates_total", s.get("duplicates_total", 0), "duplicates"),
             ("rejected_total", s.get("rejected_total", 0), "rejected")]
    a("<div class='cards'>" + "".join(f"<div class='card'><b data-stat='{k}'>{_int(v)}</b><span>{_e(lbl)}</span></div>"
                                      for k, v, lbl in cards) + "</div>")

    # -- funnel
    read = s.get("read", 0)
    accepted = read - s.get("rejected_total", 0)
    after_filters = accepted - s.get("filtered_total", 0)
    a("<h2 id='funnel'>Funnel: from documents read to tokens written</h2>")
    a(svg_hbars([("read", read), ("valid records", accepted), ("after clean steps", after_filters),
                 ("after dedup = kept", s.get("kept", 0))], title="documents remaining after each step",
                color=[_GREY, _BLUE, _BLUE, _GREEN]))
    dup = s.get("duplicates", {}) or {}
    rows: list[Sequence[Any]] = [("documents read", (_int(read), "read")),
                                 ("rejected (bad records)", (_int(s.get("rejected_total", 0)), "rejected_total")),
                                 ("filtered (clean steps)", (_int(s.get("filtered_total", 0)), "filtered_total")),
                                 ("exact duplicates", (_int(dup.get("exact", 0)), "duplicates.exact")),
                                 ("near duplicates", (_int(dup.get("near", 0)), "duplicates.near")),
                                 ("documents kept", (_int(s.get("kept", 0)), "kept")),
                                 ("tokens written", (_int(s.get("tokens", 0)), "tokens"))]
    a(_table(["step", "documents"], rows, cls="funnel"))
    if s.get("blank_lines"):
        a(f"<p class='meta'>{_int(s['blank_lines'])} blank line(s) skipped (not documents).</p>")

    # -- removed, by reason
    a("<h2 id='removed'>What was removed, and why</h2>")
    removed = ([(f"filtered · {k}", v, "filtered." + k) for k, v in (s.get("filtered") or {}).items()]
               + [(f"duplicate · {k}", v, "duplicates." + k) for k, v in dup.items() if v]
               + [(f"rejected · {k}", v, "rejected." + k) for k, v in (s.get("rejected") or {}).items()])
    removed.sort(key=lambda r: -r[1])
    if removed:
        cmap = {"filtered": _ORANGE, "duplicate": _BLUE, "rejected": _RED}
        a(svg_hbars([(r[0], r[1]) for r in removed], title="documents removed by rule",
                    color=[cmap[r[0].split(" ·")[0]] for r in removed]))
        a(_table(["rule", "documents", "share of read"],
                 [(r[0], (_int(r[1]), r[2]), f"{100 * r[1] / read:.2f}%" if read else "–") for r in removed],
                 cls="removed", num_cols=(2,)))
    else:
        a("<p>Nothing was removed.</p>")
    if s.get("file_errors"):
        a("<h3>Files that could not be read (fully)</h3>")
        a(_table(["file", "error", "detail"], [(e.get("file"), e.get("error"), _clip(str(e.get("detail", "")), 160))
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
        a(_table([what, "documents", "share"], [(k, _int(v), f"{100 * v / max(1, sum(lang.values())):.1f}%")
                                              for k, v in lang.items()], cls="languages", num_cols=(1, 2)))
    else:
        a("<p>No data (markers from an older version).</p>")
    src = data["by_source"]
    a("<h2 id='sources'>Documents per source</h2>")
    if src:
        top = list(src.items())[:25]
        a(svg_hbars([(k, v[1]) for k, v in top], title="kept documents per source (top 25)"))
        a(_table(["source", "entering clean steps", "kept", "kept share"],
                 [(k, _int(v[0]), _int(v[1]), f"{100 * v[1] / v[0]:.1f}%" if v[0] else "–") for k, v in src.items()],
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
                fmt=_secs))
    a(_table(["stage", "indices", "done", "worker time (sum)", "wall clock (first start to last end)"],
             [(r["stage"] + (f" ({r['rounds']} rounds)" if r.get("rounds") else ""), r["indices"], r["done"],
               _secs(r["busy_s"]), _secs(r["span_s"])) for r in st],
             cls="stage-times", num_cols=(1, 2, 3, 4)))
    if data["slowest"]:
        a("<h3 id='slowest'>Slowest shards</h3>")
        a(_table(["stage", "index", "time", "documents", "input", "throughput", "inputs"],
                 [(r["stage"], r["index"], _secs(r["wall_time_s"]), _int(r["docs"]), _bytes(r["input_bytes"]),
                   f"{_bytes(r['input_bytes'] / r['wall_time_s'])}/s" if r["wall_time_s"] and r["input_bytes"] else "–",
                   _clip(", ".join(r["inputs"]), 160)) for r in data["slowest"]],
                 cls="slowest", num_cols=(1, 2, 3, 4, 5)))

    # -- examples
    a("<h2 id='examples'>Examples of removed documents</h2>")
    if data["examples"]:
        a(f"<p class='meta'>Up to {EXAMPLES_PER_REASON} per rule, cut at {EXAMPLE_CHARS} characters.</p>")
        for reason, exs in data["examples"].items():
            a(f"<h3>{_e(reason)}</h3>")
            for ex in exs:
                more = f" · {ex['chars']:,} chars" if ex.get("chars") is not None else ""
                cut = "…" if ex.get("chars") and ex["chars"] > len(ex.get("text") or "") else ""
                a(f"<div class='meta'>{_e(ex.get('id'))} · {_e(ex.get('source'))}{more}</div>"
                  f"<div class='ex'>{_e(ex.get('text'))}{cut}</div>")
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
        rng = f"{_bin_label(k)}–{_bin_label(k + 1)}" if k else "0"
        rows.append([rng] + [_int(h[c][k]) if k < len(h[c]) else "0" for c, _ in cols])
    return _table(["length"] + [lbl for _, lbl in cols], rows, cls="lengths", num_cols=(1, 2, 3, 4))


def write_report(store: "Store", plan: "Plan", stats: dict[str, Any] | None = None, *,
                 rel: str = "report.html") -> str:
    """Build and write the report under the output (atomically); return its location."""
    page = render_report(report_data(plan, store, stats))
    store.write_bytes(rel, page.encode("utf-8"))
    return store.url(rel)
