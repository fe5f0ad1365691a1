"""Storage: one code path for local paths, PVC mounts and ``s3://`` (anything fsspec opens).

:class:`Store` wraps a run's output URI and owns the two guarantees every stage relies on:

* **atomic commit** — an output file appears whole or not at all. Locally it is written to a
  hidden temporary name in the same folder and renamed (``os.replace`` is atomic on POSIX);
  on object stores a PUT (also a multipart upload) only becomes visible when complete.
* **markers last** — an index is done when ``<stage>/_done/<index:05d>.json`` exists, and that
  marker is written after every output of the index has been committed. Readers and reruns
  trust markers only; a stray temporary file from a killed worker is harmless.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import fsspec
from fsspec.core import url_to_fs

__all__ = ["Store", "open_fs", "read_text", "read_bytes", "join"]


def open_fs(uri: str, storage_options: dict[str, Any] | None = None):
    """``(filesystem, path)`` for a URI. Local paths become absolute."""
    if "://" not in uri and not uri.startswith("/"):
        uri = os.path.abspath(uri)
    return url_to_fs(uri, **(storage_options or {}))


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = open_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    return read_bytes(uri, storage_options).decode("utf-8")


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if parts else base


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


class Store:
    """A run's output location. All paths given to methods are relative to it."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.uri = uri
        self.fs, self.root = open_fs(uri, storage_options)
        self.local = _is_local(self.fs)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def path(self, rel: str = "") -> str:
        return join(self.root, rel) if rel else self.root

    def url(self, rel: str = "") -> str:
        """A user-facing location (the URI the user gave, plus ``rel``)."""
        return join(self.uri, rel) if rel else self.uri

    # -- reading ---------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def open(self, rel: str, mode: str = "rb"):
        return self.fs.open(self.path(rel), mode)

    def read_json(self, rel: str) -> Any:
        with self.open(rel, "rb") as f:
            return json.loads(f.read())

    def ls(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    # -- writing ---------------------------------------------------------------------------
    @contextmanager
    def open_atomic(self, rel: str) -> Iterator[io.BufferedIOBase]:
        """Write ``rel`` so that it appears whole or not at all."""
        final = self.path(rel)
        if self.local:
            parent = posixpath.dirname(final)
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(final)}.tmp-{uuid.uuid4().hex[:12]}")
            try:
                with open(tmp, "wb") as f:
                    yield f
                os.replace(tmp, final)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
        else:
            # Object stores publish an object only when its upload completes; an exception
            # inside the block must abort the upload instead of committing a partial object.
            f = self.fs.open(final, "wb")
            try:
                yield f
            except BaseException:
                discard = getattr(f, "discard", None)
                if discard is not None:
                    discard()
                else:  # pragma: no cover - non-object-store remote filesystems
                    f.close()
                    self.fs.rm(final)
                raise
            f.close()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_atomic(rel) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n")

    def rm(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # -- markers ---------------------------------------------------------------------------
    @staticmethod
    def marker_rel(stage: str, index: int) -> str:
        return f"{stage}/_done/{index:05d}.json"

    @staticmethod
    def failure_rel(stage: str, index: int) -> str:
        return f"{stage}/_failed/{index:05d}.json"

    def write_marker(self, stage: str, index: int, stats: dict[str, Any]) -> None:
        self.write_json(self.marker_rel(stage, index), stats)

    def marker_exists(self, stage: str, index: int) -> bool:
        return self.exists(self.marker_rel(stage, index))

    def read_marker(self, stage: str, index: int) -> dict[str, Any] | None:
        try:
            return self.read_json(self.marker_rel(stage, index))
        except FileNotFoundError:
            return None

    def done_indices(self, stage: str) -> set[int]:
        return {int(n.split(".")[0]) for n in self.ls(f"{stage}/_done") if n.endswith(".json") and n[0].isdigit()}

    def read_markers(self, stage: str) -> dict[int, dict[str, Any]]:
        return {i: m for i in sorted(self.done_indices(stage)) if (m := self.read_marker(stage, i)) is not None}
