"""Partitioned files: how one stage's fan-out hands data to the next one's (the exchange).

An exchange is a folder written by N producers and read by B consumers. Producer ``i``
writes ONE Arrow IPC file, ``<folder>/part-i.arrow``, sorted by its first column (the
consuming index: a hash bucket, a shard), one record batch per value, then a small sidecar
``part-i.idx.json`` that says where each batch lies: ``(consumer, offset, length, rows,
crc32)``. The sidecar is written after the data and before the producer's marker, so a
marker vouches for both.

Before the consumers start, :func:`build_index` merges the N sidecars once into
``<folder>/_index.bin``: the entries sorted by consumer, behind a table of B+1 offsets.
Consumer ``j`` reads its slice of that index (one open, a few ranged reads) and then only
its own byte ranges of the producers' files (one request per non-empty (producer, j) pair,
concurrent on object stores), and parses each batch from its bytes with the schema the
index carries: no producer footer is ever opened. So an exchange costs O(N + B) metadata
operations and O(data) bytes, where consumers reading every producer's footer cost N x B
(quadratic when B follows N, and on S3 a GET each).

Robustness: every range carries the crc32 of its bytes; a mismatch (a producer rewritten
after the index was built) rebuilds the index from the sidecars once, then fails loudly.
The runner builds an exchange's index in the coordinator before dispatching its consumers
(:func:`preproc.engine.stages.prepare`); a consumer that finds none builds it itself (same bytes,
atomic write), so ``preproc worker`` run by hand still works.

The older layout (a Parquet file with a row group per value, found through its footer) is
kept as :func:`write_row_groups` / :func:`read_row_groups` for files read one at a time
(the near-dedup segments of an incremental refresh).
"""

from __future__ import annotations

import contextvars
import json
import struct
import zlib
from base64 import b64decode, b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from preproc.errors import ConfigError
from preproc.io import layout

if TYPE_CHECKING:
    from preproc.io.store import Store

__all__ = ["write_partitioned", "read_partition", "read_partitions", "read_all", "build_index", "prefetched",
           "index_info", "part_name", "write_row_groups", "read_row_groups", "INDEX_NAME"]

INDEX_NAME = "_index.bin"
_MAGIC = b"PPXIDX01"
# magic, producers, consumers, entries, rows, schema bytes, metadata bytes
_HEADER = struct.Struct("<8sIIQQQQ")
_ENTRY = np.dtype([("producer", "<u4"), ("consumer", "<u4"), ("offset", "<u8"), ("length", "<u8"),
                   ("rows", "<u8"), ("crc", "<u4"), ("pad", "<u4")])
# lz4: these are mostly hashes and row numbers (little to gain from zstd), read many times.
_IPC = pa.ipc.IpcWriteOptions(compression="lz4")


def part_name(i: int) -> str:
    """The data file of producer ``i`` in an exchange folder."""
    return f"{layout.part(i)}.arrow"


def _sidecar(i: int) -> str:
    return f"{layout.part(i)}.idx.json"


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


# -- producers -----------------------------------------------------------------------------

def write_partitioned(store: Store, folder: str, producer: int, table: pa.Table,
                      metadata: dict[str, str] | None = None) -> None:
    """Producer ``producer``'s share of the exchange in ``folder``: ``table`` must be
    sorted by its first column (the consumer); one record batch per value. ``metadata``
    (small strings) travels to the merged index (e.g. a round's convergence count)."""
    table = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    entries: list[list[int]] = []
    col = table.column(0).to_numpy() if table.num_rows else np.empty(0, np.uint32)
    cuts = np.flatnonzero(np.diff(col)) + 1
    with pa.ipc.new_file(sink, table.schema, options=_IPC) as w:
        first = True
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(col)]):
            if hi <= lo:
                continue
            start = sink.tell()
            w.write_batch(table.slice(lo, hi - lo).combine_chunks().to_batches()[0])
            if first:
                # The writer emits the magic and the schema with the first batch.
                start = 8 + len(table.schema.serialize())
                first = False
            entries.append([int(col[lo]), int(start), int(sink.tell() - start), int(hi - lo)])
    data = sink.getvalue().to_pybytes()
    for e in entries:
        chunk = data[e[1]:e[1] + e[2]]
        if chunk[:4] != b"\xff\xff\xff\xff":   # pragma: no cover - an IPC layout we do not know
            raise RuntimeError(f"{folder}: unexpected Arrow IPC layout; cannot index {part_name(producer)}")
        e.append(zlib.crc32(chunk))
    # Data first, then the sidecar that points into it; the marker comes after both.
    store.write_bytes(_join(folder, part_name(producer)), data)
    store.write_bytes(_join(folder, _sidecar(producer)), json.dumps({
        "schema": b64encode(table.schema.serialize().to_pybytes()).decode(),
        "metadata": metadata or {}, "entries": entries}, separators=(",", ":")).encode())


# -- the merged index ----------------------------------------------------------------------

def build_index(store: Store, folder: str, producers: int | None, consumers: int | None = None) -> None:
    """Merge the producers' sidecars of ``folder`` into its index (one read each, once).
    ``producers`` None: every sidecar the folder holds (one listing); ``consumers`` None:
    one past the largest consumer any producer wrote to."""
    names = [n for n in store.ls(folder) if n.startswith("part-") and n.endswith(".idx.json")]
    have = sorted(int(n[5:-9]) for n in names)
    if producers is None:
        ids = have
    else:
        ids = list(range(producers))
        if have and have[-1] >= producers:
            # The same run always has the same fan-outs: more producers than this run's
            # stage has mean a version of preproc that cut the stage otherwise wrote them.
            raise ConfigError(f"{store.url(folder)} holds output of {have[-1] + 1} producers where this run "
                              f"has {producers}: written by another version of preproc; rerun with --force")
    schema_b = b""
    meta: list[dict[str, str]] = []
    parts = []
    # All sidecars in one call: concurrent on object stores (10,000 producers on S3 would
    # otherwise be 10,000 round trips one after the other in the coordinator).
    for p, raw in zip(ids, store.read_many([_join(folder, _sidecar(p)) for p in ids])):
        if raw is None:
            raise RuntimeError(f"{store.url(folder)}: producer {p} has not written its output "
                               "(its stage is not complete)")
        side = json.loads(raw)
        s = b64decode(side["schema"])
        if not schema_b:
            schema_b = s
        elif s != schema_b:
            # One folder, one schema: producers that differ were written by two versions of
            # preproc (a run resumed across an upgrade).
            raise ConfigError(f"{store.url(folder)}: producer {p} wrote other columns than producer {ids[0]}: "
                              "written by another version of preproc; rerun with --force")
        meta.append(side.get("metadata") or {})
        e = np.array(side["entries"], dtype=np.uint64).reshape(-1, 5)
        if len(e):
            rec = np.zeros(len(e), _ENTRY)
            rec["producer"] = p
            rec["consumer"], rec["offset"], rec["length"], rec["rows"], rec["crc"] = e.T
            parts.append(rec)
    ent = np.concatenate(parts) if parts else np.zeros(0, _ENTRY)
    if consumers is None:
        consumers = int(ent["consumer"].max()) + 1 if len(ent) else 0
    ent = ent[ent["consumer"] < consumers]
    ent = ent[np.lexsort((ent["producer"], ent["consumer"]))]
    offsets = np.searchsorted(ent["consumer"], np.arange(consumers + 1), side="left").astype("<u8")
    meta_b = json.dumps(meta, separators=(",", ":")).encode() if any(meta) else b""
    pad = b"\0" * (-(len(schema_b) + len(meta_b)) % 8)
    head = _HEADER.pack(_MAGIC, len(ids), consumers, len(ent), int(ent["rows"].sum()), len(schema_b), len(meta_b))
    store.write_bytes(_join(folder, INDEX_NAME), head + schema_b + meta_b + pad + offsets.tobytes() + ent.tobytes())


def _read_header(f) -> tuple:
    raw = f.read(_HEADER.size)
    magic, producers, consumers, entries, rows, slen, mlen = _HEADER.unpack(raw)
    if magic != _MAGIC:
        raise RuntimeError("not an exchange index")
    return producers, consumers, entries, rows, slen, mlen


def index_info(store: Store, folder: str) -> dict:
    """The index's totals and the producers' metadata: ``{"producers", "consumers",
    "rows", "metadata": [dict per producer]}`` (one file read, for the coordinator)."""
    with store.open(_join(folder, INDEX_NAME)) as f:
        producers, consumers, _e, rows, slen, mlen = _read_header(f)
        f.seek(_HEADER.size + slen)
        meta = json.loads(f.read(mlen)) if mlen else [{} for _ in range(producers)]
    return {"producers": producers, "consumers": consumers, "rows": rows, "metadata": meta}


def _entries(store: Store, folder: str, consumer: int, end: int | None = None) -> tuple[pa.Schema | None, np.ndarray]:
    """The schema and the entries of consumers ``consumer`` .. ``end`` - 1 (just ``consumer``
    by default), sorted by consumer then producer: one open, three small reads."""
    end = consumer + 1 if end is None else end
    with store.open(_join(folder, INDEX_NAME)) as f:
        producers, consumers, _e, _rows, slen, mlen = _read_header(f)
        schema = pa.ipc.read_schema(pa.py_buffer(f.read(slen))) if slen else None
        end = min(end, consumers)
        if consumer >= end:
            return schema, np.zeros(0, _ENTRY)
        base = _HEADER.size + slen + mlen + (-(slen + mlen) % 8)
        f.seek(base + 8 * consumer)
        offs = np.frombuffer(f.read(8 * (end - consumer + 1)), "<u8")
        lo, hi = int(offs[0]), int(offs[-1])
        if hi == lo:
            return schema, np.zeros(0, _ENTRY)
        f.seek(base + 8 * (consumers + 1) + _ENTRY.itemsize * lo)
        ent = np.frombuffer(f.read(_ENTRY.itemsize * (hi - lo)), _ENTRY)
    return schema, ent


# (folder, consumer) -> (schema, entries, blobs) read ahead by :func:`prefetched`.
_ahead: contextvars.ContextVar[dict | None] = contextvars.ContextVar("preproc_exchange_ahead", default=None)


@contextmanager
def prefetched(store: Store, folders: list[str], consumers: range) -> Iterator[None]:
    """Within the block, reading any of ``consumers``' partitions of ``folders`` costs no
    I/O: each folder's index is read once for the whole range, and each producer's bytes for
    it in one request (a producer's batches for consecutive consumers are contiguous). For
    an index that works through a group of shards one at a time (near dedup's per-shard
    stages, tokenize's slices): one read per folder and producer, not one per shard. A
    folder without an index yet, or whose bytes fail their checksums, is left to the
    normal path (which builds or rebuilds the index)."""
    ahead: dict = dict(_ahead.get() or {})
    for folder in folders if len(consumers) else []:
        try:
            schema, ent = _entries(store, folder, consumers.start, consumers.stop)
        except FileNotFoundError:
            continue
        by_producer: dict[int, tuple[int, int]] = {}
        for p, o, n in zip(ent["producer"].tolist(), ent["offset"].tolist(), ent["length"].tolist()):
            a, b = by_producer.get(p, (o, o + n))
            by_producer[p] = (min(a, o), max(b, o + n))
        spans = sorted(by_producer.items())
        got = store.read_ranges([_join(folder, part_name(p)) for p, _ in spans], [a for _, (a, _) in spans],
                                [b for _, (_, b) in spans])
        whole = {p: (a, memoryview(blob)) for (p, (a, _)), blob in zip(spans, got)}
        blobs = [whole[p][1][o - whole[p][0]:o - whole[p][0] + n]
                 for p, o, n in zip(ent["producer"].tolist(), ent["offset"].tolist(), ent["length"].tolist())]
        if not _intact(ent, blobs):
            continue
        cons = ent["consumer"]
        for c in consumers:
            lo, hi = np.searchsorted(cons, c, side="left"), np.searchsorted(cons, c, side="right")
            ahead[(folder, c)] = (schema, ent[lo:hi], blobs[lo:hi])
    token = _ahead.set(ahead)
    try:
        yield
    finally:
        _ahead.reset(token)


# -- consumers -----------------------------------------------------------------------------

def read_partitions(store: Store, folder: str, consumer: int, *, producers: int | None = None,
                    consumers: int | None = None) -> list[tuple[int, pa.Table]]:
    """``(producer, rows)`` for every producer that sent rows to ``consumer``, in producer
    order. Builds the folder's index first if nobody has (see :func:`build_index`)."""
    ahead = (_ahead.get() or {}).get((folder, consumer))
    if ahead is not None:
        return _tables(*ahead)
    for attempt in (0, 1):
        if attempt or not store.exists(_join(folder, INDEX_NAME)):
            build_index(store, folder, producers, consumers)
        schema, ent = _entries(store, folder, consumer)
        if not len(ent):
            return []
        blobs = store.read_ranges([_join(folder, part_name(int(p))) for p in ent["producer"]],
                                  [int(o) for o in ent["offset"]],
                                  [int(o + n) for o, n in zip(ent["offset"], ent["length"])])
        if _intact(ent, blobs):
            break
        if attempt:
            raise RuntimeError(f"{store.url(folder)}: the exchange index does not match its files "
                               "(a producer's file changed while consumers read it)")
    return _tables(schema, ent, blobs)


def _intact(ent: np.ndarray, blobs: list) -> bool:
    """Every byte range matches the crc32 the index holds for it."""
    return all(zlib.crc32(b) == int(c) for b, c in zip(blobs, ent["crc"]))


def _tables(schema: pa.Schema | None, ent: np.ndarray, blobs: list) -> list[tuple[int, pa.Table]]:
    """``(producer, rows)`` parsed from each entry's bytes (an IPC record batch message)."""
    return [(int(p), pa.Table.from_batches([pa.ipc.read_record_batch(pa.ipc.read_message(pa.py_buffer(b)), schema)]))
            for p, b in zip(ent["producer"], blobs)]


def read_partition(store: Store, folder: str, consumer: int, columns: list[str] | None = None, *,
                   producers: int | None = None, consumers: int | None = None,
                   producer_column: str | None = None) -> pa.Table | None:
    """All rows sent to ``consumer`` by every producer, concatenated in producer order, as
    ``columns`` plus ``producer_column`` (uint32): the column of that name a producer wrote
    (a producer of several shards names each row's), else the producer's index; None when
    none."""
    got = read_partitions(store, folder, consumer, producers=producers, consumers=consumers)
    if not got:
        return None
    tables = []
    for p, t in got:
        if producer_column and producer_column not in t.column_names:
            t = t.append_column(producer_column, pa.array(np.full(t.num_rows, p, np.uint32)))
        if columns is not None:
            t = t.select(columns + ([producer_column] if producer_column else []))
        tables.append(t)
    return pa.concat_tables(tables)


def read_all(store: Store, folder: str, producer: int, columns: list[str] | None = None) -> pa.Table:
    """Everything producer ``producer`` wrote (every consumer's rows), as one table."""
    with store.open(_join(folder, part_name(producer))) as f:
        t = pa.ipc.open_file(pa.py_buffer(f.read())).read_all()
    return t.select(columns) if columns is not None else t


# -- Parquet with a row group per value (read one file at a time) ---------------------------

def write_row_groups(store: Store, rel: str, table: pa.Table, metadata: dict[str, str] | None = None) -> None:
    """Write ``table`` (already sorted by its first column) with a row group per value."""
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with store.open_atomic(rel) as f:
        with pq.ParquetWriter(f, table.schema, compression="zstd") as w:
            col = table.column(0).to_numpy()
            cuts = np.flatnonzero(np.diff(col)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(col)]):
                if hi > lo:
                    w.write_table(table.slice(lo, hi - lo))
            if len(col) == 0:
                w.write_table(table)


def read_row_groups(store: Store, rel: str, value: int, columns: list[str]) -> pa.Table | None:
    """The rows of ``rel`` whose first column equals ``value`` (only their row groups are
    read), as ``columns``; None when there are none."""
    with store.open(rel) as f:
        pf = pq.ParquetFile(f)
        first = pf.schema_arrow.names[0]
        groups = []
        for g in range(pf.num_row_groups):
            st = pf.metadata.row_group(g).column(0).statistics
            if st is None or not st.has_min_max or st.min <= value <= st.max:
                groups.append(g)
        if not groups:
            return None
        t = pf.read_row_groups(groups, columns=[first, *[c for c in columns if c != first]])
    t = t.filter(pc.equal(t.column(first), pa.scalar(value, t.schema.field(first).type)))
    return t.select(columns) if t.num_rows else None
