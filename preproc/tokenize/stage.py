"""Stage ``tokenize``: a slice of the clean output, minus the rows dedup dropped, to token files.

Index ``i`` reads slice ``i`` of the concatenated clean parts, cut at equal text bytes
(:mod:`preproc.io.slices`), so unequal clean parts (whole compressed files) still give every
index the same work; the token files, concatenated in index order, hold the documents in
clean order whatever the cut. Outputs of index ``i``:

* ``tokens/part-i.parquet`` — ``id`` (string), ``input_ids`` (list of uint16 when every id
  fits, else uint32), ``num_tokens`` (int32); readable by ``datasets.load_dataset("parquet")``.
* ``tokens/part-i.bin`` + ``tokens/part-i.idx`` — Megatron-LM's indexed dataset
  (see :mod:`preproc.tokenize.megatron`).

Documents are encoded with ``encode_batch_fast`` (no offsets, all cores through the Rust
pool) in batches of ``tokenize.batch_size``; BOS/EOS ids are placed by numpy index
arithmetic on the flat id array, not per document in Python.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from preproc.dedup.drops import read_drops
from preproc.io import layout
from preproc.io.exchange import prefetched
from preproc.io.slices import Piece, read_slices
from preproc.observe.stats import log2_histogram
from preproc.tokenize.megatron import megatron_dtype, write_index
from preproc.tokenize.tokenizer import Encoder

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store



def encode(tok: Encoder, texts: list[str], *, bos_id: int | None, eos_id: int | None,
           dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(flat ids, offsets)`` for ``texts``, with BOS/EOS around each document."""
    id_lists = tok.ids(texts)
    lens = np.fromiter((len(x) for x in id_lists), dtype=np.int64, count=len(id_lists))
    total = int(lens.sum())
    body = np.fromiter(chain.from_iterable(id_lists), dtype=dtype, count=total)
    extra = (bos_id is not None) + (eos_id is not None)
    if not extra:
        return body, np.concatenate([[0], np.cumsum(lens)])
    new_lens = lens + extra
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(new_lens, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=dtype)
    old_starts = np.zeros(len(lens), dtype=np.int64)
    if len(lens) > 1:
        np.cumsum(lens[:-1], out=old_starts[1:])
    shift = offsets[:-1] + (bos_id is not None) - old_starts
    out[np.arange(total, dtype=np.int64) + np.repeat(shift, lens)] = body
    if bos_id is not None:
        out[offsets[:-1]] = bos_id
    if eos_id is not None:
        out[offsets[1:] - 1] = eos_id
    return out, offsets


_ROWS = pa.schema([("id", pa.string()), ("text", pa.string())])


def _rows(pf: pq.ParquetFile, start: int, end: int | None, drops: np.ndarray,
          counts: dict[str, int]) -> Iterator[pa.RecordBatch]:
    """Rows ``start..end`` (``id``, ``text``) of a clean part, minus the rows in ``drops``
    (sorted row numbers of the part); the row groups outside the range are not read."""
    end = pf.metadata.num_rows if end is None else end
    lo = 0
    for g in range(pf.num_row_groups):
        hi = lo + pf.metadata.row_group(g).num_rows
        if hi <= start or lo >= end:
            lo = hi
            continue
        row0 = lo
        for batch in pf.iter_batches(batch_size=256, row_groups=[g], columns=["id", "text"]):
            n = batch.num_rows
            a, b = max(start - row0, 0), min(end - row0, n)
            if a > 0 or b < n:
                batch = batch.slice(a, max(b - a, 0))
            first = row0 + a
            row0 += n
            if batch.num_rows and len(drops):
                rows = np.arange(first, first + batch.num_rows, dtype=np.uint32)
                keep = ~np.isin(rows, drops, assume_unique=True)
                counts["dropped"] += int(batch.num_rows - keep.sum())
                batch = batch.filter(pa.array(keep))
            if batch.num_rows:
                yield batch
            if row0 >= end:
                return
        lo = hi


def _slice_rows(store: Store, pieces: list[Piece], drop_stages: list[str],
                counts: dict[str, int]) -> Iterator[pa.RecordBatch]:
    """The rows of a slice of the clean output (:mod:`preproc.io.slices`), in order, minus
    the rows the dedup stages dropped (their drop lists are kept per clean part)."""
    for p in pieces:
        drops = read_drops(store, drop_stages, p.part)
        with store.open(layout.clean_part(p.part)) as f:
            for batch in _rows(pq.ParquetFile(f), p.start, p.end, drops, counts):
                # One schema for every part (a slice's batches are regrouped together).
                yield pa.RecordBatch.from_arrays([batch.column("id").cast(pa.string()),
                                                  batch.column("text").cast(pa.string())], schema=_ROWS)


def _regroup(batches: Iterable[pa.RecordBatch], max_docs: int, max_bytes: int) -> Iterator[pa.RecordBatch]:
    """``batches`` regrouped into batches of at most ``max_docs`` documents and about
    ``max_bytes`` of text: token lists are Python ints until they reach numpy, so bounding
    the text per call bounds the worker's memory, whatever the shard. Where the input
    batches begin and end does not change the output's."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        lens = pc.binary_length(batch.column("text")).to_numpy(zero_copy_only=False)
        cum = np.cumsum(lens)
        # Cut inside the small batch too, so that one huge document travels alone.
        start = 0
        while start < batch.num_rows:
            room = max_bytes - size
            base = cum[start - 1] if start else 0
            k = int(np.searchsorted(cum[start:] - base, room, side="right"))
            if k == 0 and pending:      # the next document does not fit: send what we have
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, size = [], 0
                continue
            k = max(1, min(k, max_docs - sum(p.num_rows for p in pending)))
            k = min(k, batch.num_rows - start)
            piece = batch.slice(start, k)
            pending.append(piece)
            size += int(cum[start + k - 1] - base)
            start += k
            if size >= max_bytes or sum(p.num_rows for p in pending) >= max_docs:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def run(plan: Plan, index: int, store: Store) -> dict[str, Any]:
    cfg = plan.spec.tokenize
    info = plan.tokenizer
    tok = Encoder(store, info, encode_special_tokens=cfg.encode_special_tokens)
    dtype = np.dtype(info["dtype"])
    mdtype = megatron_dtype(info["max_id"])
    # Index i reads slice i of the clean output, cut at equal text bytes whatever the
    # sizes of the clean parts (preproc.io.slices); its token files are named after i.
    pieces = read_slices(store, "tokenize", "clean", plan.num_shards, plan.stage("tokenize").fan_out)[index]
    prefix = layout.tokens(index)
    want_pq = "parquet" in cfg.formats
    want_mg = "megatron" in cfg.formats
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.from_numpy_dtype(dtype))),
                        ("num_tokens", pa.int32())])
    docs = tokens = text_bytes = 0
    counts = {"dropped": 0}
    lengths: list[np.ndarray] = []
    with contextlib.ExitStack() as stack:
        fpq = stack.enter_context(store.open_atomic(f"{prefix}.parquet")) if want_pq else None
        fbin = stack.enter_context(store.open_atomic(f"{prefix}.bin")) if want_mg else None
        # No dictionary encoding: token ids and document ids gain nothing from it, and trying
        # it costs as much as the compression (halves the writing time, and a smaller file).
        writer = stack.enter_context(pq.ParquetWriter(fpq, schema, compression="zstd", use_dictionary=False)) if fpq else None
        # The drop lists of the slice's parts, read in one go (not one exchange read per part).
        parts = range(min(p.part for p in pieces), max(p.part for p in pieces) + 1) if pieces else range(0)
        stack.enter_context(prefetched(store, [layout.drops_dir(st) for st in plan.drop_stages], parts))
        for batch in _regroup(_slice_rows(store, pieces, plan.drop_stages, counts), cfg.batch_size, cfg.batch_bytes):
            text_bytes += int(pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0)
            flat, offsets = encode(tok, batch.column("text").to_pylist(), bos_id=info.get("bos_id"),
                                   eos_id=info.get("eos_id"), dtype=dtype)
            lens = np.diff(offsets).astype(np.int32)
            if writer is not None:
                ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))
                writer.write_batch(pa.RecordBatch.from_arrays(
                    [batch.column("id"), ids, pa.array(lens)], schema=schema))
            if fbin is not None:
                fbin.write(flat.astype(mdtype, copy=False).tobytes())
            lengths.append(lens)
            docs += batch.num_rows
            tokens += int(offsets[-1])
    dropped = counts["dropped"]
    if want_mg:
        with store.open_atomic(f"{prefix}.idx") as f:
            write_index(f, np.concatenate(lengths) if lengths else np.empty(0, np.int32), mdtype)
    return {"docs": docs, "tokens": tokens, "dropped": dropped, "dtype": str(dtype),
            # What this index read: its slice of the clean output ([part, first row, end row,
            # text bytes] each) and the text it tokenized, in bytes.
            "slice": [p.to_json() for p in pieces], "text_bytes": text_bytes,
            "hist_tokens": log2_histogram(np.concatenate(lengths) if lengths else np.empty(0, np.int32)),
            "backend": info.get("backend", "hf"),
            "megatron_dtype": str(mdtype)}
