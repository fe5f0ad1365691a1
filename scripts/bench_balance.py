#!/usr/bin/env python
"""Balanced later stages (issue 18): 8 gzip files of very unequal sizes, the pipeline with
clean off, against raw ``encode_batch_fast`` on the same documents.

Compressed files are never cut, so the 8 files (text in the ratio 1:2:4:...:128) make 8
clean parts as unequal as the files. Tokenize reads balanced slices of the clean output
(:mod:`preproc.io.slices`), so its 8 indices get about the same text whatever the parts.

Measured side by side in one run, on the same documents and tokenizer (GPT-2,
``tokenize.backend: hf``):

* raw: ``Tokenizer.encode_batch_fast`` over every document, in one process, all cores
  (batches of 2048, no special tokens), measured before and after the pipeline (the mean);
* ours: ``preproc.run`` with clean off (``clean: false``: no step), no dedup, 2 local
  workers, Parquet + Megatron, in a child process (its wall time includes planning and
  worker start-up);

and where the pipeline's time goes, from its markers: the span of each stage, the summed
worker time of clean (gzip decode + Parquet write), the tokenize indices' text bytes and
busy times (max/mean), and what is left (planning, pool start-up, the coordinator).

    python scripts/bench_balance.py [--mb 200] [--work /tmp/bench-balance] [--json out.json]

``run(work, mb=..., timeout_s=...)`` returns the same figures as a dict (scripts/bench.py
--only scale). To measure the code before a change, run this file from a checkout of it
(the script imports the ``preproc`` beside it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("PREPROC_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "data" / "corpus"
TOKENIZER = SHARED / "data" / "tokenizers" / "gpt2" / "tokenizer.json"
FILES = 8
WORKERS = 2
RAW_BATCH = 2048


def load_texts(corpus: Path = CORPUS) -> list[str]:
    texts = []
    for p in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


def make_inputs(dest: Path, mb: float, corpus: Path = CORPUS) -> list[str]:
    """8 gzip JSONL files whose text is in the ratio 1:2:4:...:128 and sums to ``mb`` MB
    (the corpus's documents, cycled); the documents in input order."""
    texts = load_texts(corpus)
    total = mb * 1e6
    weights = [2**i for i in range(FILES)]
    dest.mkdir(parents=True, exist_ok=True)
    docs: list[str] = []
    k = 0
    for i, w in enumerate(weights):
        want = total * w / sum(weights)
        size = 0
        with gzip.open(dest / f"in-{i}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as f:
            while size < want:
                t = texts[k % len(texts)]
                k += 1
                f.write(json.dumps({"id": f"d{len(docs)}", "text": t}) + "\n")
                docs.append(t)
                size += len(t.encode("utf-8"))
    return docs


def raw_encode(texts: list[str]) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    t0 = time.perf_counter()
    for i in range(0, len(texts), RAW_BATCH):
        tok.encode_batch_fast(texts[i:i + RAW_BATCH], add_special_tokens=False)
    return time.perf_counter() - t0


def spec(inputs: Path) -> dict:
    # clean: false turns every clean step off; dedup off; the HF backend (the one raw is).
    # shards: one per file (gzip is never cut; a small input would otherwise get fewer).
    return {"input": {"paths": [str(inputs / "*.jsonl.gz")]}, "clean": False, "shards": FILES,
            "dedup": {"exact": False}, "tokenize": {"backend": "hf"}}


def pipeline_child(inputs: Path, out: Path) -> dict:
    """One pipeline run (in its own process): wall time and the markers' figures."""
    import preproc
    from preproc.engine.plan import Plan

    t0, w0 = time.perf_counter(), time.time()
    r = preproc.run(spec(inputs), output=str(out), tokenizer=str(TOKENIZER), workers=WORKERS)
    wall, w1 = time.perf_counter() - t0, time.time()
    plan = Plan.load(str(out))
    store = plan.store()
    clean = store.read_markers("clean")
    tok = store.read_markers("tokenize")
    fin = store.read_markers("finalize")[0]
    # Where the time outside the stages goes (wall-clock points from the plan and markers).
    first = min(m["started_s"] for m in clean.values())
    clean_end = max(m["finished_s"] for m in clean.values())
    tok_start = min(m["started_s"] for m in tok.values())
    tok_end = max(m["finished_s"] for m in tok.values())
    timeline = {"plan_s": plan.created_s - w0, "plan_to_first_clean_s": first - plan.created_s,
                "clean_s": clean_end - first, "clean_to_tokenize_s": tok_start - clean_end,
                "tokenize_s": tok_end - tok_start, "tokenize_to_finalize_s": fin["started_s"] - tok_end,
                "finalize_s": fin["finished_s"] - fin["started_s"], "after_finalize_s": w1 - fin["finished_s"]}
    # Before balanced slices, tokenize index i read clean part i (its text_bytes).
    tok_bytes = [int(tok[i].get("text_bytes", clean[i]["text_bytes"])) for i in sorted(tok)]
    tok_busy = [float(tok[i]["wall_time_s"]) for i in sorted(tok)]
    span = r.stats["stage_span_s"]
    worker = r.stats["stage_worker_time_s"]
    return {"wall_s": round(wall, 3), "documents": r.documents, "tokens": r.tokens,
            "backend": Plan.load(str(out)).tokenizer.get("backend"),
            "shards": len(clean), "tokenize_indices": len(tok),
            "stage_span_s": span, "stage_worker_time_s": worker,
            "other_s": round(wall - sum(span.values()), 3),
            "timeline_s": {k: round(v, 3) for k, v in timeline.items()},
            "clean_text_bytes": [int(clean[i]["text_bytes"]) for i in sorted(clean)],
            "tokenize_text_bytes": tok_bytes, "tokenize_busy_s": tok_busy,
            "tokenize_bytes_max_over_mean": round(max(tok_bytes) / (sum(tok_bytes) / len(tok_bytes)), 3),
            "tokenize_busy_max_over_mean": round(max(tok_busy) / (sum(tok_busy) / len(tok_busy)), 3)}


def run(work: Path, *, mb: float = 200, timeout_s: float = 600) -> dict:
    """Build the inputs under ``work``, then raw, ours (a child process), raw again."""
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    inputs, out = work / "in", work / "out"
    docs = make_inputs(inputs, mb)
    text_mb = sum(len(t.encode("utf-8")) for t in docs) / 1e6
    raw1 = raw_encode(docs)
    print(f"bench_balance: {text_mb:.1f} MB; raw encode_batch_fast {raw1:.2f} s; now the pipeline", file=sys.stderr, flush=True)
    fd_out = work / "child.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(inputs), str(out),
                            str(fd_out)], env=env, timeout=timeout_s, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"pipeline timed out after {timeout_s:.0f} s", "text_mb": round(text_mb, 2)}
    if p.returncode != 0:
        return {"error": f"pipeline exit {p.returncode}: {p.stderr.strip()[-300:]}", "text_mb": round(text_mb, 2)}
    ours = json.loads(fd_out.read_text())
    raw2 = raw_encode(docs)
    raw_s = (raw1 + raw2) / 2
    res = {"text_mb": round(text_mb, 2), "docs": len(docs), "cores": os.cpu_count(), "workers": WORKERS,
           "raw_s": round(raw_s, 3), "raw_runs_s": [round(raw1, 3), round(raw2, 3)],
           "raw_mb_per_s": round(text_mb / raw_s, 3), "ours": ours,
           "ours_mb_per_s": round(text_mb / ours["wall_s"], 3),
           "ratio_to_raw": round(raw_s / ours["wall_s"], 3),
           # The tokenize stage alone (its span) against raw: the part balance acts on.
           "tokenize_ratio_to_raw": round(raw_s / max(ours["stage_span_s"].get("tokenize", 0.0), 1e-9), 3)}
    shutil.rmtree(out, ignore_errors=True)
    return res


def _print(res: dict) -> None:
    if "error" in res:
        print(res["error"])
        return
    o = res["ours"]
    print(f"{res['docs']} docs, {res['text_mb']} MB of text in {FILES} gzip files (1:2:...:128), "
          f"{res['cores']} cores, {res['workers']} workers, backend {o['backend']}")
    print(f"raw encode_batch_fast     {res['raw_s']:>8.2f} s  {res['raw_mb_per_s']:>7.2f} MB/s  (runs {res['raw_runs_s']})")
    print(f"ours, whole pipeline      {o['wall_s']:>8.2f} s  {res['ours_mb_per_s']:>7.2f} MB/s  "
          f"ratio {res['ratio_to_raw']:.2f}x raw")
    for k in ("clean", "tokenize", "finalize"):
        print(f"  {k:<10} span {o['stage_span_s'].get(k, 0):>7.2f} s   worker time {o['stage_worker_time_s'].get(k, 0):>7.2f} s")
    print(f"  other (plan, pool start-up, coordinator) {o['other_s']:.2f} s")
    print("  timeline: " + ", ".join(f"{k} {v:.2f}" for k, v in o["timeline_s"].items()))
    print(f"  tokenize alone: ratio {res['tokenize_ratio_to_raw']:.2f}x raw; per index text bytes max/mean "
          f"{o['tokenize_bytes_max_over_mean']}, busy max/mean {o['tokenize_busy_max_over_mean']}")
    print(f"  clean parts' text MB: {[round(b / 1e6, 1) for b in o['clean_text_bytes']]}")
    print(f"  tokenize indices' text MB: {[round(b / 1e6, 1) for b in o['tokenize_text_bytes']]}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        inputs, out, dest = (Path(x) for x in sys.argv[2:5])
        Path(dest).write_text(json.dumps(pipeline_child(inputs, out)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200, help="MB of text in all (default 200)")
    ap.add_argument("--work", default="/tmp/bench-balance")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    res = run(Path(a.work), mb=a.mb, timeout_s=a.timeout)
    _print(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0 if "error" not in res else 1


if __name__ == "__main__":
    sys.exit(main())
