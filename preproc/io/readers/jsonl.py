"""JSONL (also gzip- or zstd-compressed, also UTF-16 with a BOM): one JSON object per line.

An uncompressed file is read in byte ranges (:attr:`InputSplit.start`/``end``): a split
owns the lines that *start* in its range. A record's id is its ``id_field`` or
``<rel>:<byte offset>``. Reject reasons: ``invalid_utf8``, ``invalid_json``,
``not_an_object``, ``missing_text``, ``null_text``, ``text_not_string``, ``empty_text``,
``doc_too_large``, ``lone_surrogate``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from preproc.io.readers import stream
from preproc.io.readers.base import BATCH_BYTES, Batcher, InputSplit, ReadLog, as_str

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec

__all__ = ["read_jsonl", "parse_into", "file_lines"]


def read_jsonl(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog,
                batch_bytes: int = BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
        yield from _parse_lines(file_lines(f, split, spec, log), split, spec, log, Batcher(spec.keep_fields, batch_bytes))


def parse_into(f, split: InputSplit, spec: InputSpec, log: ReadLog, batcher: Batcher) -> Iterator[pa.RecordBatch]:
    """Parse the records of ``split`` (open as ``f``) into ``batcher``, shared with other
    splits: yields the batches that fill up, and leaves the rest in ``batcher`` for the
    caller to flush (many small files make one batch, see :mod:`preproc.io.readers.small`)."""
    yield from _parse_lines(file_lines(f, split, spec, log), split, spec, log, batcher, flush_last=False)


def file_lines(f, split: InputSplit, spec: InputSpec, log: ReadLog) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of the records ``split`` owns in the open file ``f``."""
    head = f.read(4)
    chunks: Iterator[bytes]
    start, end = split.start, split.end
    if split.compression == "gzip":
        f.seek(0)
        if not head:
            log.file_error(split, "empty_compressed", "0-byte file with a .gz name: no records")
            return
        if head[:2] != b"\x1f\x8b":
            log.file_error(split, "not_gzip", "named .gz but not gzip data: read as plain text")
            chunks = stream.raw_chunks(f, 0, None)
        else:
            chunks = stream.gunzip_chunks(f)
        start, end = 0, None
    elif split.compression == "zstd":
        f.seek(0)
        if not head:
            log.file_error(split, "empty_compressed", "0-byte file with a .zst name: no records")
            return
        chunks = stream.unzstd_chunks(f)
        start, end = 0, None
    else:
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            if start > 0:
                return  # the split at offset 0 decodes the whole UTF-16 file
            log.file_error(split, "utf16_decoded", "file is UTF-16, not UTF-8: decoded to UTF-8")
            chunks = stream.utf16_chunks(stream.raw_chunks(f, 0, None))
            start, end = 0, None
        else:
            chunks = stream.raw_chunks(f, max(start - 1, 0), end)
    skip = start > 0
    base = max(start - 1, 0) if skip else start
    yield from stream.lines(chunks, base, end, split, log, skip_first_partial=skip, max_line_bytes=spec.max_doc_bytes)


_REASONS_BY_TYPE = {type(None): "null_text"}


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_lines(lines: Iterator[tuple[int, bytes]], split: InputSplit, spec: InputSpec,
                 log: ReadLog, batcher: Batcher, *, flush_last: bool = True) -> Iterator[pa.RecordBatch]:
    tf, idf, sf = spec.text_field, spec.id_field, spec.source_field
    replace = spec.invalid_utf8 == "replace"
    max_bytes = spec.max_doc_bytes
    for off, line in lines:
        if off == 0 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            log.blank_lines += 1
            continue
        loc = f"byte {off}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            # orjson refuses invalid UTF-8 and lone surrogates; tell those apart from bad JSON.
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError:
                if not replace:
                    log.reject(split, loc, "invalid_utf8", line)
                    continue
                s = line.decode("utf-8", "replace")
            try:
                # NaN and Infinity are not JSON (RFC 8259); orjson refuses them, so must this.
                obj = json.loads(s, parse_constant=_not_json)
            except (ValueError, RecursionError):
                log.reject(split, loc, "invalid_json", line)
                continue
        except RecursionError:
            log.reject(split, loc, "invalid_json", line)
            continue
        if not isinstance(obj, dict):
            log.reject(split, loc, "not_an_object", line)
            continue
        if tf not in obj:
            log.reject(split, loc, "missing_text", line)
            continue
        text = obj[tf]
        if text is None:
            log.reject(split, loc, "null_text", line)
            continue
        if not isinstance(text, str):
            log.reject(split, loc, "text_not_string", line)
            continue
        if not text.strip():
            log.reject(split, loc, "empty_text", line)
            continue
        if max_bytes is not None and len(line) > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            log.reject(split, loc, "doc_too_large", line)
            continue
        rid = obj.get(idf) if idf else None
        rid = as_str(rid) if rid is not None else f"{split.rel}:{off}"
        src = obj.get(sf) if sf else None
        src = src if isinstance(src, str) else split.rel
        extra = {k: as_str(obj.get(k)) for k in spec.keep_fields}
        try:
            # Only the stdlib path can produce lone surrogates; arrow would fail on them later.
            for s in (text, rid, src, *[v for v in extra.values() if v]):
                s.encode("utf-8")
        except UnicodeEncodeError:
            log.reject(split, loc, "lone_surrogate", line)
            continue
        batcher.add(rid, text, src, extra)
        if batcher.full():
            yield batcher.flush()  # type: ignore[misc]
    if flush_last:
        last = batcher.flush()
        if last is not None:
            yield last
