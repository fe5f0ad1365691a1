#!/usr/bin/env python
"""Scale-out benchmark: how our default pipeline grows with workers and with data, against
what the machine itself gives (issue 18, "Workers").

Three groups of rows, each a function (``scripts/bench.py --only scale`` prints them too):

* :func:`ceiling` — the machine's own ceiling, measured in the same run: N independent
  processes, each doing one shard's clean, MinHash signatures and tokenize work (tiktoken,
  one thread) on its own in-memory data, no coordination and no I/O in the timed part,
  against one such process. ``speedup = N x (1 process's time) / (N processes' wall time)``:
  shared caches, memory bandwidth and frequency scaling are all in it.
* :func:`workers` — our end to end default pipeline (clean + exact + near + tokenize, one
  thread per worker: a worker is a core) with 1, 2, 4, 8, 16 ... workers (up to
  ``os.cpu_count()``) on the same input: speedup vs 1 worker, and efficiency = that speedup
  over the ceiling's at the same N (target: 90% at 16; 2 workers at least 1.9x).
* :func:`data_growth` — the same at N workers on x1 and x10 the data (cost ratio; target
  at most 11x).

The input is unique text (:func:`make_unique_input`): the shared corpus, copy k with every
word outside the 200 most frequent ones replaced through a random permutation of equally
long words (a bijection per copy): the same length, stop-word and repetition statistics, so
the clean steps keep about the same share, but word 5-grams differ between copies, so
neither exact nor near dedup removes the copies. Ids are ``<id>#k``.

    python scripts/bench_scale.py --mb 20 --json /tmp/scale.json          # here: ~2 min
    scripts/bench_device.sh                                               # a 16-core machine

Every run is a child process (``bench.run_child``): a failure is a row (``failed: ...``).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402

FIXED_WORDS = 200            # the most frequent words keep their place (stop words, gopher's counts)
_WORD = re.compile(r"(\w+)")


# -- unique input ------------------------------------------------------------------------------

def load_docs(corpus: Path) -> list[dict]:
    docs = []
    for p in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                docs.append({"id": d["id"], "text": d["text"], "source": d.get("source", p.name)})
    random.Random(0).shuffle(docs)
    return docs


class Perturber:
    """Copy ``k`` of a document: its words outside the :data:`FIXED_WORDS` most frequent
    mapped through a per-copy permutation among words of the same length (copy 0 is the
    original). Deterministic in ``k``."""

    def __init__(self, docs: list[dict]):
        self.parts = [_WORD.split(d["text"]) for d in docs]
        counts = np.fromiter((len(p) // 2 for p in self.parts), dtype=np.int64, count=len(self.parts))
        # Word ids by a hash table in C (pyarrow), not a Python dict: the corpus has millions of words.
        enc = pa.array([w for p in self.parts for w in p[1::2]], pa.string()).dictionary_encode()
        ids = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self.words = np.array(enc.dictionary.to_pylist(), dtype=object)
        self.ids = np.split(ids, np.cumsum(counts)[:-1])
        order = np.argsort(-np.bincount(ids, minlength=len(self.words)), kind="stable")
        by_len: dict[int, list[int]] = {}
        for j in order[FIXED_WORDS:]:
            by_len.setdefault(len(self.words[j]), []).append(int(j))
        self.groups = [np.array(v, dtype=np.int64) for v in by_len.values()]

    def mapping(self, k: int) -> np.ndarray:
        perm = np.arange(len(self.words), dtype=np.int64)
        if k == 0:
            return perm
        rng = np.random.default_rng(k)
        for g in self.groups:
            perm[g] = g[rng.permutation(len(g))]
        return perm

    def text(self, i: int, perm: np.ndarray) -> str:
        parts = list(self.parts[i])
        parts[1::2] = self.words[perm[self.ids[i]]].tolist()
        return "".join(parts)


def make_unique_input(corpus: Path, dest: Path, *, mb: float, shards: int, procs: int | None = None) -> dict:
    """About ``mb`` MB of unique text as ``shards`` JSONL files of about equal bytes.

    The stream of documents is copy 0 of the corpus (the original, shuffled), then copy 1,
    ... (see :class:`Perturber`), cut where it reaches ``mb``; file ``f`` holds every
    ``shards``-th document of it from the ``f``-th on, so each file mixes every copy and
    source. Written by ``procs`` forked processes (default: the cores), one file each at a
    time; the content does not depend on ``procs``."""
    global _GEN
    docs = load_docs(corpus)
    sizes = np.array([len(d["text"].encode("utf-8")) for d in docs], dtype=np.int64)
    copies = int(-(-mb * 1e6 // sizes.sum()))
    cum = np.cumsum(np.tile(sizes, copies))
    total = int(min(len(cum), np.searchsorted(cum, mb * 1e6) + 1))
    dest.mkdir(parents=True, exist_ok=True)
    _GEN = (Perturber(docs), docs, total, shards, dest)
    try:
        n = max(1, min(procs or os.cpu_count() or 1, shards))
        if n == 1:
            written = [_write_file(f) for f in range(shards)]
        else:
            with mp.get_context("fork").Pool(n) as pool:
                written = pool.map(_write_file, range(shards), chunksize=1)
    finally:
        _GEN = None
    return {"docs": total, "text_mb": round(sum(written) / 1e6, 2), "copies": copies, "files": shards}


_GEN: tuple | None = None      # what make_unique_input's forked writers share


def _write_file(f: int) -> int:
    assert _GEN is not None
    pert, docs, total, shards, dest = _GEN
    n_docs, nbytes, perm, k_have = len(docs), 0, None, -1
    with open(dest / f"part-{f:05d}.jsonl", "wb") as out:
        for j in range(f, total, shards):
            k, i = divmod(j, n_docs)
            if k != k_have:
                perm, k_have = pert.mapping(k), k
            text = pert.text(i, perm)
            d = docs[i]
            out.write((json.dumps({"id": f"{d['id']}#{k}", "text": text, "source": d["source"]},
                                  ensure_ascii=False) + "\n").encode("utf-8"))
            nbytes += len(text.encode("utf-8"))
    return nbytes


# -- the machine's ceiling -----------------------------------------------------------------

def _ceiling_proc(rank: int, pert: Perturber, docs: list[dict], mb: float, phases: list[int],
                  barrier, results) -> None:
    """One process (forked: the perturber is shared): build its own data and steps
    (untimed), then for each phase wait for the others and, when ``rank < phase``, clean,
    sign and tokenize its batches."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    from preproc.clean.steps import CleanPipeline, build_steps
    from preproc.dedup.minhash import MinHasher, shingle_hashes, unit_hashes
    from preproc.spec.near import resolve_near
    from preproc.tokenize import tiktoken_backend

    pa.set_cpu_count(1)
    texts, ids, srcs, size, k = [], [], [], 0, 1 + rank * 1000     # data of its own: copies no other has
    while size < mb * 1e6:
        perm = pert.mapping(k)
        for i, d in enumerate(docs):
            t = pert.text(i, perm)
            texts.append(t)
            ids.append(f"{d['id']}#{k}")
            srcs.append(d["source"])
            size += len(t.encode("utf-8"))
            if size >= mb * 1e6:
                break
        k += 1
    batches, start, acc = [], 0, 0
    for i, t in enumerate(texts):                    # record batches of ~2 MB, as a reader's
        acc += len(t)
        if acc >= 2 * 2**20 or i == len(texts) - 1:
            batches.append(pa.record_batch({"id": ids[start:i + 1], "text": texts[start:i + 1],
                                            "source": srcs[start:i + 1]}))
            start, acc = i + 1, 0
    pipe = CleanPipeline(build_steps(True))
    pipe(batches[0].slice(0, 8))                     # models, compiled patterns
    params = resolve_near(True).minhash
    mh = MinHasher(params)
    enc, why = tiktoken_backend.build(bench.TOKENIZER.read_text(encoding="utf-8"))
    if enc is None:
        raise RuntimeError(why)
    for phase in phases:
        barrier.wait()
        if rank < phase:
            t = {"clean": 0.0, "signatures": 0.0, "tokenize": 0.0}
            for b in batches:
                t0 = time.perf_counter()
                text = pipe(b).kept.column("text")
                t1 = time.perf_counter()
                for i in range(0, len(text), 1024):                    # near_signatures' batch size
                    part = text.slice(i, 1024)
                    sh, per_doc = shingle_hashes(*unit_hashes(part, params.unit), params.ngram)
                    mh.band_keys(mh.signatures(sh, per_doc))
                t2 = time.perf_counter()
                tiktoken_backend.encode_batch(enc, text.to_pylist(), encode_special_tokens=True)
                t3 = time.perf_counter()
                t["clean"] += t1 - t0
                t["signatures"] += t2 - t1
                t["tokenize"] += t3 - t2
            results.put({"rank": rank, "phase": phase, "mb": size / 1e6, **{f"{k}_s": v for k, v in t.items()}})
        barrier.wait()


def _ceiling_run(n: int, pert: Perturber, docs: list[dict], mb: float, rounds: int, timeout_s: float) -> dict:
    """n forked processes; phases alternate 1 active process and n (``rounds`` of each);
    the best wall time of each kind."""
    ctx = mp.get_context("fork")
    phases = [1, n] * rounds if n > 1 else [1] * rounds
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_ceiling_proc, args=(r, pert, docs, mb, phases, barrier, results), daemon=True)
             for r in range(n)]
    for p in procs:
        p.start()
    walls: dict[int, list[float]] = {}
    got: list[dict] = []
    try:
        for phase in phases:
            barrier.wait(timeout=timeout_s)
            t0 = time.perf_counter()
            barrier.wait(timeout=timeout_s)
            walls.setdefault(phase, []).append(time.perf_counter() - t0)
            got += [results.get(timeout=timeout_s) for _ in range(phase)]
    except Exception as e:  # noqa: BLE001 - a broken barrier or a dead process is a result
        for p in procs:
            p.kill()
        return {"error": f"{type(e).__name__}: {e or 'a process died'}"[:200]}
    finally:
        for p in procs:
            p.join(timeout=30)
    one = [g for g in got if g["phase"] == 1]
    return {"one_s": min(walls[1]), "many_s": min(walls[n]), "walls": walls, "mb_per_process": one[0]["mb"],
            "one_steps_s": {k: round(min(g[k] for g in one), 3) for k in ("clean_s", "signatures_s", "tokenize_s")}}


def ceiling(corpus: Path, counts: list[int], *, mb_per_process: float, rounds: int = 2,
            timeout_s: float = 600) -> dict:
    """The machine's ceiling at each N of ``counts`` (see the module docstring): for each N,
    N forked processes with ``mb_per_process`` MB of text each, 1 of them working alone vs
    all N at once, alternating ``rounds`` times. Rows, and ``speedup`` by N."""
    docs = load_docs(corpus)
    # Enough documents for one copy per process's data (fewer words to index).
    need, acc = 0, 0
    while need < len(docs) and acc < mb_per_process * 1e6:
        acc += len(docs[need]["text"])
        need += 1
    docs = docs[:need]
    pert = Perturber(docs)
    rows, speedup = [], {1: 1.0}
    for n in counts:
        if n == 1 and len(counts) > 1:
            continue
        res = _ceiling_run(n, pert, docs, mb_per_process, rounds, timeout_s)
        if "error" in res:
            rows.append({"label": f"ceiling: {n} processes", "error": res["error"]})
            continue
        mb = res["mb_per_process"]
        if not rows:
            rows.append({"label": "ceiling: 1 process (clean+signatures+tokenize, in memory)",
                         "seconds": round(res["one_s"], 2), "mb_s": round(mb / res["one_s"], 2),
                         **res["one_steps_s"]})
        speedup[n] = round(n * res["one_s"] / res["many_s"], 2)
        if n > 1:
            rows.append({"label": f"ceiling: {n} processes at once", "seconds": round(res["many_s"], 2),
                         "mb_s": round(n * mb / res["many_s"], 2), "speedup": speedup[n],
                         "one_alone_s": round(res["one_s"], 2)})
    return {"rows": rows, "speedup": speedup}


# -- our pipeline ------------------------------------------------------------------------------

def _e2e(inp: Path, out: Path, *, shards: int, workers: int, timeout_s: float) -> dict:
    try:
        return bench.run_child("ours_e2e", {"input": str(inp), "out": str(out), "shards": shards, "workers": workers,
                                            "threads": 1, "tokenizer": str(bench.TOKENIZER)}, timeout_s)
    finally:
        shutil.rmtree(out, ignore_errors=True)      # a GB-sized run's outputs: not kept


def workers(inp: Path, size: dict, work: Path, counts: list[int], *, shards: int,
            ceiling_speedup: dict[int, float] | None = None, timeout_s: float = 600) -> dict:
    """Our end to end with each worker count of ``counts`` (one thread each)."""
    rows, base = [], None
    for n in counts:
        res = _e2e(inp, work / f"e2e-w{n}", shards=shards, workers=n, timeout_s=timeout_s)
        row = _row(f"ours e2e, {n} worker(s) x 1 thread, {size['text_mb']} MB", res, mb=size["text_mb"])
        if n == 1 and "error" not in res:
            base = res["seconds"]
        elif base and "error" not in res:
            row["speedup"] = round(base / res["seconds"], 2)
            c = (ceiling_speedup or {}).get(n)
            if c:
                row["ceiling_speedup"] = c
                row["efficiency_vs_ceiling"] = round(row["speedup"] / c, 3)
        rows.append(row)
    return {"rows": rows}


def data_growth(inputs: tuple[Path, Path], sizes: tuple[dict, dict], work: Path, *, factor: int, n: int,
                shards: int, one_worker_s: float | None = None, timeout_s: float = 600) -> dict:
    """Our end to end at ``n`` workers on the x1 and the x``factor`` input. With
    ``one_worker_s`` (1 worker on the x1 input), also the speedup of ``n`` workers on the big
    input over ``factor`` times that (1 worker on x``factor`` would take too long to run)."""
    rows, res = [], {}
    for f, inp, size in zip((1, factor), inputs, sizes):
        res[f] = _e2e(inp, work / f"e2e-x{f}", shards=shards, workers=n, timeout_s=timeout_s)
        row = _row(f"ours e2e, {n} workers, data x{f} ({size['text_mb']} MB)", res[f], mb=size["text_mb"])
        if f == factor and "error" not in res[1] and "error" not in res[f]:
            row["cost_ratio"] = round(res[f]["seconds"] / res[1]["seconds"], 2)
            row["target"] = f"<= {factor * 1.1:g}"
            if one_worker_s:
                row["speedup_vs_1_worker_x1_times_factor"] = round(factor * one_worker_s / res[f]["seconds"], 2)
        rows.append(row)
    return {"rows": rows}


def profile(inp: Path, work: Path, out: Path, *, shards: int, workers: int, rate_hz: int = 25,
            timeout_s: float = 600) -> dict:
    """Our end to end at ``workers`` under ``py-spy record --subprocesses`` (a flame graph
    SVG at ``out``); its wall time is not a result (sampling slows it a little)."""
    if shutil.which("py-spy") is None:
        return {"label": f"py-spy profile, {workers} workers", "error": "py-spy not installed (pip install py-spy)"}
    args = {"input": str(inp), "out": str(work / "e2e-profile"), "shards": shards, "workers": workers,
            "threads": 1, "tokenizer": str(bench.TOKENIZER)}
    child_out = work / "profile-child.json"
    cmd = ["py-spy", "record", "--subprocesses", "--rate", str(rate_hz), "--format", "flamegraph", "-o", str(out),
           "--", sys.executable, str(ROOT / "scripts" / "bench.py"), "--child", "ours_e2e",
           "--child-args", json.dumps(args), "--child-out", str(child_out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"label": f"py-spy profile, {workers} workers", "error": f"timed out after {timeout_s:.0f} s"}
    if p.returncode != 0 or not out.exists():
        return {"label": f"py-spy profile, {workers} workers",
                "error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-200:]}"}
    return {"label": f"py-spy profile, {workers} workers (written to {out})",
            "seconds_under_py_spy": round(time.perf_counter() - t0, 2)}


def _size(inp: Path) -> dict:
    n, b = 0, 0
    for p in sorted(inp.glob("*.jsonl")):
        for line in p.open("rb"):
            n += 1
            b += len(json.loads(line)["text"].encode("utf-8"))
    return {"docs": n, "text_mb": round(b / 1e6, 2)}


def _row(label: str, res: dict, *, mb: float | None = None) -> dict:
    if "error" in res:
        return {"label": label, "error": res["error"]}
    row = {"label": label, "seconds": round(res["seconds"], 2)}
    m = mb if mb is not None else res.get("mb")
    if m:
        row["mb_s"] = round(m / res["seconds"], 2)
    if res.get("peak_rss_mb"):
        row["peak_rss_mb"] = res["peak_rss_mb"]
    return row


def worker_counts(max_workers: int | None = None) -> list[int]:
    """1, 2, 4, 8, 16, ... up to ``max_workers`` (default: the cores), which is always last."""
    top = max_workers or os.cpu_count() or 1
    out = [1]
    while out[-1] * 2 <= top:
        out.append(out[-1] * 2)
    if out[-1] != top:
        out.append(top)
    return out


def run(work: Path, *, mb: float = 20, max_workers: int | None = None, ceiling_mb: float = 4,
        factor: int = 10, shards: int | None = None, timeout_s: float = 600, corpus: Path | None = None,
        only: tuple[str, ...] = ("ceiling", "workers", "data"), profile_out: Path | None = None,
        echo: bool = False) -> dict:
    """The groups named in ``only``: the ceiling, workers 1..N, data x1 vs x``factor`` at N
    workers (N: ``max_workers``, default the cores). ``mb``: the workers rows' input, also the
    x1 of the data rows. ``profile_out``: also a py-spy flame graph of N workers on the x1
    input there. Returns ``{"rows": [...], ...}``; ``echo`` prints each group's rows."""
    corpus = corpus or bench.SHARED / "data" / "corpus"
    counts = worker_counts(max_workers)
    shards = shards or 4 * counts[-1]
    res: dict = {"cpu_count": os.cpu_count(), "worker_counts": counts, "shards": shards, "rows": []}

    def add(rows: list[dict]) -> None:
        res["rows"] += rows
        if echo:
            print(render(rows), flush=True)

    speedup = None
    if "ceiling" in only:
        c = ceiling(corpus, counts, mb_per_process=ceiling_mb, timeout_s=timeout_s)
        speedup = c["speedup"]
        add(c["rows"])
    inp = work / "input"
    if {"workers", "data"} & set(only):
        t0 = time.perf_counter()
        res["input"] = make_unique_input(corpus, inp, mb=mb, shards=shards)
        res["generate_s"] = round(time.perf_counter() - t0, 1)
        if echo:
            print(f"input: {res['input']} in {res['generate_s']} s", flush=True)
    if "workers" in only:
        add(workers(inp, res["input"], work, counts, shards=shards, ceiling_speedup=speedup,
                    timeout_s=timeout_s)["rows"])
    if "data" in only:
        big = work / f"input-x{factor}"
        t0 = time.perf_counter()
        res["input_big"] = make_unique_input(corpus, big, mb=mb * factor, shards=shards)
        if echo:
            print(f"input x{factor}: {res['input_big']} in {time.perf_counter() - t0:.1f} s", flush=True)
        one = next((r.get("seconds") for r in res["rows"] if r["label"].startswith("ours e2e, 1 worker(s)")), None)
        add(data_growth((inp, big), (res["input"], res["input_big"]), work, factor=factor, n=counts[-1],
                        shards=shards, one_worker_s=one, timeout_s=timeout_s)["rows"])
    if profile_out is not None:
        add([profile(inp, work, profile_out, shards=shards, workers=counts[-1], timeout_s=timeout_s)])
    return res


# The other scale benchmarks (issue 18), each ``run(work, *, ..., timeout_s) -> {"rows": [...]}``.
OTHER_MODULES = ("bench_smallfiles", "bench_balance", "bench_coord")


def other_rows(work: Path, *, timeout_s: float = 600, modules: tuple[str, ...] = OTHER_MODULES) -> dict:
    """Rows of the other scale benchmarks, each guarded: a module that is missing, fails or
    returns no rows gives one ``failed`` row and the rest goes on."""
    rows: list[dict] = []
    detail: dict = {}
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            rows.append({"label": name, "error": f"scripts/{name}.py: {type(e).__name__}: {e}"[:200]})
            continue
        try:
            res = mod.run(work / name, timeout_s=timeout_s)
            got = res["rows"]
            if not isinstance(got, list) or not all(isinstance(r, dict) and "label" in r for r in got):
                raise TypeError("run() must return {'rows': [{'label': ..., ...}, ...]}")
        except Exception as e:  # noqa: BLE001 - one benchmark's failure is a row, not the end
            rows.append({"label": name, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        rows += [dict(r, label=f"{name}: {r['label']}") for r in got]
        detail[name] = res
    return {"rows": rows, "detail": detail}


def render(rows: list[dict]) -> str:
    """One line per row: its label, then its numbers (whatever keys it has)."""
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['label']:<58} failed: {r['error'][:100]}")
            continue
        extra = "  ".join(f"{k} {v}" for k, v in r.items() if k != "label" and not isinstance(v, (dict, list)))
        lines.append(f"{r['label']:<58} {extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    bench.offline()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="work folder (default: a new temporary one, removed at the end)")
    ap.add_argument("--corpus", default=str(bench.SHARED / "data" / "corpus"))
    ap.add_argument("--mb", type=float, default=20, help="workers rows' input, MB of unique text")
    ap.add_argument("--factor", type=int, default=10, help="data rows: x1 vs x FACTOR at the most workers")
    ap.add_argument("--max-workers", type=int, default=None, help="default: os.cpu_count()")
    ap.add_argument("--ceiling-mb", type=float, default=4, help="ceiling: MB of text per process")
    ap.add_argument("--shards", type=int, default=None, help="default: 4 x the most workers")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run")
    ap.add_argument("--only", default="ceiling,workers,data", help="comma list of groups")
    ap.add_argument("--profile-out", help="also a py-spy flame graph (SVG) of the most workers, here")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        res = run(work, mb=a.mb, max_workers=a.max_workers, ceiling_mb=a.ceiling_mb, factor=a.factor,
                  shards=a.shards, timeout_s=a.timeout, corpus=Path(a.corpus), only=tuple(a.only.split(",")),
                  profile_out=Path(a.profile_out) if a.profile_out else None, echo=True)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    res["command"] = " ".join(["bench_scale.py", *(argv if argv is not None else sys.argv[1:])])
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(f"\n{render(res['rows'])}\nTotal {res['elapsed_s']} s, {os.cpu_count()} cores.")
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {a.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
