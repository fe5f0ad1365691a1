"""Listing the inputs: which files a spec's patterns match, their format, and their pieces.

The coordinator's whole view of the corpus before planning: it lists files and reads
Parquet footers, nothing else. A file's format and compression come from its name
(``input.format`` forces the format); its fingerprint (size and mtime or ETag) is what
changes the run id when the file changes. :func:`split_file` cuts a large file into the
pieces (:class:`~preproc.io.readers.InputSplit`) that the plan balances into shards.
"""

from __future__ import annotations

import gc
import json
import math
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from preproc.errors import ConfigError
from preproc.io.readers import InputSplit
from preproc.io.s3 import open_fs

if TYPE_CHECKING:
    from preproc.spec.model import Spec

__all__ = ["InputFile", "list_inputs", "split_file", "base_dir", "gc_paused", "GLOB_CHARS", "MIN_SPLIT_BYTES"]

GLOB_CHARS = "*?["
_EXT_FORMATS = [
    (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"),
    (".parquet", "parquet"), (".pq", "parquet"), (".arrow", "arrow"), (".txt", "text"),
]
_COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_COMPRESSED_ENDS = tuple(_COMPRESSION)
# JSONL files smaller than this are never cut in pieces (the cost is a request per piece).
MIN_SPLIT_BYTES = 2**20


def _detect(path: str, fmt: str) -> tuple[str | None, str | None]:
    """(format, compression) from the file name; format None = not an input file."""
    name = path.rpartition("/")[2].lower()
    comp = None
    if name.endswith(_COMPRESSED_ENDS):
        for ext, c in _COMPRESSION.items():
            if name.endswith(ext):
                comp = c
                name = name[: -len(ext)]
                break
    if fmt != "auto":
        return fmt, comp
    if name.endswith(".jsonl"):     # the common case first
        return "jsonl", comp
    for ext, f in _EXT_FORMATS:
        if name.endswith(ext):
            return f, comp
    return None, comp


def base_dir(pattern: str) -> str:
    """The folder part of a pattern before its first glob character (what the input's
    relative names start from, and what preflight lists on S3)."""
    cut = min([pattern.find(c) for c in GLOB_CHARS if c in pattern] or [len(pattern)])
    head = pattern[:cut]
    return head if head.endswith("/") else posixpath.dirname(head)


@dataclass(frozen=True)
class InputFile:
    """One input file as listed: ``rel`` is its path below its pattern's folder (generated
    ids start with it), ``fingerprint`` what changes the run id when the file changes."""

    uri: str
    rel: str
    format: str
    compression: str | None
    bytes: int
    fingerprint: str      # size + mtime/etag: what changes when the file does

    @classmethod
    def from_row(cls, row: tuple[str, str, str, str | None, int, str]) -> InputFile:
        """The fields in order, without the frozen dataclass's constructor (5x faster)."""
        f = object.__new__(cls)
        f.__dict__.update(zip(_FILE_FIELDS, row))
        return f


_FILE_FIELDS = ("uri", "rel", "format", "compression", "bytes", "fingerprint")


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block. Planning makes a few objects per input
    file and frees none: with a million files, CPython's collector rescans them all again
    and again (about 40% of the planning time), to find no garbage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def list_inputs(spec: Spec) -> list[InputFile]:
    """Every input file the spec's patterns match, sorted, with its format and size."""
    with gc_paused():
        return _list_inputs(spec)


def _list_inputs(spec: Spec) -> list[InputFile]:
    found: dict[str, InputFile] = {}
    for pattern in spec.input.paths:
        try:
            fs, path = open_fs(pattern, spec.storage)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"input.paths: cannot open {pattern!r}: {e}") from None
        proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        prefix = "" if proto in ("file", "local") else f"{proto}://"
        entries: dict[str, dict[str, Any]]
        # A path that exists as written is taken literally, even with glob characters in
        # its name (`data[1].jsonl`).
        is_glob = any(c in path for c in GLOB_CHARS) and not fs.exists(path)
        if is_glob:
            entries = fs.glob(path, detail=True)
            base = base_dir(path)
        elif fs.isdir(path):
            base = path
            entries = _dir_entries(fs, path)
        elif fs.exists(path):
            entries = {path: fs.info(path)}
            base = posixpath.dirname(path)
        else:
            raise ConfigError(f"input.paths: {pattern!r} does not exist")
        matched = 0
        # Per file only string operations (a million entries plan in seconds): the relative
        # name by cutting the base's prefix, posixpath.relpath only where that cannot work.
        cut = base.rstrip("/") + "/" if base else ""
        check_dir: bool | None = None
        for p in sorted(entries):
            info = entries[p]
            if info.get("type") == "directory":
                continue
            name = p.rpartition("/")[2]
            if name.startswith((".", "_")):
                continue  # _SUCCESS, .crc, hidden files
            fmt, comp = _detect(name, spec.input.format)
            if fmt is None:
                if check_dir is None:
                    check_dir = is_glob or not fs.isdir(path)
                if check_dir:
                    raise ConfigError(f"input.paths: cannot tell the format of {prefix}{p}; set input.format")
                continue
            rel = p[len(cut):] if cut and p.startswith(cut) else (posixpath.relpath(p, base) if base else p)
            stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
            size = int(info.get("size") or 0)
            found[prefix + p] = InputFile.from_row((prefix + p, rel, fmt, comp, size, f"{size}:{stamp}"))
            matched += 1
        if matched == 0:
            raise ConfigError(f"input.paths: no input files match {pattern!r}")
    if len(spec.input.paths) == 1:
        return list(found.values())     # entries were taken in sorted order, one prefix: sorted
    return sorted(found.values(), key=lambda f: f.uri)


def _dir_entries(fs, path: str) -> dict[str, dict[str, Any]]:
    # A `datasets.save_to_disk` folder: its state.json names the Arrow files, in order.
    state = posixpath.join(path, "state.json")
    if fs.exists(state):
        with fs.open(state, "rb") as f:
            st = json.loads(f.read())
        files = [posixpath.join(path, d["filename"]) for d in st.get("_data_files", [])]
        if files:
            return {p: fs.info(p) for p in files}
    return fs.find(path, detail=True)


def split_file(f: InputFile, target: int, storage: Any = None) -> list[InputSplit]:
    """``f`` in pieces of about ``target`` bytes: byte ranges of an uncompressed JSONL file,
    runs of row groups of a Parquet file (its footer is read); any other file whole."""
    base = InputSplit.from_row((f.uri, f.rel, f.format, f.compression, f.bytes, 0, None, None, 0))
    if f.format == "jsonl" and f.compression is None and f.bytes > max(target, MIN_SPLIT_BYTES):
        n = math.ceil(f.bytes / target)
        step = math.ceil(f.bytes / n)
        return [InputSplit(uri=f.uri, rel=f.rel, format="jsonl", bytes=min(step, f.bytes - s), start=s,
                           end=min(s + step, f.bytes)) for s in range(0, f.bytes, step)]
    if f.format == "parquet":
        fs, path = open_fs(f.uri, storage)
        try:
            with fs.open(path, "rb") as fh:
                md = pq.ParquetFile(fh).metadata
        except Exception:
            # Unreadable footers are the reader's business: it reports a file error.
            return [base]
        if md.num_row_groups <= 1 or f.bytes <= target:
            return [base]
        sizes = [md.row_group(g).total_byte_size for g in range(md.num_row_groups)]
        total = sum(sizes) or 1
        out, cur, cur_bytes, row, first_row = [], [], 0.0, 0, 0
        for g, sz in enumerate(sizes):
            if not cur:
                first_row = row
            cur.append(g)
            cur_bytes += f.bytes * sz / total
            row += md.row_group(g).num_rows
            if cur_bytes >= target:
                out.append(InputSplit(uri=f.uri, rel=f.rel, format="parquet", bytes=int(cur_bytes),
                                      row_groups=tuple(cur), row_offset=first_row))
                cur, cur_bytes = [], 0.0
        if cur:
            out.append(InputSplit(uri=f.uri, rel=f.rel, format="parquet", bytes=int(cur_bytes),
                                  row_groups=tuple(cur), row_offset=first_row))
        return out
    return [base]
