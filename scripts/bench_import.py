"""How long ``import preproc`` takes in a fresh interpreter, and what heavy modules it loads.

Issue 17's target for training code: ``import preproc`` (and ``from preproc import
TokenDataset``) in at most 0.3 s, loading no executor, stage, report, kubernetes or ray module::

    python scripts/bench_import.py [--runs 7] [--code "from preproc import TokenDataset"]

Prints the median wall time over ``--runs`` fresh interpreters (the interpreter's own start-up
is measured separately and subtracted), the slowest imports by ``python -X importtime``
(cumulative), and the heavy modules found in ``sys.modules``. Exits 1 when over the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.3
HEAVY = ("preproc.executors", "preproc.engine.stages", "preproc.observe.report", "preproc.k8s", "preproc.engine.runner",
         "preproc.engine.refresh", "preproc.observe.metrics", "preproc.tokenize.tokenizer", "kubernetes", "ray", "torch",
         "tokenizers", "prometheus_client", "pydantic", "fsspec", "pyarrow")

PROBE = """
import time, sys, json
t0 = time.perf_counter()
{code}
dt = time.perf_counter() - t0
print(json.dumps({{"s": dt, "modules": sorted(sys.modules)}}))
"""


def probe(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def importtime(code: str, top: int) -> list[tuple[int, str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    rows = []
    for line in out.stderr.splitlines():
        # "import time:   self [us] | cumulative | imported package"; nesting indents the name.
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cum_us, name = line.split(":", 1)[1].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if 1 <= depth <= 2:                        # what the top-level import pulls in
            rows.append((int(cum_us), "  " * (depth - 1) + name.strip()))
    return sorted(rows, reverse=True)[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--code", default="import preproc")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    base = statistics.median(probe("pass")["s"] for _ in range(3))
    runs = [probe(args.code) for _ in range(args.runs)]
    median = statistics.median(r["s"] for r in runs) - base
    mods = runs[-1]["modules"]
    heavy = sorted({h for h in HEAVY for m in mods if m == h or m.startswith(h + ".")})
    print(f"{args.code!r}: median {median:.3f} s over {args.runs} fresh interpreters "
          f"(target {TARGET_S} s), {sum(m.startswith('preproc') for m in mods)} preproc modules, "
          f"{len(mods)} modules in all")
    print(f"heavy modules loaded: {', '.join(heavy) or 'none'}")
    print("slowest imports one or two levels below the top (cumulative, python -X importtime):")
    for us, name in importtime(args.code, args.top):
        print(f"  {us / 1e6:6.3f} s  {name}")
    return 0 if median <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
