"""Near-duplicate removal, side by side in one run: our MinHash vs datasketch vs datatrove.

Two measurements, same cores, same worker count:

1. **Signatures** on the shared corpus (``../shared/data/corpus``): text in memory →
   MinHash signatures (and, for us, the LSH band keys), word 5-grams of lower-cased
   ``\\w`` words, ``bands x rows`` permutations. Each of ``--workers`` processes takes a
   contiguous slice of the documents; throughput = text bytes / the slowest worker.

   * ``preproc``: :mod:`preproc.dedup.minhash` on Arrow batches (conversion to Arrow included).
   * ``datasketch``: ``MinHash(num_perm).update_batch`` over the same shingle strings.
   * ``datatrove``: ``MinhashDedupSignature.run`` (its own spaCy word splitting and
     simplify_text, 14 x 8 = 112 hashes, writing and sorting its signature files).

2. **The whole near-dedup** on ``../shared/data/neardup`` (ground truth included):

   * ``preproc``: ``preproc.run`` with exact dedup off, once with the defaults
     (``near: true``: threshold 0.8, 16 x 6, candidate pairs verified by exact Jaccard)
     and once with ``{bands: 14, rows: 8}`` unverified (datatrove's LSH, every candidate a
     duplicate: the same S-curve as datatrove's row, compared like for like); the time
     is the wall clock from the first ``near_signatures`` index to the last ``near_drops``
     index (and, as a conservative figure, including the ``clean`` stage that reads the
     JSONL).
   * ``datatrove``: its four stages with its defaults (JsonlReader + MinhashDedupSignature,
     MinhashDedupBuckets, MinhashDedupCluster, JsonlReader + MinhashDedupFilter +
     JsonlWriter), ``LocalPipelineExecutor`` with the same workers.

   Removal precision/recall against ``neardup_gt.json``: a removal is right when the
   document is in a ground-truth cluster and no more than all but one of that cluster
   are removed.

    python scripts/bench_near.py --workers 2 --json bench-near.json

datasketch and datatrove come from the ``bench`` extra (``pip install datasketch datatrove
spacy``); a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREPROC_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))

_WORD = re.compile(r"\w+")


def load_texts(paths: list[Path], limit_bytes: int | None = None) -> list[str]:
    texts, total = [], 0
    for p in paths:
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                t = json.loads(line)["text"]
                texts.append(t)
                total += len(t.encode("utf-8"))
                if limit_bytes and total >= limit_bytes:
                    return texts
    return texts


# -- 1. signatures -------------------------------------------------------------------------

def _slice(texts: list[str], part: int, parts: int) -> list[str]:
    n = len(texts)
    return texts[n * part // parts: n * (part + 1) // parts]


def _sig_preproc(texts: list[str], bands: int, rows: int, batch: int) -> None:
    import pyarrow as pa

    from preproc.dedup.minhash import MinHasher, MinHashParams, shingle_hashes, unit_hashes

    mh = MinHasher(MinHashParams(ngram=5, bands=bands, rows=rows, seed=1))
    for i in range(0, len(texts), batch):
        arr = pa.array(texts[i:i + batch], pa.large_string())
        sh, per_doc = shingle_hashes(*unit_hashes(arr), 5)
        mh.band_keys(mh.signatures(sh, per_doc))


def _sig_datasketch(texts: list[str], bands: int, rows: int, batch: int) -> None:
    from datasketch import MinHash

    for t in texts:
        w = _WORD.findall(t.lower())
        sh = {" ".join(w[i:i + 5]) for i in range(max(len(w) - 4, 1))} if w else set()
        m = MinHash(num_perm=bands * rows, seed=1)
        m.update_batch([s.encode("utf-8") for s in sh])


def _datatrove_hash():
    """datatrove's default shingle hash (xxhash of a str) fails with xxhash >= 3.5, which
    refuses str; its sha1 variant encodes first. Same 64-bit precision as its default."""
    from datatrove.utils.hashing import HashConfig

    try:
        import xxhash

        xxhash.xxh64_intdigest("x")
        return HashConfig()
    except TypeError:
        return HashConfig(hash_fc="sha1", precision=64)


def _sig_datatrove(texts: list[str], bands: int, rows: int, batch: int) -> None:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    out = tempfile.mkdtemp(prefix="dt-sig-")
    try:
        cfg = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                            hash_config=_datatrove_hash())
        step = MinhashDedupSignature(output_folder=out, config=cfg)
        docs = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
        step.run(docs, rank=0, world_size=1)
    finally:
        shutil.rmtree(out, ignore_errors=True)


_ENGINES = {"preproc": _sig_preproc, "datasketch": _sig_datasketch, "datatrove": _sig_datatrove}


def _sig_worker(args) -> tuple[float, float]:
    engine, paths, limit, part, parts, bands, rows, batch = args
    texts = _slice(load_texts([Path(p) for p in paths], limit), part, parts)
    fn = _ENGINES[engine]
    fn(texts[:50], bands, rows, batch)            # warm-up: imports, lazy tables
    t0, c0 = time.perf_counter(), time.process_time()
    fn(texts, bands, rows, batch)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_signatures(paths: list[Path], *, workers: int, engines: list[str], bands: int, rows: int,
                     limit: int | None, batch: int, repeat: int) -> list[dict]:
    """Best of ``repeat`` rounds (datatrove: one), engines interleaved within a round so
    that a shared machine's load hits them alike. ``mb_s``: text bytes / wall time of the
    slowest worker; ``cpu_mb_s_per_core``: text bytes / CPU seconds of all workers."""
    texts = load_texts(paths, limit)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    best: dict[str, tuple[float, float]] = {}
    ctx = mp.get_context("spawn")
    for rnd in range(repeat):
        for engine in engines:
            if engine == "datatrove" and rnd:
                continue
            with ctx.Pool(workers) as pool:
                times = pool.map(_sig_worker, [(engine, [str(p) for p in paths], limit, i, workers, bands, rows,
                                                batch) for i in range(workers)])
            wall, cpu = max(t[0] for t in times), sum(t[1] for t in times)
            if engine not in best or wall < best[engine][0]:
                best[engine] = (wall, cpu)
    return [{"engine": e, "seconds": round(best[e][0], 3), "mb_s": round(nbytes / 1e6 / best[e][0], 2),
             "docs_s": round(len(texts) / best[e][0], 1), "cpu_s": round(best[e][1], 3),
             "cpu_mb_s_per_core": round(nbytes / 1e6 / best[e][1], 2), "docs": len(texts),
             "mb": round(nbytes / 1e6, 2)} for e in engines]


# -- 2. whole near-dedup -------------------------------------------------------------------

def confusion(removed: list[str], gt: dict) -> dict:
    cluster = {d: i for i, c in enumerate(gt["clusters"]) for d in c}
    per: dict[int, int] = {}
    wrong = 0
    for d in removed:
        if d in cluster:
            per[cluster[d]] = per.get(cluster[d], 0) + 1
        else:
            wrong += 1
    right = sum(min(n, len(gt["clusters"][c]) - 1) for c, n in per.items())
    wrong += sum(per.values()) - right
    total = gt["n_docs_to_remove"]
    return {"removed": len(removed), "right": right, "wrong": wrong, "missed": total - right,
            "precision": round(right / max(len(removed), 1), 4), "recall": round(right / total, 4)}


def _removed_preproc(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    from preproc.dedup.drops import read_drops
    from preproc.io.store import Store

    store = Store(str(out))
    plan = json.loads((out / "plan.json").read_text())
    stages = [s["name"] for s in plan["stages"] if s["name"] in ("exact_dedup", "near_drops")]
    removed = []
    for i in range(len(plan["shards"])):
        rows = read_drops(store, stages, i)
        if len(rows):
            ids = pq.read_table(out / "clean" / f"part-{i:05d}.parquet", columns=["id"]).column("id")
            removed += ids.take(rows.astype("int64")).to_pylist()
    return removed


def _near_wall(out: Path) -> tuple[float, float]:
    """(near stages, clean + near stages) wall seconds, from the markers' timestamps."""
    def markers(stage):
        d = out / stage / "_done"
        return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.exists() else []

    plan = json.loads((out / "plan.json").read_text())
    names = [s["name"] for s in plan["stages"]]
    near = [n for n in names if n.startswith("near_")]
    ms = {n: markers(n) for n in ["clean", *near]}
    if all("started_s" in m for v in ms.values() for m in v):
        start = min(m["started_s"] for m in ms[near[0]])
        end = max(m["finished_s"] for m in ms[near[-1]])
        cstart = min(m["started_s"] for m in ms["clean"])
        cend = max(m["finished_s"] for m in ms["clean"])
        return end - start, (end - start) + (cend - cstart)
    # Older markers: the slowest index of each stage, stage after stage.
    near_s = sum(max((m["wall_time_s"] for m in ms[n]), default=0.0) for n in near)
    return near_s, near_s + max(m["wall_time_s"] for m in ms["clean"])


def split_input(src: Path, dest: Path, parts: int) -> Path:
    """The set as ``parts`` plain JSONL files of consecutive documents: datatrove gives each
    task whole files, so both engines get the same pieces."""
    dest.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    for i in range(parts):
        (dest / f"part-{i:03d}.jsonl").write_bytes(b"".join(lines[len(lines) * i // parts:len(lines) * (i + 1) // parts]))
    return dest


def run_preproc(data: Path, tokenizer: Path, work: Path, workers: int, near, shards: int) -> dict:
    import preproc

    out = work / f"preproc-{abs(hash(json.dumps(near, sort_keys=True)))}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    r = preproc.run({"input": {"paths": [str(data / "*.jsonl")]}, "shards": shards,
                     "clean": {"defaults": False, "normalize": True},
                     "dedup": {"exact": False, "near": near}, "tokenize": {"formats": ["parquet"]}},
                    output=str(out), tokenizer=str(tokenizer), workers=workers)
    total = time.perf_counter() - t0
    near_s, with_clean_s = _near_wall(out)
    return {"near_s": round(near_s, 3), "with_clean_s": round(with_clean_s, 3), "run_s": round(total, 3),
            "removed_ids": _removed_preproc(out), "config": r.stats.get("near", {}).get("config")}


def run_datatrove(data: Path, work: Path, workers: int, tasks: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    base = work / "datatrove"
    shutil.rmtree(base, ignore_errors=True)
    cfg = MinhashConfig(hash_config=_datatrove_hash())     # its defaults: 5-grams, 14 x 8
    reader = lambda: JsonlReader(str(data), glob_pattern="*.jsonl")  # noqa: E731
    stages = [
        LocalPipelineExecutor(pipeline=[reader(), MinhashDedupSignature(output_folder=str(base / "sigs"), config=cfg)],
                              tasks=tasks, workers=workers, logging_dir=str(base / "logs1")),
        LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=str(base / "sigs"),
                                                            output_folder=str(base / "buckets"), config=cfg)],
                              tasks=cfg.num_buckets, workers=workers, logging_dir=str(base / "logs2")),
        LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=str(base / "buckets"),
                                                            output_folder=str(base / "remove"), config=cfg)],
                              tasks=1, workers=1, logging_dir=str(base / "logs3")),
        LocalPipelineExecutor(pipeline=[reader(), MinhashDedupFilter(
            input_folder=str(base / "remove"), exclusion_writer=JsonlWriter(str(base / "removed"))),
            JsonlWriter(str(base / "kept"))], tasks=tasks, workers=workers, logging_dir=str(base / "logs4")),
    ]
    times = []
    for ex in stages:
        t0 = time.perf_counter()
        ex.run()
        times.append(time.perf_counter() - t0)
    removed = []
    for p in sorted((base / "removed").glob("*")):
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            removed += [json.loads(line)["id"] for line in f]
    return {"near_s": round(sum(times), 3), "stage_s": [round(t, 3) for t in times], "removed_ids": removed}


# -- report --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3,
                    help="signature rounds (best is kept; datatrove runs once, it takes minutes)")
    ap.add_argument("--limit-mb", type=float, default=None, help="signatures: first N MB of the corpus only")
    ap.add_argument("--engines", default="preproc,datasketch,datatrove")
    ap.add_argument("--skip-signatures", action="store_true")
    ap.add_argument("--skip-dedup", action="store_true")
    ap.add_argument("--shards", type=int, default=None, help="shards (and datatrove tasks); default: workers")
    ap.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    data = SHARED / "data"
    corpus = sorted((data / "corpus").glob("*.jsonl.gz"))
    neardup = data / "neardup"
    tokenizer = data / "tokenizers" / "gpt2" / "tokenizer.json"
    engines = []
    for e in args.engines.split(","):
        mod = {"preproc": "preproc", "datasketch": "datasketch", "datatrove": "datatrove"}[e]
        try:
            __import__(mod)
            if e == "datatrove":
                __import__("spacy")
            engines.append(e)
        except ImportError as err:
            print(f"skipping {e}: {err} (pip install datasketch datatrove spacy)")
    results: dict = {"workers": args.workers, "cpu_count": os.cpu_count()}

    if not args.skip_signatures:
        limit = int(args.limit_mb * 1e6) if args.limit_mb else None
        sig = bench_signatures(corpus, workers=args.workers, engines=engines, bands=14, rows=8, limit=limit,
                               batch=1024, repeat=args.repeat)
        results["signatures"] = sig
        by = {r["engine"]: r for r in sig}
        print(f"\nsignatures: {sig[0]['docs']} docs, {sig[0]['mb']} MB, word 5-grams, 112 permutations, "
              f"{args.workers} processes")
        print(f"{'engine':<12}{'seconds':>9}{'MB/s':>9}{'docs/s':>10}{'vs datasketch':>15}{'vs datatrove':>14}"
              f"{'CPU MB/s/core':>15}{'(ratios)':>16}")
        for r in sig:
            def ratio(key: str, other: str) -> str:
                return f"{r[key] / by[other][key]:.1f}x" if other in by else "-"

            cpu_ratios = f"{ratio('cpu_mb_s_per_core', 'datasketch')}/{ratio('cpu_mb_s_per_core', 'datatrove')}"
            print(f"{r['engine']:<12}{r['seconds']:>9.2f}{r['mb_s']:>9.2f}{r['docs_s']:>10.0f}"
                  f"{ratio('mb_s', 'datasketch'):>15}{ratio('mb_s', 'datatrove'):>14}"
                  f"{r['cpu_mb_s_per_core']:>15.2f}{cpu_ratios:>16}")

    if not args.skip_dedup:
        gt = json.loads((neardup / "neardup_gt.json").read_text())
        shards = args.shards or args.workers
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench-near-") as tmp:
            work = Path(tmp)
            parts = split_input(neardup / "neardup.jsonl.gz", work / "input", shards)
            for label, near in (("preproc defaults (0.8 ver.)", True),
                                ("preproc 14x8 unverified", {"bands": 14, "rows": 8})):
                r = run_preproc(parts, tokenizer, work, args.workers, near, shards)
                r.update(confusion(r.pop("removed_ids"), gt), engine=label)
                rows.append(r)
            if "datatrove" in engines:
                r = run_datatrove(parts, work, args.workers, shards)
                r.update(confusion(r.pop("removed_ids"), gt), engine="datatrove defaults (14x8)")
                rows.append(r)
        results["dedup"] = rows
        dt = next((r for r in rows if r["engine"].startswith("datatrove")), None)
        print(f"\nnear-dedup of {gt['n_docs']} docs ({gt['n_docs_to_remove']} to remove), {args.workers} workers, "
              f"{shards} shards/tasks")
        print(f"{'engine':<28}{'near s':>8}{'+clean s':>10}{'removed':>9}{'wrong':>7}{'missed':>8}"
              f"{'precision':>11}{'recall':>8}{'speedup':>9}")
        for r in rows:
            sp = f"{dt['near_s'] / r['near_s']:.1f}x" if dt else "-"
            wc = f"{r['with_clean_s']:.2f}" if "with_clean_s" in r else "-"
            print(f"{r['engine']:<28}{r['near_s']:>8.2f}{wc:>10}{r['removed']:>9}{r['wrong']:>7}{r['missed']:>8}"
                  f"{r['precision']:>11.3f}{r['recall']:>8.3f}{sp:>9}")
        print("configs: " + ", ".join(f"{r['engine']}: {r['config']}" for r in rows if r.get("config")))
        if dt:
            print(f"(speedup = datatrove's four stages / ours; datatrove stages: {dt['stage_s']} s)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
