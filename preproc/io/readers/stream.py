"""Byte streams of input files: raw chunks, gunzip and zstd in bounded pieces, and lines.

Every piece handed on is at most :data:`CHUNK_BYTES`, whatever the compression ratio (a
gzip bomb expands about 1000x), and :func:`lines` never holds more than ``max_line_bytes``
plus one chunk, whatever the length of a line. A truncated or corrupt compressed stream
raises :class:`StreamError`; the records decoded before the fault are kept.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import Iterator

import zstandard

from preproc.io.readers.base import HEAD_BYTES, InputSplit, ReadLog

__all__ = ["StreamError", "raw_chunks", "gunzip_chunks", "unzstd_chunks", "utf16_chunks", "lines",
           "CHUNK_BYTES", "GZ_READ_BYTES"]

CHUNK_BYTES = 8 * 2**20      # read size for raw and decompressed streams
# Compressed input is fed to zlib in small pieces so that, when a stream is corrupt, the
# records decoded before the fault are kept (zlib fails a whole call, not a byte).
GZ_READ_BYTES = 64 * 2**10


class StreamError(Exception):
    """A compressed stream is truncated or corrupt: ``error`` names it for the file error."""

    def __init__(self, error: str, detail: str):
        super().__init__(detail)
        self.error = error
        self.detail = detail


def raw_chunks(f, start: int, end: int | None) -> Iterator[bytes]:
    f.seek(start)
    while True:
        chunk = f.read(CHUNK_BYTES)
        if not chunk:
            return
        yield chunk


def gunzip_chunks(f) -> Iterator[bytes]:
    """Stream-decompress every gzip member (``cat a.gz b.gz`` is valid gzip). Each piece is at
    most CHUNK_BYTES, whatever the compression ratio (a gzip bomb expands ~1000x)."""
    d = zlib.decompressobj(wbits=31)
    pending = b""
    while True:
        data = pending or d.unconsumed_tail or f.read(GZ_READ_BYTES)
        pending = b""
        if not data:
            if not d.eof:
                raise StreamError("truncated_gzip", "gzip stream ended before its end-of-stream marker")
            return
        try:
            out = d.decompress(data, CHUNK_BYTES)
        except zlib.error as e:
            raise StreamError("corrupt_gzip", f"gzip data is corrupt: {e}") from None
        if out:
            yield out
        if d.eof:
            rest = d.unused_data
            if not rest:
                rest = f.read(GZ_READ_BYTES)
                if not rest:
                    return
            d = zlib.decompressobj(wbits=31)
            pending = rest


def unzstd_chunks(f) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    try:
        while True:
            chunk = reader.read(CHUNK_BYTES)
            if not chunk:
                return
            yield chunk
    except zstandard.ZstdError as e:
        kind = "truncated_zstd" if "premature end" in str(e) or "truncated" in str(e) else "corrupt_zstd"
        raise StreamError(kind, f"zstd data is corrupt or truncated: {e}") from None


def lines(chunks: Iterator[bytes], base: int, end: int | None, split: InputSplit, log: ReadLog,
           *, skip_first_partial: bool, max_line_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for each line that *starts* in ``[base, end)``.

    A split that starts mid-file skips the partial line it lands in (the previous split owns
    it) unless it lands exactly on a line start; it reads past ``end`` to finish its last line.
    On a stream error the unterminated tail is not a record: it is reported with the error.

    A line longer than ``max_line_bytes`` is rejected ``doc_too_large`` while it is scanned:
    its bytes are dropped as they arrive, so no more than ``max_line_bytes`` plus one chunk is
    ever held, whatever the line's length. A line's pieces are joined once (linear).
    """
    pieces: list[bytes] = []    # the current line's bytes so far (dropped once it is too long)
    length = 0                  # the current line's length so far
    head = b""                  # an oversize line's first bytes, for its reject record
    start = base                # file offset of the current line
    pos = base                  # file offset of the current chunk
    skipping = skip_first_partial

    def add(piece: bytes) -> None:
        nonlocal length, head, pieces
        length += len(piece)
        if max_line_bytes is not None and length > max_line_bytes:
            if not head:
                head = b"".join(p[:HEAD_BYTES] for p in [*pieces, piece])[:HEAD_BYTES]
            pieces = []
            return
        pieces.append(piece)

    try:
        for chunk in chunks:
            lo = 0
            if skipping:
                nl = chunk.find(b"\n")
                if nl < 0:
                    pos += len(chunk)
                    continue
                lo = nl + 1
                start = pos + lo
                skipping = False
            while True:
                if length == 0:
                    start = pos + lo
                    if end is not None and start >= end:
                        return
                nl = chunk.find(b"\n", lo)
                if nl < 0:
                    if lo < len(chunk):
                        add(chunk[lo:] if lo else chunk)
                    break
                if length == 0 and (max_line_bytes is None or nl - lo <= max_line_bytes):
                    yield start, chunk[lo:nl]       # the common case: the whole line in this chunk
                    lo = nl + 1
                    continue
                add(chunk[lo:nl])
                if max_line_bytes is not None and length > max_line_bytes:
                    log.reject(split, f"byte {start}", "doc_too_large", head)
                else:
                    yield start, b"".join(pieces)
                pieces, length, head = [], 0, b""
                lo = nl + 1
            pos += len(chunk)
    except StreamError as e:
        extra = {"partial_tail_bytes": length} if length else {}
        log.file_error(split, e.error, e.detail, **extra)
        return
    if length and not skipping and (end is None or start < end):
        if max_line_bytes is not None and length > max_line_bytes:
            log.reject(split, f"byte {start}", "doc_too_large", head)
        else:
            yield start, b"".join(pieces)


def utf16_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A UTF-16 stream (with BOM) re-encoded as UTF-8, chunk by chunk."""
    dec = codecs.getincrementaldecoder("utf-16")()
    for chunk in chunks:
        yield dec.decode(chunk).encode("utf-8", "surrogatepass")
    yield dec.decode(b"", final=True).encode("utf-8", "surrogatepass")
