"""The embedded default: a pool of local worker processes, one stage after another.

Workers are started with ``spawn`` (never ``fork``: the Rust tokenizer pool and Arrow's
threads do not survive a fork, and we must not change the host program's start method).
Each worker's thread pools (``RAYON_NUM_THREADS`` for the Rust tokenizers and tiktoken,
Arrow's CPU pool) get ``executor.threads_per_worker`` threads, by default ``cores // workers``,
so that threads do not oversubscribe the cores. A worker killed by the OS (OOM, SIGKILL) breaks the pool; the
pool is rebuilt and the unfinished indices are retried, counting against their retries.
Workers die with the coordinator (:mod:`preproc.executors.lifeline`): a ``kill -9`` of ``preproc run``
leaves no worker behind.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from preproc.engine import signals
from preproc.engine.plan import Plan
from preproc.engine.stages import run_index, warm_up
from preproc.errors import ConfigError, PreprocError, StageFailed
from preproc.executors.lifeline import watch_parent, watch_process
from preproc.observe import logs
from preproc.observe.progress import Progress
from preproc.spec.secrets import install_log_redaction

if TYPE_CHECKING:
    from preproc.spec.model import Spec

log = logging.getLogger("preproc")


# A worker that found itself re-running the host script's top level (see _spawn_guard)
# exits with this code, so the coordinator can say what happened instead of "worker died".
EXIT_SPAWN_MAIN = 86
SPAWN_MAIN_MESSAGE = (
    "local workers could not start: they re-run your script's top level, which calls preproc again "
    "(worker processes are started with 'spawn'); put the call under `if __name__ == \"__main__\":`")


def _spawn_guard() -> None:
    """Called where a pool is about to start. Inside a spawned worker that is still importing
    the host's ``__main__`` (a script without a ``__name__`` guard), starting a pool of our
    own is what multiprocessing refuses with a long RuntimeError in each worker; leave
    quietly with :data:`EXIT_SPAWN_MAIN` instead, and the coordinator says it once."""
    if getattr(mp.process.current_process(), "_inheriting", False):
        os._exit(EXIT_SPAWN_MAIN)


# How pool workers start: ``spawn`` (see above). The test suite sets ``forkserver`` (its
# server preloaded with the engine's modules, tests/conftest.py) so that each of its hundreds
# of pools pays a fork, not an interpreter start and the imports; a worker then gets the
# coordinator's environment explicitly and watches the server, which dies with the coordinator.
START_METHOD = "spawn"


_COORDINATOR_ENV = "PREPROC_TEST_COORDINATOR_PID"


def _init_worker(threads: int, explicit: bool, started: Any = None, parent_pid: int | None = None,
                 env: dict[str, str] | None = None) -> None:
    if env is not None:        # forkserver: the server's environment is not the coordinator's
        os.environ.clear()
        os.environ.update(env)
        # Our parent is the server, which lives as long as its children do: watch the coordinator.
        watch_process(int(env[_COORDINATOR_ENV]))
    else:
        watch_parent(parent_pid)   # no orphans: die with the coordinator, even on kill -9
    install_log_redaction()    # a worker's records (even through logging.lastResort) are redacted

    global _started
    _started = started
    signals.install()
    if explicit:
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    else:   # the environment's setting, if any, wins over our division of the cores
        threads = int(os.environ.setdefault("RAYON_NUM_THREADS", str(threads)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    pa.set_cpu_count(max(1, threads))


def _run_one(output: str, stage: str, index: int) -> dict[str, Any]:
    plan = _plan_cache.get(output)
    if plan is None:
        plan = _plan_cache[output] = Plan.load(output)
    if _started is not None:
        # Tell the coordinator which index runs here: when a worker dies, only the index it
        # was running is charged a retry, not every index its broken pool took down.
        _started.put((stage, index))
    return run_index(plan, stage, index)


_plan_cache: dict[str, Any] = {}
_started: Any = None
DIED = "worker process died (killed or out of memory)"


class LocalExecutor:
    name = "local"

    def __init__(self, *, workers: int | None = None, retries: int = 2, progress: bool = True,
                 threads: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self.explicit_threads = threads is not None
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.workers)
        self.retries = retries
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None
        self._started_q: Any = None
        self._warming: list[Future] = []

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            _spawn_guard()
            ctx = mp.get_context(START_METHOD)
            self._started_q = ctx.SimpleQueue()
            spawned = START_METHOD == "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self.threads, self.explicit_threads, self._started_q,
                                                       os.getpid() if spawned else None,
                                                       None if spawned else {**os.environ, _COORDINATOR_ENV: str(os.getpid())}))
        return self._pool

    def prestart(self, spec: Spec) -> None:
        """Start the workers now (without waiting): their interpreters, imports and the
        tokenizer load overlap the coordinator's planning instead of delaying the first stage."""
        pool = self._get_pool()
        self._warming = [pool.submit(warm_up, spec.tokenize.tokenizer, spec.storage,
                                     encode_special_tokens=spec.tokenize.encode_special_tokens)
                         for _ in range(self.workers)]

    def _check_spawn_main(self) -> None:
        procs = getattr(self._pool, "_processes", None) or {}
        for p in list(procs.values()):
            p.join(timeout=5)
            if p.exitcode == EXIT_SPAWN_MAIN:
                self.close()
                raise ConfigError(SPAWN_MAIN_MESSAGE)

    def close(self) -> None:
        if self._pool is not None:
            if not all(f.done() for f in self._warming):
                # The run ended (a planning error, a lease held elsewhere) while workers still
                # load the tokenizer, which with a store that does not answer takes its retries
                # (minutes): they have no work and nothing to commit, so they are stopped.
                for p in list((getattr(self._pool, "_processes", None) or {}).values()):
                    p.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._warming = []

    def run_stage(self, plan: Plan, stage: str, indices: list[int]) -> None:
        total = plan.stage(stage).fan_out
        bar = Progress(stage, total=total, done=total - len(indices), enabled=self.progress, plan=plan)
        attempts = {i: 0 for i in indices}
        errors: dict[int, str] = {}
        todo = list(indices)
        try:
            while todo:
                pool = self._get_pool()
                try:
                    futures: dict[Future, int] = {pool.submit(_run_one, plan.output, stage, i): i for i in todo}
                except BrokenProcessPool:   # broke before this stage (prestart's workers died)
                    self._check_spawn_main()
                    self.close()
                    continue
                todo = []
                lost: list[int] = []       # indices whose future the broken pool failed
                round_t0 = time.time()
                started_q = self._started_q
                started: set[int] = set()
                # Futures report to a queue as they finish: concurrent.futures.wait() installs a
                # waiter on every pending future per call, O(N^2) over a 10,000-index stage.
                finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
                for fut in futures:
                    fut.add_done_callback(finished.put)
                remaining = len(futures)
                while remaining:
                    done = _next_done(finished, timeout_s=5.0)
                    remaining -= len(done)
                    started |= _drain(started_q, stage)
                    bar.tick()
                    for fut in done:
                        i = futures[fut]
                        try:
                            stats = fut.result()
                        except BrokenProcessPool:
                            self._check_spawn_main()
                            lost.append(i)
                            continue
                        except ConfigError as e:
                            raise StageFailed(stage, {i: f"ConfigError: {e}"}) from None
                        except Exception as e:  # noqa: BLE001 - reported per index
                            errors[i] = f"{type(e).__name__}: {e}"
                            attempts[i] += 1
                            if attempts[i] <= self.retries and not _fatal(e):
                                log.warning("stage %s index %d failed (attempt %d): %s", stage, i, attempts[i], errors[i])
                                todo.append(i)
                            else:
                                bar.fail(i, errors[i])
                            continue
                        errors.pop(i, None)
                        bar.advance(stats)
                if lost:
                    self.close()   # joins the pool's processes: their SIGTERM records are written
                    todo += _after_break(self, plan, stage, lost, started | _drain(started_q, stage), round_t0,
                                         attempts, errors, bar)
                todo.sort()
        finally:
            bar.close()
        if errors:
            raise StageFailed(stage, errors)


def _next_done(finished: queue.SimpleQueue[Future], *, timeout_s: float) -> list[Future]:
    """The futures finished so far (waiting up to ``timeout_s`` for the first); [] if none."""
    try:
        done = [finished.get(timeout=timeout_s)]
    except queue.Empty:
        return []
    while True:
        try:
            done.append(finished.get_nowait())
        except queue.Empty:
            return done


def _drain(q: Any, stage: str) -> set[int]:
    seen: set[int] = set()
    try:
        while not q.empty():
            st, i = q.get()
            if st == stage:
                seen.add(i)
    except (OSError, EOFError, ValueError):
        pass
    return seen


def _after_break(self: LocalExecutor, plan: Plan, stage: str, lost: list[int], started: set[int],
                 round_t0: float, attempts: dict[int, int], errors: dict[int, str], bar: Progress) -> list[int]:
    """A worker died and took its pool down: sort the lost indices into done (their marker
    was written), innocent (never started, or stopped by the pool's SIGTERM after the death)
    and the ones that died, which alone are charged a retry. What to run again."""
    store = plan.store()
    again: list[int] = []
    dead: list[int] = []
    innocent: list[int] = []
    for i in lost:
        marker = store.read_marker(stage, i)
        if marker is not None:
            errors.pop(i, None)
            bar.advance(marker)
            continue
        try:
            rec = store.read_json(store.failure_rel(stage, i))
        except (FileNotFoundError, ValueError):
            rec = None
        terminated = (isinstance(rec, dict) and str(rec.get("error", "")).startswith("Terminated")
                      and float(rec.get("time_s") or 0) >= round_t0)
        (innocent if i not in started or terminated else dead).append(i)
    if not dead:
        dead, innocent = innocent, []   # no culprit found (it died outside an index): charge them all
    again += innocent
    for i in dead:
        attempts[i] += 1
        errors[i] = DIED
        rec = {"error": DIED, "time_s": time.time(), "attempt": attempts[i], "host": logs.HOST}
        try:
            store.write_json(store.failure_rel(stage, i), rec)   # what status shows, and the next attempt's number
        except OSError:
            pass
        if attempts[i] <= self.retries:
            log.warning("stage %s index %d: %s (attempt %d); retrying", stage, i, DIED, attempts[i])
            again.append(i)
        else:
            bar.fail(i, errors[i])
    if innocent:
        log.info("stage %s: indices %s stopped with their pool after a worker died; run again without "
                 "counting an attempt", stage, ", ".join(map(str, innocent)))
    return again


def _fatal(e: BaseException) -> bool:
    return isinstance(e, PreprocError) and e.exit_code in (2, 3)
