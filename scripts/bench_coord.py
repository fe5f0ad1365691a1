"""The coordinator at many indices: its CPU, memory and API calls with stages of 1,000 and
10,000 indices whose work is nothing (issue 18, "the coordinator at 10,000 shards").

What runs, for each executor and each index count N:

* **Input**: N JSONL files of one document each, ``shards: N`` (splits are at least 1 MiB,
  so N shards need N files; plan.json holds about 250 bytes per file). Pipeline:
  clean, tokenize (GPT-2 tokenizer from ``../shared/data/tokenizers``), finalize; exact and
  near dedup off (their fan-out follows the data volume, not N).
* **No-op indices**: ``PREPROC_FAILPOINTS=point=start,stage=clean,action=skip;...tokenize...``
  (:mod:`preproc.faults`): each index runs the real ``run_index`` (marker check, attempt
  number, marker write, metrics) but not the stage's work; finalize runs for real over the
  2 x N markers.
* **The coordinator** is ``preproc run`` (the real CLI, ``preproc.cli.main``) in a process
  of its own; it reports its own ``getrusage(RUSAGE_SELF)`` (CPU of all its threads, peak
  RSS; not its children) when it ends.

  * ``local``: 2 worker processes run the indices.
  * ``k8s``: the API stand-in (tests/k8s/standin) runs in this process with the Role of
    manifests/base/rbac.yaml; its pods run in-process (``StandIn(pod_runner=...)``): a pod is
    ``run_index(plan, stage, JOB_COMPLETION_INDEX)`` on a thread of this process
    (tests/k8s/inprocess.py: the ``preproc worker`` command's own code minus its CLI parsing
    and plan load), not a subprocess; the stand-in's Job controllers reconcile at most every
    0.25 s (``sync_period_s``, as kube-controller-manager batches Job syncs). API calls are counted by the stand-in: writes
    (POST/PUT/PATCH/DELETE), and reads by kind (get, list, watch).

Columns: executor, N, stages (with N indices), coordinator CPU s, CPU s per 1,000 indices
per stage (the target: at most 1), peak RSS MB (target: at most 500), API writes, API reads
by verb, wall s. Targets are the issue's; nothing here fails a test.

    python scripts/bench_coord.py --indices 1000 10000 --json bench-coord.json
    python scripts/bench_coord.py --indices 1000 --profile /tmp/coord.prof   # cProfile of the coordinator
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREPROC_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))

NOOP_STAGES = ("clean", "tokenize")
K8S_PARALLELISM = 256


def make_input(folder: Path, n: int) -> Path:
    """N files of one document each (splits are at least 1 MiB, so N shards need N files);
    plan.json then holds N file entries, about 250 bytes each."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"d{i:06d}.jsonl").write_text(
            json.dumps({"id": f"d{i:06d}", "text": f"document number {i} of the coordinator benchmark"}) + "\n")
    return folder / "*.jsonl"


def _failpoints() -> str:
    from tests.k8s.inprocess import skip_rules

    return skip_rules(*NOOP_STAGES)


def spec_dict(inp: Path, out: Path, n: int, executor: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "input": {"paths": [str(inp)]},
        "output": str(out),
        "shards": n,
        "clean_fan_out": n,      # one clean index per shard, although the shards are tiny
        "later_fan_out": n,      # tokenize as wide as clean: two stages of N indices
        "dedup": {"exact": False},
        "tokenize": {"tokenizer": str(SHARED / "data" / "tokenizers" / "gpt2" / "tokenizer.json")},
    }
    if executor == "local":
        spec["executor"] = {"kind": "local", "workers": 2}
    else:
        # The "PVC" is the benchmark's folder: the in-process pods see the host's files.
        spec["executor"] = {"kind": "k8s", "options": {
            "namespace": "preproc", "parallelism": K8S_PARALLELISM,
            "pvc": {"claim_name": "preproc-data", "mount_path": str(out.parent)}}}
    return spec


# -- the coordinator process ---------------------------------------------------------------------
def _coordinator(usage_path: str, profile: str | None, argv: list[str]) -> int:
    """``preproc run ...`` in this process; then its own resource usage into ``usage_path``."""
    from preproc.cli import main

    t0 = time.perf_counter()
    if profile:
        import cProfile

        prof = cProfile.Profile(time.process_time)   # CPU, not waiting
        rc = prof.runcall(main, argv)
        prof.dump_stats(profile)
    else:
        rc = main(argv)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    Path(usage_path).write_text(json.dumps({
        "rc": rc, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
        "peak_rss_mb": ru.ru_maxrss / 1024, "main_wall_s": time.perf_counter() - t0}))
    return int(rc or 0)


def _run_coordinator(work: Path, spec: dict[str, Any], extra: list[str], *, timeout_s: float,
                     profile: str | None) -> dict[str, Any]:
    import yaml

    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    usage = work / "usage.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--coordinator", str(usage)]
    if profile:
        cmd += ["--profile", profile]
    cmd += ["--", "run", str(spec_path), *extra]
    env = {**os.environ, "PREPROC_FAILPOINTS": _failpoints(), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not usage.exists():
        tail = proc.stdout.decode(errors="replace")[-3000:]
        raise RuntimeError(f"the coordinator exited {proc.returncode}:\n{tail}")
    return {**json.loads(usage.read_text()), "wall_s": wall}


def run_one(work: Path, executor: str, n: int, *, timeout_s: float = 600, profile: str | None = None) -> dict[str, Any]:
    """One coordinator run of ``executor`` over N no-op indices per stage; its row."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    inp = make_input(work / "input", n)
    out = work / "out"
    spec = spec_dict(inp, out, n, executor)
    api: dict[str, Any] = {}
    if executor == "local":
        usage = _run_coordinator(work, spec, [], timeout_s=timeout_s, profile=profile)
    else:
        from tests.k8s.checks import MANIFESTS
        from tests.k8s.inprocess import InProcessPods
        from tests.k8s.standin import StandIn, rbac_rules_from

        rules = rbac_rules_from(MANIFESTS / "base" / "rbac.yaml")
        old = os.environ.get("PREPROC_FAILPOINTS")
        os.environ["PREPROC_FAILPOINTS"] = _failpoints()   # the in-process pods' failpoints
        try:
            with StandIn(tokens={"coordinator": rules}, pod_runner=InProcessPods(), history=200000,
                         validate_schema=False, sync_period_s=0.25) as s:
                kubeconfig = s.write_kubeconfig(work / "kubeconfig", token="coordinator", namespace="preproc")
                usage = _run_coordinator(work, spec, ["--kubeconfig", kubeconfig], timeout_s=timeout_s,
                                         profile=profile)
                api = api_calls(s.requests)
        finally:
            if old is None:
                os.environ.pop("PREPROC_FAILPOINTS", None)
            else:
                os.environ["PREPROC_FAILPOINTS"] = old
    plan = json.loads((out / "plan.json").read_text())
    wide = [st["name"] for st in plan["stages"] if st["fan_out"] == n]
    dataset = json.loads((out / "dataset.json").read_text())
    assert len(dataset["shards"]) == n, "finalize did not see every shard"
    return {"executor": executor, "indices": n, "stages": len(wide), "all_stages": len(plan["stages"]),
            "coordinator_cpu_s": round(usage["cpu_s"], 2),
            "cpu_s_per_1000_per_stage": round(usage["cpu_s"] / len(wide) / (n / 1000), 3),
            "peak_rss_mb": round(usage["peak_rss_mb"], 1), **api,
            "plan_json_kb": round((out / "plan.json").stat().st_size / 1024, 1),
            "wall_s": round(usage["wall_s"], 1)}


def api_calls(requests: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The coordinator's API calls as the stand-in saw them: writes, and reads by verb."""
    writes = sum(1 for m, _, _ in requests if m in ("POST", "PUT", "PATCH", "DELETE"))
    reads = {"get": 0, "list": 0, "watch": 0, "log": 0}
    for m, path, query in requests:
        if m != "GET" or path == "/version":
            continue
        if path.endswith("/log"):
            reads["log"] += 1
        elif "watch=true" in query or "watch=1" in query:
            reads["watch"] += 1
        elif path.endswith("/jobs") or path.endswith("/pods"):
            reads["list"] += 1
        else:
            reads["get"] += 1
    jobs_created = sum(1 for m, path, _ in requests if m == "POST" and path.endswith("/jobs"))
    return {"api_writes": writes, "jobs_created": jobs_created, "api_reads": reads}


def run(work: Path, *, indices: tuple[int, ...] = (1000, 10000), timeout_s: float = 600,
        executors: tuple[str, ...] = ("k8s", "local")) -> dict[str, Any]:
    """Every executor at every index count; ``{"rows": [...]}``."""
    rows = []
    for n in indices:
        for ex in executors:
            rows.append(run_one(Path(work) / f"{ex}-{n}", ex, n, timeout_s=timeout_s))
            print(_fmt(rows[-1]), flush=True)
    return {"rows": rows, "targets": {"cpu_s_per_1000_per_stage": 1.0, "peak_rss_mb": 500}}


HEADER = (f"{'executor':<8} {'indices':>7} {'stages':>6} {'cpu s':>7} {'s/1k/st':>8} {'rss MB':>7} "
          f"{'writes':>6} {'reads (get/list/watch)':>22} {'wall s':>7}")


def _fmt(r: dict[str, Any]) -> str:
    reads = r.get("api_reads")
    rd = f"{reads['get']}/{reads['list']}/{reads['watch']}" if reads else "-"
    return (f"{r['executor']:<8} {r['indices']:>7} {r['stages']:>6} {r['coordinator_cpu_s']:>7.2f} "
            f"{r['cpu_s_per_1000_per_stage']:>8.3f} {r['peak_rss_mb']:>7.1f} {r.get('api_writes', '-')!s:>6} "
            f"{rd:>22} {r['wall_s']:>7.1f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--coordinator":
        args = sys.argv[2:]
        usage = args.pop(0)
        profile = None
        if args[0] == "--profile":
            profile = args[1]
            args = args[2:]
        assert args[0] == "--"
        return _coordinator(usage, profile, args[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--indices", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--executors", nargs="+", default=["k8s", "local"], choices=["k8s", "local"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-coord"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--profile", help="cProfile the coordinator of the first run into this file")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args()
    print(HEADER, flush=True)
    if a.profile:
        r = run_one(a.work / f"{a.executors[0]}-{a.indices[0]}", a.executors[0], a.indices[0],
                    timeout_s=a.timeout, profile=a.profile)
        print(_fmt(r))
        result = {"rows": [r]}
    else:
        result = run(a.work, indices=tuple(a.indices), timeout_s=a.timeout, executors=tuple(a.executors))
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
