"""Near dedup in an incremental refresh: earlier generations' band-key segments.

Each generation leaves the band keys of the documents it kept under ``_state/near/``
(:func:`write_segment`); ``near_pairs`` of a later generation joins its band groups with
them. Without verification a shared key is enough (a stand-in node per key,
:data:`EARLIER_SHARD`). With it, the segments also name each earlier document (generation,
shard, row), it becomes a node of the candidate graph (:data:`EARLIER` set, priority 0: the
published document is always the keeper), ``near_shingles`` reads its shingle set from that
generation's ``clean/`` part (:func:`earlier_part`), and only a verified pair drops the new
document. :func:`compact_segments` merges the segments when they pile up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from preproc.dedup.near.common import ROW_MASK, SIGNATURES, U64, node, options, paths, unique_rows
from preproc.io.exchange import read_all, read_row_groups, write_row_groups
from preproc.io.layout import clean_part, segment_files, segment_part

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

EARLIER_SHARD = 0xFFFFFFFF      # unverified refresh: stands for "a document of an earlier generation"
SEGMENT_SCHEMA = pa.schema([("bucket", pa.uint32()), ("key", pa.uint64())])
# With verification a segment row also names the earlier document: its generation and
# ``shard << 32 | row`` in that generation's clean/ parts.
VERIFIED_SEGMENT_SCHEMA = pa.schema([("bucket", pa.uint32()), ("key", pa.uint64()), ("gen", pa.uint32()),
                                     ("doc", pa.uint64())])
# Verified refresh: the node of an earlier generation's document is this bit, then its
# shard numbered across all earlier generations (``near_earlier`` in the plan), then its
# row. It sorts after every node of the running generation, so in a candidate pair it is
# always the second, and with priority 0 it is always its cluster's keeper.
EARLIER = U64(1 << 63)


def _files(root: Store, seg: str, bucket: int) -> list[str]:
    return segment_files(seg, root.ls(seg), bucket)


def earlier_keys(plan: Plan, bucket: int) -> np.ndarray | None:
    """Band keys (bucket ``bucket``) of the documents earlier generations kept, or None."""
    segs = plan.refresh.near_segments if plan.refresh else ()
    if not segs:
        return None
    root = plan.refresh_root()
    parts = []
    for seg in segs:
        for rel in _files(root, seg, bucket):
            t = read_row_groups(root, rel, bucket, ["key"])
            if t is not None:
                parts.append(t.column("key").to_numpy())
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, U64)


def earlier_generations(plan: Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(generations, first global shard, shards, paths)`` of the earlier generations,
    sorted, from the plan's refresh context: how an earlier node names a part."""
    rows = sorted((plan.refresh.near_earlier or ()) if plan.refresh else (), key=lambda g: g.generation)
    gens = np.array([g.generation for g in rows], np.int64)
    shards = np.array([g.shards for g in rows], np.int64)
    base = np.cumsum(shards) - shards
    if len(shards) and int(shards.sum()) >= 2**31:   # pragma: no cover - 2 billion shards
        raise RuntimeError("near dedup: too many shards in earlier generations to number them")
    return gens, base, shards, [g.path for g in rows]


def earlier_docs(plan: Plan, bucket: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(key, node)`` of the documents earlier generations kept that have one of ``keys``
    (bucket ``bucket``), unique; the nodes as :data:`EARLIER` numbers them."""
    segs = plan.refresh.near_segments if plan.refresh else ()
    e = np.empty(0, U64)
    if not segs or not len(keys):
        return e, e
    root = plan.refresh_root()
    want = np.unique(keys)
    ks, gs, ds = [], [], []
    for seg in segs:
        for rel in _files(root, seg, bucket):
            t = read_row_groups(root, rel, bucket, ["key", "gen", "doc"])
            if t is None:
                continue
            k = t.column("key").to_numpy()
            sel = np.isin(k, want)
            ks.append(k[sel])
            gs.append(t.column("gen").to_numpy()[sel].astype(np.int64))
            ds.append(t.column("doc").to_numpy()[sel])
    if not ks or not sum(len(k) for k in ks):
        return e, e
    key, gen, doc = np.concatenate(ks), np.concatenate(gs), np.concatenate(ds)
    gens, base, _, _ = earlier_generations(plan)
    gi = np.searchsorted(gens, gen)
    if not len(gens) or (gi >= len(gens)).any() or (gens[np.minimum(gi, len(gens) - 1)] != gen).any():
        raise RuntimeError(f"near_pairs {bucket}: a near-dedup segment names a generation the plan does not list "
                           f"(plan: {gens.tolist()}, segment: {np.unique(gen).tolist()})")
    gshard = base[gi].astype(U64) + (doc >> U64(32))
    nodes = EARLIER | (gshard << U64(32)) | (doc & ROW_MASK)
    return unique_rows(key, nodes)


def earlier_part(plan: Plan, gshard: int) -> tuple[str, int]:
    """The clean/ part (relative to the dataset root) of an earlier global shard."""
    gens, base, _, gen_paths = earlier_generations(plan)
    g = int(np.searchsorted(base, gshard, side="right")) - 1
    shard = gshard - int(base[g])
    return f"{gen_paths[g]}/{clean_part(shard)}", shard


def write_segment(plan: Plan, store: Store, index: int, dropped_rows: np.ndarray,
                  keys: dict[int, pa.Table] | None = None) -> None:
    """This generation's kept documents' band keys (and, verifying, who they are), for the
    generations after it: shard ``index``'s, from the signatures file of its group (read
    once per group when ``keys`` caches them by signatures index)."""
    cfg = options(plan)
    assert plan.refresh is not None and plan.refresh.near_segment_out
    producer = plan.index_of(SIGNATURES, index)
    t = keys.get(producer) if keys is not None else None
    if t is None:
        t = read_all(store, paths(plan).keys, producer)
        if keys is not None:
            keys[producer] = t
    if "shard" in t.column_names:
        t = t.filter(pc.equal(t.column("shard"), pa.scalar(index, pa.uint32())))
    row = t.column("row").to_numpy()
    keep = ~np.isin(row, dropped_rows)
    cols = {"bucket": t.column("bucket").to_numpy()[keep], "key": t.column("key").to_numpy()[keep]}
    if cfg.verify:
        cols["gen"] = np.full(int(keep.sum()), int(plan.refresh.generation), np.uint32)
        cols["doc"] = node(index, row[keep])
    seg = pa.table(cols, schema=VERIFIED_SEGMENT_SCHEMA if cfg.verify else SEGMENT_SCHEMA)
    write_row_groups(plan.refresh_root(), segment_part(plan.refresh.near_segment_out, index), seg)


def compact_segments(root: Store, segs: list[str], bucket: int, *, verified: bool) -> pa.Table:
    """Bucket ``bucket`` of the near-dedup segments ``segs`` merged into one table (unique
    rows, sorted): what :func:`preproc.engine.refresh.compact` writes as ``bucket-j``. With
    ``verified`` the rows keep the earlier documents' identities (``gen``, ``doc``)."""
    cols = ["key", "gen", "doc"] if verified else ["key"]
    tables = []
    for seg in segs:
        for rel in _files(root, seg, bucket):
            t = read_row_groups(root, rel, bucket, cols)
            if t is not None:
                tables.append(t)
    if verified:
        t = pa.concat_tables(tables) if tables else VERIFIED_SEGMENT_SCHEMA.empty_table().select(cols)
        key, gen, doc = (t.column(c).to_numpy() for c in cols)
        order = np.lexsort((doc, gen, key))
        key, gen, doc = key[order], gen[order], doc[order]
        if len(key) > 1:
            new = np.r_[True, (key[1:] != key[:-1]) | (gen[1:] != gen[:-1]) | (doc[1:] != doc[:-1])]
            key, gen, doc = key[new], gen[new], doc[new]
        return pa.table({"bucket": np.full(len(key), bucket, np.uint32), "key": key, "gen": gen.astype(np.uint32),
                         "doc": doc}, schema=VERIFIED_SEGMENT_SCHEMA)
    key = np.unique(np.concatenate([t.column("key").to_numpy() for t in tables])) if tables else np.empty(0, U64)
    return pa.table({"bucket": np.full(len(key), bucket, np.uint32), "key": key}, schema=SEGMENT_SCHEMA)
