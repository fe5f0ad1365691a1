#!/usr/bin/env python
"""Benchmark: the default clean stage against the tokenize stage, on the same texts and cores.

Reads the shared real-text corpus (JSONL.gz: id, text, source) into one Arrow table, then,
in one run, interleaved over ``--rounds`` rounds (so both see the same machine load):

* tokenize: ``tokenizers.Tokenizer.encode_batch_fast`` (GPT-2) over the texts in batches
  of ``--tokenize-batch`` documents; the Rust pool uses every core;
* clean, 1 process: ``CleanPipeline(build_steps(True))`` over record batches of about
  ``--batch-mb`` MB — what one clean worker process does;
* clean, N processes: the same in N forked worker processes sharing the batches (N = the
  cores the tokenizer uses), as the executors run the clean stage (one process per core):
  the clean stage's throughput on the tokenizer's cores.

It prints MB/s (UTF-8 bytes of input text per second; median and best round) and the
ratios clean/tokenize taken round by round (median and worst round),
the time per step (from the single-process run), and what the default steps drop per
collection (``source``) and rule. ``--json PATH`` writes all of it.

    python scripts/bench_clean.py --json /tmp/bench_clean.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preproc.clean.steps import CleanPipeline, Filter, Mapper, build_steps  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "corpus"
DEFAULT_TOKENIZER = ROOT.parent / "shared" / "data" / "tokenizers" / "gpt2" / "tokenizer.json"


def load_corpus(corpus: Path) -> pa.Table:
    rows = []
    for f in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(f, "rb") as fh:
            for line in fh:
                r = orjson.loads(line)
                rows.append((r["id"], r["text"], r["source"]))
    if not rows:
        raise SystemExit(f"no *.jsonl.gz under {corpus}")
    ids, texts, sources = zip(*rows)
    return pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                     "source": pa.array(sources, pa.string())})


def batches_of(table: pa.Table, batch_bytes: int) -> list[pa.RecordBatch]:
    """Record batches of about ``batch_bytes`` of text (whole documents)."""
    sizes = np.array([len(t.encode()) for t in table.column("text").to_pylist()])
    out, start, acc = [], 0, 0
    for i, s in enumerate(sizes):
        acc += s
        if acc >= batch_bytes:
            out.append(table.slice(start, i + 1 - start).combine_chunks().to_batches()[0])
            start, acc = i + 1, 0
    if start < len(sizes):
        out.append(table.slice(start).combine_chunks().to_batches()[0])
    return out


class StepTimer:
    """Wraps a step's map/annotate/reasons (instance attributes shadow the class's)."""

    def __init__(self, steps):
        self.seconds: Counter = Counter()
        for s in steps:
            for meth in ("map", "annotate", "reasons"):
                if hasattr(s, meth) and (meth != "map" or isinstance(s, Mapper)) \
                        and (meth == "map" or isinstance(s, Filter)):
                    setattr(s, meth, self._wrap(s.name, getattr(s, meth)))

    def _wrap(self, name, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t
        return timed


def run_clean(batches, timer: bool = False):
    """Seconds to clean all batches in this process; (seconds, seconds per step)."""
    pipe = CleanPipeline(build_steps(True))
    tm = StepTimer(pipe.steps) if timer else None
    for s in pipe.steps:                               # model loading is not throughput
        s.setup()
    t = time.perf_counter()
    for b in batches:
        pipe(b)
    return time.perf_counter() - t, (tm.seconds if tm else Counter())


# -- N worker processes, as the executors run the clean stage (one process per core) -----
_BATCHES: list = []
_PIPE = None
_BARRIER = None


def _init_worker(barrier) -> None:
    global _PIPE, _BARRIER
    _BARRIER = barrier
    _PIPE = CleanPipeline(build_steps(True))
    for s in _PIPE.steps:
        s.setup()


def _worker_share(task: tuple[int, int]) -> float:
    k, n = task
    _BARRIER.wait()                                    # one task per worker, started together
    t = time.perf_counter()
    for b in _BATCHES[k::n]:
        _PIPE(b)
    return time.perf_counter() - t


class ProcessClean:
    """A pool of ``n`` forked workers that share the batches (inherited, not pickled)."""

    def __init__(self, batches, n: int):
        import multiprocessing as mp

        global _BATCHES
        _BATCHES = batches
        ctx = mp.get_context("fork")
        self.n = n
        barrier = ctx.Barrier(n)
        self.pool = ctx.Pool(n, initializer=_init_worker, initargs=(barrier,))
        self.pool.map(_worker_share, [(k, n) for k in range(n)])   # warm up every worker

    def run(self) -> float:
        t = time.perf_counter()
        self.pool.map(_worker_share, [(k, self.n) for k in range(self.n)])
        return time.perf_counter() - t

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def run_tokenize(tok, texts: list[str], batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(texts), batch):
        tok.encode_batch_fast(texts[i:i + batch])
    return time.perf_counter() - t


def drop_table(table: pa.Table, batches) -> tuple[dict, dict]:
    """Per source: documents, bytes in, kept; per (source, reason): documents dropped."""
    pipe = CleanPipeline(build_steps(True), keep_removed=True)
    docs = Counter(table.column("source").to_pylist())
    dropped: dict[str, Counter] = defaultdict(Counter)
    counters: Counter = Counter()
    for b in batches:
        res = pipe(b)
        counters.update(res.counters)
        if res.removed is not None:
            for src, why in zip(res.removed.column("source").to_pylist(),
                                res.removed.column("reason").to_pylist()):
                dropped[src][why] += 1
    return {s: {"docs": n, "dropped": dict(dropped[s]), "kept": n - sum(dropped[s].values())}
            for s, n in sorted(docs.items())}, dict(counters)


def collection(source: str) -> str:
    coll, _, lang = source.partition("/")
    if coll == "code":
        return "code/*"
    return source if lang == "en" else f"{coll}/(other languages)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-mb", type=float, default=4.0, help="clean batch size (MB of text)")
    ap.add_argument("--tokenize-batch", type=int, default=2048, help="documents per encode call")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="clean processes (default: the cores, which the tokenizer uses)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--mb", type=float, default=None,
                    help="use about this many MB of the corpus (every k-th document, so every "
                         "collection keeps its share); default: all of it")
    a = ap.parse_args(argv)

    from tokenizers import Tokenizer

    table = load_corpus(a.corpus)
    if a.mb:
        total = sum(len(t.encode()) for t in table.column("text").to_pylist()) / 1e6
        step = max(1, int(total / a.mb))
        table = table.take(pa.array(np.arange(0, table.num_rows, step)))
    texts = table.column("text").to_pylist()
    mb = sum(len(t.encode()) for t in texts) / 1e6
    batches = batches_of(table, int(a.batch_mb * 1e6))
    steps = [s.name for s in build_steps(True)]
    print(f"corpus: {table.num_rows} docs, {mb:.1f} MB; {len(batches)} clean batches; "
          f"{a.workers} clean workers; default steps: {', '.join(steps)}", flush=True)
    procs = ProcessClean(batches, a.workers)           # fork before the tokenizer's threads
    tok = Tokenizer.from_file(str(a.tokenizer))

    run_clean(batches[:1])                             # warm up: imports, model, caches
    run_tokenize(tok, texts[:256], a.tokenize_batch)
    tok_s, c1_s, cn_s = [], [], []
    step_s: Counter = Counter()
    for r in range(a.rounds):
        tok_s.append(run_tokenize(tok, texts, a.tokenize_batch))
        dt, st = run_clean(batches, timer=True)
        c1_s.append(dt)
        step_s.update(st)
        cn_s.append(procs.run())
        print(f"round {r + 1}: tokenize {mb / tok_s[-1]:.2f} MB/s, clean 1 process "
              f"{mb / c1_s[-1]:.2f} MB/s, clean {a.workers} processes {mb / cn_s[-1]:.2f} MB/s",
              flush=True)
    procs.close()
    # The machine may be shared: MB/s as the median and the best round, and ratios taken
    # round by round (both sides of a round saw the same load), median and worst.
    tok_mbs, c1_mbs, cn_mbs = (mb / statistics.median(x) for x in (tok_s, c1_s, cn_s))
    best = {k: mb / min(x) for k, x in (("tokenize", tok_s), ("clean_1", c1_s), ("clean_n", cn_s))}
    r1 = [t / c for t, c in zip(tok_s, c1_s)]
    rn = [t / c for t, c in zip(tok_s, cn_s)]
    print()
    print(f"{'MB/s':44s} {'median':>8s} {'best':>8s}   ratio to tokenize (median, worst round)")
    print(f"{'tokenize (GPT-2 encode_batch_fast, Rust pool)':44s} {tok_mbs:8.2f} {best['tokenize']:8.2f}")
    print(f"{'clean, default steps, 1 process':44s} {c1_mbs:8.2f} {best['clean_1']:8.2f}"
          f"   {statistics.median(r1):.2f}x, {min(r1):.2f}x")
    print(f"{f'clean, default steps, {a.workers} processes (same cores)':44s} {cn_mbs:8.2f} "
          f"{best['clean_n']:8.2f}   {statistics.median(rn):.2f}x, {min(rn):.2f}x")

    print("\nper step (1 process, seconds per round, MB/s of the input):")
    per_step = {}
    for name in steps:
        s = step_s[name] / a.rounds
        per_step[name] = {"seconds": s, "mb_per_s": mb / s if s else None}
        print(f"  {name:24s} {s:7.3f} s  {mb / s if s else float('inf'):9.1f} MB/s")

    table_out, counters = drop_table(table, batches)
    print("\ndropped by the default steps, per collection (docs, % of the collection):")
    by_coll: dict[str, dict] = {}
    for src, d in table_out.items():
        c = by_coll.setdefault(collection(src), {"docs": 0, "kept": 0, "dropped": Counter()})
        c["docs"] += d["docs"]
        c["kept"] += d["kept"]
        c["dropped"].update(d["dropped"])
    for coll, c in sorted(by_coll.items()):
        print(f"  {coll:32s} {c['docs']:5d} docs, kept {c['kept']:5d} "
              f"({100 * c['kept'] / c['docs']:5.1f}%)")
        for why, k in c["dropped"].most_common():
            print(f"      {why:44s} {k:5d}  {100 * k / c['docs']:5.1f}%")
    print("\ncounters:", ", ".join(f"{k}={v}" for k, v in sorted(counters.items())) or "none")

    if a.json:
        a.json.write_text(json.dumps({
            "corpus": str(a.corpus), "docs": table.num_rows, "mb": mb, "workers": a.workers,
            "rounds": a.rounds, "steps": steps,
            "tokenize_mb_per_s": tok_mbs, "clean_1process_mb_per_s": c1_mbs,
            "clean_workers_mb_per_s": cn_mbs, "best_mb_per_s": best,
            "ratio_1process": statistics.median(r1), "ratio_1process_worst": min(r1),
            "ratio_same_cores": statistics.median(rn), "ratio_same_cores_worst": min(rn),
            "ratio_1process_by_round": r1, "ratio_same_cores_by_round": rn,
            "rounds_seconds": {"tokenize": tok_s, "clean_1process": c1_s, "clean_workers": cn_s},
            "per_step": per_step, "drops_by_source": table_out,
            "drops_by_collection": {k: {**v, "dropped": dict(v["dropped"])}
                                    for k, v in by_coll.items()},
            "counters": counters,
        }, indent=2))
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
