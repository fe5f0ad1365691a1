"""Integrity of committed outputs: each marker lists the files its index committed, with
their sizes and xxh3 hashes.

* **Recording.** While an index runs (:func:`recording`), every file committed through
  :meth:`Store.open_atomic <preproc.io.store.Store.open_atomic>` is hashed as it is written
  (:class:`HashingWriter`: xxh3-64 at memory speed, no second read) and listed in the
  index's marker: ``"files": {"clean/part-00003.parquet": {"bytes": …, "xxh3": "…"}}``.
* **Resume** (:func:`check_stage`) trusts a marker only when it parses, carries the plan's
  run id, and every file it lists exists with the recorded size (one listing per folder,
  not a request per file). Anything else is not done: the marker is removed and the index
  runs again.
* **Verify** (:func:`verify`, ``preproc verify OUTPUT``) reads every recorded file back and
  compares hashes.
"""

from __future__ import annotations

import contextvars
import io
import logging
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import xxhash

from preproc.io import layout

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["HashingWriter", "recording", "record", "check_stage", "verify", "file_hash"]

log = logging.getLogger("preproc")

# report.html is a view that `preproc report` redraws on purpose; it is not data a reader trusts.
UNTRACKED = frozenset({layout.REPORT})
_READ_BYTES = 8 * 2**20

_active: contextvars.ContextVar[tuple[str, dict[str, dict[str, Any]]] | None] = \
    contextvars.ContextVar("preproc_commits", default=None)


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes (xxh3-64) and counts what goes through to ``f``."""

    def __init__(self, f: Any):
        self._f = f
        self.hash = xxhash.xxh3_64()
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = self._f.write(mv)
        n = len(mv) if n is None else n
        self.hash.update(mv[:n])
        self.bytes += n
        return n

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        # The commit owns the real file (it must flush, fsync and rename it); writers such
        # as pyarrow's may close what they were given.
        pass

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


@contextmanager
def recording(store: Store) -> Iterator[dict[str, dict[str, Any]]]:
    """Within the block, files committed under ``store`` are listed in the yielded dict
    (relative path → bytes and xxh3)."""
    files: dict[str, dict[str, Any]] = {}
    token = _active.set((store.root.rstrip("/"), files))
    try:
        yield files
    finally:
        _active.reset(token)


def record(path: str, nbytes: int, digest: str) -> None:
    """Called by a commit: list ``path`` in the running index's marker if it lies under the
    index's output (files written elsewhere, e.g. a refresh's dataset state, are not)."""
    cur = _active.get()
    if cur is None:
        return
    root, files = cur
    if not path.startswith(root + "/"):
        return
    rel = path[len(root) + 1:]
    if rel in UNTRACKED or layout.is_marker(rel):
        return
    files[rel] = {"bytes": int(nbytes), "xxh3": digest}


def file_hash(store: Store, rel: str) -> tuple[int, str]:
    h = xxhash.xxh3_64()
    n = 0
    with store.open(rel, "rb") as f:
        while True:
            chunk = f.read(_READ_BYTES)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


class Sizes:
    """File sizes under a store, one listing per folder."""

    def __init__(self, store: Store):
        self.store = store
        self._dirs: dict[str, dict[str, int]] = {}

    def get(self, rel: str) -> int | None:
        d, name = posixpath.split(rel)
        if d not in self._dirs:
            try:
                entries = self.store.fs.ls(self.store.path(d), detail=True)
            except (FileNotFoundError, NotADirectoryError):
                entries = []
            self._dirs[d] = {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or e.get("Size") or 0)
                             for e in entries if e.get("type") != "directory"}
        return self._dirs[d].get(name)


def _read_markers(store: Store, stage: str, indices: list[int]) -> dict[int, Any]:
    def one(i: int) -> Any:
        try:
            return store.read_json(store.marker_rel(stage, i))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            return "corrupt"

    if store.local or len(indices) <= 4:
        return {i: one(i) for i in indices}
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(indices, pool.map(one, indices)))


def marker_problem(m: Any, run_id: str, sizes: Sizes | None) -> str | None:
    """Why marker ``m`` does not prove its index done (None: it does)."""
    if m == "corrupt" or not isinstance(m, dict):
        return "its marker is unreadable (truncated or corrupt)"
    if m.get("run_id") != run_id:
        return f"its marker belongs to run {m.get('run_id')}, not {run_id}"
    files = m.get("files")
    if sizes is None or not isinstance(files, dict):
        return None
    for rel, rec in sorted(files.items()):
        size = sizes.get(rel)
        if size is None:
            return f"{rel} is missing"
        if size != rec.get("bytes"):
            return f"{rel} has {size} bytes, {rec.get('bytes')} were committed"
    return None


def check_stage(store: Store, plan: Plan, stage: str, fan_out: int,
                sizes: Sizes | None = None) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """(markers that prove their index done, {index: why not} for the others that exist)."""
    sizes = sizes or Sizes(store)
    present = sorted(i for i in store.done_indices(stage) if i < fan_out)
    good: dict[int, dict[str, Any]] = {}
    bad: dict[int, str] = {}
    for i, m in _read_markers(store, stage, present).items():
        if m is None:
            continue     # removed since the listing
        why = marker_problem(m, plan.run_id, sizes)
        if why is None:
            good[i] = m
        else:
            bad[i] = why
    return good, bad


def done_indices(store: Store, plan: Plan, stage: str, fan_out: int) -> set[int]:
    """The indices of ``stage`` that are done; markers that do not prove it are removed
    (each with a warning) so that the index runs again."""
    good, bad = check_stage(store, plan, stage, fan_out)
    for i, why in sorted(bad.items()):
        log.warning("stage %s index %d: %s; running it again", stage, i, why)
        store.rm(store.marker_rel(stage, i))
    return set(good)


def verify(store: Store, plan: Plan, *, threads: int = 8) -> dict[str, Any]:
    """Read back every file the markers list and compare sizes and hashes.

    Returns ``{"files": checked, "bytes": n, "bad": [{"stage", "index", "file", "problem"}],
    "unrecorded": [(stage, index)], "not_done": {stage: count}}``.
    """
    bad: list[dict[str, Any]] = []
    unrecorded: list[tuple[str, int]] = []
    not_done: dict[str, int] = {}
    jobs: list[tuple[str, int, str, dict[str, Any]]] = []
    sizes = Sizes(store)
    for st in plan.stages:
        good, wrong = check_stage(store, plan, st.name, st.fan_out, sizes)
        for i, why in sorted(wrong.items()):
            bad.append({"stage": st.name, "index": i, "file": store.marker_rel(st.name, i), "problem": why})
        if len(good) + len(wrong) < st.fan_out:
            not_done[st.name] = st.fan_out - len(good) - len(wrong)
        for i, m in sorted(good.items()):
            files = m.get("files")
            if not isinstance(files, dict):
                unrecorded.append((st.name, i))
                continue
            jobs += [(st.name, i, rel, rec) for rel, rec in sorted(files.items())]

    def check(job: tuple[str, int, str, dict[str, Any]]) -> dict[str, Any] | None:
        stage, i, rel, rec = job
        try:
            n, digest = file_hash(store, rel)
        except FileNotFoundError:
            return {"stage": stage, "index": i, "file": rel, "problem": "missing"}
        if n != rec.get("bytes"):
            return {"stage": stage, "index": i, "file": rel, "problem": f"{n} bytes, {rec.get('bytes')} committed"}
        if digest != rec.get("xxh3"):
            return {"stage": stage, "index": i, "file": rel,
                    "problem": f"xxh3 {digest} differs from the committed {rec.get('xxh3')}"}
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(check, jobs))
    bad += [r for r in results if r is not None]
    return {"files": len(jobs), "bytes": sum(int(j[3].get("bytes") or 0) for j in jobs), "bad": bad,
            "unrecorded": unrecorded, "not_done": not_done}
