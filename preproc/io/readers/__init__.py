"""Input readers: one split of one input file → Arrow record batches of good documents.

One module per format (:mod:`.jsonl`, :mod:`.parquet`, :mod:`.arrow`, :mod:`.text`), the byte
streams they share in :mod:`.stream`, the Parquet/Arrow column checks in :mod:`.table`;
:func:`read_split` picks the reader by the split's format.

Every record read ends up either in a batch (columns ``id``, ``text``, ``source`` and the
spec's ``keep_fields``) or in the rejects with a reason. Problems with a whole file (a
truncated gzip, a Parquet file without a text column) become *file errors*: the records
read before the fault are kept and the run goes on; rows a Parquet footer promised and the
fault left unread are rejected ``file_error:unreadable`` (see :func:`read_split`).

Memory for JSONL and text input is bounded by ``max_doc_bytes`` plus one chunk whatever the
line: a longer line or text file is dropped while it is scanned, never held.

Reject reasons: ``invalid_utf8``, ``invalid_json``, ``not_an_object``, ``missing_text``,
``text_not_string``, ``null_text``, ``empty_text``, ``lone_surrogate``, ``doc_too_large``,
``file_error:unreadable``.
File errors: ``truncated_gzip``, ``corrupt_gzip``, ``truncated_zstd``, ``corrupt_zstd``,
``not_gzip`` (read as plain text), ``empty_compressed``, ``utf16_decoded`` (a UTF-16 file
re-encoded as UTF-8), ``schema_missing_text``, ``schema_text_not_string``, ``unreadable``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from preproc.faults import context, failpoint
from preproc.io.readers.arrow import read_arrow
from preproc.io.readers.base import BATCH_BYTES, HEAD_BYTES, InputSplit, ReadLog
from preproc.io.readers.jsonl import read_jsonl
from preproc.io.readers.parquet import read_parquet
from preproc.io.readers.text import read_text
from preproc.io.s3 import open_fs

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec

__all__ = ["DATA_ERRORS", "InputSplit", "ReadLog", "read_split", "BATCH_BYTES", "HEAD_BYTES"]

# Errors that mean "this file's bytes are not what its format says", as opposed to I/O
# failures (which must fail the index so that it is retried, never silently skip data).
DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError,
               UnicodeError, EOFError)


def read_split(split: InputSplit, spec: InputSpec, log: ReadLog,
               storage: Any = None, *, batch_bytes: int | None = None) -> Iterator[pa.RecordBatch]:
    """Yield batches of good documents from ``split``; record everything else in ``log``.
    ``storage``: the spec's storage settings (see :func:`preproc.io.s3.open_fs`);
    ``batch_bytes``: text per JSONL batch (default BATCH_BYTES; small for a quick sample).

    Accounting holds by construction: ``log.read`` counts a good row only when its batch is
    handed on, and a rejected one when it is rejected. A file whose bytes are not what its
    format says (:data:`DATA_ERRORS`) ends its split with a file error ``unreadable``; rows
    its metadata says it holds and that were neither handed on nor rejected are counted as
    ``rejected: file_error:unreadable``. I/O errors propagate: the index fails and is retried.
    """
    reader: Callable[..., Iterator[pa.RecordBatch]] = {
        "jsonl": read_jsonl, "parquet": read_parquet, "arrow": read_arrow, "text": read_text,
    }[split.format]
    fs, path = open_fs(split.uri, storage)
    log.split_rows = None
    seen_before = log.read
    if batch_bytes and split.format == "jsonl":
        it = read_jsonl(fs, path, split, spec, log, batch_bytes=batch_bytes)
    else:
        it = reader(fs, path, split, spec, log)
    k = 0
    try:
        for batch in it:
            # A batch boundary: chaos tests inject a data error here (action=data_error).
            failpoint("read_batch", context.stage, context.index, batch=k, file=split.rel)
            log.read += batch.num_rows
            yield batch
            k += 1
        failpoint("read_batch", context.stage, context.index, batch=k, file=split.rel)
    except DATA_ERRORS as e:
        log.file_error(split, "unreadable", f"{type(e).__name__}: {e}")
        if log.split_rows is not None:
            seen = log.read - seen_before
            rest = log.split_rows - seen
            if rest > 0:
                log.reject_rows(split, f"{rest} rows left unread", "file_error:unreadable", rest)
    finally:
        it.close()
