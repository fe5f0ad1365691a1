"""Near dedup's reads and writes: the exchange folders' schemas, the edge files of the
component stages, and the text of a shard's clean part.

Every hand-over between two stages is an exchange (:mod:`preproc.io.exchange`): a file per
producing index, sorted by its first column (the consumer's index), one batch per value,
and one merged index per folder: consumer ``j`` reads only its byte ranges. The refresh
segments (read one file at a time) stay Parquet with a row group per value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from preproc.dedup.components import local_components, node_partition, unique_edges
from preproc.io.exchange import read_partition, write_partitioned
from preproc.io.layout import clean_part

if TYPE_CHECKING:
    from preproc.io.store import Store

KEYS_SCHEMA = pa.schema([("bucket", pa.uint32()), ("key", pa.uint64()), ("shard", pa.uint32()),
                         ("row", pa.uint32()), ("prio", pa.uint64())])
EDGE_SCHEMA = pa.schema([("part", pa.uint32()), ("src", pa.uint64()), ("dst", pa.uint64()),
                         ("sprio", pa.uint64()), ("dprio", pa.uint64())])
CAND_SCHEMA = pa.schema([("shard", pa.uint32()), ("role", pa.uint8()), ("a", pa.uint64()),
                         ("b", pa.uint64())])
SHINGLES_SCHEMA = pa.schema([("shard", pa.uint32()), ("b", pa.uint64()), ("prio", pa.uint64()),
                             ("shingles", pa.large_list(pa.uint32()))])
MEMBERS_SCHEMA = pa.schema([("shard", pa.uint32()), ("row", pa.uint32()), ("kept_shard", pa.uint32()),
                            ("kept_row", pa.uint32())])
CLUSTERS_SCHEMA = pa.schema([("kept_shard", pa.uint32()), ("kept_row", pa.uint32()), ("shard", pa.uint32()),
                             ("row", pa.uint32()), ("id", pa.string()), ("kept", pa.bool_())])
EDGE_COLUMNS = ["src", "dst", "sprio", "dprio"]


def read_parts(store: Store, folder: str, part: int, columns: list[str],
               types: list[pa.DataType], producer_column: str | None = None) -> dict[str, np.ndarray]:
    """Partition ``part`` of an exchange as numpy columns (typed empty ones when no
    producer wrote any)."""
    t = read_partition(store, folder, part, columns, producer_column=producer_column)
    if t is None:
        cols = columns + ([producer_column] if producer_column else [])
        tys = types + ([pa.uint32()] if producer_column else [])
        return {c: np.empty(0, dtype=ty.to_pandas_dtype()) for c, ty in zip(cols, tys)}
    return {c: t.column(c).to_numpy() for c in t.column_names}


def iter_rows(store: Store, shard: int | str, rows: np.ndarray | None,
              batch_size: int) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """``(rows, text)`` batches of ``clean/part-i`` (or of the part file ``shard`` names;
    only ``rows``, sorted, when given), skipping the row groups that hold none of them."""
    with store.open(shard if isinstance(shard, str) else clean_part(shard)) as f:
        pf = pq.ParquetFile(f)
        starts = np.zeros(pf.num_row_groups + 1, dtype=np.int64)
        for g in range(pf.num_row_groups):
            starts[g + 1] = starts[g] + pf.metadata.row_group(g).num_rows
        for g in range(pf.num_row_groups):
            lo, hi = starts[g], starts[g + 1]
            if rows is not None:
                want = rows[np.searchsorted(rows, lo):np.searchsorted(rows, hi)]
                if not len(want):
                    continue
            row0 = lo
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=["text"]):
                n = batch.num_rows
                r = np.arange(row0, row0 + n, dtype=np.int64)
                text = batch.column(0)
                row0 += n
                if rows is not None:
                    sel = np.isin(r, want, assume_unique=True)
                    if not sel.any():
                        continue
                    r, text = r[sel], text.filter(pa.array(sel))
                yield r, text


def write_edges(store: Store, folder: str, producer: int, x: np.ndarray, y: np.ndarray, xp: np.ndarray,
                yp: np.ndarray, parts: int, *, unconverged: int | None = None) -> int:
    """Write undirected edges both ways, each direction in the partition of its source;
    the number of undirected edges."""
    src, dst, sp, dp = unique_edges(np.concatenate([x, y]), np.concatenate([y, x]),
                                    np.concatenate([xp, yp]), np.concatenate([yp, xp]))
    part = node_partition(src, parts)
    order = np.argsort(part, kind="stable")    # stable: (src, dst) order kept in a part
    table = pa.table({"part": part[order], "src": src[order], "dst": dst[order], "sprio": sp[order],
                      "dprio": dp[order]}, schema=EDGE_SCHEMA)
    md = {"unconverged": str(unconverged)} if unconverged is not None else None
    write_partitioned(store, folder, producer, table, md)
    return int(len(src)) // 2


def read_edges(store: Store, folder: str, part: int) -> tuple[np.ndarray, ...]:
    """Partition ``part``'s directed edges ``(src, dst, sprio, dprio)``, sorted unique."""
    d = read_parts(store, folder, part, EDGE_COLUMNS, [pa.uint64()] * 4)
    return unique_edges(d["src"], d["dst"], d["sprio"], d["dprio"])


def contract(a: np.ndarray, b: np.ndarray, ids: np.ndarray,
             prio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges → a star per local component (node → smallest node), with the nodes' prio
    looked up in the sorted unique ``ids``."""
    nodes, roots = local_components(a, b)
    keep = nodes != roots
    nodes, roots = nodes[keep], roots[keep]
    return nodes, roots, prio[np.searchsorted(ids, nodes)], prio[np.searchsorted(ids, roots)]
