"""Tables (Parquet, Arrow): validate columns of record batches and turn them into documents.

Columns are taken as they are when string-like; ids and kept fields of other types become
strings (scalars by Arrow's cast, anything else as JSON text, like a JSONL field). Invalid
UTF-8, which Parquet does not check, is rejected (or replaced) row by row, as a JSONL line
would be. A record's id is its ``id_field`` or ``<rel>:<row number>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from preproc.io.readers.base import InputSplit, ReadLog, as_str

if TYPE_CHECKING:
    from preproc.spec.model import InputSpec

__all__ = ["table_batches"]


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
        return pa.array([as_str(v) for v in col.to_pylist()], pa.string())


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


def table_batches(batches: Iterator[pa.RecordBatch], first_row: int, split: InputSplit,
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
