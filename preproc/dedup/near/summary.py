"""What ``stats.json`` reports under ``near`` (finalize calls :func:`summary`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from preproc.dedup.near.common import COMPONENTS, DROPS, PAIRS, SIGNATURES, VERIFY, options, paths, round_name

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store


def summary(plan: Plan, store: Store) -> dict[str, Any]:
    """Config, candidates, clusters, component rounds, from the stages' markers."""
    cfg = options(plan)

    def total(stage: str, key: str) -> int:
        return sum(int(m.get(key, 0)) for m in store.read_markers(stage).values())

    out: dict[str, Any] = {
        "config": cfg.canonical, "bands": cfg.minhash.bands, "rows": cfg.minhash.rows,
        "threshold": cfg.threshold, "verify": cfg.verify, "keep": cfg.keep,
        "documents": total(SIGNATURES, "docs"), "no_shingles": total(SIGNATURES, "no_shingles"),
        "band_groups": total(PAIRS, "groups"),
        "clusters": total(DROPS, "kept"), "duplicates": total(DROPS, "duplicates"),
        "components": (store.read_marker(COMPONENTS, 0) or {}).get("state"),
        "component_rounds": sum(1 for k in range(cfg.max_rounds)
                                if (store.read_marker(round_name(k), 0) or {}).get("state") == "work"),
    }
    if cfg.verify:
        out["candidate_pairs"] = total(VERIFY, "candidates")
        out["verified_pairs"] = total(VERIFY, "verified")
        if plan.refresh:
            out["earlier_candidate_pairs"] = total(VERIFY, "earlier_candidates")
            out["earlier_verified_pairs"] = total(VERIFY, "earlier_verified")
    if cfg.keep_clusters:
        out["clusters_path"] = paths(plan).clusters
    return out
