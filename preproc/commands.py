"""What each ``preproc`` command does (:mod:`preproc.cli` parses the command line and loads
this module only once a command runs, so that ``preproc --help`` stays fast)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import pyarrow as pa
import yaml

from preproc.cli import overrides
from preproc.demo import run_demo
from preproc.engine import signals
from preproc.engine.plan import Plan
from preproc.engine.refresh import refresh
from preproc.engine.runner import make_plan, plan, run
from preproc.engine.stages import run_index
from preproc.errors import EXIT_OK, EXIT_RETRYABLE, ConfigError
from preproc.io import integrity, layout
from preproc.io.layout import split_label
from preproc.io.lease import RUN_TTL_S
from preproc.io.s3 import join, open_fs
from preproc.k8s.manifests import render_manifests
from preproc.k8s.ray import render_rayjob
from preproc.observe.outputs import open_output, readable
from preproc.observe.report import render_report, report_data
from preproc.observe.status import StatusReader, format_status, run_status
from preproc.spec import load_spec
from preproc.tokenize.tokenizer import inspect_tokenizer

__all__ = ["cmd_run", "cmd_refresh", "cmd_plan", "cmd_worker", "status", "cmd_status", "cmd_verify",
           "cmd_report", "cmd_demo", "cmd_manifests"]


def _executor_options(a: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("context", getattr(a, "context", None)), ("kubeconfig", getattr(a, "kubeconfig", None)),
                              ("address", getattr(a, "ray_address", None))) if v is not None}


def _summary(result) -> str:
    s = result.stats
    lines = [
        f"run {result.run_id}: {s['read']:,} documents read",
        f"  kept        {s['kept']:,}  ({s['tokens']:,} tokens)",
        f"  filtered    {s['filtered_total']:,}" + "".join(f"\n      {k}: {v:,}" for k, v in s["filtered"].items()),
        f"  duplicates  {s['duplicates_total']:,}  (exact {s['duplicates']['exact']:,}, near {s['duplicates']['near']:,})",
        f"  rejected    {s['rejected_total']:,}" + "".join(f"\n      {k}: {v:,}" for k, v in s["rejected"].items()),
    ]
    if s["file_errors"]:
        lines.append(f"  file errors {len(s['file_errors'])}")
        lines += [f"      {e['error']}: {e['file']}" for e in s["file_errors"][:10]]
    out = result.output.rstrip("/")
    lines += [f"outputs in {out}/: dataset.json, stats.json, tokens/ (Parquet + Megatron .bin/.idx)",
              f"  rejected records: {out}/rejects/",
              f"  report: {out}/report.html"]
    return "\n".join(lines)


def cmd_refresh(a: argparse.Namespace) -> int:
    t0 = time.time()
    r = refresh(a.spec, progress=True, executor_options=_executor_options(a),
                lock_ttl_s=600 if getattr(a, "lock_ttl", None) is None else a.lock_ttl,
                compact_after=getattr(a, "compact_after", None) or 8, **overrides(a))
    print(r.message)
    if r.stats is not None:
        print(_summary(_GenResult(r)))
    if r.dataset:
        print(f"dataset {r.output}: {len(r.dataset['generations'])} generation(s), "
              f"{r.dataset['documents']:,} documents, {r.dataset['tokens']:,} tokens")
    print(f"done in {time.time() - t0:.1f}s")
    return EXIT_OK


class _GenResult:
    def __init__(self, r):
        self.stats = r.stats
        self.run_id = r.dataset["generations"][-1]["run_id"]
        self.output = join(r.output, layout.generation(r.generation))


def cmd_run(a: argparse.Namespace) -> int:
    if a.incremental:
        return cmd_refresh(a)
    t0 = time.time()
    result = run(a.spec, force=a.force, progress=True, executor_options=_executor_options(a),
                 lock_ttl_s=RUN_TTL_S if a.lock_ttl is None else a.lock_ttl, **overrides(a))
    print(_summary(result))
    print(f"done in {time.time() - t0:.1f}s")
    return EXIT_OK


def cmd_plan(a: argparse.Namespace) -> int:
    p = plan(a.spec, **overrides(a))
    if a.json:
        print(json.dumps(p.to_json(), indent=1))
        return EXIT_OK
    print(p.summary())
    for sh in p.shards:
        more = f", +{len(sh.splits) - 3} more" if len(sh.splits) > 3 else ""
        files = ", ".join(split_label(x, short=True) for x in sh.splits[:3]) + more
        print(f"  shard {sh.index:>5}: {sh.bytes:>14,} B  {files}")
    print("(nothing written)")
    return EXIT_OK


def cmd_worker(a: argparse.Namespace) -> int:
    signals.install()
    if os.environ.get("RAYON_NUM_THREADS", "").isdigit():
        # A pod's CPU share (set by the manifests) bounds Arrow's pool too, not the node's cores.
        pa.set_cpu_count(max(1, int(os.environ["RAYON_NUM_THREADS"])))
    index = a.index
    if index is None:
        env = os.environ.get("JOB_COMPLETION_INDEX")
        if env is None:
            raise ConfigError("worker: no --index and no $JOB_COMPLETION_INDEX")
        try:
            index = int(env)
        except ValueError:
            raise ConfigError(f"worker: $JOB_COMPLETION_INDEX is not an integer: {env!r}") from None
    plan = Plan.load(a.output)
    stats = run_index(plan, a.stage, index)
    print(json.dumps({"stage": a.stage, "index": index, **{k: v for k, v in stats.items() if not isinstance(v, (list, dict))}}))
    return EXIT_OK


def status(output: str) -> dict[str, Any]:
    """Per stage: done/total, documents, tokens, throughput, ETA, failures with their inputs
    (see :func:`preproc.observe.status.run_status`)."""
    return run_status(output)


def cmd_status(a: argparse.Namespace) -> int:
    reader = StatusReader(a.output)
    if a.watch is None:
        st = readable(a.output, reader.status)
        print(json.dumps(st, indent=1) if a.json else format_status(st))
        return EXIT_OK
    # --watch: refresh until the run is complete (JSON: one object per line).
    tty = sys.stdout.isatty() and not a.json
    try:
        while True:
            st = readable(a.output, reader.status)
            if a.json:
                print(json.dumps(st), flush=True)
            else:
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J")
                print(format_status(st) + f"\n(every {a.watch:g}s; Ctrl-C to stop)", flush=True)
            if st["complete"]:
                return EXIT_OK
            time.sleep(a.watch)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_verify(a: argparse.Namespace) -> int:
    plan = Plan.load(a.output)
    store = plan.store()
    r = integrity.verify(store, plan)
    for b in r["bad"]:
        print(f"BAD {b['stage']} {b['index']}: {store.url(b['file'])}: {b['problem']}")
    if r["unrecorded"]:
        print(f"note: {len(r['unrecorded'])} index(es) were committed by an older preproc without checksums "
              f"(first: {r['unrecorded'][0][0]} {r['unrecorded'][0][1]})")
    for stage, n in r["not_done"].items():
        print(f"note: stage {stage}: {n} index(es) not done yet")
    print(f"{r['files']} file(s), {r['bytes']:,} bytes checked: "
          + (f"{len(r['bad'])} bad" if r["bad"] else "all match their committed size and xxh3"))
    if r["bad"]:
        if a.repair:
            for stage, i in sorted({(b["stage"], b["index"]) for b in r["bad"]}):
                store.rm(store.marker_rel(stage, i))
            print("repair: the markers of those indices are removed; run the same `preproc run` command "
                  "again to redo them")
        else:
            print("rerun with --repair to mark those indices not done, then run the same `preproc run` again",
                  file=sys.stderr)
        return EXIT_RETRYABLE
    return EXIT_OK


def cmd_report(a: argparse.Namespace) -> int:
    opened = open_output(a.output)   # a dataset root: its latest generation
    plan = opened.plan
    store = plan.store()
    if opened.root:
        print(f"dataset {opened.root}: generations "
              + ", ".join(str(g["generation"]) for g in opened.generations)
              + f"; report of generation {opened.generation}", file=sys.stderr)
    page = render_report(readable(a.output, lambda: report_data(plan, opened.store))).encode("utf-8")
    where = a.out or store.url(layout.REPORT)
    try:
        if a.out:
            fs, path = open_fs(a.out)
            with fs.open(path, "wb") as f:
                f.write(page)
        else:
            store.write_bytes(layout.REPORT, page)
    except OSError as e:
        # Read-only storage, a full disk, no permission: the user's to fix, not a retry.
        raise ConfigError(f"report: cannot write {where}: {e.strerror or e}") from None
    print(where)
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    t0 = time.time()
    result, planted = run_demo(a.output, tokenizer=a.tokenizer, workers=a.workers, progress=True)
    print(f"demo corpus: {planted['documents']:,} documents in {len(planted['files'])} files, "
          f"{planted['exact_duplicates']} exact copies and {planted['malformed']} malformed records planted")
    print(_summary(result))
    print(f"done in {time.time() - t0:.1f}s")
    return EXIT_OK


def cmd_manifests(a: argparse.Namespace) -> int:
    spec = load_spec(a.spec, **overrides(a))
    kind = spec.executor.kind if a.executor is None else a.executor
    if kind == "ray":
        objs = render_rayjob(spec)
    else:
        objs = render_manifests(spec, make_plan(spec, inspect_tokenizer(spec.tokenize, spec.storage)))
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return EXIT_OK
