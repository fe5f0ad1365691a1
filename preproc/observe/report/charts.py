"""The report's charts and number formats: inline SVG drawn here, with no plotting library
and no font or script from the network, so ``report.html`` opens anywhere, offline."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from preproc.observe.progress import fmt_duration

__all__ = ["svg_hbars", "svg_histogram", "bin_label", "esc", "clip", "fmt_int", "fmt_bytes", "fmt_secs",
           "BLUE", "ORANGE", "RED", "GREEN", "GREY", "FONT"]

BLUE, ORANGE, RED, GREEN, GREY = "#3b6ea8", "#e08a2c", "#c0392b", "#2e8b57", "#8a8a8a"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt_int(x: float) -> str:
    return f"{int(round(x)):,}"


def fmt_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def fmt_secs(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.2f}s" if s < 10 else fmt_duration(s)


def clip(s: str, n: int = 42) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def svg_hbars(rows: Sequence[tuple[str, float]], *, title: str, color: str | Sequence[str] = BLUE,
              fmt=fmt_int, width: int = 760) -> str:
    """A horizontal bar chart as an inline ``<svg>`` (labels left, values right)."""
    if not rows:
        return ""
    bar_h, gap, top = 20, 6, 8
    label_w = min(300, 12 + 7 * max(len(clip(r[0])) for r in rows))
    value_w = 110
    plot_w = width - label_w - value_w
    vmax = max((r[1] for r in rows), default=0) or 1
    h = top * 2 + len(rows) * (bar_h + gap)
    colors = [color] * len(rows) if isinstance(color, str) else list(color)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}" style="{FONT};font-size:12px"><title>{esc(title)}</title>']
    for k, (label, v) in enumerate(rows):
        y = top + k * (bar_h + gap)
        w = max(0.0, plot_w * v / vmax)
        out.append(f'<g><title>{esc(label)}: {esc(fmt(v))}</title>'
                   f'<text x="{label_w - 6}" y="{y + bar_h * 0.72:.1f}" text-anchor="end" fill="#222">{esc(clip(label))}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2" fill="{colors[k]}"/>'
                   f'<text x="{label_w + w + 5:.1f}" y="{y + bar_h * 0.72:.1f}" fill="#222">{esc(fmt(v))}</text></g>')
    out.append("</svg>")
    return "".join(out)


def bin_label(k: int) -> str:
    if k == 0:
        return "0"
    v = 2 ** (k - 1)
    for div, suf in ((2**30, "G"), (2**20, "M"), (2**10, "k")):
        if v >= div:
            return f"{v // div}{suf}"
    return str(v)


def svg_histogram(series: dict[str, Sequence[float]], *, title: str, xlabel: str, width: int = 760,
                  colors: Sequence[str] = (GREY, BLUE)) -> str:
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
           f'viewBox="0 0 {width} {h}" style="{FONT};font-size:11px"><title>{esc(title)}</title>']
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
            rng = f"{bin_label(k)}–{bin_label(k + 1)}" if k else "0"
            out.append(f'<rect x="{x:.1f}" y="{mt + ph - bh:.1f}" width="{bw * 0.84 / ns:.1f}" height="{bh:.1f}" '
                       f'fill="{colors[s % len(colors)]}"><title>{esc(name)}, {rng} {xlabel}: {v * 100:.1f}%</title></rect>')
    step = max(1, math.ceil(n / 16))
    for i in range(0, n, step):
        x = ml + i * bw
        out.append(f'<text x="{x:.1f}" y="{mt + ph + 14}" text-anchor="middle" fill="#555">{bin_label(lo + i)}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{h - 8}" text-anchor="middle" fill="#333">{esc(xlabel)} (log scale, '
               f'bins of powers of 2)</text>')
    lx = ml + 8
    for s, name in enumerate(fracs):
        out.append(f'<rect x="{lx}" y="8" width="12" height="12" fill="{colors[s % len(colors)]}"/>'
                   f'<text x="{lx + 16}" y="18" fill="#222">{esc(name)}</text>')
        lx += 24 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)
