"""The plan's file lists: each shard's input splits in a file of its own, beside ``plan.json``.

``plan.json`` is read by every worker, so it must not grow with the number of input files:
a 1M-file corpus would make every pod read hundreds of MB before it starts. The coordinator
writes shard ``i``'s splits to ``_plan/shard-0000i.json`` (:func:`preproc.io.layout.plan_splits`)
before ``plan.json``, and ``plan.json`` keeps per shard only its bytes, its number of splits
and a hash of that file. A worker reads only its own shard's file and checks the hash: a
missing file or one that is not the one the plan was written with is a damaged output (one
clear line, exit 2), never a silent read of other inputs.

A file holds rows, not objects (``FIELDS`` in order), to keep a million splits small::

    {"version": 1, "shard": 42, "fields": ["uri", "rel", ...], "splits": [["/d/a.jsonl", "a.jsonl", ...], ...]}
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from preproc.errors import ConfigError
from preproc.io import layout
from preproc.io.listing import gc_paused
from preproc.io.readers import InputSplit
from preproc.io.store import Store

__all__ = ["FIELDS", "encode", "decode", "digest", "write_all", "read"]

VERSION = 1
FIELDS = ("uri", "rel", "format", "compression", "bytes", "start", "end", "row_groups", "row_offset")
# Object stores take one request per file: write a plan's files concurrently.
WRITE_THREADS = 16


def encode(index: int, splits: Sequence[InputSplit]) -> bytes:
    """Shard ``index``'s splits as the bytes of its file."""
    rows = [[s.uri, s.rel, s.format, s.compression, s.bytes, s.start, s.end,
             list(s.row_groups) if s.row_groups is not None else None, s.row_offset] for s in splits]
    return orjson.dumps({"version": VERSION, "shard": index, "fields": FIELDS, "splits": rows})


def digest(data: bytes) -> str:
    """What ``plan.json`` records of a shard's file (64 bits of its sha256: it tells a stale
    or damaged file apart, it is no signature)."""
    return hashlib.sha256(data).hexdigest()[:16]


def decode(data: bytes, index: int) -> tuple[InputSplit, ...]:
    d: dict[str, Any] = orjson.loads(data)
    if d.get("version") != VERSION or d.get("shard") != index or tuple(d.get("fields") or ()) != FIELDS:
        raise ValueError(f"not the file list of shard {index} (version {d.get('version')}, shard {d.get('shard')})")
    out = []
    for row in d["splits"]:
        if row[7] is not None:
            row[7] = tuple(row[7])
        out.append(InputSplit.from_row(row))
    return tuple(out)


def write_all(store: Store, shards: Sequence[tuple[int, Sequence[InputSplit]]]) -> list[str]:
    """Write every shard's file (each atomically); return their digests, in order."""
    def one(item: tuple[int, Sequence[InputSplit]]) -> str:
        index, splits = item
        data = encode(index, splits)
        store.write_bytes(layout.plan_splits(index), data)
        return digest(data)

    with gc_paused():
        if len(shards) <= 1 or store.local:
            return [one(s) for s in shards]
        with ThreadPoolExecutor(min(WRITE_THREADS, len(shards))) as pool:
            return list(pool.map(one, shards))


def read(store: Store, index: int, expected: str) -> tuple[InputSplit, ...]:
    """Shard ``index``'s splits, checked against ``expected`` (its digest in ``plan.json``)."""
    rel = layout.plan_splits(index)
    try:
        data = store.read_bytes(rel)
    except FileNotFoundError:
        raise ConfigError(f"{store.url(rel)}: missing: plan.json lists shard {index}'s input files there; the "
                          f"output is damaged: rerun with --force (or into a new output)") from None
    if digest(data) != expected:
        raise ConfigError(f"{store.url(rel)}: does not match plan.json (sha256 {digest(data)}, plan.json "
                          f"records {expected}); the output is damaged or mixes two plans: rerun with --force")
    try:
        return decode(data, index)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"{store.url(rel)}: unreadable file list ({e}); rerun with --force") from None
