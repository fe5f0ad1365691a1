"""Stage ``clean``: read one shard's input splits, reject bad records, apply the clean
steps, and write ``clean/part-i.parquet`` plus the keys exact dedup needs.

Outputs of index ``i`` (each committed atomically, then the marker):

* ``clean/part-i.parquet`` — ``id``, ``text``, ``source``, the spec's ``keep_fields`` and any
  columns the steps add (``language``, ...), in input order. A row's position in this file
  is its address for every later stage (``(shard, row)``), so ids need not be unique.
* ``clean/keys/part-i.arrow`` — ``bucket, h1, h2, row`` per kept document: the 128-bit
  xxh3 of its text, one batch per exact-dedup bucket, an exchange (:mod:`preproc.io.exchange`:
  bucket ``j`` reads only its byte range of every shard's file, found in one index).
* ``rejects/part-i.parquet`` — rejected records: file, location, reason, first bytes.
* ``removed/part-i.parquet`` — with ``clean.keep_removed``: what the steps dropped, and why.
"""

from __future__ import annotations

from collections.abc import Callable
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
from preproc.io.readers.small import SmallFiles, runs
from preproc.io.slices import PROFILE_KEY, TextProfile
from preproc.observe.stats import CleanProfile
from preproc.tokenize.tokenizer import Encoder

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

KEYS_FOLDER = layout.CLEAN_KEYS
KEYS_SCHEMA = pa.schema([("bucket", pa.uint32()), ("h1", pa.uint64()), ("h2", pa.uint64()),
                         ("row", pa.uint32())])
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


def run(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    spec = plan.spec
    shard = plan.shards[index]
    keep_removed = isinstance(spec.clean, dict) and bool(spec.clean.get("keep_removed"))
    # Removed rows are always kept per batch: a few per rule become the report's examples.
    pipe = CleanPipeline(build_steps(spec.clean), keep_removed=True)
    profile = CleanProfile(index)
    buckets = plan.stage("exact_dedup").fan_out if "exact_dedup" in plan.stage_names else 0
    log = ReadLog()
    filtered: dict[str, int] = {}
    counters: dict[str, int] = {}
    removed: list[pa.Table] = []
    keys_h1, keys_h2 = [], []
    rows = 0
    offered = 0          # documents given to the clean steps
    chars = 0
    text_bytes = 0
    sizes = TextProfile()    # where later stages may cut this part (preproc.io.slices)
    writer: pq.ParquetWriter | None = None
    with store.open_atomic(layout.clean_part(index)) as f:
        for part in runs(shard.splits):
            # A run of small files is read as one stream (preproc.io.readers.small): batches
            # across files, bytes fetched ahead; any other split on its own.
            small = SmallFiles(part, spec.input, log, spec.storage) if isinstance(part, tuple) else None
            split = part[0] if isinstance(part, tuple) else part
            batches = small if small is not None else read_split(split, spec.input, log, spec.storage)
            it = iter(batches)     # resumed after a failed batch of a run of small files
            while True:
                pending = 0      # rows handed on by the reader (counted read) and not yet accounted
                try:
                    for batch in it:
                        pending = batch.num_rows
                        profile.observe_in(batch)
                        offered += batch.num_rows
                        res = clean_isolating(pipe, batch, log, small.split_of if small is not None else split)
                        pending = res.kept.num_rows     # the others are now filtered or rejected
                        for k, v in res.filtered.items():
                            filtered[k] = filtered.get(k, 0) + v
                        for k, v in res.counters.items():
                            counters[k] = counters.get(k, 0) + v
                        if res.removed is not None:
                            profile.observe_removed(res.removed)
                            if keep_removed:
                                removed.append(res.removed)
                        kept = res.kept
                        if kept.num_rows == 0:
                            continue
                        profile.observe_out(kept)
                        if writer is None:
                            writer = pq.ParquetWriter(f, kept.schema, compression="zstd")
                        writer.write_batch(kept)
                        pending = 0
                        text = kept.column("text")
                        if buckets:
                            h1, h2 = text_hashes(text)
                            keys_h1.append(h1)
                            keys_h2.append(h2)
                        rows += kept.num_rows
                        chars += int(pc.sum(pc.utf8_length(text)).as_py() or 0)
                        lengths = pc.fill_null(pc.binary_length(text), 0).to_numpy(zero_copy_only=False)
                        text_bytes += int(lengths.sum())
                        sizes.add(lengths)
                    break
                except _DATA_ERRORS as e:
                    where = small.split_of(0) if small is not None else split
                    log.file_error(where, "unreadable", f"{type(e).__name__}: {e}")
                    if pending:
                        # A batch that failed after the reader handed it on: its rows are
                        # rejected, so read = kept + filtered + duplicates + rejected still holds.
                        log.read -= pending
                        log.reject_rows(where, f"batch of {pending} rows", "file_error:unreadable", pending)
                    if small is None:
                        break    # the rest of a split is lost with its failed batch, as ever
                    # A run of small files goes on with its next files (they are not read yet).
        # Batches of one document each (one per small file) escape the per-batch rule: an
        # index none of whose documents survived one and the same exception fails too.
        poisoned = [k for k in log.rejected if k.startswith("poison:")]
        if rows == 0 and not filtered and offered >= 2 and len(poisoned) == 1 \
                and log.rejected[poisoned[0]] == offered:
            raise every_document_failed(pipe, offered, f"of shard {index}")
        if writer is None:
            base = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())]
                             + [(k, pa.string()) for k in spec.input.keep_fields])
            writer = pq.ParquetWriter(f, base, compression="zstd")
        writer.close()

    if buckets:
        _write_keys(store, index, buckets, keys_h1, keys_h2)
    if log.rejects:
        store_table(store, layout.rejects(index), pa.Table.from_pylist(log.rejects, schema=REJECTS_SCHEMA))
    if removed:
        store_table(store, layout.removed(index), pa.concat_tables(removed, promote_options="default"))
    kept_after = rows
    profile.observe_rejects(log.rejects)
    return {
        "read": log.read,
        "blank_lines": log.blank_lines,
        "rejected": log.rejected,
        "filtered": filtered,
        "counters": counters,
        "docs": kept_after,
        "chars": chars,
        "text_bytes": text_bytes,
        PROFILE_KEY: sizes.to_json(),
        "input_bytes": shard.bytes,
        "file_errors": log.file_errors,
        **profile.finish(plan, store, Encoder),   # bounded histograms, counts, examples for report.html
    }


def _write_keys(store: Store, index: int, buckets: int, h1s: list, h2s: list) -> None:
    h1 = np.concatenate(h1s) if h1s else np.empty(0, np.uint64)
    h2 = np.concatenate(h2s) if h2s else np.empty(0, np.uint64)
    row = np.arange(len(h1), dtype=np.uint32)
    bucket = (h1 % np.uint64(buckets)).astype(np.uint32)
    order = np.lexsort((row, h2, h1, bucket))
    table = pa.table({"bucket": bucket[order], "h1": h1[order], "h2": h2[order], "row": row[order]},
                     schema=KEYS_SCHEMA)
    # One batch per bucket, found through the exchange index: the exact-dedup index of
    # bucket j reads only its own byte range of each shard's file.
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
        pa.concat_tables(removed, promote_options="default") if removed else None)
    for p in parts:
        for k, v in p.filtered.items():
            merged.filtered[k] = merged.filtered.get(k, 0) + v
        for k, v in p.counters.items():
            merged.counters[k] = merged.counters.get(k, 0) + v
    return merged
