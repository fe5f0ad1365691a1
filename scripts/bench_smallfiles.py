"""Many small files: what a file costs a run, and what planning a million files costs.

Rows (issue 18, "Small files"):

* ``baseline``: the plain single-process read-and-tokenize of ``files`` one-document JSONL
  files: open each, ``json`` parse, then ``tokenizer.encode_batch`` of all texts with the
  real GPT-2 tokenizer (../shared/data/tokenizers/gpt2/tokenizer.json).
* ``preproc read+tokenize``: ``preproc.run`` on the same files, one worker, ``clean: false``,
  no dedup (the baseline's work), end to end: planning, worker start, every stage. Target:
  at most 10x the baseline (wall; ``cpu_ratio_to_baseline`` compares CPU seconds, the run's
  workers included, which a loaded machine does not inflate); ``clean ms/file`` (the clean stage's worker time per file: the
  per-file overhead, documents being tiny) at most 0.5.
* ``preproc default pipeline``: the same files with the default clean steps and exact dedup.
* ``plan``: planning ``planning_files`` files: the real listing code (``list_inputs``), shard
  balancing (``plan_shards``), run id and the plan write (``Plan.write``: plan.json plus the
  per-shard file lists), with the filesystem call replaced at the fsspec boundary: a
  registered fsspec filesystem (protocol ``benchlist``) whose ``find`` answers an S3-like
  listing (name, size, ETag) of that many entries, built before the clock starts. Target:
  under 60 s, plan.json under 1 MB. ``cpu_s`` is the planning process's CPU time: on a
  shared, loaded machine it tells the cost apart from waiting for a core.

Each measurement runs in a fresh interpreter with a timeout. ``run()`` returns the rows;
``scripts/bench.py --only scale`` imports it. Run alone::

    python scripts/bench_smallfiles.py --work /tmp/bench-small [--files 20000] [--planning-files 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402

SHARED = Path(os.environ.get("PREPROC_SHARED", ROOT.parent / "shared")) / "data"
GPT2 = SHARED / "tokenizers" / "gpt2" / "tokenizer.json"


def make_files(dest: Path, files: int, seed: int = 0) -> Path:
    """``files`` one-document JSONL files (30 to 120 words each), 1,000 per folder."""
    if (dest / ".complete").exists() and int((dest / ".complete").read_text()) == files:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    rng = random.Random(seed)
    words = [f"{a}{b}" for a in ("the", "data", "model", "run", "line", "token", "shard", "word")
             for b in ("", "s", "ing", "ed", "er", "ly", "al", "ion")]
    for i in range(files):
        sub = dest / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(30, 120))).capitalize() + "."
        (sub / f"doc-{i:07d}.jsonl").write_text(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    (dest / ".complete").write_text(str(files))
    return dest


# -- children ---------------------------------------------------------------------------------

def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the run's workers): unlike wall
    time, not inflated by waiting for a core on a shared machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_baseline(a: dict) -> dict:
    from tokenizers import Tokenizer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")     # single process, single thread

    t0 = time.perf_counter()
    tok = Tokenizer.from_file(str(GPT2))
    texts = []
    for p in sorted(Path(a["input"]).rglob("*.jsonl")):
        with open(p, "rb") as f:
            for line in f:
                texts.append(json.loads(line)["text"])
    ids = tok.encode_batch(texts)
    return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu_s(), "docs": len(texts), "tokens": sum(len(e.ids) for e in ids)}


def child_run(a: dict) -> dict:
    import preproc

    out = Path(a["out"])
    shutil.rmtree(out, ignore_errors=True)
    spec: dict[str, Any] = {"input": {"paths": [a["input"]]}, "tokenize": {"tokenizer": str(GPT2)}}
    if a["pipeline"] == "read+tokenize":
        spec.update({"clean": False, "dedup": {"exact": False}})
    else:
        spec.update({"dedup": {"exact": True}})
    t0 = time.perf_counter()
    r = preproc.run(spec, output=str(out), workers=1)
    secs = time.perf_counter() - t0
    clean_s = float(r.stats["stage_worker_time_s"].get("clean", 0.0))
    return {"seconds": secs, "cpu_s": _cpu_s(), "docs": r.stats["read"], "tokens": r.tokens, "clean_worker_s": clean_s,
            "plan_json_bytes": (out / "plan.json").stat().st_size}


def child_plan(a: dict) -> dict:
    import fsspec
    from fsspec.spec import AbstractFileSystem

    from preproc.engine.plan import Plan, StagePlan, plan_shards, run_fingerprint
    from preproc.io.listing import list_inputs
    from preproc.io.store import Store
    from preproc.spec import load_spec

    n = int(a["files"])
    listing = {}
    for i in range(n):
        name = f"corpus/d{i // 1000:04d}/doc-{i:07d}.jsonl"
        listing[name] = {"name": name, "size": 300 + i % 700, "type": "file", "ETag": f'"{i:032x}"'}

    class ListingFS(AbstractFileSystem):
        """The fsspec boundary: ``find`` answers the listing an object store would."""

        protocol = "benchlist"

        def find(self, path, maxdepth=None, withdirs=False, detail=False, **kw):
            return listing if detail else sorted(listing)

        def exists(self, path, **kw):
            return path.rstrip("/") == "corpus"

        def isdir(self, path):
            return path.rstrip("/") == "corpus"

    fsspec.register_implementation("benchlist", ListingFS, clobber=True)
    out = Path(a["out"])
    shutil.rmtree(out, ignore_errors=True)
    spec = load_spec({"input": {"paths": ["benchlist://corpus"]}, "output": str(out)})
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    files = list_inputs(spec)
    t1 = time.perf_counter()
    shards = plan_shards(files, shards=None, target_shard_bytes=spec.target_shard_bytes)
    t2 = time.perf_counter()
    plan = Plan(run_id=run_fingerprint(spec, files), output=str(out), spec=spec, shards=tuple(shards),
                stages=(StagePlan("clean", len(shards)),), input_files=len(files))
    t3 = time.perf_counter()
    plan.write(Store(str(out)))
    t4 = time.perf_counter()
    cpu = time.process_time() - cpu0
    lists = sum(p.stat().st_size for p in (out / "_plan").iterdir())
    return {"seconds": t4 - t0, "cpu_s": cpu, "list_s": t1 - t0, "shards_s": t2 - t1, "run_id_s": t3 - t2, "write_s": t4 - t3,
            "files": len(files), "shards": len(shards), "plan_json_bytes": (out / "plan.json").stat().st_size,
            "file_lists_bytes": lists}


CHILDREN = {"baseline": child_baseline, "run": child_run, "plan": child_plan}


def run_child(kind: str, args: dict, timeout_s: float) -> dict:
    """``kind`` in a fresh interpreter; its JSON result, or ``{"error": ...}``."""
    return bench.run_child(kind, args, timeout_s, script=__file__)


def run(work: Path, *, files: int = 20000, planning_files: int = 1_000_000, timeout_s: float = 600) -> dict:
    """The small-files rows (see the module docstring) under ``work``."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    inp = make_files(work / f"input-{files}", files)
    rows: list[dict[str, Any]] = []
    base = run_child("baseline", {"input": str(inp)}, timeout_s)
    rows.append({"label": f"baseline: read + json + encode_batch, {files:,} files", **base})
    for pipeline in ("read+tokenize", "default"):
        r = run_child("run", {"input": str(inp), "out": str(work / f"out-{pipeline}"), "pipeline": pipeline}, timeout_s)
        if "error" not in r and "error" not in base:
            r["ratio_to_baseline"] = round(r["seconds"] / base["seconds"], 2)
            r["cpu_ratio_to_baseline"] = round(r["cpu_s"] / base["cpu_s"], 2)
            r["clean_ms_per_file"] = round(r["clean_worker_s"] / files * 1e3, 3)
        rows.append({"label": f"preproc {pipeline}, {files:,} files, 1 worker", **r})
    p = run_child("plan", {"files": planning_files, "out": str(work / "plan-out")}, timeout_s)
    rows.append({"label": f"plan {planning_files:,} files (listing at the fsspec boundary)", **p})
    for r in rows:
        for k, v in list(r.items()):
            if isinstance(v, float):
                r[k] = round(v, 3)
    return {"files": files, "planning_files": planning_files, "rows": rows,
            "targets": {"ratio_to_baseline_max": 10, "clean_ms_per_file_max": 0.5, "plan_s_max": 60,
                        "plan_json_bytes_max": 2**20}}


def render(res: dict) -> str:
    lines = []
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"{r['label']:<58} ERROR {r['error']}")
            continue
        extra = []
        for k in ("cpu_s", "ratio_to_baseline", "cpu_ratio_to_baseline", "clean_ms_per_file", "plan_json_bytes",
                  "file_lists_bytes", "list_s",
                  "shards_s", "write_s"):
            if k in r:
                extra.append(f"{k}={r[k]}")
        lines.append(f"{r['label']:<58} {r['seconds']:>8.2f} s  " + " ".join(extra))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-smallfiles"))
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--planning-files", type=int, default=1_000_000)
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--json", type=Path, help="write the result here (default: <work>/smallfiles.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        res = CHILDREN[a.child](json.loads(a.child_args))
        Path(a.child_out).write_text(json.dumps(res))
        return 0
    res = run(a.work, files=a.files, planning_files=a.planning_files, timeout_s=a.timeout_s)
    print(render(res))
    dest = a.json or a.work / "smallfiles.json"
    dest.write_text(json.dumps(res, indent=1))
    print(f"written: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
