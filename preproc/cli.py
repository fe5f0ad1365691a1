"""``preproc``: run | plan | worker | status | demo | manifests.

Exit codes: 0 success; 2 a configuration or input problem found before any work (one line
on stderr says what and where); for ``worker``, the contract in :mod:`preproc.errors`
(1 retryable, 2 config, 3 bad shard); 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

from .errors import EXIT_CONFIG, EXIT_OK, EXIT_RETRYABLE, ConfigError, PreprocError

log = logging.getLogger("preproc")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="pipeline spec (YAML file or URI)")
    p.add_argument("--input", action="append", metavar="URI", help="input path/glob (repeatable; replaces input.paths)")
    p.add_argument("--output", metavar="URI", help="output location (local, PVC path, s3://...)")
    p.add_argument("--executor", choices=["local", "k8s", "ray"], help="where stages run (default: the spec's, else local)")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: cores)")
    p.add_argument("--shards", type=int, metavar="N", help="number of shards")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json path or URI")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any spec key, e.g. --set clean.length.min_words=5 (VALUE is YAML)")


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    import yaml

    o: dict[str, Any] = {"input": a.input, "output": a.output, "executor": a.executor, "workers": a.workers,
                         "shards": a.shards, "tokenizer": a.tokenizer}
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
              f"  rejected records: {out}/rejects/"]
    return "\n".join(lines)


def cmd_run(a: argparse.Namespace) -> int:
    from .runner import run

    t0 = time.time()
    result = run(a.spec, force=a.force, progress=True, executor_options=_executor_options(a), **_overrides(a))
    print(_summary(result))
    print(f"done in {time.time() - t0:.1f}s")
    return EXIT_OK


def cmd_plan(a: argparse.Namespace) -> int:
    from .runner import plan

    p = plan(a.spec, **_overrides(a))
    if a.json:
        print(json.dumps(p.to_json(), indent=1))
        return EXIT_OK
    print(p.summary())
    for sh in p.shards:
        files = ", ".join(_split_label(x) for x in sh.splits[:3]) + (f", +{len(sh.splits) - 3} more" if len(sh.splits) > 3 else "")
        print(f"  shard {sh.index:>5}: {sh.bytes:>14,} B  {files}")
    print("(nothing written)")
    return EXIT_OK


def _split_label(x) -> str:
    if x.end is not None:
        return f"{x.rel}[{x.start}:{x.end}]"
    if x.row_groups is not None:
        return f"{x.rel}[rg {x.row_groups[0]}..{x.row_groups[-1]}]"
    return x.rel


def cmd_worker(a: argparse.Namespace) -> int:
    from .plan import Plan
    from .stages import run_index

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
    """Per stage: indices done/total, documents, tokens, failures (with their last error)."""
    from .plan import Plan
    from .storage import Store

    plan = Plan.load(output)
    store = Store(output)
    stages = []
    for st in plan.stages:
        markers = store.read_markers(st.name)
        failed = {}
        for name in store.ls(f"{st.name}/_failed"):
            if name.endswith(".json") and name[0].isdigit():
                i = int(name.split(".")[0])
                if i not in markers:
                    try:
                        failed[i] = store.read_json(f"{st.name}/_failed/{name}").get("error", "")
                    except FileNotFoundError:
                        pass
        stages.append({"stage": st.name, "done": len(markers), "total": st.fan_out,
                       "docs": sum(int(m.get("docs", 0)) for m in markers.values()),
                       "tokens": sum(int(m.get("tokens", 0)) for m in markers.values()),
                       "failed": failed})
    return {"run_id": plan.run_id, "output": output, "complete": store.exists("dataset.json"), "stages": stages}


def cmd_status(a: argparse.Namespace) -> int:
    st = status(a.output)
    if a.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    print(f"run {st['run_id']}  {st['output']}  {'complete' if st['complete'] else 'not complete'}")
    for s in st["stages"]:
        tok = f"  {s['tokens']:,} tokens" if s["tokens"] else ""
        print(f"  {s['stage']:<14} {s['done']:>5}/{s['total']:<5} {s['docs']:>12,} docs{tok}"
              + (f"  {len(s['failed'])} failed" if s["failed"] else ""))
        for i, err in sorted(s["failed"].items())[:10]:
            print(f"      index {i}: {err[:200]}")
    return EXIT_OK


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    t0 = time.time()
    result, planted = run_demo(a.output, tokenizer=a.tokenizer, workers=a.workers, progress=True)
    print(f"demo corpus: {planted['documents']:,} documents in {len(planted['files'])} files, "
          f"{planted['exact_duplicates']} exact copies and {planted['malformed']} malformed records planted")
    print(_summary(result))
    print(f"done in {time.time() - t0:.1f}s")
    return EXIT_OK


def cmd_manifests(a: argparse.Namespace) -> int:
    import yaml

    from .config import load_spec
    from .plan import make_plan
    from .tokenizer import inspect_tokenizer

    spec = load_spec(a.spec, **_overrides(a))
    kind = spec.executor.kind if a.executor is None else a.executor
    if kind == "ray":
        from .k8s.ray import render_rayjob  # type: ignore[import-not-found]

        objs = render_rayjob(spec)
    else:
        from .k8s.manifests import render_manifests  # type: ignore[import-not-found]

        info, _ = inspect_tokenizer(spec.tokenize)
        objs = render_manifests(spec, make_plan(spec, tokenizer_info=info))
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(prog="preproc", description="Clean, deduplicate and tokenize LLM pre-training corpora.")
    p.add_argument("--version", action="version", version=f"preproc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="plan, then run every stage (resumes a previous run)")
    _add_overrides(r)
    r.add_argument("--force", action="store_true", help="start over: remove the previous run's outputs")
    r.add_argument("--context", help="k8s: kubeconfig context")
    r.add_argument("--kubeconfig", help="k8s: kubeconfig file")
    r.add_argument("--ray-address", help="ray: cluster address (auto, ray://host:10001); default: a local Ray")
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("plan", help="print what would run; writes nothing")
    _add_overrides(pl)
    pl.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    pl.set_defaults(func=cmd_plan)

    w = sub.add_parser("worker", help="run one index of one stage of a planned run (pods, Ray tasks)")
    w.add_argument("output", help="the run's output location")
    w.add_argument("--stage", required=True)
    w.add_argument("--index", type=int, help="default: $JOB_COMPLETION_INDEX")
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("status", help="per stage: indices done/total, docs, tokens, failures")
    s.add_argument("output")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

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
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return a.func(a)
    except PreprocError as e:
        print(f"preproc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("preproc: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the worker contract: unexpected = retryable
        logging.getLogger("preproc").exception("unexpected error")
        print(f"preproc: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RETRYABLE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
