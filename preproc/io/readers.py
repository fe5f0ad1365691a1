"""Input readers: one split of one input file → Arrow record batches of good documents.

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

import codecs
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from preproc.spec.model import InputSpec
from preproc.faults import context, failpoint
from preproc.io.store import open_fs

__all__ = ["DATA_ERRORS", "InputSplit", "ReadLog", "read_split"]

CHUNK_BYTES = 8 * 2**20      # read size for raw and decompressed streams
# Compressed input is fed to zlib in small pieces so that, when a stream is corrupt, the
# records decoded before the fault are kept (zlib fails a whole call, not a byte).
GZ_READ_BYTES = 64 * 2**10
BATCH_BYTES = 16 * 2**20     # emit a batch when this much text has accumulated (bounds clean memory)
BATCH_ROWS = 16384
HEAD_BYTES = 200             # how much of a rejected record is kept for inspection
# Errors that mean "this file's bytes are not what its format says", as opposed to I/O
# failures (which must fail the index so that it is retried, never silently skip data).
DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError,
               UnicodeError, EOFError)


@dataclass(frozen=True)
class InputSplit:
    """A piece of one input file: a byte range of a JSONL file, some Parquet row groups,
    or the whole file. ``rel`` is the file's path relative to its input pattern's folder
    and prefixes generated ids."""

    uri: str
    rel: str
    format: str                         # jsonl | parquet | text | arrow
    compression: str | None = None      # gzip | zstd | None
    bytes: int = 0
    start: int = 0                      # byte range [start, end) for uncompressed JSONL
    end: int | None = None
    row_groups: tuple[int, ...] | None = None
    row_offset: int = 0                 # rows before the first row group (generated ids)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["row_groups"] = list(self.row_groups) if self.row_groups is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "InputSplit":
        d = dict(d)
        if d.get("row_groups") is not None:
            d["row_groups"] = tuple(d["row_groups"])
        return cls(**d)


@dataclass
class ReadLog:
    """What happened while reading: counts, rejected records, file errors."""

    read: int = 0                       # records seen (accepted + rejected), blank lines excluded
    blank_lines: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    file_errors: list[dict[str, Any]] = field(default_factory=list)
    # Rows the split being read holds, when its format says so up front (Parquet metadata):
    # what a file error mid-read leaves unread is then counted, not lost.
    split_rows: int | None = None

    def reject(self, split: InputSplit, location: str, reason: str, head: bytes | str) -> None:
        self.read += 1
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if isinstance(head, bytes):
            head = head[:HEAD_BYTES].decode("utf-8", "backslashreplace")
        else:
            head = head[:HEAD_BYTES].encode("utf-8", "backslashreplace").decode("utf-8")
        self.rejects.append({"file": split.uri, "location": location, "reason": reason, "head": head})

    def reject_rows(self, split: InputSplit, location: str, reason: str, n: int) -> None:
        """Count ``n`` rows that could not be read at all (one record stands for them all)."""
        self.read += n
        self.rejected[reason] = self.rejected.get(reason, 0) + n
        self.rejects.append({"file": split.uri, "location": location, "reason": reason, "head": ""})

    def file_error(self, split: InputSplit, error: str, detail: str, **extra: Any) -> None:
        self.file_errors.append({"file": split.uri, "error": error, "detail": detail, **extra})


class _Batcher:
    """Accumulates good records into Arrow batches with a fixed schema."""

    def __init__(self, keep_fields: list[str], max_bytes: int = BATCH_BYTES):
        self.keep_fields = keep_fields
        self.max_bytes = max_bytes
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.sources: list[str] = []
        self.extra: dict[str, list[str | None]] = {k: [] for k in self.keep_fields}
        self.nbytes = 0

    def add(self, id_: str, text: str, source: str, extra: dict[str, str | None]) -> None:
        self.ids.append(id_)
        self.texts.append(text)
        self.sources.append(source)
        for k in self.keep_fields:
            self.extra[k].append(extra.get(k))
        self.nbytes += len(text)

    def full(self) -> bool:
        return len(self.ids) >= BATCH_ROWS or self.nbytes >= self.max_bytes

    def flush(self) -> pa.RecordBatch | None:
        if not self.ids:
            return None
        arrays = [pa.array(self.ids, pa.string()), pa.array(self.texts, pa.string()),
                  pa.array(self.sources, pa.string())]
        arrays += [pa.array(self.extra[k], pa.string()) for k in self.keep_fields]
        batch = pa.RecordBatch.from_arrays(arrays, names=["id", "text", "source", *self.keep_fields])
        self._reset()
        return batch


def _as_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):        # a binary Parquet column
        return v.decode("utf-8", "replace")
    return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)


def read_split(split: InputSplit, spec: InputSpec, log: ReadLog,
               storage: Any = None, *, batch_bytes: int | None = None) -> Iterator[pa.RecordBatch]:
    """Yield batches of good documents from ``split``; record everything else in ``log``.
    ``storage``: the spec's storage settings (see :func:`preproc.io.store.open_fs`);
    ``batch_bytes``: text per JSONL batch (default BATCH_BYTES; small for a quick sample).

    Accounting holds by construction: ``log.read`` counts a good row only when its batch is
    handed on, and a rejected one when it is rejected. A file whose bytes are not what its
    format says (:data:`DATA_ERRORS`) ends its split with a file error ``unreadable``; rows
    its metadata says it holds and that were neither handed on nor rejected are counted as
    ``rejected: file_error:unreadable``. I/O errors propagate: the index fails and is retried.
    """
    reader: Callable[..., Iterator[pa.RecordBatch]] = {
        "jsonl": _read_jsonl, "parquet": _read_parquet, "arrow": _read_arrow, "text": _read_text,
    }[split.format]
    fs, path = open_fs(split.uri, storage)
    log.split_rows = None
    seen_before = log.read
    if batch_bytes and split.format == "jsonl":
        it = _read_jsonl(fs, path, split, spec, log, batch_bytes=batch_bytes)
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


# ---------------------------------------------------------------------------------------
# JSONL

class _StreamError(Exception):
    def __init__(self, error: str, detail: str):
        super().__init__(detail)
        self.error = error
        self.detail = detail


def _raw_chunks(f, start: int, end: int | None) -> Iterator[bytes]:
    f.seek(start)
    while True:
        chunk = f.read(CHUNK_BYTES)
        if not chunk:
            return
        yield chunk


def _gunzip_chunks(f) -> Iterator[bytes]:
    """Stream-decompress every gzip member (``cat a.gz b.gz`` is valid gzip). Each piece is at
    most CHUNK_BYTES, whatever the compression ratio (a gzip bomb expands ~1000x)."""
    d = zlib.decompressobj(wbits=31)
    pending = b""
    while True:
        data = pending or d.unconsumed_tail or f.read(GZ_READ_BYTES)
        pending = b""
        if not data:
            if not d.eof:
                raise _StreamError("truncated_gzip", "gzip stream ended before its end-of-stream marker")
            return
        try:
            out = d.decompress(data, CHUNK_BYTES)
        except zlib.error as e:
            raise _StreamError("corrupt_gzip", f"gzip data is corrupt: {e}") from None
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


def _unzstd_chunks(f) -> Iterator[bytes]:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    try:
        while True:
            chunk = reader.read(CHUNK_BYTES)
            if not chunk:
                return
            yield chunk
    except zstandard.ZstdError as e:
        kind = "truncated_zstd" if "premature end" in str(e) or "truncated" in str(e) else "corrupt_zstd"
        raise _StreamError(kind, f"zstd data is corrupt or truncated: {e}") from None


def _lines(chunks: Iterator[bytes], base: int, end: int | None, split: InputSplit, log: ReadLog,
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
    except _StreamError as e:
        extra = {"partial_tail_bytes": length} if length else {}
        log.file_error(split, e.error, e.detail, **extra)
        return
    if length and not skipping and (end is None or start < end):
        if max_line_bytes is not None and length > max_line_bytes:
            log.reject(split, f"byte {start}", "doc_too_large", head)
        else:
            yield start, b"".join(pieces)


def _read_jsonl(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog,
                batch_bytes: int = BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
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
                chunks = _raw_chunks(f, 0, None)
            else:
                chunks = _gunzip_chunks(f)
            start, end = 0, None
        elif split.compression == "zstd":
            f.seek(0)
            if not head:
                log.file_error(split, "empty_compressed", "0-byte file with a .zst name: no records")
                return
            chunks = _unzstd_chunks(f)
            start, end = 0, None
        else:
            if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
                if start > 0:
                    return  # the split at offset 0 decodes the whole UTF-16 file
                log.file_error(split, "utf16_decoded", "file is UTF-16, not UTF-8: decoded to UTF-8")
                chunks = _utf16_chunks(_raw_chunks(f, 0, None))
                start, end = 0, None
            else:
                chunks = _raw_chunks(f, max(start - 1, 0), end)
        skip = start > 0
        base = max(start - 1, 0) if skip else start
        lines = _lines(chunks, base, end, split, log, skip_first_partial=skip, max_line_bytes=spec.max_doc_bytes)
        yield from _parse_lines(lines, split, spec, log, batch_bytes)


def _utf16_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A UTF-16 stream (with BOM) re-encoded as UTF-8, chunk by chunk."""
    dec = codecs.getincrementaldecoder("utf-16")()
    for chunk in chunks:
        yield dec.decode(chunk).encode("utf-8", "surrogatepass")
    yield dec.decode(b"", final=True).encode("utf-8", "surrogatepass")


_REASONS_BY_TYPE = {type(None): "null_text"}


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_lines(lines: Iterator[tuple[int, bytes]], split: InputSplit, spec: InputSpec,
                 log: ReadLog, batch_bytes: int = BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    batcher = _Batcher(spec.keep_fields, batch_bytes)
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
        rid = _as_str(rid) if rid is not None else f"{split.rel}:{off}"
        src = obj.get(sf) if sf else None
        src = src if isinstance(src, str) else split.rel
        extra = {k: _as_str(obj.get(k)) for k in spec.keep_fields}
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
    last = batcher.flush()
    if last is not None:
        yield last


# ---------------------------------------------------------------------------------------
# Tables: Parquet and Arrow

def _string_column(col: pa.Array) -> pa.Array | None:
    """``col`` as a plain ``string`` array when its type is string-like (``string``,
    ``large_string``, ``string_view``, a dictionary of those), else None."""
    t = col.type
    if pa.types.is_dictionary(t):
        if not _is_string_like(t.value_type):
            return None
        col = col.dictionary_decode()
        t = col.type
    if pa.types.is_string(t):
        return col
    if _is_string_like(t):
        return col.cast(pa.string())
    return None


def _is_string_like(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _field_strings(col: pa.Array) -> pa.Array:
    """Any column as strings: string-like as is, scalars by Arrow's cast, anything else
    (lists, structs, binary that is not UTF-8) as JSON text, like a JSONL field."""
    out = _string_column(col)
    if out is not None:
        return out
    try:
        return col.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([_as_str(v) for v in col.to_pylist()], pa.string())


def _invalid_utf8_rows(col: pa.Array) -> list[int]:
    """Rows of a ``string`` array whose bytes are not UTF-8 (Parquet does not check)."""
    try:
        col.validate(full=True)
        return []
    except pa.ArrowInvalid:
        pass
    return [i for i, v in enumerate(col.cast(pa.binary()).to_pylist()) if v is not None and not _is_utf8(v)]


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _replace_invalid(col: pa.Array) -> pa.Array:
    return pa.array([None if v is None else v.decode("utf-8", "replace")
                     for v in col.cast(pa.binary()).to_pylist()], pa.string())


def _table_batches(batches: Iterator[pa.RecordBatch], first_row: int, split: InputSplit,
                   spec: InputSpec, log: ReadLog) -> Iterator[pa.RecordBatch]:
    """Validate columns of Arrow batches and turn them into document batches."""
    row = first_row
    tf = spec.text_field
    replace = spec.invalid_utf8 == "replace"
    schema_error_reported = False
    for b in batches:
        n = b.num_rows
        rows = range(row, row + n)
        row += n
        names = b.schema.names
        text = _string_column(b.column(tf)) if tf in names else None
        if text is None:
            reason = "missing_text" if tf not in names else "text_not_string"
            if not schema_error_reported:
                err = "schema_missing_text" if tf not in names else "schema_text_not_string"
                detail = (f"no column {tf!r} (columns: {', '.join(names)})" if tf not in names
                          else f"column {tf!r} has type {b.schema.field(tf).type}, not string")
                log.file_error(split, err, detail)
                schema_error_reported = True
            for r in rows:
                log.reject(split, f"row {r}", reason, "")
            continue
        ids = _field_strings(b.column(spec.id_field)) if spec.id_field and spec.id_field in names else None
        src = (_string_column(b.column(spec.source_field))
               if spec.source_field and spec.source_field in names else None)
        extra = {k: _field_strings(b.column(k)) if k in names else pa.nulls(n, pa.string())
                 for k in spec.keep_fields}
        # Invalid UTF-8 in any column handed on: the row is rejected (or its bytes replaced),
        # as a JSONL line would be; Arrow would fail on it later, far from its file.
        bad_utf8: set[int] = set()
        cols = {"text": text, "id": ids, "source": src, **{f"keep:{k}": v for k, v in extra.items()}}
        for key, col in cols.items():
            if col is None:
                continue
            bad = _invalid_utf8_rows(col)
            if bad and replace:
                col = _replace_invalid(col)
                if key == "text":
                    text = col
                elif key == "id":
                    ids = col
                elif key == "source":
                    src = col
                else:
                    extra[key[5:]] = col
            bad_utf8.update(bad)
        if bad_utf8 and replace:
            bad_utf8 = set()
        utf8_ok = pa.array([i not in bad_utf8 for i in range(n)], pa.bool_()) if bad_utf8 else None
        checked = pc.if_else(utf8_ok, text, pa.scalar(None, pa.string())) if utf8_ok is not None else text
        valid = pc.fill_null(pc.invert(pc.is_null(checked)), False)
        nonblank = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(checked)), 0), False)
        ok = pc.and_(valid, nonblank)
        if spec.max_doc_bytes is not None:
            ok = pc.and_(ok, pc.fill_null(pc.less_equal(pc.binary_length(checked), spec.max_doc_bytes), True))
        okn = ok.to_numpy(zero_copy_only=False)
        if not okn.all():
            validn = valid.to_numpy(zero_copy_only=False)
            blankn = nonblank.to_numpy(zero_copy_only=False)
            for i in (~okn).nonzero()[0]:
                i = int(i)
                if i in bad_utf8:
                    reason, head = "invalid_utf8", text.cast(pa.binary())[i].as_py() or b""
                else:
                    reason = "null_text" if not validn[i] else ("empty_text" if not blankn[i] else "doc_too_large")
                    head = "" if not validn[i] else text[i].as_py()
                log.reject(split, f"row {rows[i]}", reason, head)
        gtext = text.filter(ok)
        m = len(gtext)
        idx = pa.array(rows, pa.int64()).filter(ok)
        gen_ids = pc.binary_join_element_wise(split.rel, pc.cast(idx, pa.string()), ":")
        gids = pc.coalesce(ids.filter(ok), gen_ids) if ids is not None else gen_ids
        gsrc = (pc.coalesce(src.filter(ok), pa.scalar(split.rel)) if src is not None
                else pa.array([split.rel] * m, pa.string()))
        arrays = [gids, gtext, gsrc, *[extra[k].filter(ok) for k in spec.keep_fields]]
        if m:
            yield pa.RecordBatch.from_arrays(arrays, names=["id", "text", "source", *spec.keep_fields])


def _read_parquet(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        groups = list(split.row_groups) if split.row_groups is not None else list(range(pf.num_row_groups))
        log.split_rows = sum(pf.metadata.row_group(g).num_rows for g in groups)
        names = pf.schema_arrow.names
        wanted = [c for c in {spec.text_field, spec.id_field, spec.source_field, *spec.keep_fields} if c and c in names]
        row = split.row_offset
        for g in groups:
            # One row group at a time keeps memory bounded by the row group, not the file.
            it = pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], columns=wanted or None)
            yield from _table_batches(it, row, split, spec, log)
            row += pf.metadata.row_group(g).num_rows


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


def _read_arrow(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
        yield from _table_batches(_arrow_batches(f), 0, split, spec, log)


# ---------------------------------------------------------------------------------------
# Plain text: one document per file

def _read_text(fs, path: str, split: InputSplit, spec: InputSpec, log: ReadLog) -> Iterator[pa.RecordBatch]:
    """The whole file is one document. Read (and gunzipped) as a stream: past
    ``max_doc_bytes`` the rest is counted but not held, and the file is ``doc_too_large``."""
    max_bytes = spec.max_doc_bytes
    pieces: list[bytes] = []
    size = 0
    head = b""
    with fs.open(path, "rb") as f:
        chunks = _raw_chunks(f, 0, None)
        if split.compression == "gzip":
            chunks = _gunzip_chunks(f)
        try:
            for chunk in chunks:
                if not head:
                    head = chunk[:HEAD_BYTES]
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    pieces = []
                    continue
                pieces.append(chunk)
        except _StreamError as e:
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
    b = _Batcher(spec.keep_fields)
    b.add(split.rel, text, split.rel, {})
    yield b.flush()  # type: ignore[misc]
