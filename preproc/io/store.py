"""The output store: one code path for local paths, PVC mounts and ``s3://`` (anything fsspec opens).

:class:`Store` wraps a run's output URI and owns the two guarantees every stage relies on:

* **atomic commit** — an output file appears whole or not at all. Locally it is written to a
  hidden temporary name in the same folder and renamed (``os.replace`` is atomic on POSIX);
  on object stores a PUT (also a multipart upload) only becomes visible when complete, and
  an exception inside the write aborts the upload instead of publishing a partial object.
* **markers last** — an index is done when its marker (``<stage>/_done/<index:05d>.json``,
  named by :mod:`preproc.io.layout`) exists, and that marker is written after every output
  of the index has been committed. Readers and reruns trust markers only; a stray temporary
  file from a killed worker is harmless.

Filesystems, S3 settings and credential refresh are :mod:`preproc.io.s3`'s; a Store looks its
filesystem up on each use and retries an operation once with fresh filesystems after a
credential error (an expired session token, a rotated key).
"""

from __future__ import annotations

import contextvars
import functools
import io
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import fsspec

from preproc.faults import context as fault_context
from preproc.faults import failpoint
from preproc.io import integrity, layout
from preproc.io.s3 import StorageLike, as_storage, forget_filesystems, is_credential_error, join, open_fs

__all__ = ["Store", "deferred_sync", "sweep_deferred"]

log = logging.getLogger("preproc")


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _refreshing(method):
    """Retry a :class:`Store` operation once with new filesystems after a credential error
    (an expired session token, a rotated key): cached credentials are the likely cause."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            if self.local or not is_credential_error(e):
                raise
            forget_filesystems()
            return method(self, *args, **kwargs)

    return wrapper


def _remove_temporaries(folder: str, want: Callable[[str], bool] | None = None, *, prefix: str = "") -> int:
    """Remove the temporaries of atomic writes in ``folder`` (``.<name>.tmp-<hex>``, never
    anything else) whose final name ``want`` accepts (all by default); how many. ``prefix``:
    the temporaries sought all start with it (one name's: :func:`layout.temporary`)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    # A folder holds a file per index (thousands): look for the prefix in C (one join and
    # one substring search) and loop in Python only when there is something to remove.
    if prefix and "\0" + prefix not in "\0" + "\0".join(names):
        return 0
    removed = 0
    for n in names:
        if layout.is_temporary(n) and (want is None or want(layout.temporary_of(n))):
            try:
                os.unlink(posixpath.join(folder, n))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


# The output root (with a trailing "/") whose stale temporaries are swept at finalize rather
# than at each write: set for the duration of an index attempt (see :func:`sweep_deferred`).
_sweep_root: contextvars.ContextVar[str | None] = contextvars.ContextVar("preproc_sweep_root", default=None)


@contextmanager
def sweep_deferred(store: Store) -> Iterator[None]:
    """Within the block, atomic writes under ``store``'s (local) root do not look for stale
    temporaries of the file they commit: :meth:`Store.sweep_leftovers`, run once by finalize
    over every folder the run wrote, removes them all. Listing the folder at each commit cost
    O(files in the folder) per write (O(N^2) per stage at N indices; a quarter of an index's
    fixed cost at 256 shards). Writes outside the root (a refresh's dataset state, a metrics
    folder elsewhere) still sweep at each commit."""
    token = _sweep_root.set(store.root.rstrip("/") + "/" if store.local else None)
    try:
        yield
    finally:
        _sweep_root.reset(token)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:   # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:   # pragma: no cover - filesystems that refuse fsync on folders
        pass
    finally:
        os.close(fd)


# Paths (files, then their folders) whose fsync the running index has deferred; see deferred_sync.
_deferred: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("preproc_deferred_sync", default=None)
_sync_pool: ThreadPoolExecutor | None = None
_SYNC_THREADS = 8


@contextmanager
def deferred_sync() -> Iterator[None]:
    """Within the block, local commits rename at once but leave their fsyncs for the end of
    the block, which fsyncs every file and folder together, from a few threads.

    Why: an index commits several files (parts, exchange data and index, rejects), and a
    sequential fsync of each file and of its folder costs a journal commit each (4 to 8 ms
    on a busy disk), a fixed cost per index that made 256 shards much dearer than 16.
    Concurrent fsyncs share journal commits. The guarantee readers rely on is unchanged:
    the block ends (so every file is on disk) before the index's marker is written, and
    nothing trusts an output without its marker. A block left by an exception syncs
    nothing: that index writes no marker."""
    pending: list[str] = []
    token = _deferred.set(pending)
    try:
        yield
    finally:
        _deferred.reset(token)
    sync_paths(pending)


def sync_paths(paths: list[str]) -> None:
    """fsync ``paths`` (files and folders, each once) concurrently; a file's error raises."""
    global _sync_pool
    if not paths:
        return
    todo = list(dict.fromkeys(paths))
    if len(todo) == 1:
        _fsync_path(todo[0])
        return
    if _sync_pool is None:
        _sync_pool = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="preproc-fsync")
    for _ in _sync_pool.map(_fsync_path, todo):
        pass


def _fsync_path(path: str) -> None:
    if os.path.isdir(path):
        _fsync_dir(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# The output store

class Store:
    """A run's output location. All paths given to methods are relative to it.

    ``storage`` as for :func:`open_fs`. The filesystem is looked up on each use (a dict hit),
    so a long-lived Store follows credential rotation.
    """

    def __init__(self, uri: str, storage: StorageLike = None):
        self.uri = uri
        self.storage = as_storage(storage)
        fs, self.root = open_fs(uri, self.storage)
        self.local = _is_local(fs)
        self._local_fs = fs if self.local else None

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._local_fs is not None:
            return self._local_fs
        return open_fs(self.uri, self.storage)[0]

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def path(self, rel: str = "") -> str:
        return join(self.root, rel) if rel else self.root

    def url(self, rel: str = "") -> str:
        """A user-facing location (the URI the user gave, plus ``rel``)."""
        return join(self.uri, rel) if rel else self.uri

    # -- reading ---------------------------------------------------------------------------
    @_refreshing
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    @_refreshing
    def isdir(self, rel: str) -> bool:
        """A folder (on an object store: a prefix with objects under it)."""
        return self.fs.isdir(self.path(rel))

    def open(self, rel: str, mode: str = "rb"):
        return self.fs.open(self.path(rel), mode)

    @_refreshing
    def read_bytes(self, rel: str) -> bytes:
        with self.open(rel, "rb") as f:
            return f.read()

    @_refreshing
    def read_many(self, rels: list[str]) -> list[bytes | None]:
        """The bytes of each file (None for one that does not exist), in one call:
        concurrent requests on object stores (fsspec ``cat``), where reading thousands of
        small files one after the other costs a round trip each."""
        if self.local:
            out: list[bytes | None] = []
            for r in rels:
                try:
                    with open(self.path(r), "rb") as f:  # noqa: PTH123 - a local path
                        out.append(f.read())
                except FileNotFoundError:
                    out.append(None)
            return out
        paths = [self.path(r) for r in rels]
        got = self.fs.cat(paths, on_error="return") if paths else {}
        out = []
        for p in paths:
            v = got.get(p, FileNotFoundError(p))      # (a missing path may not be listed at all)
            if isinstance(v, FileNotFoundError):
                out.append(None)
            elif isinstance(v, BaseException):
                raise v
            else:
                out.append(v)
        return out

    @_refreshing
    def read_ranges(self, rels: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
        """Bytes ``[start, end)`` of each file, in one call: concurrent requests on object
        stores (fsspec ``cat_ranges``), so many small ranges cost no more round trips."""
        if not rels:
            return []
        return list(self.fs.cat_ranges([self.path(r) for r in rels], starts, ends, on_error="raise"))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    @_refreshing
    def ls(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def open_atomic(self, rel: str, *, durable: bool = True) -> Iterator[io.BufferedIOBase]:
        """Write ``rel`` so that it appears whole or not at all.

        Locally the bytes go to ``.<name>.tmp-<random>`` beside it, are fsynced, renamed, and
        the folder is fsynced (a crash never leaves a renamed file with missing bytes);
        temporaries of ``rel`` left by a killed earlier attempt are swept first (inside an
        index attempt, at finalize instead: :func:`sweep_deferred`). The file's
        size and xxh3 are recorded for the running index's marker (:mod:`preproc.io.integrity`).

        ``durable=False`` skips the two fsyncs (still atomic, not crash-proof): for views
        that nothing trusts and that are rewritten anyway, such as per-index metrics
        textfiles; two fsyncs per index are a large part of an index's fixed cost. Inside
        :func:`deferred_sync` (a running index) the fsyncs happen at the end of that block.
        """
        final = self.path(rel)
        if self.local:
            deferred = _deferred.get() if durable else None
            parent = posixpath.dirname(final)
            os.makedirs(parent, exist_ok=True)
            base = posixpath.basename(final)
            later = _sweep_root.get()
            if later is None or not final.startswith(later):
                # An earlier attempt's, killed before its rename (only the index that
                # writes this name writes them, so they are its own).
                _remove_temporaries(parent, base.__eq__, prefix=layout.temporary(base, ""))
            tmp = posixpath.join(parent, layout.temporary(base, uuid.uuid4().hex[:12]))
            try:
                with open(tmp, "wb") as f:
                    w = integrity.HashingWriter(f)
                    yield w
                    f.flush()
                    if durable and deferred is None:
                        os.fsync(f.fileno())
                    # Chaos tests kill here: the bytes are written, the name not yet published.
                    failpoint("commit", fault_context.stage, fault_context.index)
                os.replace(tmp, final)
                if deferred is not None:
                    deferred += [final, parent]
                elif durable:
                    _fsync_dir(parent)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass        # never let the cleanup's error hide the first one
                raise
        else:
            # Object stores publish an object only when its upload completes; an exception
            # inside the block must abort the upload instead of committing a partial object.
            fs = self.fs
            f = fs.open(final, "wb")
            w = integrity.HashingWriter(f)
            try:
                yield w
                failpoint("commit", fault_context.stage, fault_context.index)
            except BaseException:
                discard = getattr(f, "discard", None)
                if discard is not None:
                    discard()
                else:  # pragma: no cover - non-object-store remote filesystems
                    f.close()
                    fs.rm(final)
                raise
            f.close()
        integrity.record(final, w.bytes, w.hexdigest())

    @_refreshing
    def write_bytes(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        with self.open_atomic(rel, durable=durable) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, _json_bytes(obj))

    @_refreshing
    def rm(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # -- markers ---------------------------------------------------------------------------
    @staticmethod
    def marker_rel(stage: str, index: int) -> str:
        return layout.marker(stage, index)

    @staticmethod
    def failure_rel(stage: str, index: int) -> str:
        return layout.failure(stage, index)

    def sweep_leftovers(self, folders: Iterable[str], *,
                        only: Callable[[str], bool] | None = None) -> int:
        """Remove the temporaries of atomic writes (``.<name>.tmp-<hex>``, never anything else)
        in each of ``folders`` (relative; missing ones skipped): what killed attempts left.
        ``only``: just the temporaries whose final name it accepts (a folder where a live
        writer, such as the coordinator's heartbeat, may be mid-commit). Called once a run's
        every index is done (finalize). Object stores have no temporaries. Returns how many
        were removed."""
        if not self.local:
            return 0
        return sum(_remove_temporaries(self.path(rel) if rel else self.root, only) for rel in sorted(set(folders)))

    def write_marker(self, stage: str, index: int, stats: dict[str, Any]) -> None:
        """Atomic, and written after the index's outputs are durable, but not fsynced itself:
        a marker that a crash loses or leaves empty proves nothing (:meth:`read_marker`), so
        its index only runs again; the two fsyncs were a large part of an index's fixed cost."""
        self.write_bytes(self.marker_rel(stage, index), _json_bytes(stats), durable=False)

    def marker_exists(self, stage: str, index: int) -> bool:
        return self.exists(self.marker_rel(stage, index))

    def read_marker(self, stage: str, index: int) -> dict[str, Any] | None:
        """The marker's stats; None when absent or unreadable (a truncated or corrupt marker
        proves nothing: the index runs again)."""
        try:
            m = self.read_json(self.marker_rel(stage, index))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: unreadable marker, ignored", self.url(self.marker_rel(stage, index)))
            return None
        return m if isinstance(m, dict) else None

    def done_indices(self, stage: str) -> set[int]:
        return {i for n in self.ls(layout.done_dir(stage)) if (i := layout.marker_index(n)) is not None}

    def read_markers(self, stage: str) -> dict[int, dict[str, Any]]:
        return {i: m for i in sorted(self.done_indices(stage)) if (m := self.read_marker(stage, i)) is not None}
