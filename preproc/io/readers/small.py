"""Many small JSONL files read as one stream: whole batches across files, bytes fetched ahead.

A one-document file read on its own costs a batch: an Arrow batch, a pass of every clean
step and a Parquet row group, a few milliseconds where its document takes microseconds. A
shard's consecutive small files (whole JSONL files under :data:`SMALL_FILE_BYTES`, see
:func:`runs`) are read here instead: their records go into one shared batch of the usual
size (:data:`~preproc.io.readers.base.BATCH_BYTES` / ``BATCH_ROWS``), in input order, so
the documents, their ids and their order are exactly those of reading them one by one.

Their bytes are fetched ahead, a window at a time (:data:`WINDOW_FILES` files, at most
:data:`WINDOW_BYTES`), in a background thread, with fsspec ``cat_ranges``: concurrent
requests on object stores (s3fs), plain reads locally. Only a file's planned size plus one
byte is ever fetched: a file that has grown past its planned size since the plan (so that
its whole bytes could exceed the bounded-memory promise of the readers) is streamed as any
other file instead. Records are then parsed from memory by the JSONL reader's own code, so
rejects, file errors and the ``max_doc_bytes`` rule are those of :func:`read_split`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from preproc.faults import context, failpoint
from preproc.io.readers import DATA_ERRORS
from preproc.io.readers.base import Batcher, InputSplit, ReadLog
from preproc.io.readers.jsonl import parse_into
from preproc.io.s3 import open_fs

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec

__all__ = ["SMALL_FILE_BYTES", "WINDOW_FILES", "WINDOW_BYTES", "is_small", "runs", "SmallFiles"]

# A whole JSONL file below this is "small": read with its neighbours, its bytes fetched whole.
SMALL_FILE_BYTES = 64 * 2**10
WINDOW_FILES = 256
WINDOW_BYTES = 8 * 2**20


def is_small(split: InputSplit) -> bool:
    return (split.format == "jsonl" and 0 < split.bytes < SMALL_FILE_BYTES and split.start == 0
            and split.end is None and split.row_groups is None)


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def runs(splits: Sequence[InputSplit]) -> Iterator[InputSplit | tuple[InputSplit, ...]]:
    """``splits`` in order: a run of two or more consecutive small files (on the same
    filesystem) as a tuple, any other split alone."""
    i, n = 0, len(splits)
    while i < n:
        j = i
        while j < n and is_small(splits[j]) and _scheme(splits[j].uri) == _scheme(splits[i].uri):
            j += 1
        if j - i >= 2:
            yield tuple(splits[i:j])
            i = j
        else:
            yield splits[i]
            i += 1


class SmallFiles:
    """Batches of the records of ``splits`` (small JSONL files), in order.

    After each batch is yielded, :meth:`split_of` tells which file a row of it came from
    (rejects found later, by the clean steps, name their file)."""

    def __init__(self, splits: Sequence[InputSplit], spec: InputSpec, log: ReadLog, storage: Any = None):
        self.splits = tuple(splits)
        self.spec = spec
        self.log = log
        self.storage = storage
        self._pending: list[tuple[int, InputSplit]] = []   # (end row, file) of the rows being batched
        self._segments: list[tuple[int, InputSplit]] = []  # the same for the batch last yielded

    def split_of(self, row: int) -> InputSplit:
        """The file row ``row`` of the batch last yielded came from."""
        return self.locator()(row)

    def locator(self) -> Callable[[int], InputSplit]:
        """:meth:`split_of` for the batch last yielded, still right after later batches (a
        caller that cleans several batches together asks after reading ahead)."""
        segments, first = self._segments, self.splits[0]

        def split_of(row: int) -> InputSplit:
            for end, split in segments:
                if row < end:
                    return split
            return segments[-1][1] if segments else first
        return split_of

    def _windows(self) -> list[tuple[InputSplit, ...]]:
        out: list[tuple[InputSplit, ...]] = []
        cur: list[InputSplit] = []
        size = 0
        for s in self.splits:
            if cur and (len(cur) >= WINDOW_FILES or size + s.bytes > WINDOW_BYTES):
                out.append(tuple(cur))
                cur, size = [], 0
            cur.append(s)
            size += s.bytes
        if cur:
            out.append(tuple(cur))
        return out

    def _fetch(self, window: tuple[InputSplit, ...]) -> list[bytes]:
        fs, _ = open_fs(window[0].uri, self.storage)
        paths = [fs._strip_protocol(s.uri) for s in window]     # one filesystem per run (see runs())
        # One byte past the planned size tells a file that grew apart from one that did not.
        return list(fs.cat_ranges(paths, [0] * len(window), [s.bytes + 1 for s in window], on_error="raise"))

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        batcher = Batcher(self.spec.keep_fields)
        windows = self._windows()
        with ThreadPoolExecutor(1, thread_name_prefix="preproc-prefetch") as pool:
            ahead: Future | None = pool.submit(self._fetch, windows[0]) if windows else None
            for w, window in enumerate(windows):
                assert ahead is not None
                datas = ahead.result()
                ahead = pool.submit(self._fetch, windows[w + 1]) if w + 1 < len(windows) else None
                for split, data in zip(window, datas):
                    for batch in self._one(split, data, batcher):
                        yield self._hand_on(batch, [*self._pending, (batch.num_rows, split)])
                    if len(batcher.ids) > (self._pending[-1][0] if self._pending else 0):
                        self._pending.append((len(batcher.ids), split))
        last = batcher.flush()
        if last is not None:
            yield self._hand_on(last, self._pending)

    def _hand_on(self, batch: pa.RecordBatch, segments: list[tuple[int, InputSplit]]) -> pa.RecordBatch:
        # Counted read when handed on, as read_split does: accounting holds by construction.
        self.log.read += batch.num_rows
        self._segments, self._pending = segments, []
        return batch

    def _one(self, split: InputSplit, data: bytes, batcher: Batcher) -> Iterator[pa.RecordBatch]:
        # A batch boundary for the chaos tests (action=data_error): before this file's records.
        try:
            failpoint("read_batch", context.stage, context.index, batch=0, file=split.rel)
            if len(data) > split.bytes:     # grown since the plan: streamed, never held whole
                fs, path = open_fs(split.uri, self.storage)
                with fs.open(path, "rb") as f:
                    yield from parse_into(f, split, self.spec, self.log, batcher)
            else:
                yield from parse_into(io.BytesIO(data), split, self.spec, self.log, batcher)
        except DATA_ERRORS as e:
            self.log.file_error(split, "unreadable", f"{type(e).__name__}: {e}")
