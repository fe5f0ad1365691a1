#!/usr/bin/env python
"""Language-ID accuracy against the sampled length, on the translated man pages and the
Wikipedia languages of the shared corpus (the collections whose ``source`` names a
language other than English, where a wrong ``en`` label costs a document).

For each ``sample_bytes`` (in ``--windows`` windows) it prints the fraction of documents
whose top label is the source's language, the ones labelled ``en``, and the seconds spent.

    python scripts/langid_sample.py --sizes 300 600 1200 2400 4800 0
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preproc.clean.steps import CleanPipeline, build_steps  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "corpus"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 600, 1200, 2400, 4800, 0],
                    help="sample_bytes values; 0 = the whole document")
    ap.add_argument("--windows", type=int, default=3)
    a = ap.parse_args(argv)
    rows = []
    for name in ("manpages_i18n", "wikipedia_7lang"):
        with gzip.open(a.corpus / f"{name}.jsonl.gz", "rb") as fh:
            rows.extend(orjson.loads(line) for line in fh)
    norm = CleanPipeline(build_steps({"defaults": False, "normalize": True}))
    batch = norm(pa.RecordBatch.from_pylist(rows)).kept
    want = [s.split("/", 1)[1].split("_")[0] for s in batch.column("source").to_pylist()]
    coll = [s.split("/", 1)[0] for s in batch.column("source").to_pylist()]
    longest = max(len(t.encode()) for t in batch.column("text").to_pylist())
    print(f"{'sample_bytes':>12s} {'windows':>7s} " + " ".join(
        f"{c + ' right':>16s} {c + ' as en':>14s}" for c in ("manpages", "wikipedia")) + "  seconds")
    for size in a.sizes:
        sb = size or longest + 1
        step = build_steps({"defaults": False, "langid": {"sample_bytes": sb, "windows": a.windows}})[0]
        step.setup()
        t = time.perf_counter()
        got = step.annotate(batch).column("language").to_pylist()
        dt = time.perf_counter() - t
        right, as_en, n = Counter(), Counter(), Counter()
        for g, w, c in zip(got, want, coll):
            n[c] += 1
            right[c] += g == w
            as_en[c] += g == "en"
        print(f"{size or 'whole':>12} {a.windows:7d} " + " ".join(
            f"{100 * right[c] / n[c]:15.1f}% {as_en[c]:14d}" for c in ("manpages", "wikipedia"))
            + f"  {dt:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
