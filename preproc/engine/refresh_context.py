"""What a generation of an incremental refresh knows about its dataset: the typed
``Plan.refresh`` (written into ``plan.json`` as the dict :meth:`RefreshContext.to_json` gives).

The refresh (:mod:`preproc.engine.refresh`) builds it; the dedup stages read it: exact dedup
the earlier generations' exact-hash segments and where to write its own, near dedup the
band-key segments, where to write its own, and (verifying) which earlier generations'
``clean/`` parts hold the documents those segments name. Paths are relative to ``root``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RefreshContext", "EarlierGeneration"]


@dataclass(frozen=True)
class EarlierGeneration:
    """A published generation whose documents verified near dedup may read."""

    generation: int
    path: str               # its run folder, relative to the dataset root
    shards: int

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "path": self.path, "shards": self.shards}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EarlierGeneration:
        return cls(generation=int(d["generation"]), path=d["path"], shards=int(d["shards"]))


@dataclass(frozen=True)
class RefreshContext:
    """A refresh generation's view of its dataset root."""

    root: str                                   # the dataset root (URI)
    generation: int                             # the generation this run is
    exact_segments: tuple[str, ...]             # earlier generations' exact-hash segments
    exact_segment_out: str                      # where this generation's exact segment goes
    near_segments: tuple[str, ...] = ()         # earlier generations' near band-key segments
    near_segment_out: str | None = None         # this generation's near segment (None: near off)
    # Verified near dedup against earlier segments: the generations they name. None when
    # there is nothing to read (the key is then absent from plan.json, as it always was).
    near_earlier: tuple[EarlierGeneration, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"root": self.root, "generation": self.generation,
                             "exact_segments": list(self.exact_segments),
                             "exact_segment_out": self.exact_segment_out,
                             "near_segments": list(self.near_segments),
                             "near_segment_out": self.near_segment_out}
        if self.near_earlier is not None:
            d["near_earlier"] = [g.to_json() for g in self.near_earlier]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> RefreshContext | None:
        if not d:
            return None
        earlier = d.get("near_earlier")
        return cls(root=d["root"], generation=int(d["generation"]),
                   exact_segments=tuple(d.get("exact_segments") or ()),
                   exact_segment_out=d["exact_segment_out"],
                   near_segments=tuple(d.get("near_segments") or ()),
                   near_segment_out=d.get("near_segment_out"),
                   near_earlier=None if earlier is None else tuple(EarlierGeneration.from_json(g) for g in earlier))
