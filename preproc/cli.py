"""``preproc``: run | refresh | plan | worker | status | verify | report | demo | manifests.

The parser lives here; what each command does lives in :mod:`preproc.commands`, loaded once
a command runs (the engine's imports cost about a second that ``--help`` need not pay).

Exit codes: 0 success; 2 a configuration or input problem found before any work (one line
on stderr says what and where); for ``worker``, the contract in :mod:`preproc.errors`
(1 retryable, 2 config, 3 bad shard); 75 another ``run`` or ``refresh`` holds the
output's lease (:mod:`preproc.io.lease`); ``verify``: 1 when a committed file is missing or
differs from its recorded size or hash; 1 any other failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from preproc._version import __version__
from preproc.errors import EXIT_OK, EXIT_RETRYABLE, ConfigError, PreprocError
from preproc.observe import logs

log = logging.getLogger("preproc")

COMMANDS = "preproc.commands"   # where the commands are, imported when one runs


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


def overrides(a: argparse.Namespace) -> dict[str, Any]:
    """The spec overrides of the command line (``--input``, ``--set KEY=VALUE``, ...)."""
    o: dict[str, Any] = {"input": a.input, "output": a.output, "executor": a.executor, "workers": a.workers,
                         "threads_per_worker": a.threads_per_worker, "shards": a.shards, "tokenizer": a.tokenizer}
    for kv in a.set:
        if "=" not in kv:
            raise ConfigError(f"--set {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        o[k.strip()] = yaml.safe_load(v)
    return o


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context", help="k8s: kubeconfig context")
    p.add_argument("--kubeconfig", help="k8s: kubeconfig file")
    p.add_argument("--ray-address", help="ray: cluster address (auto, ray://host:10001); default: a local Ray")


def build_parser() -> argparse.ArgumentParser:
    """The command line; each command's ``func`` names its function in :mod:`preproc.commands`."""
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
    r.set_defaults(func="cmd_run")

    rf = sub.add_parser("refresh", help="process only new inputs as a new generation, deduplicated against earlier ones")
    _add_overrides(rf)
    rf.add_argument("--lock-ttl", type=float, metavar="SECONDS",
                    help="expiry of the dataset lock, renewed while running (default 600)")
    rf.add_argument("--compact-after", type=int, metavar="N",
                    help="merge the dedup index segments once N generations have their own (default 8)")
    _add_executor_flags(rf)
    rf.set_defaults(func="cmd_refresh")

    pl = sub.add_parser("plan", help="print what would run; writes nothing")
    _add_overrides(pl)
    pl.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    pl.set_defaults(func="cmd_plan")

    w = sub.add_parser("worker", help="run one index of one stage of a planned run (pods, Ray tasks)")
    w.add_argument("output", help="the run's output location")
    w.add_argument("--stage", required=True)
    w.add_argument("--index", type=int, help="default: $JOB_COMPLETION_INDEX")
    w.set_defaults(func="cmd_worker")

    s = sub.add_parser("status", help="per stage: done/total, docs, tokens, throughput, ETA, failures")
    s.add_argument("output")
    s.add_argument("--json", action="store_true", help="machine-readable (with --watch: one object per line)")
    s.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until the run is complete")
    s.set_defaults(func="cmd_status")

    v = sub.add_parser("verify", help="read back every committed file and check its size and xxh3")
    v.add_argument("output")
    v.add_argument("--repair", action="store_true",
                   help="remove the markers of indices with bad files, so that the next run redoes them")
    v.set_defaults(func="cmd_verify")

    rp = sub.add_parser("report", help="write OUTPUT/report.html (charts, funnel, removed examples)")
    rp.add_argument("output")
    rp.add_argument("--out", metavar="PATH", help="write the page here instead of OUTPUT/report.html")
    rp.set_defaults(func="cmd_report")

    d = sub.add_parser("demo", help="generate a small corpus and tokenizer, run the whole pipeline locally")
    d.add_argument("--output", default="preproc-demo", help="folder for inputs, tokenizer and outputs (default: ./preproc-demo)")
    d.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    d.add_argument("--workers", type=int)
    d.set_defaults(func="cmd_demo")

    m = sub.add_parser("manifests", help="print the Kubernetes objects a run would create (GitOps, kubectl apply)")
    _add_overrides(m)
    m.set_defaults(func="cmd_manifests")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logs.setup(verbose=a.verbose)   # readable lines; JSON lines in pods or with PREPROC_LOG_FORMAT=json
    # With JSON logs every stderr line is a JSON object, the final error line too.
    say = ((lambda msg: log.error(msg, extra={"event": "exit"})) if logs.log_format() == "json"
           else (lambda msg: print(msg, file=sys.stderr)))
    try:
        rc = getattr(importlib.import_module(COMMANDS), a.func)(a)
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
