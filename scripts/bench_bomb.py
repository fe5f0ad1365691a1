#!/usr/bin/env python
"""The gzip bomb: a small ``.jsonl.gz`` that expands to one 1 GiB line, then a good document.

The reader must reject the line ``doc_too_large`` while scanning it (never holding more than
``max_doc_bytes`` plus one chunk), keep the document after it, and take at most 2x the time
of ``zcat bomb > /dev/null``. Peak RSS and CPU time are read from the kernel (``wait4``
rusage) for a child process that does nothing but read the file with the default spec
(max_doc_bytes 64 MiB); its time includes starting Python and importing pyarrow. Targets:
peak RSS <= 512 MB, CPU time <= 2x zcat's (CPU time, not wall: on a shared machine the wall
clock measures the neighbours; both are printed).

    python scripts/bench_bomb.py [--line-gib 1] [--keep DIR] [--json out.json]
                                 [--pipeline ../shared/data/tokenizers/gpt2/tokenizer.json]

``--pipeline TOKENIZER`` also runs the whole ``preproc run`` (one local worker) on the bomb:
exit 0, the bomb rejected, the document after it kept, and the peak RSS of the largest
process of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The child: read the bomb as the clean stage would, report what came out.
CHILD = r"""
import json, sys, time
from preproc.spec.model import InputSpec
from preproc.io.readers import InputSplit, ReadLog, read_split
t = time.perf_counter()
log = ReadLog()
split = InputSplit(uri=sys.argv[1], rel="bomb.jsonl.gz", format="jsonl", compression="gzip")
ids = [i for b in read_split(split, InputSpec(paths=["x"]), log) for i in b.column("id").to_pylist()]
print(json.dumps({"kept": ids, "rejected": log.rejected, "read": log.read,
                  "file_errors": log.file_errors, "read_s": round(time.perf_counter() - t, 2)}))
"""


def make_bomb(path: Path, line_bytes: int) -> int:
    """Write the bomb without ever holding it: deflate the line piece by piece."""
    piece = (b"All work and no play makes Jack a dull boy. " * 200_000)[: 8 * 2**20]
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(z.compress(b'{"id": "bomb", "text": "'))
        left = line_bytes
        while left > 0:
            chunk = piece[:left]
            f.write(z.compress(chunk))
            left -= len(chunk)
        f.write(z.compress(b'"}\n' + json.dumps({"id": "after", "text": "a good document after the bomb"}).encode()
                           + b"\n"))
        f.write(z.flush())
    return path.stat().st_size


def run_child(bomb: Path) -> tuple[dict, float, float, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(bomb)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    out, err = p.stdout.read(), p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"reader failed: {err.decode()[-2000:]}")
    return json.loads(out), wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024   # KiB on Linux


def zcat_s(bomb: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``zcat bomb > /dev/null``."""
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.Popen(["zcat", str(bomb)], stdout=null)
        _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("zcat failed")
    return time.perf_counter() - t, ru.ru_utime + ru.ru_stime


def run_pipeline(bomb: Path, tokenizer: str, work: Path) -> dict:
    spec = work / "spec.yaml"
    spec.write_text(json.dumps({"input": {"paths": [str(bomb)]}, "clean": {"defaults": False, "normalize": True}}))
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "preproc", "run", str(spec), "--output", str(out), "--workers", "1",
                          "--tokenizer", tokenizer], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)   # maxrss: the largest of the run and its reaped workers
    wall = time.perf_counter() - t
    rc = os.waitstatus_to_exitcode(status)
    stats = json.loads((out / "stats.json").read_text()) if rc == 0 else {}
    return {"exit": rc, "wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "read": stats.get("read"), "kept": stats.get("kept"),
            "rejected": stats.get("rejected"), "stderr_tail": p.stderr.read().decode()[-500:] if rc else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--line-gib", type=float, default=1.0, help="length of the bomb's line (GiB)")
    ap.add_argument("--keep", metavar="DIR", help="write the bomb here and keep it (default: a temp dir)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures here")
    ap.add_argument("--pipeline", metavar="TOKENIZER", help="also run `preproc run` on the bomb with this tokenizer")
    a = ap.parse_args()
    pipe = None
    with tempfile.TemporaryDirectory() as tmp:
        bomb = Path(a.keep or tmp) / "bomb.jsonl.gz"
        bomb.parent.mkdir(parents=True, exist_ok=True)
        size = make_bomb(bomb, int(a.line_gib * 2**30))
        z_wall, z_cpu = zcat_s(bomb)
        res, wall, cpu, rss = run_child(bomb)
        if a.pipeline:
            pipe = run_pipeline(bomb, a.pipeline, Path(tmp))
    ratio = cpu / z_cpu
    ok = (res["kept"] == ["after"] and res["rejected"] == {"doc_too_large": 1} and rss <= 512 and ratio <= 2)
    fig = {"bomb_mb": round(size / 1e6, 2), "line_gib": a.line_gib, "zcat_wall_s": round(z_wall, 2),
           "zcat_cpu_s": round(z_cpu, 2), "reader_wall_s": round(wall, 2), "reader_cpu_s": round(cpu, 2),
           "reader_read_wall_s": res["read_s"], "cpu_ratio": round(ratio, 2),
           "peak_rss_mb": round(rss, 1), "kept": res["kept"], "rejected": res["rejected"],
           "file_errors": res["file_errors"], "pipeline": pipe}
    print(f"bomb {fig['bomb_mb']} MB -> one {a.line_gib:g} GiB line + a good document")
    print(f"zcat > /dev/null   cpu {z_cpu:7.2f} s   wall {z_wall:7.2f} s")
    print(f"reader process     cpu {cpu:7.2f} s   wall {wall:7.2f} s (the read itself {res['read_s']} s)")
    print(f"cpu ratio          {ratio:7.2f}x   target <= 2x")
    print(f"reader peak RSS    {fig['peak_rss_mb']:7.1f} MB   target <= 512 MB")
    print(f"kept {res['kept']}, rejected {res['rejected']}")
    if pipe is not None:
        print(f"preproc run        exit {pipe['exit']}, peak RSS {pipe['peak_rss_mb']} MB, cpu {pipe['cpu_s']} s, "
              f"wall {pipe['wall_s']} s; read {pipe['read']}, kept {pipe['kept']}, rejected {pipe['rejected']}"
              + (f"\n{pipe['stderr_tail']}" if pipe["exit"] else ""))
        ok = ok and pipe["exit"] == 0 and pipe["kept"] == 1 and pipe["rejected"] == {"doc_too_large": 1} \
            and pipe["peak_rss_mb"] <= 512
    fig["ok"] = ok
    print("OK" if ok else "TARGET MISSED")
    if a.json:
        Path(a.json).write_text(json.dumps(fig, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
