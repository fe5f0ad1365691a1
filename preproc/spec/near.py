"""``dedup.near``: the near-dedup options, validated and resolved once, when the spec loads.

A user writes ``true`` or a mapping (:class:`NearSettings`: every key they may set); the
spec holds the resolved, frozen :class:`NearOptions` (bands and rows chosen for the
threshold, verification decided), or ``None`` when near dedup is off. Every stage, the
refresh and the summary read that one object; nobody re-parses the spec's JSON.

The object also keeps the value as written (:attr:`NearOptions.written`): ``plan.json``
holds the spec as the user wrote it, and the run id is a hash of that JSON, so the spec
serializes ``dedup.near`` back to exactly that (:func:`near_json`).

How a few values resolve:

==================================  =====================================
``true`` / ``{}``                   16 x 6, verified at 0.8 (``-v0.8``)
``{threshold: 0.7}``                bands x rows for 0.7, verified
``{bands: 14, rows: 8}``            14 x 8, every candidate a duplicate
``{verify: false}``                 14 x 8, every candidate a duplicate
``{threshold: 0.8, verify: false}`` the balanced S-curve at 0.8
==================================  =====================================
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from preproc.dedup.minhash import MinHashParams, lsh_params
from preproc.errors import ConfigError

__all__ = ["NearSettings", "NearOptions", "resolve_near", "near_json", "DEFAULT_THRESHOLD", "LOCAL_MAX_EDGES",
           "MAX_ROUNDS"]

# The Jaccard threshold of ``dedup.near: true`` (and of any config that verifies without one).
DEFAULT_THRESHOLD = 0.8
# Upper bound of dedup.near.max_rounds: round stages are registered by name up front.
MAX_ROUNDS = 64
# Edges (undirected) up to which one worker finds the components in memory in one stage
# (about 200 bytes per edge at the peak of local_components: 1 GB).
LOCAL_MAX_EDGES = 5_000_000


class NearSettings(BaseModel):
    """``dedup.near`` as a mapping: what a user may set. Defaults: word 5-grams, Jaccard
    threshold 0.8 with every candidate pair verified (16 bands x 6 rows of the 112
    permutations), seed 1, keep the first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Shingles: runs of ``ngram`` words (``word``) or characters (``char``: languages
    # written without spaces); text lower-cased, punctuation and whitespace folded.
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(default=5, ge=1, le=64)
    # LSH: ``bands x rows`` permutations. Set both, or leave them to be chosen for the
    # threshold within ``num_perm`` permutations (unverified without a threshold: 14 x 8).
    bands: int | None = Field(default=None, ge=1, le=512)
    rows: int | None = Field(default=None, ge=1, le=64)
    # The Jaccard of word (or char) n-gram sets from which two documents are duplicates
    # (default 0.8 when verifying).
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    num_perm: int = Field(default=112, ge=1, le=1024)
    seed: int = Field(default=1, ge=0, lt=2**63)
    # Check each candidate pair's exact Jaccard against ``threshold`` before it counts.
    # Default: on, unless ``bands`` and ``rows`` are set without a ``threshold``.
    verify: bool | None = None
    # Which document of a cluster stays: the first in input order, or the longest.
    keep: Literal["first", "longest"] = "first"
    # Write the clusters (members and kept document) to near/<config>/clusters/.
    keep_clusters: bool = False
    # Fan-out of the pair, component and cluster stages (default: one per 128 MB of input).
    buckets: int | None = Field(default=None, ge=1)
    # Edges up to which the components are found in one stage by one worker, in memory;
    # beyond, rounds of large-/small-star over the buckets. 0: always rounds.
    local_max_edges: int = Field(default=LOCAL_MAX_EDGES, ge=0)
    # Planned component rounds; the rounds after convergence cost a marker read.
    max_rounds: int = Field(default=20, ge=1, le=MAX_ROUNDS)
    # Documents per signature batch (memory per worker grows with it).
    batch_size: int = Field(default=1024, ge=1)

    def problem(self) -> tuple[str, str] | None:
        """``(key, message)`` of the first inconsistency between options, if any."""
        if (self.bands is None) != (self.rows is None):
            missing = "rows" if self.rows is None else "bands"
            return missing, "set both bands and rows (or neither, to choose them from the threshold)"
        if self.bands is not None and self.rows is not None and self.bands * self.rows > 4096:
            return "bands", f"bands x rows must be at most 4096 permutations (got {self.bands * self.rows})"
        return None


@dataclass(frozen=True)
class NearOptions:
    """``dedup.near`` resolved: the bands and rows chosen, verification decided.

    ``written`` is the value as the user wrote it (``true`` or the mapping): what the spec
    serializes, so ``plan.json`` and the run id do not depend on this resolution."""

    minhash: MinHashParams
    threshold: float | None
    verify: bool
    keep: str
    keep_clusters: bool
    buckets: int | None
    max_rounds: int
    batch_size: int
    local_max_edges: int = LOCAL_MAX_EDGES
    written: bool | dict[str, Any] = dataclasses.field(default=True, compare=False)

    @property
    def canonical(self) -> str:
        """``minhash-5g-14b8r-s1``, plus ``-v0.8`` when verifying at 0.8 and ``-longest``
        when keeping the longest document: every knob that changes a result. It names
        the working folder (``near/<canonical>``), so a changed knob never reuses results."""
        s = self.minhash.canonical
        if self.verify:
            s += f"-v{self.threshold:g}"
        if self.keep != "first":
            s += f"-{self.keep}"
        return s

    def as_unverified(self) -> NearOptions:
        """These options as an unverified config would resolve them (what ``near: true`` or
        a threshold meant before verification became the default), written with explicit
        ``bands`` and ``rows``: the options a refresh names to go on with such a dataset."""
        written = dict(self.written) if isinstance(self.written, dict) else {}
        classic = resolve_near({**written, "verify": False})
        assert classic is not None
        keep = {k: v for k, v in written.items() if k not in ("threshold", "verify", "num_perm")}
        keep.update(bands=classic.minhash.bands, rows=classic.minhash.rows)
        out = resolve_near(keep)
        assert out is not None
        return out


def _settings(value: bool | dict[str, Any]) -> NearSettings:
    if isinstance(value, bool):
        return NearSettings(enabled=value)
    if not isinstance(value, dict):
        raise ConfigError("dedup.near: must be true, false or a mapping of options")
    try:
        opts = NearSettings.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; allowed: {', '.join(NearSettings.model_fields)}"
        elif err["type"] != "value_error" and "input" in err:
            msg = f"{msg} (got {err['input']!r:.80})"
        raise ConfigError(f"dedup.near{'.' + loc if loc else ''}: {msg}") from None
    bad = opts.problem()
    if bad:
        raise ConfigError(f"dedup.near.{bad[0]}: {bad[1]}")
    return opts


def resolve_near(value: Any) -> NearOptions | None:
    """``dedup.near`` as written → the resolved options (``None``: off). Errors are one
    :class:`~preproc.errors.ConfigError` line naming ``dedup.near.<key>``."""
    if value is None or isinstance(value, NearOptions):
        return value
    o = _settings(value)
    if not o.enabled:
        return None
    # Bands and rows without a threshold are an LSH-only config (as datatrove's 14 x 8);
    # everything else verifies, at 0.8 unless told otherwise.
    verify = o.verify if o.verify is not None else not (o.bands is not None and o.threshold is None)
    threshold = o.threshold if o.threshold is not None else (DEFAULT_THRESHOLD if verify else None)
    if o.bands is not None and o.rows is not None:
        bands, rows = o.bands, o.rows
    elif threshold is not None:
        bands, rows = lsh_params(threshold, o.num_perm, verify=verify)
    else:                       # verify: false alone: the unverified classic
        bands, rows = 14, 8
    mh = MinHashParams(ngram=o.ngram, unit=o.shingle, bands=bands, rows=rows, seed=o.seed)
    return NearOptions(minhash=mh, threshold=threshold, verify=verify, keep=o.keep,
                       keep_clusters=o.keep_clusters, buckets=o.buckets, max_rounds=o.max_rounds,
                       batch_size=o.batch_size, local_max_edges=o.local_max_edges, written=copy.deepcopy(value))


def near_json(value: NearOptions | None) -> bool | dict[str, Any]:
    """What the spec's JSON holds for ``dedup.near``: the value as written (``false`` when off)."""
    return False if value is None else copy.deepcopy(value.written)
