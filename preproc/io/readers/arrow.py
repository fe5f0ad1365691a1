"""Arrow IPC files and streams (``datasets.save_to_disk`` writes streams), read batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.ipc as ipc

from preproc.io.readers.base import InputSplit, ReadLog
from preproc.io.readers.table import table_batches

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec

__all__ = ["read_arrow"]


def _arrow_batches(f) -> Iterator[pa.RecordBatch]:
    try:
        reader = ipc.open_stream(f)
        yield from reader
        return
    except pa.ArrowInvalid:
        f.seek(0)
    rf = ipc.open_file(f)
    for i in range(rf.num_record_batches):
        yield rf.get_batch(i)


def read_arrow(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
        yield from table_batches(_arrow_batches(f), 0, split, spec, log)
