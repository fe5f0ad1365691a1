"""Hash every output of two reference runs, to prove a refactoring changed no behaviour.

Issue 17 moves every module of the package. Before the move, run::

    python scripts/output_hashes.py --out before.json

and after it::

    python scripts/output_hashes.py --compare before.json

which prints every file that differs, appeared or disappeared and exits 1 if any did
(0 when the two trees write byte-identical outputs, 2 on a setup problem).

Two runs, both with the local executor and ``--workers`` processes (default 2):

* ``demo``: the demo spec (``preproc.demo.DEMO_SPEC``) on the corpus and BPE tokenizer that
  ``preproc.demo`` generates (seeded, so identical on every call): clean, exact dedup,
  rejects, tokenize (Parquet + Megatron), finalize.
* ``near``: ../shared/data/corpus and ../shared/data/neardup, cut to the first ``--limit``
  documents of each corpus file and ``--near-limit`` of neardup (the cut copies are written
  under the work folder, gzip with mtime 0 and a fixed file mtime, so the run id is stable);
  the default clean steps with ``keep_removed`` (so ``removed/`` is hashed), ``dedup:
  {exact: true, near: true}`` (every near stage: signatures, pairs, shingles, verify,
  connected-component rounds, clusters, drops; ``keep_clusters`` on so the clusters file is
  hashed too), the GPT-2 tokenizer of ../shared/data/tokenizers, Parquet + Megatron.

Everything is written under ``--work`` (default /tmp/preproc-output-hashes). Keep it the same
for both sides of a comparison: the run id hashes the input URIs, which are absolute paths.

What is normalized, and why (everything else is hashed byte for byte):

* JSON files (plan.json, dataset.json, stats.json, every ``_done/*.json`` marker, and any
  other ``*.json``): the values of the keys in ``TIME_KEYS`` (wall-clock timestamps and
  durations: ``created_s`` of plan.json and dataset.json, ``started_s`` / ``finished_s`` /
  ``wall_time_s`` of markers) are set to 0, and every value under ``stage_wall_time_s``
  (stats.json, time per stage) is set to 0; the keys themselves stay, so a key that appears
  or disappears is still a difference. The JSON is re-serialized with sorted keys, so
  key order is NOT checked for JSON files (json.load keeps it; only values matter to readers).
* ``_metrics/*.prom``: the value of every sample whose metric name ends in ``_seconds`` or
  ``_per_second`` (durations, timestamps, rates, ETAs) is replaced by ``T``; labels and all
  other samples are kept.
* ``report.html`` is excluded: it draws time per stage and the slowest shards (wall times)
  into its SVG. Its data are the markers and stats.json, which are hashed.

No output embeds the code version or the package path today (the run id hashes the spec
and the inputs only); if the redesign adds one, list it here rather than widening a rule.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PREPROC_SHARED", ROOT.parent / "shared")) / "data"   # as tests/conftest.py
FIXED_MTIME = 1_700_000_000   # inputs get this mtime, so their fingerprint (size + mtime) is stable
MARK = ".output_hashes"       # the work folder is ours (and may be wiped) only when it holds this

TIME_KEYS = frozenset({"created_s", "started_s", "finished_s", "wall_time_s"})
TIME_MAPS = frozenset({"stage_wall_time_s", "stage_worker_time_s", "stage_span_s"})
# A marker's "files" records each committed file's size and xxh3; the files are hashed here
# themselves, and a file that embeds a time (stats.json) changes its marker's record.
RECORD_KEYS = frozenset({"files"})
EXCLUDED = {"report.html": "wall times per stage and slowest shards drawn into the page"}
# Run-time state, not results: the coordinator's heartbeat and the output's lease hold
# timestamps, pids and host names.
EXCLUDED_PREFIXES = {"_coordinator.json": "heartbeat: times, pid, host",
                     "_lease/": "the run's lease: times, pid, host"}
_TIMED_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:_seconds|_per_second))(\{[^}]*\})?\s+\S+")

NEAR_SPEC = """\
input:
  paths: ["{root}/input/*"]
output: {root}/output
shards: 4
clean:
  keep_removed: true
dedup:
  exact: true
  near: {{keep_clusters: true}}
tokenize:
  tokenizer: {root}/tokenizer.json
  eos: true
  formats: [parquet, megatron]
"""


def _fail(msg: str) -> None:
    print(f"output_hashes: {msg}", file=sys.stderr)
    sys.exit(2)


def _fresh(folder: Path) -> Path:
    """Empty ``folder`` if this script made it; refuse a folder it did not make."""
    if folder.exists():
        if not (folder / MARK).exists():
            _fail(f"{folder} exists and was not made by this script; choose another --work")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARK).write_text("made by scripts/output_hashes.py\n")
    return folder


def _write_jsonl(path: Path, lines: list[bytes]) -> None:
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    if path.name.endswith(".gz"):
        with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as g:
            g.write(data)
    else:
        path.write_bytes(data)
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def _head(path: Path, n: int) -> list[bytes]:
    out = []
    with gzip.open(path, "rb") as f:
        for line in f:
            if len(out) >= n:
                break
            out.append(line)
    return out


def prepare_demo(root: Path) -> str:
    from preproc.demo import demo_spec, make_corpus, train_tokenizer

    inp = root / "input"
    make_corpus(inp)
    texts = []
    for p in sorted(inp.glob("*.jsonl")):
        texts += [json.loads(x)["text"] for x in p.read_bytes().splitlines() if x.startswith(b'{"id": "demo')]
    train_tokenizer(texts, root / "tokenizer.json")
    for p in list(inp.iterdir()) + [root / "tokenizer.json"]:
        os.utime(p, (FIXED_MTIME, FIXED_MTIME))
    return demo_spec(str(root))


def prepare_near(root: Path, *, limit: int, near_limit: int) -> str:
    corpus, neardup = SHARED / "corpus", SHARED / "neardup" / "neardup.jsonl.gz"
    tok = SHARED / "tokenizers" / "gpt2" / "tokenizer.json"
    for p in (corpus, neardup, tok):
        if not p.exists():
            _fail(f"{p}: missing (the shared test data)")
    inp = root / "input"
    inp.mkdir()
    for src in sorted(corpus.glob("*.jsonl.gz")):
        _write_jsonl(inp / src.name, _head(src, limit))
    # Plain JSONL, so planning cuts it at newline-aligned byte ranges across shards.
    _write_jsonl(inp / "neardup.jsonl", _head(neardup, near_limit))
    shutil.copyfile(tok, root / "tokenizer.json")
    os.utime(root / "tokenizer.json", (FIXED_MTIME, FIXED_MTIME))
    return NEAR_SPEC.format(root=root)


def normalize(rel: str, data: bytes) -> bytes:
    """The bytes that are compared for ``rel`` (see the module docstring for each rule)."""
    if rel.endswith(".json"):
        def scrub(o, in_map=False):
            if isinstance(o, dict):
                return {k: (0 if (in_map or k in TIME_KEYS) and isinstance(v, (int, float)) else
                            sorted(v) if k in RECORD_KEYS and isinstance(v, dict) else
                            scrub(v, k in TIME_MAPS)) for k, v in o.items()}
            if isinstance(o, list):
                return [scrub(v) for v in o]
            return o
        return json.dumps(scrub(json.loads(data)), sort_keys=True, ensure_ascii=False).encode()
    if rel.endswith(".prom"):
        lines = []
        for line in data.decode().splitlines():
            m = _TIMED_METRIC.match(line)
            lines.append(f"{m.group(1)}{m.group(2) or ''} T" if m else line)
        return "\n".join(lines).encode()
    return data


def hash_outputs(output: Path, prefix: str) -> dict[str, str]:
    out = {}
    for p in sorted(output.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(output).as_posix()
        if rel in EXCLUDED or rel.startswith(tuple(EXCLUDED_PREFIXES)):
            continue
        out[f"{prefix}/{rel}"] = hashlib.sha256(normalize(rel, p.read_bytes())).hexdigest()
    return out


def run_all(work: Path, *, workers: int, limit: int, near_limit: int, only: list[str]) -> dict:
    import preproc

    files: dict[str, str] = {}
    times: dict[str, float] = {}
    for name in only:
        root = _fresh(work / name)
        spec = prepare_demo(root) if name == "demo" else prepare_near(root, limit=limit, near_limit=near_limit)
        t0 = time.perf_counter()
        result = preproc.run(spec, workers=workers, force=True, progress=False)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: run {result.run_id}, {result.documents} documents, {result.tokens} tokens, "
              f"{times[name]} s", file=sys.stderr)
        files.update(hash_outputs(root / "output", name))
    return {"work": str(work), "workers": workers, "limit": limit, "near_limit": near_limit,
            "preproc": preproc.__file__, "run_time_s": times,
            "normalized": {"json_time_keys": sorted(TIME_KEYS), "json_time_maps": sorted(TIME_MAPS),
                           "prom_metrics": "*_seconds, *_per_second values", "excluded": {**EXCLUDED, **EXCLUDED_PREFIXES}},
            "files": files}


def compare(old: dict, new: dict) -> int:
    a, b = old["files"], new["files"]
    diffs = [f"changed  {k}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    diffs += [f"missing  {k}" for k in sorted(a.keys() - b.keys())]
    diffs += [f"new      {k}" for k in sorted(b.keys() - a.keys())]
    for key in ("work", "limit", "near_limit", "workers"):
        if old.get(key) != new.get(key):
            print(f"note: {key} differs ({old.get(key)} vs {new.get(key)}); outputs will too", file=sys.stderr)
    for d in diffs:
        print(d)
    print(f"{len(b)} files compared, {len(diffs)} differences", file=sys.stderr)
    return 1 if diffs else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/preproc-output-hashes"))
    ap.add_argument("--out", type=Path, help="write the hashes here (JSON)")
    ap.add_argument("--compare", type=Path, metavar="OLD.json", help="compare with hashes written before")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=25, help="documents taken from each corpus file")
    ap.add_argument("--near-limit", type=int, default=500, help="documents taken from neardup")
    ap.add_argument("--only", choices=["demo", "near"], action="append", help="run only this spec (repeatable)")
    args = ap.parse_args(argv)
    old = None
    if args.compare:
        try:
            old = json.loads(args.compare.read_text())
        except (OSError, ValueError) as e:
            _fail(f"{args.compare}: {e}")
        args.limit, args.near_limit = old.get("limit", args.limit), old.get("near_limit", args.near_limit)
    if not SHARED.exists():
        _fail(f"{SHARED}: missing (the shared test data)")
    new = run_all(args.work.resolve(), workers=args.workers, limit=args.limit, near_limit=args.near_limit,
                  only=args.only or ["demo", "near"])
    if args.out:
        args.out.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
        print(f"{len(new['files'])} hashes written to {args.out}", file=sys.stderr)
    if old is not None:
        return compare(old, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
