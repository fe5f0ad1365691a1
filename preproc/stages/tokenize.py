"""Stage ``tokenize``: a shard's clean part, minus the rows dedup dropped, to token files.

Outputs of index ``i``:

* ``tokens/part-i.parquet`` — ``id`` (string), ``input_ids`` (list of uint16 when every id
  fits, else uint32), ``num_tokens`` (int32); readable by ``datasets.load_dataset("parquet")``.
* ``tokens/part-i.bin`` + ``tokens/part-i.idx`` — Megatron-LM's indexed dataset
  (see :mod:`preproc.megatron`).

Documents are encoded with ``encode_batch_fast`` (no offsets, all cores through the Rust
pool) in batches of ``tokenize.batch_size``; BOS/EOS ids are placed by numpy index
arithmetic on the flat id array, not per document in Python.
"""

from __future__ import annotations

import contextlib
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..megatron import megatron_dtype, write_index
from ..tokenizer import load_run_tokenizer
from .drops import read_drops

if TYPE_CHECKING:
    from ..plan import Plan
    from ..storage import Store

DEDUP_STAGES = ("exact_dedup",)


def drop_stages(plan: "Plan") -> list[str]:
    """Stages whose drop lists apply to tokenize (every dedup stage that has them)."""
    from . import near_drop_stages

    return [s for s in ("exact_dedup", *near_drop_stages(plan)) if s in plan.stage_names]


def encode(tok, texts: list[str], *, bos_id: int | None, eos_id: int | None,
           dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(flat ids, offsets)`` for ``texts``, with BOS/EOS around each document."""
    encs = tok.encode_batch_fast(texts, add_special_tokens=False)
    id_lists = [e.ids for e in encs]
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


def run(plan: "Plan", index: int, store: "Store") -> dict[str, Any]:
    cfg = plan.spec.tokenize
    info = plan.tokenizer
    tok = load_run_tokenizer(store, info, encode_special_tokens=cfg.encode_special_tokens)
    dtype = np.dtype(info["dtype"])
    mdtype = megatron_dtype(info["max_id"])
    drops = read_drops(store, drop_stages(plan), index)
    name = f"part-{index:05d}"
    want_pq = "parquet" in cfg.formats
    want_mg = "megatron" in cfg.formats
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.from_numpy_dtype(dtype))),
                        ("num_tokens", pa.int32())])
    docs = tokens = dropped = 0
    lengths: list[np.ndarray] = []
    with contextlib.ExitStack() as stack:
        fpq = stack.enter_context(store.open_atomic(f"tokens/{name}.parquet")) if want_pq else None
        fbin = stack.enter_context(store.open_atomic(f"tokens/{name}.bin")) if want_mg else None
        writer = stack.enter_context(pq.ParquetWriter(fpq, schema, compression="zstd")) if fpq else None
        with store.open(f"clean/{name}.parquet") as f:
            pf = pq.ParquetFile(f)
            row0 = 0
            for batch in pf.iter_batches(batch_size=cfg.batch_size, columns=["id", "text"]):
                n = batch.num_rows
                if len(drops):
                    rows = np.arange(row0, row0 + n, dtype=np.uint32)
                    keep = ~np.isin(rows, drops, assume_unique=True)
                    dropped += int(n - keep.sum())
                    batch = batch.filter(pa.array(keep))
                row0 += n
                if batch.num_rows == 0:
                    continue
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
    if want_mg:
        with store.open_atomic(f"tokens/{name}.idx") as f:
            write_index(f, np.concatenate(lengths) if lengths else np.empty(0, np.int32), mdtype)
    return {"docs": docs, "tokens": tokens, "dropped": dropped, "dtype": str(dtype),
            "megatron_dtype": str(mdtype)}
