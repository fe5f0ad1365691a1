#!/usr/bin/env python
"""Peak memory of one worker versus shard size: memory must follow the batch, not the shard.

Builds a shard from the shared corpus (every document made unique, so dedup keeps them),
once at 1x and once at 8x the size, plans each as ONE shard, and runs each stage index as
its own ``preproc worker`` process, reading the peak RSS of that process from the kernel
(``wait4`` rusage). Prints a table and the 8x/1x ratio per stage; target: <= 1.25.

    python scripts/bench_memory.py [--corpus ../shared/data/corpus] [--factor 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import preproc  # noqa: E402
from preproc.engine.runner import prepare  # noqa: E402


def make_input(corpus: Path, path: Path, copies: int) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for k in range(copies):
            for p in sorted(corpus.glob("*.jsonl.gz")):
                with gzip.open(p, "rt", encoding="utf-8") as f:
                    for line in f:
                        d = json.loads(line)
                        out.write(json.dumps({"id": f"{d['id']}#{k}", "text": f"{d['text']}\n\n[copy {k}]"}) + "\n")
                        n += 1
    return n


def peak_rss_mb(cmd: list[str], env: dict[str, str]) -> float:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.read().decode()[-2000:]}")
    return ru.ru_maxrss / 1024   # KiB on Linux


def measure(work: Path, corpus: Path, copies: int, tokenizer: str) -> dict[str, float]:
    inp = work / f"in-{copies}.jsonl"
    docs = make_input(corpus, inp, copies)
    out = work / f"out-{copies}"
    spec = preproc.load_spec({"input": {"paths": [str(inp)]}, "shards": 1, "target_shard_bytes": "1TiB",
                              "dedup": {"exact": True}}, output=str(out), tokenizer=tokenizer)
    plan = prepare(spec, force=True)
    assert plan.num_shards == 1, plan.num_shards
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = {"docs": docs, "input_mb": round(inp.stat().st_size / 1e6, 1)}
    for st in plan.stages:
        for i in range(st.fan_out):
            mb = peak_rss_mb([sys.executable, "-m", "preproc", "worker", str(out), "--stage", st.name,
                              "--index", str(i)], env)
            res[st.name] = max(res.get(st.name, 0.0), round(mb, 1))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/data/corpus"))
    ap.add_argument("--tokenizer", default=str(ROOT.parent / "shared/data/tokenizers/gpt2/tokenizer.json"))
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as d:
        small = measure(Path(d), Path(a.corpus), 1, a.tokenizer)
        big = measure(Path(d), Path(a.corpus), a.factor, a.tokenizer)
    stages = [k for k in small if k not in ("docs", "input_mb")]
    print(f"one shard of {small['input_mb']} MB ({small['docs']} docs) vs {big['input_mb']} MB ({big['docs']} docs)")
    print(f"{'stage':<14}{'peak RSS 1x (MB)':>18}{f'peak RSS {a.factor}x (MB)':>18}{'ratio':>8}")
    ratios = {}
    for s in stages:
        ratios[s] = round(big[s] / small[s], 3)
        print(f"{s:<14}{small[s]:>18.1f}{big[s]:>18.1f}{ratios[s]:>8.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"small": small, "big": big, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
