"""Stage ``clean``: read the input splits of a shard (or of a group of small consecutive
shards, :meth:`~preproc.engine.plan.Plan.shards_of`), reject bad records, apply the clean
steps, and write each shard's ``clean/part-s.parquet`` plus the keys exact dedup needs.

Outputs of index ``i`` (each committed atomically, then the marker):

* ``clean/part-s.parquet`` for each shard ``s`` of the index — ``id``, ``text``, ``source``,
  the spec's ``keep_fields`` and any columns the steps add (``language``, ...), in input
  order. A row's position in this file is its address for every later stage
  (``(shard, row)``), so ids need not be unique.
* ``clean/keys/part-i.arrow`` — ``bucket, h1, h2, shard, row`` per kept document: the
  128-bit xxh3 of its text, one batch per exact-dedup bucket, an exchange
  (:mod:`preproc.io.exchange`: bucket ``j`` reads only its byte range of every index's
  file, found in one index).
* ``rejects/part-i.parquet`` — rejected records: file, location, reason, first bytes.
* ``removed/part-i.parquet`` — with ``clean.keep_removed``: what the steps dropped, and why.

Clean has one index per shard unless the shards are small (under 1 MiB of input on
average, :func:`preproc.engine.stages.clean_fan_out`): then an index takes a group of them
and cleans their documents in batches of the usual size across the shards' boundaries,
since the steps' per-batch work (a dictionary of the batch's words, compiled patterns) and
an index's files would otherwise grow with the number of shards, not with the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from preproc.clean.steps import ENVIRONMENT_ERRORS, CleanPipeline, CleanResult, build_steps
from preproc.errors import ConfigError
from preproc.io import layout
from preproc.io.exchange import write_partitioned
from preproc.io.readers import InputSplit, ReadLog, read_split
from preproc.io.readers.base import BATCH_BYTES, BATCH_ROWS
from preproc.io.readers.small import SmallFiles, runs
from preproc.io.slices import PROFILE_KEY, PROFILES_KEY, TextProfile
from preproc.observe.stats import CleanProfile, add_counts
from preproc.tokenize.tokenizer import Encoder

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

KEYS_FOLDER = layout.CLEAN_KEYS
KEYS_SCHEMA = pa.schema([("bucket", pa.uint32()), ("h1", pa.uint64()), ("h2", pa.uint64()),
                         ("shard", pa.uint32()), ("row", pa.uint32())])
REJECTS_SCHEMA = pa.schema([("file", pa.string()), ("location", pa.string()), ("reason", pa.string()),
                            ("head", pa.string())])
# Errors that mean "this file's bytes are not what its format says", as opposed to I/O
# failures (which must fail the index so that it is retried, never silently skip data).
_DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError,
                UnicodeError, EOFError)


def text_hashes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """xxh3-128 of each string's UTF-8 bytes, read straight from the Arrow buffers."""
    text = text.cast(pa.large_string()) if not pa.types.is_large_string(text.type) else text
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset:text.offset + n + 1]
    data = memoryview(text.buffers()[2]) if text.buffers()[2] is not None else memoryview(b"")
    h1 = np.empty(n, dtype=np.uint64)
    h2 = np.empty(n, dtype=np.uint64)
    digest = xxhash.xxh3_128_intdigest
    lo_mask = (1 << 64) - 1
    for i in range(n):
        h = digest(data[offsets[i]:offsets[i + 1]])
        h1[i] = h >> 64
        h2[i] = h & lo_mask
    return h1, h2


Locate = Callable[[int], InputSplit]     # a row of a batch -> the input split it came from


@dataclass
class _Part:
    """One shard's clean part while its index runs: the Parquet file (opened when its first
    rows come), its keys and its text profile."""

    shard: int
    rows: int = 0
    chars: int = 0
    text_bytes: int = 0
    sizes: TextProfile = field(default_factory=TextProfile)
    h1: list[np.ndarray] = field(default_factory=list)
    h2: list[np.ndarray] = field(default_factory=list)
    writer: pq.ParquetWriter | None = None

    def _open(self, files: ExitStack, store: Store, schema: pa.Schema) -> pq.ParquetWriter:
        f = files.enter_context(store.open_atomic(layout.clean_part(self.shard)))
        self.writer = pq.ParquetWriter(f, schema, compression="zstd")
        return self.writer

    def write(self, files: ExitStack, store: Store, kept: pa.RecordBatch, keys: bool) -> None:
        (self.writer or self._open(files, store, kept.schema)).write_batch(kept)
        text = kept.column("text")
        if keys:
            h1, h2 = text_hashes(text)
            self.h1.append(h1)
            self.h2.append(h2)
        self.rows += kept.num_rows
        self.chars += int(pc.sum(pc.utf8_length(text)).as_py() or 0)
        lengths = pc.fill_null(pc.binary_length(text), 0).to_numpy(zero_copy_only=False)
        self.text_bytes += int(lengths.sum())
        self.sizes.add(lengths)

    def close(self, files: ExitStack, store: Store, empty: pa.Schema) -> None:
        """Finish the file (an empty one, with ``empty``'s columns, when no row was kept);
        it is committed when ``files`` closes."""
        (self.writer or self._open(files, store, empty)).close()


def run(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    """Clean the shards of this index (:meth:`Plan.shards_of`: one, or a group of consecutive
    small ones). Each shard keeps its own part, in input order; the documents of a group
    are cleaned in batches that cross its shards' boundaries, so cutting the same input
    into more, smaller shards does not make the steps' per-batch work more."""
    spec = plan.spec
    group = plan.shards_of(layout.CLEAN, index)
    log = ReadLog()
    # The shards' part files: committed together when the block ends, all dropped if it raises.
    with ExitStack() as files:
        c = _Cleaner(plan, index, store, group, log, files)
        pending: list[tuple[int, pa.RecordBatch, Locate]] = []
        rows = nbytes = 0
        for shard, batch, where in _batches(plan, group, log):
            # Within a group, batches wait for more (of this shard or the next ones) until
            # they make a batch of the usual size; a shard alone is cleaned batch by batch.
            if pending and (batch.schema != pending[0][1].schema or rows + batch.num_rows > BATCH_ROWS
                            or nbytes + batch.nbytes > BATCH_BYTES):
                c.clean(pending)
                pending, rows, nbytes = [], 0, 0
            pending.append((shard, batch, where))
            rows += batch.num_rows
            nbytes += batch.nbytes
            if len(group) == 1:
                c.clean(pending)
                pending, rows, nbytes = [], 0, 0
        if pending:
            c.clean(pending)
        parts = [c.parts[s] for s in group]
        # Batches of one document each (one per small file) escape the per-batch rule: an
        # index none of whose documents survived one and the same exception fails too.
        poisoned = [k for k in log.rejected if k.startswith("poison:")]
        if sum(p.rows for p in parts) == 0 and not c.filtered and c.offered >= 2 and len(poisoned) == 1 \
                and log.rejected[poisoned[0]] == c.offered:
            where = f"of shard {group[0]}" if len(group) == 1 else f"of shards {group[0]}-{group[-1]}"
            raise every_document_failed(c.pipe, c.offered, where)
        empty = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())]
                          + [(k, pa.string()) for k in spec.input.keep_fields])
        for p in parts:
            p.close(files, store, empty)

    if c.buckets:
        _write_keys(store, index, c.buckets, parts)
    if log.rejects:
        store_table(store, layout.rejects(index), pa.Table.from_pylist(log.rejects, schema=REJECTS_SCHEMA))
    if c.removed:
        store_table(store, layout.removed(index), pa.concat_tables(c.removed, promote_options="default"))
    c.profile.observe_rejects(log.rejects)
    stats: dict[str, Any] = {
        "read": log.read,
        "blank_lines": log.blank_lines,
        "rejected": log.rejected,
        "filtered": c.filtered,
        "counters": c.counters,
        "docs": sum(p.rows for p in parts),
        "chars": sum(p.chars for p in parts),
        "text_bytes": sum(p.text_bytes for p in parts),
        "shards": [group.start, group.stop],
        "input_bytes": sum(plan.shards[s].bytes for s in group),
        "file_errors": log.file_errors,
    }
    # Where later stages may cut each part (preproc.io.slices): one profile per shard.
    if len(parts) == 1:
        stats[PROFILE_KEY] = parts[0].sizes.to_json()
    else:
        stats[PROFILES_KEY] = [p.sizes.to_json() for p in parts]
    stats.update(c.profile.finish(plan, store, Encoder))   # bounded histograms, counts, examples for report.html
    return stats


def _batches(plan: Plan, group: range, log: ReadLog) -> Iterator[tuple[int, pa.RecordBatch, Locate]]:
    """``(shard, batch, split of a row)`` of the group's shards' input, in order. A file whose
    bytes are not what its format says is a file error (what was handed on stays read)."""
    spec = plan.spec
    for shard in group:
        for part in runs(plan.shards[shard].splits):
            # A run of small files is read as one stream (preproc.io.readers.small): batches
            # across files, bytes fetched ahead; any other split on its own.
            small = SmallFiles(part, spec.input, log, spec.storage) if isinstance(part, tuple) else None
            split = part[0] if isinstance(part, tuple) else part
            it = iter(small if small is not None else read_split(split, spec.input, log, spec.storage))
            while True:    # resumed after a failed batch of a run of small files
                try:
                    for batch in it:
                        yield shard, batch, (small.locator() if small is not None else _always(split))
                    break
                except _DATA_ERRORS as e:
                    log.file_error(small.split_of(0) if small is not None else split, "unreadable",
                                   f"{type(e).__name__}: {e}")
                    if small is None:
                        break    # the rest of a split is lost with its failed batch, as ever
                    # A run of small files goes on with its next files (they are not read yet).


def _always(split: InputSplit) -> Locate:
    return lambda row: split


class _Cleaner:
    """The clean steps over an index's batches: what they did, added up, and each shard's
    kept rows handed to its part."""

    def __init__(self, plan: Plan, index: int, store: Store, group: range, log: ReadLog, files: ExitStack):
        spec = plan.spec
        # Removed rows are always kept per batch: a few per rule become the report's examples.
        self.pipe = CleanPipeline(build_steps(spec.clean), keep_removed=True)
        self.keep_removed = isinstance(spec.clean, dict) and bool(spec.clean.get("keep_removed"))
        self.profile = CleanProfile(index)
        self.buckets = plan.stage("exact_dedup").fan_out if "exact_dedup" in plan.stage_names else 0
        self.store, self.log, self.files = store, log, files
        self.parts = {s: _Part(s) for s in group}
        self.offered = 0          # documents given to the clean steps
        self.filtered: dict[str, int] = {}
        self.counters: dict[str, int] = {}
        self.removed: list[pa.Table] = []

    def clean(self, sources: list[tuple[int, pa.RecordBatch, Locate]]) -> None:
        """Clean one batch made of ``sources`` (read batches, in order) and hand each shard
        its kept rows."""
        starts = np.cumsum([0] + [b.num_rows for _, b, _ in sources])
        if len(sources) == 1:
            batch, where = sources[0][1], sources[0][2]
        else:
            batch = pa.Table.from_batches([b for _, b, _ in sources]).combine_chunks().to_batches()[0]
            where = _located(sources, starts)
        pending = batch.num_rows     # rows handed on by the reader (counted read) and not yet accounted
        try:
            self.profile.observe_in(batch)
            self.offered += batch.num_rows
            res = clean_isolating(self.pipe, batch, self.log, where)
            pending = res.kept.num_rows     # the others are now filtered or rejected
            self.filtered = add_counts([self.filtered, res.filtered])
            self.counters = add_counts([self.counters, res.counters])
            if res.removed is not None:
                self.profile.observe_removed(res.removed)
                if self.keep_removed:
                    self.removed.append(res.removed)
            kept = res.kept
            if kept.num_rows == 0:
                return
            self.profile.observe_out(kept)
            # The kept rows in order; each shard's are consecutive.
            shard_of = np.array([s for s, _, _ in sources])[np.searchsorted(starts, res.kept_rows, "right") - 1]
            cuts = np.flatnonzero(np.diff(shard_of)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(shard_of)]):
                self.parts[int(shard_of[lo])].write(self.files, self.store, kept.slice(lo, hi - lo), bool(self.buckets))
                pending -= int(hi - lo)
        except _DATA_ERRORS as e:
            self.log.file_error(where(0), "unreadable", f"{type(e).__name__}: {e}")
            if pending:
                # A batch that failed after the reader handed it on: its rows are rejected,
                # so read = kept + filtered + duplicates + rejected still holds.
                self.log.read -= pending
                self.log.reject_rows(where(0), f"batch of {pending} rows", "file_error:unreadable", pending)


def _located(sources: list[tuple[int, pa.RecordBatch, Locate]], starts: np.ndarray) -> Locate:
    """The split of a row of the batch made of ``sources`` (which start at rows ``starts``)."""

    def where(row: int) -> InputSplit:
        k = int(np.searchsorted(starts, row, "right")) - 1
        k = min(max(k, 0), len(sources) - 1)
        return sources[k][2](row - int(starts[k]))
    return where


def _write_keys(store: Store, index: int, buckets: int, parts: list[_Part]) -> None:
    """The exact-dedup keys of this index's shards: one exchange file, a batch per bucket."""
    h1 = np.concatenate([h for p in parts for h in p.h1]) if any(p.h1 for p in parts) else np.empty(0, np.uint64)
    h2 = np.concatenate([h for p in parts for h in p.h2]) if any(p.h2 for p in parts) else np.empty(0, np.uint64)
    shard = np.concatenate([np.full(p.rows, p.shard, np.uint32) for p in parts]) if parts else np.empty(0, np.uint32)
    row = np.concatenate([np.arange(p.rows, dtype=np.uint32) for p in parts]) if parts else np.empty(0, np.uint32)
    bucket = (h1 % np.uint64(buckets)).astype(np.uint32)
    order = np.lexsort((row, shard, h2, h1, bucket))
    table = pa.table({"bucket": bucket[order], "h1": h1[order], "h2": h2[order], "shard": shard[order],
                      "row": row[order]}, schema=KEYS_SCHEMA)
    # One batch per bucket, found through the exchange index: the exact-dedup index of
    # bucket j reads only its own byte range of each clean index's file.
    write_partitioned(store, KEYS_FOLDER, index, table)


def store_table(store: Store, rel: str, table: pa.Table) -> None:
    with store.open_atomic(rel) as f:
        pq.write_table(table, f, compression="zstd")


def clean_isolating(pipe: CleanPipeline, batch: pa.RecordBatch, log: ReadLog,
                    split: InputSplit | Callable[[int], InputSplit]) -> CleanResult:
    """Run the clean steps on ``batch``; if they raise, bisect the batch to find the
    documents that make them raise and reject those (reason ``poison:<error>``), so one
    pathological document costs itself, not its shard. Deterministic: the same documents
    are rejected on every attempt and with any worker count.

    Only errors that belong to a document are isolated. An error of the environment
    (:data:`~preproc.clean.steps.ENVIRONMENT_ERRORS`: a missing package, out of memory, a
    :class:`~preproc.errors.PreprocError`) propagates and fails the index with exit code 2,
    and so does one exception type raised by every document of a batch of two or more:
    that is a step that cannot run here, not a batch of poison documents.

    ``split``: the batch's input split, or a function from a row to its split (a batch of
    many small files)."""
    poison: list[tuple[int, BaseException]] = []
    res = _bisect(pipe, batch, 0, poison)
    if poison and len(poison) == batch.num_rows >= 2 and len({type(e) for _, e in poison}) == 1:
        raise every_document_failed(pipe, batch.num_rows, "of a batch")
    for row, e in poison:
        rid = batch.column("id")[row].as_py()
        where = split(row) if callable(split) else split
        log.reject(where, f"id {rid}", f"poison:{type(e).__name__}", batch.column("text")[row].as_py() or "")
        log.read -= 1        # it was counted as read when the reader accepted it
    return res


def every_document_failed(pipe: CleanPipeline, n: int, where: str) -> ConfigError:
    """The error for ``n`` documents that all made a step raise the same exception."""
    step, e = pipe.last_failure or (None, None)
    what = f"clean.{step.family}: step {step.name}" if step is not None else "clean: a step"
    detail = " ".join(f"{type(e).__name__}: {e}".split())[:300] if e is not None else "an error"
    return ConfigError(f"{what} raised {detail} on every document {where} ({n:,}): a problem of the "
                       f"environment or configuration, not of the documents; nothing was rejected")


def _bisect(pipe: CleanPipeline, batch: pa.RecordBatch, offset: int,
            poison: list[tuple[int, BaseException]]) -> CleanResult:
    try:
        return pipe(batch)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as e:  # noqa: BLE001 - a step failure on some document(s) of this batch
        if batch.num_rows <= 1:
            if batch.num_rows == 1:
                poison.append((offset, e))
            return CleanResult(batch.slice(0, 0), None)
    half = batch.num_rows // 2
    parts = [_bisect(pipe, batch.slice(0, half), offset, poison),
             _bisect(pipe, batch.slice(half), offset + half, poison)]
    kept = [p.kept for p in parts if p.kept.num_rows]
    removed = [p.removed for p in parts if p.removed is not None]
    merged = CleanResult(
        pa.Table.from_batches(kept).combine_chunks().to_batches()[0] if kept else parts[0].kept,
        pa.concat_tables(removed, promote_options="default") if removed else None,
        kept_rows=np.concatenate([parts[0].kept_rows, parts[1].kept_rows + half]))
    merged.filtered = add_counts(p.filtered for p in parts)
    merged.counters = add_counts(p.counters for p in parts)
    return merged
