"""Incremental refresh: process only new inputs, as a new generation, deduplicated against
everything kept before; publish it in one atomic step.

Layout under the dataset root (the spec's ``output``)::

    dataset.json                  the current manifest: every generation's shards, totals
    generations/00001/            a complete run (plan.json, stages, tokens/, dataset.json)
    generations/00002/
    _state/state.json             published generations, their inputs, the dedup index
                                  segments, and the generation in progress (if any)
    _state/manifests/dataset-v00002.json   each published manifest, kept
    _state/exact/gen-00001/bucket-00000.parquet   exact-hash index of kept documents,
                                  partitioned into the same buckets as the exact-dedup stage
    _state/near/gen-00001/part-00000.parquet      MinHash band keys of kept documents (with
                                  ``dedup.near``), partitioned into the near_pairs buckets;
                                  verifying, each row also names its document (generation,
                                  shard, row), whose text stays in generations/<n>/clean/
    _state/lease/                 the refresh lease (compare-and-swap, with an expiry:
                                  preproc.io.lease)

A generation's ``exact_dedup`` bucket ``j`` reads bucket ``j`` of every earlier segment
(never the whole index in one process), drops new documents already kept before, and writes
the hashes it keeps as this generation's segment. Publishing writes the versioned manifest,
then ``dataset.json`` (one atomic object), then ``state.json``: a training job that reads
``dataset.json`` always sees a consistent set of generations, and a refresh that dies
halfway leaves the previous manifest in place; the next refresh finishes the pending
generation first.

Near duplicates of earlier generations: a new document that shares a band key with one an
earlier generation kept is a candidate. Without verification that is enough to drop it.
With it (the default), ``near_shingles`` reads the earlier document's shingle set from its
generation's ``clean/`` part (kept for the dataset's life; the segments name generation,
shard and row) and ``near_verify`` drops the new one only if their Jaccard reaches the
threshold; the published document always stays.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from preproc.dedup.near import compact_segments
from preproc.engine.plan import Plan
from preproc.engine.refresh_context import EarlierGeneration, RefreshContext
from preproc.engine.runner import build_plan, execute, prepare
from preproc.errors import ConfigError
from preproc.io import layout
from preproc.io.lease import EXIT_LOCKED, Lease, LeaseHeld, check_ttl  # noqa: F401  (EXIT_LOCKED re-exported)
from preproc.io.listing import InputFile, list_inputs
from preproc.io.ownership import check_dataset_root, check_paths
from preproc.io.s3 import join
from preproc.io.store import Store
from preproc.spec import Spec, load_spec
from preproc.spec.near import NearOptions

__all__ = ["refresh", "RefreshResult", "RefreshLocked"]

log = logging.getLogger("preproc")

# Another refresh (or run) holds the dataset: exit 75 (EX_TEMPFAIL), try again later.
RefreshLocked = LeaseHeld


@dataclass
class RefreshResult:
    output: str
    generation: int | None      # the generation this refresh published (None: nothing new)
    new_files: int
    message: str
    dataset: dict[str, Any] | None
    stats: dict[str, Any] | None = None


# -- lock ---------------------------------------------------------------------------------

def Lock(store: Store, ttl_s: float = 600) -> Lease:
    """The refresh lease on a dataset root (see :mod:`preproc.io.lease`): one refresh at a time,
    with an expiry so that a dead holder does not block the next CronJob run forever."""
    return Lease(store, layout.REFRESH_LEASE, ttl_s=ttl_s, what="refresh")


# -- state --------------------------------------------------------------------------------

def load_state(store: Store) -> dict[str, Any]:
    try:
        return store.read_json(layout.STATE)
    except FileNotFoundError:
        return {"version": 1, "generations": [], "pending": None, "exact_buckets": None,
                "segments": {"exact": []}, "tokenizer_sha256": None}


def _seen(state: dict[str, Any]) -> set[tuple[str, str]]:
    seen = {(f["uri"], f["fingerprint"]) for g in state["generations"] for f in g["files"]}
    if state.get("pending"):
        seen |= {(f["uri"], f["fingerprint"]) for f in state["pending"]["files"]}
    return seen


def _file_json(f: InputFile) -> dict[str, Any]:
    return {"uri": f.uri, "rel": f.rel, "format": f.format, "compression": f.compression,
            "bytes": f.bytes, "fingerprint": f.fingerprint}


def _manifest(root: Store, state: dict[str, Any], gen: int, gen_ds: dict[str, Any],
              gen_stats: dict[str, Any]) -> dict[str, Any]:
    try:
        prev = root.read_json(layout.DATASET)
    except FileNotFoundError:
        prev = None
    gens = list(prev["generations"]) if prev else []
    prefix = layout.generation(gen)
    shards = list(prev["shards"]) if prev else []
    for sh in gen_ds["shards"]:
        e = dict(sh, generation=gen)
        for k in ("parquet", "megatron"):
            if k in e:
                e[k] = f"{prefix}/{e[k]}"
        shards.append(e)
    gens.append({"generation": gen, "path": prefix, "documents": gen_ds["documents"], "tokens": gen_ds["tokens"],
                 "run_id": gen_ds["run_id"], "created_s": gen_ds["created_s"],
                 "read": gen_stats["read"], "duplicates": gen_stats["duplicates"]})
    return {
        "format_version": gen_ds["format_version"],
        "version": gen,
        "generations": gens,
        "documents": sum(g["documents"] for g in gens),
        "tokens": sum(g["tokens"] for g in gens),
        "dtype": gen_ds["dtype"],
        "megatron_dtype": gen_ds["megatron_dtype"],
        "formats": gen_ds["formats"],
        "tokenizer": dict(gen_ds["tokenizer"], path=f"{prefix}/{gen_ds['tokenizer']['path']}"),
        "shards": [dict(s, index=i) for i, s in enumerate(shards)],
    }


def _publish(root: Store, state: dict[str, Any], lock: Lease) -> dict[str, Any]:
    pend = state["pending"]
    n = pend["generation"]
    gstore = Store(join(root.uri, layout.generation(n)), root.storage)
    gen_ds, gen_stats = gstore.read_json(layout.DATASET), gstore.read_json(layout.STATS)
    try:
        cur = root.read_json(layout.DATASET)
    except FileNotFoundError:
        cur = None
    if cur is None or cur.get("version") != n:    # not published yet (or died before the pointer)
        manifest = _manifest(root, state, n, gen_ds, gen_stats)
        lock.renew()
        root.write_json(layout.manifest(n), manifest)
        root.write_json(layout.DATASET, manifest)
    else:
        manifest = cur
    state["generations"].append({"generation": n, "files": pend["files"], "run_id": gen_ds["run_id"],
                                 "shards": len(gstore.read_json(layout.PLAN)["shards"])})
    state["segments"]["exact"].append(layout.segment("exact", n))
    if state.get("near_canonical"):
        state["segments"].setdefault("near", []).append(layout.segment("near", n))
    state["pending"] = None
    root.write_json(layout.STATE, state)
    return manifest


def compact(root: Store, state: dict[str, Any], n: int, lock: Lease, *, near_verified: bool = False) -> None:
    """Merge the dedup index segments of all generations into one per index (when they pile
    up), bucket by bucket: memory is bounded by one bucket, never the whole index. The new
    segment is written completely, then ``state.json`` points at it (one atomic step), then
    the old segments are removed; a compaction that dies halfway leaves the old ones in use.
    ``near_verified``: the near segments name their documents (verified near dedup), and the
    merged one keeps those names."""
    new_exact = layout.segment("exact", n, compact=True)
    for j in range(state["exact_buckets"]):
        parts = []
        for seg in state["segments"]["exact"]:
            with root.open(f"{seg}/{layout.bucket(j)}") as f:
                parts.append(pq.read_table(f))
        t = pa.concat_tables(parts) if parts else pa.table({"h1": pa.array([], pa.uint64()), "h2": pa.array([], pa.uint64())})
        with root.open_atomic(f"{new_exact}/{layout.bucket(j)}") as f:
            pq.write_table(t, f, compression="zstd")
    new_near = None
    if state.get("segments", {}).get("near"):
        new_near = layout.segment("near", n, compact=True)
        for j in range(state["near_buckets"]):
            t = compact_segments(root, state["segments"]["near"], j, verified=near_verified)
            with root.open_atomic(f"{new_near}/{layout.bucket(j)}") as f:
                pq.write_table(t, f, compression="zstd")
        lock.renew()
    old = list(state["segments"]["exact"]) + list(state["segments"].get("near", []))
    state["segments"]["exact"] = [new_exact]
    if new_near:
        state["segments"]["near"] = [new_near]
    root.write_json(layout.STATE, state)
    for seg in old:
        root.rm(seg)
    log.info("compacted %d index segments into generation %d's", len(old), n)


def refresh(spec: Spec | str | Path | dict[str, Any], *, progress: bool = False,
            executor_options: dict[str, Any] | None = None, lock_ttl_s: float = 600,
            compact_after: int = 8, **overrides: Any) -> RefreshResult:
    """Process the inputs not seen before as a new generation and publish it.

    Once ``compact_after`` generations have their own dedup index segments, they are merged
    into one first (:func:`compact`).

    >>> preproc.refresh("jobs/web.yaml")          # doctest: +SKIP
    RefreshResult(generation=3, new_files=12, ...)
    """
    s = load_spec(spec, **overrides)
    lock_ttl_s = check_ttl(lock_ttl_s)
    if not s.output:
        raise ConfigError("output: refresh needs an output (the dataset root)")
    check_paths(s)
    root = Store(s.output, s.storage)
    if root.exists(layout.PLAN):
        raise ConfigError(f"{root.url()}: holds a plain run (plan.json at its root); refresh needs a dataset "
                          "root of its own")
    check_dataset_root(root, layout.STATE)
    files = list_inputs(s)        # before the lock: a spec error must not take it
    with Lock(root, lock_ttl_s) as lock:
        if not check_dataset_root(root, layout.STATE):
            root.write_json(layout.STATE, load_state(root))     # the dataset's record, first
        state = load_state(root)
        published = None
        if state.get("pending"):
            log.info("finishing generation %d left by an earlier refresh", state["pending"]["generation"])
            published = _run_pending(root, state, s, lock, progress, executor_options)
        seen = _seen(state)
        new = [f for f in files if (f.uri, f.fingerprint) not in seen]
        if not new:
            ds = published or (root.read_json(layout.DATASET) if root.exists(layout.DATASET) else None)
            last = state["generations"][-1]["generation"] if state["generations"] else None
            msg = ("nothing new: " if published is None else f"finished generation {last}; nothing else new: ") \
                + f"all {len(files)} input file(s) already processed"
            gen = state["generations"][-1]["generation"] if published is not None else None
            return RefreshResult(s.output, gen, 0, msg, ds)
        n = (state["generations"][-1]["generation"] if state["generations"] else 0) + 1
        near = _near_state(s, state)    # before compacting: a refused config changes nothing
        if len(state["segments"]["exact"]) >= max(2, compact_after):
            compact(root, state, n, lock, near_verified=near is not None and near.verify)
        if state["exact_buckets"] is None:
            # Fixed for the dataset's life: earlier index segments are partitioned this way.
            state["exact_buckets"] = s.dedup.exact.buckets or max(16, s.shards or 0)
        state["pending"] = {"generation": n, "files": [_file_json(f) for f in new], "started_s": time.time()}
        root.write_json(layout.STATE, state)
        manifest = _run_pending(root, state, s, lock, progress, executor_options, files=new)
        g = state["generations"][-1]
        return RefreshResult(s.output, n, len(new), f"generation {n}: {len(new)} new file(s), "
                             f"{manifest['generations'][-1]['documents']:,} documents added", manifest,
                             Store(join(root.uri, layout.generation(g["generation"])), s.storage).read_json(layout.STATS))


def _gen_spec(s: Spec, root: Store, n: int, state: dict[str, Any]) -> Spec:
    d = s.to_json()
    d["output"] = join(root.uri, layout.generation(n))
    d["dedup"]["exact"]["buckets"] = state["exact_buckets"]
    near = d["dedup"].get("near")
    if s.dedup.near is not None:
        near = {"enabled": True} if near is True else dict(near)
        near["buckets"] = state["near_buckets"]
        d["dedup"]["near"] = near
    return load_spec(d)


def _near_state(s: Spec, state: dict[str, Any]) -> NearOptions | None:
    """Fix the near-dedup partitioning for the dataset's life and refuse a changed config
    (earlier generations' band keys were made with it); the resolved config, or None."""
    cfg = s.dedup.near
    canon = cfg.canonical if cfg is not None else None
    if state.get("near_canonical", canon) != canon and state["generations"]:
        was = state.get("near_canonical")
        hint = ""
        if was and cfg is not None and cfg.verify:
            # Most likely `near: true` from before verification became its default: name the
            # options that give the dataset's config back, when bands and rows suffice.
            twin = cfg.as_unverified()      # its canonical never ends in -v<threshold>
            if twin.canonical == was:
                hint = f"; to go on with it, set dedup.near: {json.dumps(twin.written)} (no verification)"
        raise ConfigError(f"dedup.near: this dataset's generations were deduplicated with "
                          f"{was or 'no near dedup'}; a refresh must use the same "
                          f"(now: {canon or 'off'}){hint}")
    state["near_canonical"] = canon
    if cfg is not None and state.get("near_buckets") is None:
        state["near_buckets"] = cfg.buckets or max(16, s.shards or 0)
    return cfg


def _gen_shards(root: Store, n: int, s: Spec) -> int:
    """The shard count of a published generation (state written before it was recorded)."""
    return len(Store(join(root.uri, layout.generation(n)), s.storage).read_json(layout.PLAN)["shards"])


def _run_pending(root: Store, state: dict[str, Any], s: Spec, lock: Lease, progress: bool,
                 executor_options: dict[str, Any] | None, files: list[InputFile] | None = None) -> dict[str, Any]:
    pend = state["pending"]
    n = pend["generation"]
    gspec = _gen_spec(s, root, n, state)
    out = join(root.uri, layout.generation(n))      # what _gen_spec set as the output
    gstore = Store(out, gspec.storage)
    if gstore.exists(layout.PLAN):
        plan = Plan.load(out, gspec.storage)
    else:
        if files is None:
            files = [InputFile(**{k: f[k] for k in ("uri", "rel", "format", "compression", "bytes", "fingerprint")})
                     for f in pend["files"]]
        earlier = None
        if state.get("near_canonical") and state["segments"].get("near"):
            # Verified near dedup reads earlier documents from their generations' clean/
            # parts: which generations, and how many shards each (to number them).
            earlier = tuple(EarlierGeneration(g["generation"], layout.generation(g["generation"]),
                                              g.get("shards") or _gen_shards(root, g["generation"], s))
                            for g in state["generations"])
        info = RefreshContext(root=root.uri, generation=n, exact_segments=tuple(state["segments"]["exact"]),
                              exact_segment_out=layout.segment("exact", n),
                              near_segments=tuple(state["segments"].get("near", [])),
                              near_segment_out=layout.segment("near", n) if state.get("near_canonical") else None,
                              near_earlier=earlier)
        plan = prepare(gspec, planned=build_plan(gspec, files=files, refresh=info))
    sha = plan.tokenizer.get("sha256")
    if state.get("tokenizer_sha256") and sha != state["tokenizer_sha256"]:
        raise ConfigError(f"tokenize.tokenizer: differs from the one earlier generations used "
                          f"(sha256 {state['tokenizer_sha256'][:12]}...); a dataset has one tokenizer")
    state["tokenizer_sha256"] = sha
    lock.renew()
    execute(plan, gspec, progress=progress, executor_options=executor_options, on_stage=lambda _: lock.renew())
    return _publish(root, state, lock)
