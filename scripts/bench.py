#!/usr/bin/env python
"""Performance, side by side with the peers (datatrove, datasketch), on the same data, the
same machine and the same number of workers, in one run. Prints one table and writes JSON.

    python scripts/bench.py [--workers 2] [--repeat-mb 200] [--quick] [--json bench.json]

What is compared (MB/s = UTF-8 bytes of document text entering the measured step / wall
seconds; docs/s likewise):

* read: pyarrow reading the input JSONL and our clean Parquet parts (the I/O ceilings) vs
  our whole pipeline;
* tokenize (GPT-2): raw ``Tokenizer.encode_batch_fast`` and raw tiktoken over in-memory
  strings (the ceilings, Rust threads on all cores) vs our tokenize stage through the local
  executor (``backend: hf`` and ``backend: tiktoken``; pool start-up included) vs datatrove's
  ``ParquetReader -> DocumentTokenizer`` on the same Parquet parts, same workers;
* near-dedup: MinHash signatures (ours vs datasketch vs datatrove's signature step, from
  ``scripts/bench_near.py``), and the whole near-dedup on ``../shared/data/neardup`` (ours vs
  datatrove's four MinHash stages, with precision/recall against the ground truth);
* end to end: our default pipeline (clean, exact dedup, near dedup, tokenize) vs datatrove's
  equivalent: JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter -> JsonlWriter ->
  ExactDedupSignature | ExactFindDedups | ExactDedupFilter -> MinhashDedupSignature |
  Buckets | Cluster | ExactDedupFilter -> MinhashDedupFilter -> DocumentTokenizer;
* scaling: our end to end with 1 and with N workers of one thread each (a worker = a core), best
  of alternating runs; and 1 worker with every core's threads vs N workers (the defaults);
* scale (``--only scale``): the shard-count rows, then ``scripts/bench_scale.py``'s (the
  machine's ceiling, workers 1..N, data x1 vs x10) and the other scale benchmarks' rows
  (``bench_smallfiles``, ``bench_balance``, ``bench_coord``; each guarded: ``failed: ...``);
* memory: the peak RSS of any one process of a run (the run is a child process; ``wait4``
  reports the maximum over it and every worker it reaped).

Each engine runs in its own child process, so a peer that fails is reported (``failed:``)
and the rest goes on. Input: the shared corpus written as ``--shards`` plain JSONL files of
about equal bytes (datatrove gives each task whole files, so both get the same pieces);
``--repeat-mb N`` repeats it with unique ids (``<id>#k``) up to N MB — the copies are exact
duplicates, which both engines' exact dedup removes. Nothing is downloaded: the tokenizer is
the local ``tokenizer.json`` (HF_HUB_OFFLINE=1 for every child).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREPROC_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def offline() -> None:
    """No hub downloads, in this process and every child it starts. Called by the benchmarks'
    ``main`` (not at import: a module importing this one, e.g. a test, keeps its environment)."""
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")


TOKENIZER = SHARED / "data" / "tokenizers" / "gpt2" / "tokenizer.json"
EOS = "<|endoftext|>"


# -- input -----------------------------------------------------------------------------------

def make_input(corpus: Path, dest: Path, *, shards: int, repeat_mb: float | None,
               limit_mb: float | None) -> dict:
    """The corpus as ``shards`` JSONL files of about equal text bytes; returns its size.

    Documents are in a fixed pseudo-random order (every file gets the same mix of sources,
    as in a crawl, instead of one file of code and one of bibles), and each document's
    copies follow it: what exact dedup keeps is spread over every file and shard."""
    docs = []
    for p in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                docs.append({"id": d["id"], "text": d["text"], "source": d.get("source", p.name)})
    random.Random(0).shuffle(docs)
    if limit_mb:
        out, acc = [], 0
        for d in docs:
            out.append(d)
            acc += len(d["text"].encode("utf-8"))
            if acc >= limit_mb * 1e6:
                break
        docs = out
    base_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    copies = max(1, int(-(-repeat_mb * 1e6 // base_bytes))) if repeat_mb else 1
    lines = []
    for d in docs:
        for k in range(copies):
            d2 = dict(d, id=f"{d['id']}#{k}") if copies > 1 else d
            lines.append((json.dumps(d2, ensure_ascii=False) + "\n").encode("utf-8"))
    total = sum(len(x) for x in lines)
    dest.mkdir(parents=True, exist_ok=True)
    i, acc, cur = 0, 0, []
    for ln in lines:
        cur.append(ln)
        acc += len(ln)
        if acc >= total * (i + 1) / shards and i < shards - 1:
            (dest / f"part-{i:03d}.jsonl").write_bytes(b"".join(cur))
            i, cur = i + 1, []
    (dest / f"part-{i:03d}.jsonl").write_bytes(b"".join(cur))
    return {"docs": len(docs) * copies, "text_mb": round(base_bytes * copies / 1e6, 2), "copies": copies,
            "files": len(list(dest.glob("*.jsonl")))}


# -- children: each engine in its own process (peak RSS via wait4; a crash is a result) -------

def run_child(kind: str, args: dict, timeout_s: float, script: str | Path = __file__) -> dict:
    """Run ``kind`` in a fresh interpreter (``script --child kind``: this one's children by
    default, another benchmark's with ``script``); its JSON result (here plus ``peak_rss_mb``,
    the largest RSS of the child or any process it reaped: its workers), or ``{"error": ...}``."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="bench-child-")
    os.close(fd)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, str(Path(script).resolve()), "--child", kind,
                          "--child-args", json.dumps(args), "--child-out", out],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    err = b""
    try:
        _, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return {"error": f"timed out after {timeout_s:.0f} s"}
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN deltas, so measure
    # it the precise way instead: the child writes its own and its workers' peak.
    try:
        res = json.loads(Path(out).read_text() or "{}")
    except ValueError:
        res = {}
    finally:
        Path(out).unlink(missing_ok=True)
    if p.returncode != 0 or not res:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: {' | '.join(tail)[-300:]}", "wall_s": round(time.monotonic() - t0, 1)}
    return res


def _peak_rss_mb() -> float:
    """Max RSS of this process (VmHWM: its own address space, so not the high-water mark
    inherited across fork+exec from the benchmark process, which ``ru_maxrss`` keeps) and of
    every worker it reaped (``RUSAGE_CHILDREN``; Linux reports KiB)."""
    import resource

    own = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own = int(line.split()[1])
    return round(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1)


class TreeHWM:
    """Peak RSS of any process under this one, sampled from /proc every ``period_s``: the
    workers of a forkserver/spawn pool (datatrove's default) are not reaped by this process,
    so ``RUSAGE_CHILDREN`` misses them; VmHWM is a high-water mark, so sampling late is fine
    as long as the process is still alive."""

    def __init__(self, period_s: float = 0.2):
        import threading

        self.peak_kib, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._loop, args=(period_s,), daemon=True)
        self._t.start()

    def _loop(self, period_s: float) -> None:
        me = os.getpid()
        while not self._stop.wait(period_s):
            parent = {}
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    except (OSError, IndexError, ValueError):
                        pass
            for pid in parent:
                q, hops = pid, 0
                while q in parent and q != me and hops < 16:
                    q, hops = parent[q], hops + 1
                if q == me and pid != me:
                    try:
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                            if line.startswith("VmHWM:"):
                                self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                    except OSError:
                        pass

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak_kib / 1024


def child_ours_e2e(a: dict) -> dict:
    import preproc

    out = a["out"]
    shutil.rmtree(out, ignore_errors=True)
    spec = {"input": {"paths": [os.path.join(a["input"], "*.jsonl")]}, "shards": a["shards"],
            "dedup": {"exact": True, "near": True}, "tokenize": {"backend": a.get("backend", "auto")}}
    t0 = time.perf_counter()
    r = preproc.run(spec, output=out, tokenizer=a["tokenizer"], workers=a["workers"],
                    threads_per_worker=a.get("threads"))
    wall = time.perf_counter() - t0
    s = r.stats
    return {"seconds": wall, "kept": s.get("kept"), "filtered": s.get("filtered_total"),
            "duplicates": s.get("duplicates"), "tokens": s.get("tokens"),
            # Wall time per stage (as measured for datatrove below), and our workers' summed time.
            "stage_wall_time_s": {k: v for k, v in s.get("stage_span_s", {}).items() if v >= 0.01},
            "stage_worker_time_s": {k: v for k, v in s.get("stage_worker_time_s", {}).items() if v >= 0.01},
            "backend": (json.loads((Path(out) / "dataset.json").read_text()).get("tokenizer") or {}).get("backend")}


def child_ours_tokenize(a: dict) -> dict:
    """Our tokenize stage alone (clean parts already written): local executor, pool start-up
    included (as datatrove's executor start-up is)."""
    from bench_tokenize import reset_tokenize

    from preproc.engine.plan import Plan
    from preproc.executors.local import LocalExecutor

    out = a["out"]
    reset_tokenize(out)
    plan = Plan.load(out)
    t0 = time.perf_counter()
    ex = LocalExecutor(workers=a["workers"], progress=False)
    try:
        ex.run_stage(plan, "tokenize", list(range(plan.stage("tokenize").fan_out)))
    finally:
        ex.close()
    return {"seconds": time.perf_counter() - t0}


def _dt_hash():
    from bench_near import _datatrove_hash

    return _datatrove_hash()


def child_datatrove_tokenize(a: dict) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    base = Path(a["work"])
    shutil.rmtree(base, ignore_errors=True)
    ex = LocalPipelineExecutor(
        pipeline=[ParquetReader(a["parquet_dir"], glob_pattern="*.parquet"),
                  DocumentTokenizer(output_folder=str(base / "tokens"), tokenizer_name_or_path=a["tokenizer"],
                                    eos_token=EOS, local_working_dir=str(base / "tmp"))],
        tasks=a["tasks"], workers=a["workers"], logging_dir=str(base / "logs"))
    t0 = time.perf_counter()
    ex.run()
    return {"seconds": time.perf_counter() - t0}


def child_datatrove_e2e(a: dict) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    base = Path(a["work"])
    shutil.rmtree(base, ignore_errors=True)
    W, T = a["workers"], a["tasks"]
    mh = MinhashConfig(hash_config=_dt_hash())          # its defaults: word 5-grams, 14 x 8
    ex_cfg = ExactDedupConfig(content_getter=lambda doc: doc.text, hash_config=_dt_hash())
    filtered = str(base / "filtered")

    def reader():
        return JsonlReader(filtered, glob_pattern="*.jsonl")

    def job(name, pipeline, tasks, workers):
        return name, LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers,
                                           logging_dir=str(base / "logs" / name))

    jobs = [
        job("filter+exact_sig", [JsonlReader(a["input"], glob_pattern="*.jsonl"), GopherRepetitionFilter(),
                                 GopherQualityFilter(), JsonlWriter(filtered, compression=None),
                                 ExactDedupSignature(output_folder=str(base / "exact_sigs"), config=ex_cfg)], T, W),
        job("exact_find", [ExactFindDedups(data_folder=str(base / "exact_sigs"),
                                           output_folder=str(base / "exact_dups"), config=ex_cfg)], 1, 1),
        job("minhash_sig", [reader(), ExactDedupFilter(data_folder=str(base / "exact_dups"), config=ex_cfg),
                            MinhashDedupSignature(output_folder=str(base / "sigs"), config=mh)], T, W),
        job("minhash_buckets", [MinhashDedupBuckets(input_folder=str(base / "sigs"),
                                                    output_folder=str(base / "buckets"), config=mh)],
            mh.num_buckets, W),
        job("minhash_cluster", [MinhashDedupCluster(input_folder=str(base / "buckets"),
                                                    output_folder=str(base / "remove"), config=mh)], 1, 1),
        job("filter+tokenize", [reader(), ExactDedupFilter(data_folder=str(base / "exact_dups"), config=ex_cfg),
                                MinhashDedupFilter(input_folder=str(base / "remove")),
                                DocumentTokenizer(output_folder=str(base / "tokens"),
                                                  tokenizer_name_or_path=a["tokenizer"], eos_token=EOS,
                                                  local_working_dir=str(base / "tmp"))], T, W),
    ]
    stage_s = {}
    t0 = time.perf_counter()
    for name, ex in jobs:
        t = time.perf_counter()
        ex.run()
        stage_s[name] = round(time.perf_counter() - t, 2)
    wall = time.perf_counter() - t0
    tokens = 0
    for p in (base / "tokens").rglob("*.metadata"):
        try:
            tokens += int(p.read_text().split("\n")[1])
        except (ValueError, IndexError):
            pass
    return {"seconds": wall, "stage_wall_time_s": stage_s, "tokens": tokens or None}


def child_clean_ceiling(a: dict) -> dict:
    """The machine's own scaling for our heaviest stage's work: the default clean steps over
    the same in-memory batches (2 MB each) in 1 process, then shared by W forked processes;
    no I/O, no stages, no scheduling. Alternating rounds, best of each."""
    import bench_clean

    batches = bench_clean.batches_of(bench_clean.load_corpus(Path(a["corpus"])), 2 * 2**20)
    procs = bench_clean.ProcessClean(batches, a["workers"])
    try:
        bench_clean.run_clean(batches[:1])                     # warm up: imports, models
        one, many = [], []
        for _ in range(a["rounds"]):
            one.append(bench_clean.run_clean(batches)[0])
            many.append(procs.run())
    finally:
        procs.close()
    return {"one_s": min(one), "many_s": min(many), "rounds": {"one": one, "many": many}}


def make_lines(dest: Path, *, docs: int, files: int, seed: int = 0) -> dict:
    """``docs`` generated one-line documents (20 words) as ``files`` JSONL files, in the
    same order whatever ``files``: about 10% exact and 10% near copies of earlier ones (the
    last word changed: word 5-gram Jaccard 15/17, above the 0.8 threshold)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(20000)]
    texts: list[str] = []
    for _k in range(docs):
        r = rng.random()
        if texts and r < 0.1:
            t = texts[rng.randrange(len(texts))]
        elif texts and r < 0.2:
            t = " ".join(texts[rng.randrange(len(texts))].split()[:-1] + ["tail"])
        else:
            t = " ".join(rng.choice(vocab) for _ in range(20))
        texts.append(t)
    dest.mkdir(parents=True, exist_ok=True)
    per = -(-docs // files)
    for f in range(files):
        chunk = texts[f * per:(f + 1) * per]
        (dest / f"part-{f:04d}.jsonl").write_text(
            "".join(json.dumps({"id": f"l{f * per + i}", "text": t}) + "\n" for i, t in enumerate(chunk)))
    return {"docs": docs, "text_mb": round(sum(len(t) for t in texts) / 1e6, 2), "files": files}


def child_ours_shards(a: dict) -> dict:
    """One run for the shard-count section: wall time, per-stage summed time, and a digest
    of the kept (id, input_ids) set (equal digests = the same result)."""
    import hashlib

    import pyarrow.parquet as pq

    import preproc

    out = a["out"]
    shutil.rmtree(out, ignore_errors=True)
    spec = {"input": {"paths": [os.path.join(a["input"], "*.jsonl")]}, "shards": a["shards"],
            "clean": a.get("clean", True), "dedup": {"exact": True, "near": True}}
    import resource

    def cpu() -> float:
        return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    t0, c0 = time.perf_counter(), cpu()
    r = preproc.run(spec, output=out, tokenizer=a["tokenizer"], workers=a["workers"])
    wall, cpu_s = time.perf_counter() - t0, cpu() - c0      # (the run's workers are reaped by then)
    rows = []
    for f in sorted(Path(out, "tokens").glob("part-*.parquet")):
        t = pq.read_table(f, columns=["id", "input_ids"])
        rows += [f"{i}\t{','.join(map(str, ids))}" for i, ids in zip(t.column("id").to_pylist(),
                                                                       t.column("input_ids").to_pylist())]
    digest = hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()[:16]
    plan = json.loads(Path(out, "plan.json").read_text())
    return {"seconds": wall, "cpu_s": round(cpu_s, 2), "kept": r.stats.get("kept"), "duplicates": r.stats.get("duplicates"),
            "kept_digest": digest, "fan_out": {s["name"]: s["fan_out"] for s in plan["stages"]
                                               if not s["name"].startswith("near_cc_")},
            "stage_wall_time_s": {k: v for k, v in r.stats.get("stage_wall_time_s", {}).items() if v >= 0.01}}


def shard_counts(work: Path, corpus: Path, W: int, tab: Table, *, docs: int, corpus_mb: float,
                 counts: tuple[int, int], timeout_s: float, repeat: int = 2) -> dict:
    """The same input cut into few and many shards (one file each), 2 workers: wall time
    at many at most 1.5x that at few, the same kept documents and drop counts. The runs
    alternate (few, many, few, many ...) and each count keeps its fastest of ``repeat``, with
    the CPU time of that run (the run's processes, summed): on a shared machine the CPU ratio
    moves less than the wall one."""
    out: dict = {}
    inputs = {}
    for n in counts:
        inputs[("lines", n)] = (make_lines(work / f"lines-{n}", docs=docs, files=n), work / f"lines-{n}", False)
        if corpus_mb:
            size = make_input(corpus, work / f"corpus-{n}", shards=n, repeat_mb=None, limit_mb=corpus_mb)
            inputs[("corpus", n)] = (size, work / f"corpus-{n}", True)
    for kind in ("lines", "corpus"):
        runs: dict[int, dict] = {}
        digests: dict[int, set] = {}
        for _ in range(max(1, repeat)):
            for n in counts:
                if (kind, n) not in inputs:
                    continue
                size, path, clean = inputs[(kind, n)]
                res = run_child("ours_shards", {"input": str(path), "out": str(work / f"o-{kind}-{n}"), "shards": n,
                                                "workers": W, "tokenizer": str(TOKENIZER), "clean": clean}, timeout_s)
                digests.setdefault(n, set()).add(res.get("kept_digest", res.get("error")))
                prev = runs.get(n)     # the fastest success so far (an error only when none)
                if prev is None or ("error" not in res and ("error" in prev or res["seconds"] < prev["seconds"])):
                    runs[n] = res
        for n in counts:
            if (kind, n) not in inputs:
                continue
            size, path, clean = inputs[(kind, n)]
            res = runs[n]
            if len(digests[n]) > 1:
                res = runs[n] = {"error": f"the kept set differs between repeats: {sorted(map(str, digests[n]))}"}
            what = f"{kind}: {size['docs']} docs, {n} shards" if kind == "lines" else \
                f"corpus {size['text_mb']} MB, {n} shards"
            tab.add("shards", what, res, mb=size["text_mb"], docs=size["docs"],
                    ratio_to=None if n == counts[0] else (f"lines: {size['docs']} docs, {counts[0]} shards"
                                                          if kind == "lines" else
                                                          f"corpus {size['text_mb']} MB, {counts[0]} shards"))
        if len(runs) == 2 and all("error" not in r for r in runs.values()):
            few, many = (runs[n] for n in counts)
            out[kind] = {"wall_ratio": round(many["seconds"] / few["seconds"], 3),
                         "cpu_ratio": round(many["cpu_s"] / few["cpu_s"], 3),
                         "same_result": few["kept_digest"] == many["kept_digest"]
                         and few["duplicates"] == many["duplicates"],
                         str(counts[0]): few, str(counts[1]): many}
            print(f"shards {kind}: {counts[1]} vs {counts[0]} shards: wall x{out[kind]['wall_ratio']} "
                  f"(target <= 1.5; CPU x{out[kind]['cpu_ratio']}), same kept docs and drop counts: "
                  f"{out[kind]['same_result']}", flush=True)
    return out


CHILDREN = {"ours_e2e": child_ours_e2e, "ours_shards": child_ours_shards, "ours_tokenize": child_ours_tokenize,
            "datatrove_tokenize": child_datatrove_tokenize, "datatrove_e2e": child_datatrove_e2e,
            "clean_ceiling": child_clean_ceiling}


# -- in-process measurements -----------------------------------------------------------------

def parquet_texts(parquet_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [t for p in sorted(parquet_dir.glob("part-*.parquet"))
            for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()]


def read_ceilings(input_dir: Path, parquet_dir: Path) -> dict:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    pq.read_table(next(parquet_dir.glob("part-*.parquet")), columns=["id"])   # warm-up: lazy init
    t0 = time.perf_counter()
    n = 0
    for p in sorted(input_dir.glob("*.jsonl")):
        n += pj.read_json(p, read_options=pj.ReadOptions(block_size=64 << 20)).num_rows
    jsonl_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = 0
    for p in sorted(parquet_dir.glob("part-*.parquet")):
        m += pq.read_table(p, columns=["id", "text"]).num_rows
    pq_s = time.perf_counter() - t0
    return {"jsonl_s": jsonl_s, "parquet_s": pq_s, "parquet_rows": m}


def raw_hf(texts: list[str], batch: int) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.encode_batch_fast(texts[:64], add_special_tokens=False)
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        tok.encode_batch_fast(texts[i:i + batch], add_special_tokens=False)
    return time.perf_counter() - t0


def raw_tiktoken(texts: list[str], batch: int, threads: int) -> float:
    from preproc.tokenize import tiktoken_backend

    enc, why = tiktoken_backend.build(TOKENIZER.read_text(encoding="utf-8"))
    if enc is None:
        raise RuntimeError(why)
    enc.encode_ordinary_batch(texts[:64], num_threads=threads)
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        enc.encode_ordinary_batch(texts[i:i + batch], num_threads=threads)
    return time.perf_counter() - t0


def guarded(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except Exception as e:  # noqa: BLE001 - a failing peer is a result, not a crash
        return {"error": f"{type(e).__name__}: {e}"[:300]}


# -- the table -------------------------------------------------------------------------------

class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, what: str, res: dict | float | None, *, mb: float, docs: int,
            ratio_to: str | None = None, note: str = "") -> dict:
        if isinstance(res, (int, float)):
            res = {"seconds": float(res)}
        res = res or {"error": "not run"}
        row = {"section": section, "what": what, "note": note}
        if "error" in res:
            row["error"] = res["error"]
        else:
            s = res["seconds"]
            row.update(seconds=round(s, 3), mb_s=round(mb / s, 2), docs_s=round(docs / s, 1),
                       peak_rss_mb=res.get("peak_rss_mb"))
            for k in ("stage_wall_time_s", "stage_worker_time_s", "tokens", "kept", "duplicates", "precision", "recall", "removed"):
                if k in res:
                    row[k] = res[k]
        row["ratio_to"] = ratio_to
        self.rows.append(row)
        return row

    def get(self, section: str, what: str) -> dict | None:
        return next((r for r in self.rows if r["section"] == section and r["what"] == what), None)

    def render(self) -> str:
        lines = [f"{'section':<11}{'what':<44}{'seconds':>9}{'MB/s':>8}{'docs/s':>9}{'ratio':>16}{'peak RSS':>10}"]
        for r in self.rows:
            if "error" in r:
                lines.append(f"{r['section']:<11}{r['what']:<44}  failed: {r['error'][:90]}")
                continue
            ratio = ""
            ref = self.get(r["section"], r["ratio_to"]) if r["ratio_to"] else None
            if ref and "mb_s" in ref:
                ratio = f"{r['mb_s'] / ref['mb_s']:.2f}x {_short(r['ratio_to'])}"
                r["ratio"] = round(r["mb_s"] / ref["mb_s"], 3)
            rss = f"{r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") else "-"
            extra = (f"  P {r['precision']:.3f} R {r['recall']:.3f} removed {r['removed']}"
                     if "precision" in r else "")
            lines.append(f"{r['section']:<11}{r['what']:<44}{r['seconds']:>9.2f}{r['mb_s']:>8.2f}"
                         f"{r['docs_s']:>9.0f}{ratio:>16}{rss:>10}{extra}")
        return "\n".join(lines)


def _short(name: str) -> str:
    return {"raw encode_batch_fast": "raw-hf", "datatrove DocumentTokenizer": "dt", "datasketch": "dsk",
            "datatrove MinhashDedupSignature": "dt", "datatrove 4 MinHash stages": "dt",
            "datatrove pipeline": "dt", "ours, 1 worker x 1 thread": "1w", "pyarrow read_table(clean Parquet)": "pq",
            f"ours, 1 worker x {os.cpu_count()} threads": f"1w{os.cpu_count()}t",
            "clean steps in memory, 1 process": "1proc"}.get(name, name[:8])


# -- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    offline()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(SHARED / "data" / "corpus"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=None, help="input files = our shards = datatrove tasks "
                    "(default: 2 x workers)")
    ap.add_argument("--repeat-mb", type=float, default=None, help="repeat the corpus (unique ids) up to N MB")
    ap.add_argument("--quick", action="store_true", help="~2 min: 8 MB of the corpus, no near-dedup set, "
                    "no 1-worker run")
    ap.add_argument("--peer-mb", type=float, default=12,
                    help="end to end vs datatrove and MinHash signatures run on the first N MB of the "
                         "input (datatrove's Gopher repetition filter runs at ~0.1 MB/s here); 0: all")
    ap.add_argument("--scaling-repeat", type=int, default=2,
                    help="alternating 1-worker / N-worker runs for the scaling ratio (default 2)")
    ap.add_argument("--only", default="read,tokenize,near,e2e,scaling",
                    help="comma list of sections to run (also: shards, scale)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per engine run")
    ap.add_argument("--shard-counts", default="16,256", help="shards section: few,many shards")
    ap.add_argument("--shard-docs", type=int, default=100_000, help="shards section: generated one-line docs")
    ap.add_argument("--shard-repeat", type=int, default=2,
                    help="shards section: alternating runs per shard count, the fastest kept")
    ap.add_argument("--shard-corpus-mb", type=float, default=8,
                    help="shards section: MB of the shared corpus (0: skip)")
    ap.add_argument("--scale-mb", type=float, default=10,
                    help="scale section: MB of unique text for workers 1..N (and data x1)")
    ap.add_argument("--scale-factor", type=int, default=10, help="scale section: data x1 vs x N")
    ap.add_argument("--scale-ceiling-mb", type=float, default=4, help="scale section: ceiling MB per process")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--child")
    ap.add_argument("--child-args")
    ap.add_argument("--child-out")
    a = ap.parse_args(argv)

    if a.child:   # one engine run in this fresh process
        hwm = TreeHWM()
        res = CHILDREN[a.child](json.loads(a.child_args))
        res["peak_rss_mb"] = round(max(_peak_rss_mb(), hwm.stop()), 1)
        Path(a.child_out).write_text(json.dumps(res))
        return 0

    only = set(a.only.split(","))
    if a.quick:
        only -= {"scaling"}
    W = a.workers
    shards = a.shards or 2 * W
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    t_start = time.perf_counter()
    inp = work / "input"
    size = make_input(Path(a.corpus), inp, shards=shards, repeat_mb=a.repeat_mb, limit_mb=8 if a.quick else None)
    MB, DOCS = size["text_mb"], size["docs"]
    BASE_MB, BASE_DOCS = round(MB / size["copies"], 2), DOCS // size["copies"]
    peer_mb = 4 if a.quick else a.peer_mb
    if peer_mb and peer_mb < MB:
        sub = work / "input-peer"
        psize = make_input(Path(a.corpus), sub, shards=shards, repeat_mb=None, limit_mb=peer_mb)
    else:
        sub, psize = inp, size
    PMB, PDOCS = psize["text_mb"], psize["docs"]
    print(f"end to end vs datatrove and signatures on {PDOCS} docs, {PMB} MB", flush=True)
    load0 = os.getloadavg()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"input: {DOCS} docs, {MB} MB of text, {size['files']} JSONL files ({size['copies']}x the corpus); "
          f"{W} workers; {os.cpu_count()} cores; work dir {work}", flush=True)
    tab = Table()
    tok = str(TOKENIZER)
    results: dict = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                     "workers": W, "shards": shards, "cpu_count": os.cpu_count(), "input": size,
                     "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "loadavg_start": load0}

    def step(msg):
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    # -- end to end (also produces the clean Parquet for "read") ----------------------------
    e2e = None
    if only & {"e2e", "read", "scaling"}:
        step(f"ours end to end, {W} workers")
        e2e = run_child("ours_e2e", {"input": str(inp), "out": str(work / "ours-e2e"), "shards": shards,
                                     "workers": W, "tokenizer": tok}, a.timeout)
    if "e2e" in only:
        step(f"e2e on {PMB} MB: ours, datatrove")
        ours_p = e2e if sub == inp else run_child(
            "ours_e2e", {"input": str(sub), "out": str(work / "ours-e2e-p"), "shards": shards, "workers": W,
                         "tokenizer": tok}, a.timeout)
        dt = run_child("datatrove_e2e", {"input": str(sub), "work": str(work / "dt-e2e"), "workers": W,
                                         "tasks": shards, "tokenizer": tok}, a.timeout)
        tab.add("e2e", "datatrove pipeline", dt, mb=PMB, docs=PDOCS,
                note="gopher rep+quality, exact, minhash 14x8, DocumentTokenizer")
        tab.add("e2e", f"ours (clean+exact+near+tokenize), {W} workers", ours_p, mb=PMB, docs=PDOCS,
                ratio_to="datatrove pipeline")
        results["e2e_detail"] = {"ours": ours_p, "datatrove": dt}
    if "scaling" in only:
        # A worker is one core (threads_per_worker: 1), as a Kubernetes worker with cpu: 1 is:
        # otherwise one worker's tokenizer threads already use every core and the ratio says
        # nothing about adding workers. Runs alternate (1, W, 1, W, ...); best of each counts.
        runs: dict[int, list[dict]] = {1: [], W: []}
        for r in range(a.scaling_repeat):
            for w in (1, W):
                step(f"scaling: ours end to end, {w} worker(s) x 1 thread (round {r + 1})")
                runs[w].append(run_child("ours_e2e", {"input": str(inp), "out": str(work / f"ours-e2e-s{w}"),
                                                      "shards": shards, "workers": w, "threads": 1,
                                                      "tokenizer": tok}, a.timeout))
        best = {w: min((x for x in v if "error" not in x), key=lambda x: x["seconds"], default=v[0])
                for w, v in runs.items()}
        tab.add("scaling", "ours, 1 worker x 1 thread", best[1], mb=MB, docs=DOCS)
        tab.add("scaling", f"ours, {W} workers x 1 thread", best[W], mb=MB, docs=DOCS,
                ratio_to="ours, 1 worker x 1 thread")
        step("scaling: ours end to end, 1 worker with every core's threads (the default for 1 worker)")
        one = run_child("ours_e2e", {"input": str(inp), "out": str(work / "ours-e2e-1"), "shards": shards,
                                     "workers": 1, "tokenizer": tok}, a.timeout)
        tab.add("scaling", f"ours, 1 worker x {os.cpu_count()} threads", one, mb=MB, docs=DOCS)
        tab.add("scaling", f"ours, {W} workers (default threads)", e2e, mb=MB, docs=DOCS,
                ratio_to=f"ours, 1 worker x {os.cpu_count()} threads")
        results["scaling_detail"] = {str(w): v for w, v in runs.items()}
        step(f"scaling ceiling: the clean steps in memory, 1 vs {W} processes")
        cc = run_child("clean_ceiling", {"corpus": str(a.corpus), "workers": W, "rounds": 2}, a.timeout)
        if "error" in cc:
            tab.add("scaling", "clean steps in memory (ceiling)", cc, mb=BASE_MB, docs=BASE_DOCS)
        else:
            tab.add("scaling", "clean steps in memory, 1 process", cc["one_s"], mb=BASE_MB, docs=BASE_DOCS,
                    note="no I/O, no stages: what the machine gives")
            tab.add("scaling", f"clean steps in memory, {W} processes", cc["many_s"], mb=BASE_MB, docs=BASE_DOCS,
                    ratio_to="clean steps in memory, 1 process")
        results["clean_ceiling"] = cc

    # -- read ----------------------------------------------------------------------------
    if "read" in only and e2e and "error" not in e2e:
        step("read ceilings")
        rc = guarded(read_ceilings, inp, work / "ours-e2e" / "clean")
        if "error" in rc:
            tab.add("read", "pyarrow ceilings", rc, mb=MB, docs=DOCS)
        else:
            tab.add("read", "pyarrow read_json(input JSONL), 1 proc", rc["jsonl_s"], mb=MB, docs=DOCS)
            tab.add("read", "pyarrow read_table(clean Parquet)", rc["parquet_s"], mb=MB, docs=DOCS,
                    note="clean text bytes differ slightly from input bytes")
            tab.add("read", f"ours whole pipeline, {W} workers", e2e, mb=MB, docs=DOCS,
                    ratio_to="pyarrow read_table(clean Parquet)")

    # -- tokenize ------------------------------------------------------------------------
    if "tokenize" in only:
        step("tokenize: preparing clean parts (no clean steps, no dedup; untimed)")
        import preproc

        outs = {}
        for backend in ("hf", "tiktoken"):
            out = work / f"tok-{backend}"
            try:
                preproc.run({"input": {"paths": [str(inp / "*.jsonl")]}, "shards": shards, "clean": False,
                             "dedup": {"exact": False}, "tokenize": {"backend": backend}},
                            output=str(out), tokenizer=tok, workers=W)
                outs[backend] = out
            except Exception as e:  # noqa: BLE001
                outs[backend] = {"error": f"prepare: {type(e).__name__}: {e}"[:300]}
        src = next((o for o in outs.values() if isinstance(o, Path)), None)
        texts = parquet_texts(src / "clean") if src else []
        tmb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        step("tokenize: raw ceilings, ours (hf, tiktoken), datatrove")
        tab.add("tokenize", "raw encode_batch_fast", guarded(raw_hf, texts, 2048) if texts else None,
                mb=tmb, docs=len(texts), note="in-memory, Rust threads on all cores")
        tab.add("tokenize", "raw tiktoken encode_ordinary_batch", guarded(raw_tiktoken, texts, 2048, W)
                if texts else None, mb=tmb, docs=len(texts), ratio_to="raw encode_batch_fast")
        for backend, out in outs.items():
            res = out if isinstance(out, dict) else run_child(
                "ours_tokenize", {"out": str(out), "workers": W}, a.timeout)
            tab.add("tokenize", f"ours tokenize stage, backend {backend}", res, mb=tmb, docs=len(texts),
                    ratio_to="raw encode_batch_fast")
        dt = run_child("datatrove_tokenize", {"parquet_dir": str(src / "clean") if src else "", "work":
                                              str(work / "dt-tok"), "workers": W, "tasks": shards,
                                              "tokenizer": tok}, a.timeout) if src else None
        tab.add("tokenize", "datatrove DocumentTokenizer", dt, mb=tmb, docs=len(texts),
                ratio_to="raw encode_batch_fast")
        tab.add("tokenize", "ours tiktoken vs datatrove", tab.get("tokenize", "ours tokenize stage, backend "
                                                                  "tiktoken") and _as_res(tab.get(
                                                                      "tokenize", "ours tokenize stage, backend tiktoken")),
                mb=tmb, docs=len(texts), ratio_to="datatrove DocumentTokenizer")

    # -- shard count: the same input cut finely or coarsely (--only shards, or scale) -------
    if only & {"shards", "scale"}:
        few, many = (int(x) for x in a.shard_counts.split(","))
        step(f"shards: the same input in {few} and {many} shards, {W} workers")
        results["shards"] = guarded(shard_counts, work / "shards", Path(a.corpus), W, tab, docs=a.shard_docs,
                                    corpus_mb=a.shard_corpus_mb, counts=(few, many), timeout_s=a.timeout,
                                    repeat=a.shard_repeat)
    if "scale" in only:
        import bench_scale

        step(f"scale: the machine's ceiling, workers 1..{W}, data x1 vs x{a.scale_factor} ({a.scale_mb} MB)")
        sc = guarded(bench_scale.run, work / "scale", mb=a.scale_mb, max_workers=W, factor=a.scale_factor,
                     ceiling_mb=a.scale_ceiling_mb, timeout_s=a.timeout, corpus=Path(a.corpus))
        step("scale: small files, balance, coordinator (scripts/bench_{smallfiles,balance,coord}.py)")
        other = bench_scale.other_rows(work / "scale-other", timeout_s=a.timeout)
        results["scale"] = {"rows": sc.get("rows", [{"label": "scale", "error": sc.get("error")}]) + other["rows"],
                            "detail": {"bench_scale": sc, **other["detail"]}}

    # -- near-dedup ------------------------------------------------------------------------
    if "near" in only:
        import bench_near

        step("near-dedup: signatures (ours, datasketch, datatrove)")
        corpus = sorted(Path(a.corpus).glob("*.jsonl.gz"))
        sig = guarded(bench_near.bench_signatures, corpus, workers=W, engines=["preproc", "datasketch", "datatrove"],
                      bands=14, rows=8, limit=int(PMB * 1e6), batch=1024, repeat=1)
        if isinstance(sig, dict):
            tab.add("minhash", "signatures", sig, mb=1, docs=1)
        else:
            for r in sig:
                name = {"preproc": "ours signatures + band keys", "datasketch": "datasketch",
                        "datatrove": "datatrove MinhashDedupSignature"}[r["engine"]]
                tab.add("minhash", name, {"seconds": r["seconds"]}, mb=r["mb"], docs=r["docs"],
                        note=f"cpu {r['cpu_s']} s")
            ours = _as_res(tab.get("minhash", "ours signatures + band keys"))
            m0 = sig[0]
            tab.add("minhash", "ours vs datatrove", ours, mb=m0["mb"], docs=m0["docs"],
                    ratio_to="datatrove MinhashDedupSignature")
            # ratio column of "ours" row is vs datasketch
            tab.get("minhash", "ours signatures + band keys")["ratio_to"] = "datasketch"
        if not a.quick:
            step("near-dedup: whole, on the near-dup set with ground truth")
            results["neardup"] = guarded(near_whole, bench_near, work / "near", W, shards, tab)

    if e2e and "error" not in e2e:
        results["ours_e2e_full_detail"] = e2e
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    results["loadavg_end"] = os.getloadavg()
    table = tab.render()
    if "scale" in results:   # rows of any shape: a label and numbers
        table += "\n\nscale\n" + bench_scale.render(results["scale"]["rows"])
    print()
    print(table)
    print(f"\nMB/s: UTF-8 text bytes in / wall s; ratio: MB/s over the named row's; peak RSS: largest "
          f"single process of that run. Total {results['elapsed_s']} s; load average "
          f"{results['loadavg_start'][0]:.1f} at start, {results['loadavg_end'][0]:.1f} at end "
          f"({os.cpu_count()} cores).")
    results["rows"] = tab.rows
    results["table"] = table
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {a.json_path}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _as_res(row: dict | None) -> dict | None:
    if row is None:
        return None
    if "error" in row:
        return {"error": row["error"]}
    return {"seconds": row["seconds"], "peak_rss_mb": row.get("peak_rss_mb")}


def near_whole(bench_near, work: Path, W: int, shards: int, tab: Table) -> dict:
    data = SHARED / "data" / "neardup"
    gt = json.loads((data / "neardup_gt.json").read_text())
    parts = bench_near.split_input(data / "neardup.jsonl.gz", work / "input", shards)
    mb = sum(len(json.loads(line)["text"].encode("utf-8")) for p in parts.glob("*.jsonl")
             for line in p.read_text(encoding="utf-8").splitlines()) / 1e6
    docs = gt["n_docs"]
    out = {}
    r = guarded(bench_near.run_datatrove, parts, work, W, shards)
    if "error" not in r:
        r.update(bench_near.confusion(r.pop("removed_ids"), gt))
        r["seconds"] = r["near_s"]
    tab.add("near", "datatrove 4 MinHash stages", r, mb=mb, docs=docs)
    out["datatrove"] = r
    for label, near in (("ours near stages, defaults (0.8 verified)", True),
                        ("ours near stages, 14x8 unverified", {"bands": 14, "rows": 8})):
        r = guarded(bench_near.run_preproc, parts, TOKENIZER, work, W, near, shards)
        if "error" not in r:
            r.update(bench_near.confusion(r.pop("removed_ids"), gt))
            r["seconds"] = r["near_s"]
        tab.add("near", label, r, mb=mb, docs=docs, ratio_to="datatrove 4 MinHash stages")
        if "error" not in r:
            tab.add("near", label.replace("stages", "+ clean"), {"seconds": r["with_clean_s"]}, mb=mb, docs=docs,
                    ratio_to="datatrove 4 MinHash stages")
        out[label] = r
    return out


if __name__ == "__main__":
    sys.exit(main())
