"""Names, constants and small helpers that every near-dedup stage shares.

A document is a node ``shard << 32 | row``: its row in ``clean/part-i.parquet``, so the
smallest node is the first in input order (:func:`node`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from preproc.errors import ConfigError
from preproc.io.layout import NearPaths
from preproc.observe.stats import add_counts
from preproc.spec.near import NearOptions

if TYPE_CHECKING:
    from preproc.engine.plan import Plan

U64 = np.uint64
ROW_MASK = U64(0xFFFFFFFF)
SIGNATURES, PAIRS, SHINGLES, VERIFY = "near_signatures", "near_pairs", "near_shingles", "near_verify"
CLUSTERS, DROPS = "near_clusters", "near_drops"
COMPONENTS = "near_components"
ROUND_PREFIX = "near_cc_"
# The near stages whose drop lists tokenize applies.
DROP_STAGES = (DROPS,)
# A near-dedup bucket per this many input bytes (at 1 KB per document and 16 bands, about
# 2 million band keys, 50 MB): the fan-out follows the data, not the shard count.
INPUT_BYTES_PER_BUCKET = 128 * 2**20


def round_name(k: int) -> str:
    """The stage of component round ``k``: ``near_cc_03``."""
    return f"{ROUND_PREFIX}{k:02d}"


def buckets_for(input_bytes: int) -> int:
    """The default fan-out of the bucket stages for this much input."""
    return max(1, -(-int(input_bytes) // INPUT_BYTES_PER_BUCKET))


def options(plan: Plan) -> NearOptions:
    """The plan's resolved near-dedup options (the stages are only planned when on)."""
    cfg = plan.spec.dedup.near
    if cfg is None:  # pragma: no cover - the stages are only planned when on
        raise ConfigError("dedup.near is off in this plan")
    return cfg


def paths(plan: Plan) -> NearPaths:
    """The plan's ``near/<canonical>/`` folders."""
    return NearPaths(options(plan).canonical)


def buckets(plan: Plan) -> int:
    """The fan-out of the bucket stages (pairs, rounds, clusters)."""
    return plan.stage(PAIRS).fan_out


def node(shard: int | np.ndarray, row: np.ndarray) -> np.ndarray:
    """Document ids: ``shard << 32 | row``."""
    return (np.asarray(shard, dtype=U64) << U64(32)) | np.asarray(row, dtype=U64)


def sum_stats(parts: list[dict[str, Any]], shards: range) -> dict[str, Any]:
    """The stats of a group index: its shards' (all counts) added up, and which shards."""
    return {**add_counts(parts), "shards": [shards.start, shards.stop]}


def unique_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``(x, y)`` rows, sorted."""
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    if len(x) > 1:
        new = np.r_[True, (x[1:] != x[:-1]) | (y[1:] != y[:-1])]
        x, y = x[new], y[new]
    return x, y


def priority(cfg: NearOptions, text: pa.Array) -> np.ndarray:
    """Smaller is kept first: 0 for ``first``; for ``longest``, fewer characters rank later."""
    if cfg.keep == "longest":
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
        return (U64(2**32 - 1) - np.minimum(chars, 2**32 - 1).astype(U64)).astype(U64)
    return np.zeros(len(text), dtype=U64)
