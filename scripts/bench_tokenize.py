#!/usr/bin/env python
"""Tokenize throughput: our tokenize stage vs the ceiling (raw ``encode_batch_fast``).

Side by side in one process on the same documents and tokenizer (GPT-2), alternating the
measurements (A B A B ...) so machine noise hits both alike; reports MB/s of UTF-8 text and
the ratio ours/raw. Our stage reads the clean Parquet parts, drops nothing, tokenizes,
and writes both formats (Parquet + Megatron .bin/.idx).

    python scripts/bench_tokenize.py --corpus ../shared/data/corpus \
        --tokenizer ../shared/data/tokenizers/gpt2/tokenizer.json [--repeat 3] [--json out.json]

Variants of ours: ``stage-inproc`` (one process, the Rust pool uses every core: the same
setting as raw), and ``stage-local-N`` (the local executor with N worker processes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers import Tokenizer  # noqa: E402

import preproc  # noqa: E402
from preproc.engine.plan import Plan  # noqa: E402
from preproc.engine.stages import run_index  # noqa: E402
from preproc.executors.local import LocalExecutor  # noqa: E402
from preproc.io.store import Store  # noqa: E402


def load_texts(corpus: Path) -> list[str]:
    texts = []
    for p in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


def raw(tok: Tokenizer, texts: list[str], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        tok.encode_batch_fast(texts[i:i + batch], add_special_tokens=False)
    return time.perf_counter() - t0


def reset_tokenize(out: str) -> None:
    for d in ("tokens", "tokenize"):
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)


def stage_inproc(out: str) -> float:
    reset_tokenize(out)
    plan = Plan.load(out)
    store = Store(out)
    t0 = time.perf_counter()
    for i in range(plan.stage("tokenize").fan_out):
        run_index(plan, "tokenize", i, store)
    return time.perf_counter() - t0


def stage_local(out: str, workers: int) -> float:
    reset_tokenize(out)
    plan = Plan.load(out)
    ex = LocalExecutor(workers=workers, progress=False)
    try:
        ex._get_pool()  # start the processes outside the timing, as a long run amortizes them
        list(ex._pool.map(abs, range(workers)))
        t0 = time.perf_counter()
        ex.run_stage(plan, "tokenize", list(range(plan.stage("tokenize").fan_out)))
        return time.perf_counter() - t0
    finally:
        ex.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/data/corpus"))
    ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared/data/tokenizers/gpt2/tokenizer.json"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()

    texts = load_texts(Path(a.corpus))
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tok = Tokenizer.from_file(a.tokenizer)
    work = tempfile.mkdtemp(prefix="bench-tok-")
    out = os.path.join(work, "out")
    # Prepare clean parts once (not timed): no clean steps, no dedup, so the stage sees the same texts.
    # The HF backend: the comparison is with HF's own encode_batch_fast (the tiktoken backend,
    # which `auto` picks for GPT-2, is compared in scripts/bench.py).
    preproc.run({"input": {"paths": [os.path.join(a.corpus, "*.jsonl.gz")]}, "clean": False,
                 "dedup": {"exact": False}, "shards": 2 * a.workers, "tokenize": {"backend": "hf"}},
                output=out, tokenizer=a.tokenizer, workers=a.workers)

    times: dict[str, list[float]] = {"raw encode_batch_fast": [], "stage-inproc": [], f"stage-local-{a.workers}": []}
    for _ in range(a.repeat):
        times["raw encode_batch_fast"].append(raw(tok, texts, a.batch))
        times["stage-inproc"].append(stage_inproc(out))
        times[f"stage-local-{a.workers}"].append(stage_local(out, a.workers))
    shutil.rmtree(work, ignore_errors=True)

    res = {"corpus_mb": round(mb, 2), "docs": len(texts), "cores": os.cpu_count(), "results": {}}
    base = statistics.median(times["raw encode_batch_fast"])
    print(f"{len(texts)} docs, {mb:.1f} MB UTF-8, {os.cpu_count()} cores, median of {a.repeat} alternating runs")
    print(f"{'what':<26}{'seconds':>10}{'MB/s':>10}{'ratio':>8}")
    for k, v in times.items():
        med = statistics.median(v)
        res["results"][k] = {"seconds": round(med, 3), "mb_per_s": round(mb / med, 3), "ratio_to_raw": round(base / med, 3)}
        print(f"{k:<26}{med:>10.2f}{mb / med:>10.2f}{base / med:>8.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
