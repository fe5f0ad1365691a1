"""``preproc``: run | refresh | plan | worker | status | verify | report | demo | manifests.

Exit codes: 0 success; 2 a configuration or input problem found before any work (one line
on stderr says what and where); for ``worker``, the contract in :mod:`preproc.errors`
(1 retryable, 2 config, 3 bad shard); 75 another ``run`` or ``refresh`` holds the
output's lease (:mod:`preproc.io.lease`); ``verify``: 1 when a committed file is missing or
differs from its recorded size or hash; 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

from preproc.errors import EXIT_OK, EXIT_RETRYABLE, ConfigError, PreprocError
from preproc.io.layout import split_label

log = logging.getLogger("preproc")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="pipeline spec (YAML file or URI)")
    p.add_argument("--input", action="append", metavar="URI", help="input path/glob (repeatable; replaces input.paths)")
    p.add_argument("--output", metavar="URI", help="output location (local, PVC path, s3://...)")
    p.add_argument("--executor", choices=["local", "k8s", "ray"], help="where stages run (default: the spec's, else local)")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: cores)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="threads of each local worker (default: cores / workers)")
    p.add_argument("--shards", type=int, metavar="N", help="number of shards")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json path or URI")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any spec key, e.g. --set clean.length.min_words=5 (VALUE is YAML)")


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    import yaml

    o: dict[str, Any] = {"input": a.input, "output": a.output, "executor": a.executor, "workers": a.workers,
                         "threads_per_worker": a.threads_per_worker, "shards": a.shards, "tokenizer": a.tokenizer}
    for kv in a.set:
        if "=" not in kv:
            raise ConfigError(f"--set {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        o[k.strip()] = yaml.safe_load(v)
    return o


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
    from preproc.engine.refresh import refresh

    t0 = time.time()
    r = refresh(a.spec, progress=True, executor_options=_executor_options(a),
                lock_ttl_s=600 if getattr(a, "lock_ttl", None) is None else a.lock_ttl,
                compact_after=getattr(a, "compact_after", None) or 8, **_overrides(a))
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
        from preproc.engine.refresh import gen_dir
        from preproc.io.s3 import join

        self.stats = r.stats
        self.run_id = r.dataset["generations"][-1]["run_id"]
        self.output = join(r.output, gen_dir(r.generation))


def cmd_run(a: argparse.Namespace) -> int:
    from preproc.engine.runner import run

    if a.incremental:
        return cmd_refresh(a)
    t0 = time.time()
    from preproc.io.lease import RUN_TTL_S

    result = run(a.spec, force=a.force, progress=True, executor_options=_executor_options(a),
                 lock_ttl_s=RUN_TTL_S if a.lock_ttl is None else a.lock_ttl, **_overrides(a))
    print(_summary(result))
    print(f"done in {time.time() - t0:.1f}s")
    return EXIT_OK


def cmd_plan(a: argparse.Namespace) -> int:
    from preproc.engine.runner import plan

    p = plan(a.spec, **_overrides(a))
    if a.json:
        print(json.dumps(p.to_json(), indent=1))
        return EXIT_OK
    print(p.summary())
    for sh in p.shards:
        files = ", ".join(split_label(x, short=True) for x in sh.splits[:3]) + (f", +{len(sh.splits) - 3} more" if len(sh.splits) > 3 else "")
        print(f"  shard {sh.index:>5}: {sh.bytes:>14,} B  {files}")
    print("(nothing written)")
    return EXIT_OK


def cmd_worker(a: argparse.Namespace) -> int:
    from preproc.engine import signals
    from preproc.engine.plan import Plan
    from preproc.engine.stages import run_index

    signals.install()
    if os.environ.get("RAYON_NUM_THREADS", "").isdigit():
        # A pod's CPU share (set by the manifests) bounds Arrow's pool too, not the node's cores.
        import pyarrow as pa

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
    from preproc.observe.status import run_status

    return run_status(output)


def cmd_status(a: argparse.Namespace) -> int:
    from preproc.observe.outputs import readable
    from preproc.observe.status import StatusReader, format_status

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
    from preproc.io.integrity import verify
    from preproc.engine.plan import Plan

    plan = Plan.load(a.output)
    store = plan.store()
    r = verify(store, plan)
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
    from preproc.observe.outputs import open_output, readable
    from preproc.observe.report import render_report, report_data

    opened = open_output(a.output)   # a dataset root: its latest generation
    plan = opened.plan
    store = plan.store()
    if opened.root:
        print(f"dataset {opened.root}: generations "
              + ", ".join(str(g["generation"]) for g in opened.generations)
              + f"; report of generation {opened.generation}", file=sys.stderr)
    page = render_report(readable(a.output, lambda: report_data(plan, opened.store))).encode("utf-8")
    where = a.out or store.url("report.html")
    try:
        if a.out:
            from preproc.io.s3 import open_fs

            fs, path = open_fs(a.out)
            with fs.open(path, "wb") as f:
                f.write(page)
        else:
            store.write_bytes("report.html", page)
    except OSError as e:
        # Read-only storage, a full disk, no permission: the user's to fix, not a retry.
        raise ConfigError(f"report: cannot write {where}: {e.strerror or e}") from None
    print(where)
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from preproc.demo import run_demo

    t0 = time.time()
    result, planted = run_demo(a.output, tokenizer=a.tokenizer, workers=a.workers, progress=True)
    print(f"demo corpus: {planted['documents']:,} documents in {len(planted['files'])} files, "
          f"{planted['exact_duplicates']} exact copies and {planted['malformed']} malformed records planted")
    print(_summary(result))
    print(f"done in {time.time() - t0:.1f}s")
    return EXIT_OK


def cmd_manifests(a: argparse.Namespace) -> int:
    import yaml

    from preproc.spec import load_spec
    from preproc.engine.plan import make_plan
    from preproc.tokenize.tokenizer import inspect_tokenizer

    spec = load_spec(a.spec, **_overrides(a))
    kind = spec.executor.kind if a.executor is None else a.executor
    if kind == "ray":
        from preproc.k8s.ray import render_rayjob  # type: ignore[import-not-found]

        objs = render_rayjob(spec)
    else:
        from preproc.k8s.manifests import render_manifests  # type: ignore[import-not-found]

        info, _ = inspect_tokenizer(spec.tokenize, spec.storage)
        objs = render_manifests(spec, make_plan(spec, tokenizer_info=info))
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return EXIT_OK


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context", help="k8s: kubeconfig context")
    p.add_argument("--kubeconfig", help="k8s: kubeconfig file")
    p.add_argument("--ray-address", help="ray: cluster address (auto, ray://host:10001); default: a local Ray")


def build_parser() -> argparse.ArgumentParser:
    from preproc._version import __version__

    p = argparse.ArgumentParser(prog="preproc", description="Clean, deduplicate and tokenize LLM pre-training corpora.")
    p.add_argument("--version", action="version", version=f"preproc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="plan, then run every stage (resumes a previous run)")
    _add_overrides(r)
    r.add_argument("--force", action="store_true", help="start over: remove the previous run's outputs")
    r.add_argument("--incremental", action="store_true", help="same as `preproc refresh`")
    r.add_argument("--lock-ttl", type=float, metavar="SECONDS",
                   help="expiry of the output's lease, renewed while running (default 120; refresh: 600)")
    _add_executor_flags(r)
    r.set_defaults(func=cmd_run)

    rf = sub.add_parser("refresh", help="process only new inputs as a new generation, deduplicated against earlier ones")
    _add_overrides(rf)
    rf.add_argument("--lock-ttl", type=float, metavar="SECONDS",
                    help="expiry of the dataset lock, renewed while running (default 600)")
    rf.add_argument("--compact-after", type=int, metavar="N",
                    help="merge the dedup index segments once N generations have their own (default 8)")
    _add_executor_flags(rf)
    rf.set_defaults(func=cmd_refresh)

    pl = sub.add_parser("plan", help="print what would run; writes nothing")
    _add_overrides(pl)
    pl.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    pl.set_defaults(func=cmd_plan)

    w = sub.add_parser("worker", help="run one index of one stage of a planned run (pods, Ray tasks)")
    w.add_argument("output", help="the run's output location")
    w.add_argument("--stage", required=True)
    w.add_argument("--index", type=int, help="default: $JOB_COMPLETION_INDEX")
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("status", help="per stage: done/total, docs, tokens, throughput, ETA, failures")
    s.add_argument("output")
    s.add_argument("--json", action="store_true", help="machine-readable (with --watch: one object per line)")
    s.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until the run is complete")
    s.set_defaults(func=cmd_status)

    v = sub.add_parser("verify", help="read back every committed file and check its size and xxh3")
    v.add_argument("output")
    v.add_argument("--repair", action="store_true",
                   help="remove the markers of indices with bad files, so that the next run redoes them")
    v.set_defaults(func=cmd_verify)

    rp = sub.add_parser("report", help="write OUTPUT/report.html (charts, funnel, removed examples)")
    rp.add_argument("output")
    rp.add_argument("--out", metavar="PATH", help="write the page here instead of OUTPUT/report.html")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="generate a small corpus and tokenizer, run the whole pipeline locally")
    d.add_argument("--output", default="preproc-demo", help="folder for inputs, tokenizer and outputs (default: ./preproc-demo)")
    d.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    d.add_argument("--workers", type=int)
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("manifests", help="print the Kubernetes objects a run would create (GitOps, kubectl apply)")
    _add_overrides(m)
    m.set_defaults(func=cmd_manifests)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from preproc.observe import logs

    logs.setup(verbose=a.verbose)   # readable lines; JSON lines in pods or with PREPROC_LOG_FORMAT=json
    # With JSON logs every stderr line is a JSON object, the final error line too.
    say = ((lambda msg: log.error(msg, extra={"event": "exit"})) if logs.log_format() == "json"
           else (lambda msg: print(msg, file=sys.stderr)))
    try:
        rc = a.func(a)
        sys.stdout.flush()   # here, not at exit: a closed pipe is caught below
        return rc
    except BrokenPipeError:
        # `preproc status OUT | head`: the reader left; that is not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        _silence_stdout()
        return EXIT_OK
    except PreprocError as e:
        say(f"preproc: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        say("preproc: interrupted; rerun the same command to resume")
        return 130
    except Exception as e:  # noqa: BLE001 - the worker contract: unexpected = retryable
        logging.getLogger("preproc").exception("unexpected error")
        say(f"preproc: error: {type(e).__name__}: {e}")
        return EXIT_RETRYABLE


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
