"""Plain text: one document per file, its path the document's id and source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from preproc.io.readers import stream
from preproc.io.readers.base import HEAD_BYTES, Batcher, InputSplit, ReadLog

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec

__all__ = ["read_text"]


def read_text(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog) -> Iterator[pa.RecordBatch]:
    """The whole file is one document. Read (and gunzipped) as a stream: past
    ``max_doc_bytes`` the rest is counted but not held, and the file is ``doc_too_large``."""
    max_bytes = spec.max_doc_bytes
    pieces: list[bytes] = []
    size = 0
    head = b""
    with fs.open(path, "rb") as f:
        chunks = stream.raw_chunks(f, 0, None)
        if split.compression == "gzip":
            chunks = stream.gunzip_chunks(f)
        try:
            for chunk in chunks:
                if not head:
                    head = chunk[:HEAD_BYTES]
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    pieces = []
                    continue
                pieces.append(chunk)
        except stream.StreamError as e:
            log.file_error(split, e.error, e.detail)
            return
    if max_bytes is not None and size > max_bytes:
        log.reject(split, "file", "doc_too_large", head)
        return
    data = b"".join(pieces)
    del pieces
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if spec.invalid_utf8 != "replace":
            log.reject(split, "file", "invalid_utf8", data)
            return
        text = data.decode("utf-8", "replace")
    if not text.strip():
        log.reject(split, "file", "empty_text", data)
        return
    b = Batcher(spec.keep_fields)
    b.add(split.rel, text, split.rel, {})
    yield b.flush()  # type: ignore[misc]
