"""``report.html``: its numbers equal ``stats.json`` and the markers, it is self-contained,
and a real headless browser (Debian's chromium) renders its charts and tables."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import preproc
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, demo_inputs) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    spec = {"input": {"paths": [str(demo_inputs / "input" / "*")]}, "output": str(out), "shards": 4,
            # min_words drops the CJK documents (no spaces): a filter with examples to show.
            "clean": {"defaults": False, "normalize": True, "length": {"min_chars": 50, "min_words": 60}},
            "tokenize": {"tokenizer": str(demo_inputs / "tokenizer.json")}}
    preproc.run(spec, workers=2)
    return out


class _Cells(HTMLParser):
    """data-stat cells, element counts and the embedded JSON of a page."""

    def __init__(self):
        super().__init__()
        self.stats: dict[str, list[str]] = {}   # data-stat key -> the texts of its elements
        self.tags: dict[str, int] = {}
        self._key = None
        self._json = False
        self.data = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self._key = a.get("data-stat")
        if self._key:
            self.stats.setdefault(self._key, []).append("")
        self._json = tag == "script" and a.get("id") == "report-data"

    def handle_data(self, d):
        if self._key:
            self.stats[self._key][-1] += d
        if self._json:
            self.data += d

    def handle_endtag(self, tag):
        self._key = None
        if tag == "script":
            self._json = False


def _parse(html: str) -> _Cells:
    p = _Cells()
    p.feed(html)
    return p


def _n(texts: list[str]) -> int:
    """The one number every element of a data-stat key shows (a card and a table cell agree)."""
    values = {int(t.replace(",", "")) for t in texts}
    assert len(values) == 1, texts
    return values.pop()


def test_report_numbers_equal_stats_json(run_out):
    stats = json.loads((run_out / "stats.json").read_text())
    page = (run_out / "report.html").read_text()
    p = _parse(page)
    data = json.loads(p.data)
    assert data["stats"] == stats and data["complete"] is True
    # The numbers a reader sees, cell by cell.
    for key in ("read", "kept", "tokens", "filtered_total", "duplicates_total", "rejected_total"):
        assert _n(p.stats[key]) == stats[key], key
    assert _n(p.stats["duplicates.exact"]) == stats["duplicates"]["exact"]
    for k, v in stats["filtered"].items():
        assert _n(p.stats[f"filtered.{k}"]) == v
    for k, v in stats["rejected"].items():
        assert _n(p.stats[f"rejected.{k}"]) == v
    assert stats["filtered"]["length_v1:min_words"] > 0 and stats["rejected"]["invalid_json"] == 1

    # Per-source, per-language and length histograms add up to the same accounting.
    entering = stats["read"] - stats["rejected_total"]
    after_steps = entering - stats["filtered_total"]
    assert sum(v[0] for v in data["by_source"].values()) == entering
    assert sum(v[1] for v in data["by_source"].values()) == after_steps
    assert set(data["by_source"]) == {f"demo/{l}" for l in ("ar", "de", "el", "en", "es", "fr", "hi", "ja", "ru", "zh")}
    assert data["by_source"]["demo/ja"][1] == 0 and data["by_source"]["demo/en"][1] > 0
    assert sum(data["by_language"].values()) == after_steps and data["language_from"] == "script"
    assert {"Latin", "Cyrillic", "Greek", "Arabic", "Devanagari"} <= set(data["by_language"])
    h = data["hist"]
    assert sum(h["chars_in"]) == entering and sum(h["chars_out"]) == after_steps
    assert sum(h["tokens_out"]) == stats["kept"]
    assert round(sum(h["tokens_in"])) == entering and data["token_sample_docs"] > 0
    # A few truncated examples per rule, from the filters and the readers.
    ex = data["examples"]
    assert 1 <= len(ex["length_v1:min_words"]) <= 3
    assert all(len(e["text"]) <= 240 and e["chars"] >= len(e["text"]) for e in ex["length_v1:min_words"])
    assert ex["rejected:invalid_json"][0]["text"].startswith('{"id": "bad-1"')
    # Time per stage and the slowest shards come from the markers.
    assert [r["stage"] for r in data["stage_times"]] == ["clean", "exact_dedup", "tokenize", "finalize"]
    assert data["slowest"] and data["slowest"][0]["wall_time_s"] >= data["slowest"][-1]["wall_time_s"]
    # stats.json names its times for what they are: worker time summed over indices, and the
    # stage's wall time (first start to last finish), the same numbers the page shows.
    assert "stage_wall_time_s" not in stats
    for row in data["stage_times"][:3]:
        assert stats["stage_worker_time_s"][row["stage"]] == pytest.approx(row["busy_s"], abs=0.01)
        assert stats["stage_span_s"][row["stage"]] == pytest.approx(row["span_s"], abs=0.01)
        assert 0 < stats["stage_span_s"][row["stage"]]


def test_report_is_self_contained_and_markers_stay_small(run_out):
    page = (run_out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "fetches something"
    assert "default-src 'none'" in page
    assert len(page) < 500_000
    for m in (run_out / "clean" / "_done").glob("*.json"):
        assert m.stat().st_size < 64_000, m


def test_report_cli_and_an_unfinished_run(run_out, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    other = tmp_path / "r.html"
    p = subprocess.run([sys.executable, "-m", "preproc", "report", str(run_out), "--out", str(other)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    a = json.loads(_parse(other.read_text()).data)
    b = json.loads(_parse((run_out / "report.html").read_text()).data)
    a.pop("generated_s"), b.pop("generated_s")
    # Finalize writes the page before its own marker, so only the later page times it.
    assert a.pop("stage_times")[:-1] == b.pop("stage_times")[:-1]
    assert a == b
    # A run stopped before tokenize: the report covers what is done, and says so.
    cut = tmp_path / "cut"
    shutil.copytree(run_out, cut)
    for d in ("tokenize", "finalize", "tokens"):
        shutil.rmtree(cut / d)
    for f in ("dataset.json", "stats.json", "report.html"):
        (cut / f).unlink()
    p = subprocess.run([sys.executable, "-m", "preproc", "report", str(cut)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    page = (cut / "report.html").read_text()
    d = json.loads(_parse(page).data)
    assert d["complete"] is False and 'id="incomplete"' in page.replace("'", '"')
    assert d["stats"]["read"] == json.loads((run_out / "stats.json").read_text())["read"]
    assert d["hist"]["tokens_out"] == []


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") or os.environ.get("PREPROC_REQUIRE_SHARED") == "1":
            raise AssertionError("chromium is missing (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return exe


def _browser(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(run_out, tmp_path):
    exe = _chromium()
    url = (run_out / "report.html").resolve().as_uri()
    p = _browser(exe, tmp_path / "profile", "--dump-dom", url)
    assert p.returncode == 0, p.stderr[-2000:]
    dom = p.stdout
    # The rendered DOM holds every section, its charts (inline SVG with bars) and tables.
    for section in ("funnel", "removed", "languages", "sources", "lengths", "time", "slowest", "examples"):
        assert f'id="{section}"' in dom, section
    svgs = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)
    assert len(svgs) >= 7, len(svgs)
    assert all("<rect" in s for s in svgs)
    for cls in ("funnel", "removed", "languages", "sources", "lengths", "stage-times", "slowest"):
        assert re.search(rf'<table class="{cls}">.*?<td', dom, flags=re.S), cls
    stats = json.loads((run_out / "stats.json").read_text())
    assert f'data-stat="read">{stats["read"]:,}<' in dom
    assert f'data-stat="tokens">{stats["tokens"]:,}<' in dom
    # And it paints: a full-page screenshot that is not blank.
    shot = tmp_path / "report.png"
    p = _browser(exe, tmp_path / "profile2", "--window-size=1200,3000", "--hide-scrollbars",
                 f"--screenshot={shot}", url)
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000
