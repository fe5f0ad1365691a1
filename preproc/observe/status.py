"""What ``preproc status`` prints, computed only from what the output holds (``plan.json``,
markers, failure records, the coordinator's heartbeat), so it works from any machine that
can read the output (local disk, PVC, S3), for a running, killed or finished run.

From the output alone a stopped run looks like a running one: the heartbeat
(:mod:`preproc.observe.heartbeat`) and ``last_done_s`` tell them apart. The live view on the
coordinator is :mod:`preproc.observe.progress`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from preproc.io import integrity, layout
from preproc.io.layout import split_label
from preproc.observe.heartbeat import coordinator_state
from preproc.observe.outputs import open_output
from preproc.observe.progress import fmt_count, fmt_duration
from preproc.observe.stats import ROUNDS_ROW, SHARD_STAGES, documents_in, group_rounds

if TYPE_CHECKING:
    from preproc.io.store import Store

__all__ = ["StatusReader", "run_status", "format_status", "format_generations_of"]


def _merge_status_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    cur = next((r for r in rounds if r["state"] != "done"), None)
    row = dict(cur or rounds[-1])
    row["stage"] = ROUNDS_ROW
    row["state"] = cur["state"] if cur else "done"
    for k in ("done", "total", "docs", "docs_in", "tokens", "input_bytes"):
        row[k] = sum(int(r.get(k) or 0) for r in rounds)
    row["busy_s"] = round(sum(float(r.get("busy_s") or 0) for r in rounds), 3)
    row["failures"] = [f for r in rounds for f in r["failures"]]
    row["failed"] = {k: v for r in rounds for k, v in r["failed"].items()}
    starts = [r["started_s"] for r in rounds if r.get("started_s")]
    ends = [r["last_done_s"] for r in rounds if r.get("last_done_s")]
    row["started_s"] = min(starts) if starts else None
    row["last_done_s"] = max(ends) if ends else None
    row["elapsed_s"] = round(row["last_done_s"] - row["started_s"], 1) if starts and ends and not cur else row.get("elapsed_s")
    row["rounds"] = [{"stage": r["stage"], "state": r["state"], "done": r["done"], "total": r["total"]} for r in rounds]
    row["rounds_done"] = sum(r["state"] == "done" for r in rounds)
    return row


def _mtimes(store: Store, rel: str) -> dict[str, float]:
    """name → modification time (epoch seconds) of the files directly under ``rel``."""
    try:
        entries = store.fs.ls(store.path(rel), detail=True)
    except (FileNotFoundError, OSError):
        return {}
    out = {}
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        t = e.get("mtime") or e.get("LastModified") or e.get("last_modified") or e.get("updated")
        if hasattr(t, "timestamp"):
            t = t.timestamp()
        try:
            out[name] = float(t) if t is not None else 0.0
        except (TypeError, ValueError):
            out[name] = 0.0
    return out


def _indices(names) -> dict[int, str]:
    """index → file name, of the markers (or failure records) among ``names``."""
    return {i: n for n in names if (i := layout.marker_index(n)) is not None}


class StatusReader:
    """Reads a run's status from its output. Markers never change once written, so a
    reader kept across refreshes (``--watch``) reads each marker once."""

    def __init__(self, output: str, *, threads: int = 16):
        self.output = output
        # A dataset root shows its latest generation; reads are bounded (a dead endpoint
        # answers in seconds, in one line).
        self.opened = open_output(output)
        self.plan = self.opened.plan
        self.store = self.opened.store
        self.threads = threads
        self._markers: dict[tuple[str, int], dict[str, Any]] = {}

    def _read_all(self, rels: list[str]) -> list[Any]:
        def one(rel: str) -> Any:
            try:
                return self.store.read_json(rel)
            except (FileNotFoundError, ValueError):
                return None

        if len(rels) <= 4:
            return [one(r) for r in rels]
        with ThreadPoolExecutor(min(self.threads, len(rels))) as pool:
            return list(pool.map(one, rels))

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        plan, store = self.plan, self.store
        stages: list[dict[str, Any]] = []
        prev_complete = True
        sizes = integrity.Sizes(store)
        damaged_all = 0
        for st in plan.stages:
            done_t = _mtimes(store, layout.done_dir(st.name))
            done_idx = {i: n for i, n in _indices(done_t).items() if i < st.fan_out}
            new = [i for i in sorted(done_idx) if (st.name, i) not in self._markers]
            for i, m in zip(new, self._read_all([store.marker_rel(st.name, i) for i in new])):
                if isinstance(m, dict):
                    self._markers[(st.name, i)] = m
            markers = {i: self._markers[(st.name, i)] for i in done_idx if (st.name, i) in self._markers}
            # What a resume would redo is not done: another run's marker, a committed file
            # missing or of the wrong size (cheap: one listing per folder).
            damaged = {i: why for i in done_idx
                       if (why := integrity.marker_problem(markers.get(i, "corrupt"), plan.run_id, sizes))}
            markers = {i: m for i, m in markers.items() if i not in damaged}
            damaged_all += len(damaged)
            fail_t = _mtimes(store, layout.failed_dir(st.name))
            fail_idx = {i: n for i, n in _indices(fail_t).items() if i not in markers}
            records = self._read_all([f"{layout.failed_dir(st.name)}/{n}" for n in fail_idx.values()])
            failures = []
            for (i, name), rec in zip(fail_idx.items(), records):
                if not isinstance(rec, dict):
                    continue
                err = str(rec.get("error", ""))
                f = {"index": i, "error": err.splitlines()[0][:500] if err else "", "attempt": rec.get("attempt"),
                     "time_s": rec.get("time_s") or fail_t.get(name), "host": rec.get("host")}
                if st.name in SHARD_STAGES and i < st.fan_out:
                    f["inputs"] = [split_label(x) for sh in plan.shards_of(st.name, i) for x in plan.shards[sh].splits]
                failures.append(f)
            stages.append(self._stage(st.name, st.fan_out, markers, done_t, done_idx, failures, prev_complete, now))
            stages[-1]["damaged"] = [{"index": i, "problem": why} for i, why in sorted(damaged.items())]
            prev_complete = prev_complete and len(markers) == st.fan_out
        complete = store.exists(layout.DATASET) and not damaged_all and all(s["done"] == s["total"] for s in stages)
        current = next((s for s in stages if s["done"] < s["total"]), None)
        coord, since = coordinator_state(self._heartbeat(), now)
        stopped = not complete and coord in ("stopped", "failed", "interrupted", "finished")
        if stopped and current is not None and current["state"] in ("running", "failing", "pending"):
            # Nobody is working on it: no ETA, and say so.
            current["state"], current["eta_s"] = "stopped", None
        started = min((s["started_s"] for s in stages if s["started_s"]), default=None)
        last = max((s["last_done_s"] for s in stages if s["last_done_s"]), default=None)
        return {
            "run_id": plan.run_id, "output": plan.output if self.opened.root else self.output, "complete": complete,
            **({"dataset_root": self.opened.root, "generation": self.opened.generation,
                "generations": self.opened.generations} if self.opened.root else {}),
            "state": "complete" if complete else "stopped" if stopped else (
                current["state"] if current and current["state"] != "pending" else ("running" if started else "planned")),
            "coordinator": {"state": coord, "since_s": since} if coord else None,
            "current_stage": current["stage"] if current else None,
            "planned_s": plan.created_s or None, "started_s": started, "last_activity_s": last,
            "elapsed_s": round(((last if complete else now) - started), 1) if started and last else None,
            "idle_s": round(now - last, 1) if last and not complete else None,
            "eta_s": (current["eta_s"] if current else 0.0) if not stopped else None,
            "shards": plan.num_shards, "input_bytes": plan.input_bytes,
            "stages": group_rounds(stages, _merge_status_rounds),
        }

    def _heartbeat(self) -> dict[str, Any] | None:
        try:
            return self.store.read_json(layout.HEARTBEAT)
        except (FileNotFoundError, ValueError):
            return None

    def _stage(self, name: str, total: int, markers: dict[int, dict[str, Any]], done_t: dict[str, float],
               done_idx: dict[int, str], failures: list[dict[str, Any]], prev_complete: bool,
               now: float) -> dict[str, Any]:
        finished = {i: float(m.get("finished_s") or done_t.get(done_idx.get(i, ""), 0.0)) for i, m in markers.items()}
        starts = [float(m["started_s"]) if m.get("started_s") else finished[i] - float(m.get("wall_time_s", 0.0))
                  for i, m in markers.items()]
        starts += [float(f["time_s"]) for f in failures if f.get("time_s")]
        started = min(starts) if starts else None
        last_done = max(finished.values()) if finished else None
        done = len(markers)
        end = last_done if done == total and last_done else now
        elapsed = (end - started) if started else None
        docs_in = sum(documents_in(m) for m in markers.values())
        docs = sum(int(m.get("docs", 0) or 0) for m in markers.values())
        tokens = sum(int(m.get("tokens", 0) or 0) for m in markers.values())
        in_bytes = sum(int(m.get("input_bytes", 0) or 0) for m in markers.values())
        busy = sum(float(m.get("wall_time_s", 0.0) or 0.0) for m in markers.values())
        rate = (lambda x: round(x / elapsed, 2) if elapsed and elapsed > 0 else None)
        remaining = total - done
        eta = None
        if remaining == 0:
            eta = 0.0
        elif done and elapsed:
            eta = round(remaining * elapsed / done, 1)
        # From the output alone a stopped run looks like a running one: ``last_done_s`` (and
        # the run's ``idle_s``) tell them apart.
        if done == total:
            state = "done"
        elif failures:
            state = "failing"
        elif started or (prev_complete and done):
            state = "running"
        else:
            state = "pending"
        return {
            "stage": name, "state": state, "done": done, "total": total,
            "docs": docs, "docs_in": docs_in, "tokens": tokens, "input_bytes": in_bytes,
            "failed": {f["index"]: f["error"] for f in failures}, "failures": failures,
            "started_s": started, "last_done_s": last_done, "elapsed_s": round(elapsed, 1) if elapsed else None,
            "busy_s": round(busy, 3),
            "docs_per_s": rate(docs_in), "tokens_per_s": rate(tokens) if tokens else None,
            "bytes_per_s": rate(in_bytes) if in_bytes else None,
            "indices_per_s": rate(done) if done else None, "eta_s": eta,
        }


def run_status(output: str, *, now: float | None = None) -> dict[str, Any]:
    """A run's status from its output alone (see :class:`StatusReader`)."""
    return StatusReader(output).status(now)


def format_generations_of(st: dict[str, Any]) -> str:
    lines = [f"dataset {st['dataset_root']}: {len(st['generations'])} generation(s); "
             f"showing generation {st['generation']}"]
    for g in st["generations"]:
        what = (f"{g['documents']:,} documents, {g['tokens']:,} tokens" if g.get("documents") is not None
                else g["state"])
        lines.append(f"  generation {g['generation']:>5}  {what}")
    return "\n".join(lines)


def format_status(st: dict[str, Any], *, max_failures: int = 10) -> str:
    """The human-readable ``preproc status`` text."""
    lines = [format_generations_of(st)] if st.get("generations") else []
    lines += [f"run {st['run_id']}  {st['output']}  {'complete' if st['complete'] else 'not complete'}"
             + (f"  (elapsed {fmt_duration(st['elapsed_s'])})" if st.get("elapsed_s") else "")
             + (f"  last index finished {fmt_duration(st['idle_s'])} ago" if st.get("idle_s") else "")]
    c = st.get("coordinator")
    if st.get("state") == "stopped" and c:
        how = {"stopped": "stopped without a word (killed?)", "failed": "failed", "interrupted": "was interrupted",
               "finished": "left"}.get(c["state"], c["state"])
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["since_s"])) if c.get("since_s") else "?"
        lines.append(f"  stopped: the coordinator {how}; last seen {when}"
                     + (f" ({fmt_duration(time.time() - c['since_s'])} ago)" if c.get("since_s") else "")
                     + "; rerun the same command to resume")
    for s in st["stages"]:
        tok = f"  {s['tokens']:,} tokens" if s["tokens"] else ""
        rates = []
        if s["stage"] == "finalize":
            pass   # one short index: a rate would say nothing
        elif s["state"] != "pending" and s.get("docs_per_s"):
            rates.append(f"{fmt_count(s['docs_per_s'])} docs/s")
        if s.get("tokens_per_s") and s["stage"] != "finalize":
            rates.append(f"{fmt_count(s['tokens_per_s'])} tok/s")
        if s["state"] in ("running", "failing") and s["eta_s"] is not None:
            rates.append(f"ETA {fmt_duration(s['eta_s'])}")
        elif s["state"] == "done" and s.get("elapsed_s"):
            rates.append(f"took {fmt_duration(s['elapsed_s'])}")
        if s.get("rounds"):
            rates.append(f"round {s['rounds_done']}/{len(s['rounds'])}" if s["state"] != "done"
                         else f"{len(s['rounds'])} rounds")
        lines.append(f"  {s['stage']:<14} {s['done']:>5}/{s['total']:<5} {s['docs'] or s['docs_in']:>12,} docs{tok}"
                     + (f"  {len(s['failures'])} failed" if s["failures"] else "")
                     + (f"  [{s['state']}]" if s["state"] not in ("done",) else "")
                     + (f"  {', '.join(rates)}" if rates else ""))
        for d in s.get("damaged", [])[:max_failures]:
            lines.append(f"      index {d['index']} will be redone: {d['problem']}")
        for f in s["failures"][:max_failures]:
            att = f" (attempt {f['attempt']})" if f.get("attempt") else ""
            lines.append(f"      index {f['index']}{att}: {f['error'][:200]}")
            if f.get("inputs"):
                more = f" +{len(f['inputs']) - 3} more" if len(f["inputs"]) > 3 else ""
                lines.append(f"          inputs: {', '.join(f['inputs'][:3])}{more}")
        if len(s["failures"]) > max_failures:
            lines.append(f"      ... {len(s['failures']) - max_failures} more failed indices (--json lists all)")
    return "\n".join(lines)
