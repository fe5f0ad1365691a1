"""How far a run is: live progress on the coordinator, and status read from the output.

Two views of the same numbers, for every executor:

* :class:`Progress` — the coordinator's live display of one stage, fed by its executor as
  indices finish (local pool futures, Ray task results, Kubernetes ``completedIndexes``
  plus each index's marker). A tqdm bar with docs/s and tokens/s on a terminal; a log line
  every 30 s otherwise (with ``done``, ``total``, ``docs_per_s``, ``tokens_per_s``,
  ``eta_s`` as structured fields for JSON logs). Given the plan, it also publishes the
  coordinator's run-level gauges (:mod:`preproc.observe.metrics`).

  The API an executor uses::

      bar = Progress(stage, total=fan_out, done=fan_out - len(todo), plan=plan)
      bar.tick()              # often (each wait-loop turn): periodic log line, metrics
      bar.advance(marker)     # an index committed; ``marker`` is its stats dict (may be {})
      bar.fail(index, error)  # an index failed after its retries (optional)
      bar.snapshot()          # {"done", "total", "docs_per_s", "eta_s", ...}
      bar.close()

* :func:`run_status` — what ``preproc status`` prints, computed only from what the output
  holds (``plan.json``, markers, failure records), so it works from any machine that can
  read the output (local disk, PVC, S3), for a running, killed or finished run.

ETA is ``remaining indices × elapsed / indices done`` for the stage in progress: shards are
balanced by bytes, so indices are comparable; it is the stage's ETA, not the run's (later
stages have no history yet).
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from preproc.io import integrity
from preproc.observe.heartbeat import HEARTBEAT, coordinator_state

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["Progress", "run_status", "format_status", "group_rounds", "documents_in", "fmt_duration", "fmt_count"]

log = logging.getLogger("preproc")

LOG_EVERY_S = 30.0
# Stages whose index i reads shard i of the inputs (failures name its input files).
SHARD_STAGES = ("clean", "tokenize", "near_signatures", "near_shingles", "near_verify", "near_drops")


# Near dedup's connected-component rounds (near_cc_00, near_cc_01, ...): up to max_rounds
# stages, most of them with nothing to compute once components converge. Status and the
# report show them as one row, the rounds inside.
ROUND_PREFIX = "near_cc_"
ROUNDS_ROW = "near_cc"


def group_rounds(rows: list[dict[str, Any]], merge) -> list[dict[str, Any]]:
    """``rows`` (one per stage, ``row["stage"]``) with consecutive component rounds replaced
    by one row ``merge(rounds)``."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for r in rows + [{"stage": ""}]:
        if str(r["stage"]).startswith(ROUND_PREFIX):
            run.append(r)
            continue
        if run:
            out.append(merge(run))
            run = []
        if r["stage"]:
            out.append(r)
    return out


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


def documents_in(stats: dict[str, Any]) -> int:
    """Documents an index processed (its input), whatever the stage."""
    for k in ("read", "keys"):
        if k in stats:
            return int(stats[k] or 0)
    return int(stats.get("docs", 0) or 0) + int(stats.get("dropped", 0) or 0) or int(stats.get("documents", 0) or 0)


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_count(x: float) -> str:
    """1234 → 1.2k, 5_600_000 → 5.6M (for rates on one line)."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suf}"
    return f"{x:.0f}"


class Progress:
    """Per-stage progress on the coordinator (see the module docstring for the API)."""

    def __init__(self, stage: str, *, total: int, done: int, enabled: bool = True, plan: "Plan | None" = None):
        self.stage, self.total, self.done = stage, total, done
        self.done_at_start = done
        self.docs = 0
        self.tokens = 0
        self.bytes = 0
        self.failed: dict[int, str] = {}
        self.t0 = self.last_log = time.time()
        self.bar = None
        self.enabled = enabled
        self.plan = plan
        self._metrics = None
        if plan is not None:
            try:
                from preproc.observe.metrics import run_metrics

                self._metrics = run_metrics(plan)
            except Exception:  # noqa: BLE001 - metrics must never stop a run
                log.debug("coordinator metrics unavailable", exc_info=True)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"{stage:<12}", unit="idx", leave=True,
                            dynamic_ncols=True)
        self._publish(force=True)

    # -- what executors call ----------------------------------------------------------------
    def advance(self, stats: dict[str, Any]) -> None:
        self.done += 1
        self.docs += documents_in(stats)
        self.tokens += int(stats.get("tokens", 0) or 0)
        self.bytes += int(stats.get("input_bytes", 0) or 0)
        if self.bar is not None:
            self.bar.set_postfix_str(self._rates(), refresh=False)
            self.bar.update(1)
        self.tick()

    def fail(self, index: int, error: str) -> None:
        self.failed[index] = error
        self._publish(force=True)

    def tick(self) -> None:
        if self.bar is None and self.enabled and time.time() - self.last_log >= LOG_EVERY_S:
            self._line()
        self._publish()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled:
            self._line()
        self._publish(force=True, closing=True)

    # -- numbers ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        el = max(time.time() - self.t0, 1e-6)
        new = self.done - self.done_at_start
        remaining = self.total - self.done
        eta = (remaining * el / new) if new and remaining else (0.0 if not remaining else None)
        return {"stage": self.stage, "done": self.done, "total": self.total, "failed": len(self.failed),
                "elapsed_s": round(el, 3), "docs": self.docs, "tokens": self.tokens,
                "docs_per_s": self.docs / el, "tokens_per_s": self.tokens / el, "bytes_per_s": self.bytes / el,
                "eta_s": None if eta is None else round(eta, 1)}

    def _rates(self) -> str:
        if self.total <= 1:
            return ""   # one short index (finalize): a rate would say nothing
        s = self.snapshot()
        parts = [f"{fmt_count(s['docs_per_s'])} docs/s"]
        if self.tokens:
            parts.append(f"{fmt_count(s['tokens_per_s'])} tok/s")
        if self.bytes:
            parts.append(f"{fmt_count(s['bytes_per_s'])}B/s")
        return ", ".join(parts)

    def _line(self) -> None:
        s = self.snapshot()
        pct = 100.0 * s["done"] / s["total"] if s["total"] else 100.0
        log.info("stage %s: %d/%d indices (%.0f%%), %selapsed %s, ETA %s", self.stage, s["done"], s["total"], pct,
                 (self._rates() + ", ") if self.total > 1 else "", fmt_duration(s["elapsed_s"]), fmt_duration(s["eta_s"]),
                 extra={"event": "progress", **{k: (round(v, 3) if isinstance(v, float) else v)
                                                for k, v in s.items()}})
        self.last_log = time.time()

    def _publish(self, *, force: bool = False, closing: bool = False) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.update_stage(self.snapshot(), closing=closing)
            self._metrics.publish(force=force)
        except Exception:  # noqa: BLE001 - metrics must never stop a run
            log.debug("publishing coordinator metrics failed", exc_info=True)


# -- status from the output ------------------------------------------------------------------

def _mtimes(store: "Store", rel: str) -> dict[str, float]:
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
    return {int(n.split(".")[0]): n for n in names if n.endswith(".json") and n[:1].isdigit()}


class StatusReader:
    """Reads a run's status from its output. Markers never change once written, so a
    reader kept across refreshes (``--watch``) reads each marker once."""

    def __init__(self, output: str, *, threads: int = 16):
        from preproc.observe.outputs import open_output   # (not at the top: outputs → refresh → executors → here)

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
            done_t = _mtimes(store, f"{st.name}/_done")
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
            fail_t = _mtimes(store, f"{st.name}/_failed")
            fail_idx = {i: n for i, n in _indices(fail_t).items() if i not in markers}
            records = self._read_all([f"{st.name}/_failed/{n}" for n in fail_idx.values()])
            failures = []
            for (i, name), rec in zip(fail_idx.items(), records):
                if not isinstance(rec, dict):
                    continue
                err = str(rec.get("error", ""))
                f = {"index": i, "error": err.splitlines()[0][:500] if err else "", "attempt": rec.get("attempt"),
                     "time_s": rec.get("time_s") or fail_t.get(name), "host": rec.get("host")}
                if st.name in SHARD_STAGES and i < plan.num_shards:
                    f["inputs"] = [_split_label(x) for x in plan.shards[i].splits]
                failures.append(f)
            stages.append(self._stage(st.name, st.fan_out, markers, done_t, done_idx, failures, prev_complete, now))
            stages[-1]["damaged"] = [{"index": i, "problem": why} for i, why in sorted(damaged.items())]
            prev_complete = prev_complete and len(markers) == st.fan_out
        complete = store.exists("dataset.json") and not damaged_all and all(s["done"] == s["total"] for s in stages)
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
            return self.store.read_json(HEARTBEAT)
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


def _split_label(x: Any) -> str:
    if getattr(x, "end", None) is not None:
        return f"{x.uri}[{x.start}:{x.end}]"
    if getattr(x, "row_groups", None) is not None:
        return f"{x.uri}[row groups {x.row_groups[0]}..{x.row_groups[-1]}]"
    return x.uri


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
