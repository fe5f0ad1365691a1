"""The embedded default: a pool of local worker processes, one stage after another.

Workers are started with ``spawn`` (never ``fork``: the Rust tokenizer pool and Arrow's
threads do not survive a fork, and we must not change the host program's start method).
Each worker's thread pools (``RAYON_NUM_THREADS`` for the Rust tokenizers and tiktoken,
Arrow's CPU pool) get ``executor.threads_per_worker`` threads, by default ``cores // workers``,
so that threads do not oversubscribe the cores. A worker killed by the OS (OOM, SIGKILL) breaks the pool; the
pool is rebuilt and the unfinished indices are retried, counting against their retries.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PreprocError, StageFailed
from ..progress import Progress  # noqa: F401  (re-exported: the k8s executor imports it from here)
from ..stages import warm_up

if TYPE_CHECKING:
    from ..config import Spec
    from ..plan import Plan

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


def _init_worker(threads: int, explicit: bool) -> None:
    from .. import signals

    signals.install()
    if explicit:
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    else:   # the environment's setting, if any, wins over our division of the cores
        threads = int(os.environ.setdefault("RAYON_NUM_THREADS", str(threads)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import pyarrow as pa

    pa.set_cpu_count(max(1, threads))


def _run_one(output: str, stage: str, index: int) -> dict[str, Any]:
    from ..plan import Plan
    from ..stages import run_index

    plan = _plan_cache.get(output)
    if plan is None:
        plan = _plan_cache[output] = Plan.load(output)
    return run_index(plan, stage, index)


_plan_cache: dict[str, Any] = {}


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

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            _spawn_guard()
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads, self.explicit_threads))
        return self._pool

    def prestart(self, spec: "Spec") -> None:
        """Start the workers now (without waiting): their interpreters, imports and the
        tokenizer load overlap the coordinator's planning instead of delaying the first stage."""
        pool = self._get_pool()
        for _ in range(self.workers):
            pool.submit(warm_up, spec.tokenize.tokenizer, spec.storage,
                        encode_special_tokens=spec.tokenize.encode_special_tokens)

    def _check_spawn_main(self) -> None:
        procs = getattr(self._pool, "_processes", None) or {}
        for p in list(procs.values()):
            p.join(timeout=5)
            if p.exitcode == EXIT_SPAWN_MAIN:
                self.close()
                raise ConfigError(SPAWN_MAIN_MESSAGE)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run_stage(self, plan: "Plan", stage: str, indices: list[int]) -> None:
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
                broken = False
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
                    bar.tick()
                    for fut in done:
                        i = futures[fut]
                        try:
                            stats = fut.result()
                        except BrokenProcessPool:
                            self._check_spawn_main()
                            broken = True
                            errors[i] = "worker process died (killed or out of memory)"
                            attempts[i] += 1
                            if attempts[i] <= self.retries:
                                todo.append(i)
                            else:
                                bar.fail(i, errors[i])
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
                if broken:
                    self.close()
                todo.sort()
        finally:
            bar.close()
        if errors:
            raise StageFailed(stage, errors)


def _fatal(e: BaseException) -> bool:
    return isinstance(e, PreprocError) and e.exit_code in (2, 3)
