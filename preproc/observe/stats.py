"""The bounded statistics of a run: what the stages record in their markers, and the run's
totals (``stats.json``) that finalize adds up from them.

The stages (clean, tokenize) and the engine import this module, never the HTML page
(:mod:`preproc.observe.report`), which reads what is computed here.

What the stages add to their markers, each of bounded size whatever the shard size:

* clean: ``hist_chars_in`` / ``hist_chars_out`` (document length in characters entering the
  clean steps and kept; :func:`log2_histogram` bins), ``hist_tokens_in`` (token lengths of a
  reservoir sample of at most :data:`SAMPLE_DOCS` documents entering the steps, tokenized
  with the run's tokenizer — the first :data:`SAMPLE_HEAD_CHARS` characters, scaled to the
  document's length; ``sample_docs`` of ``sample_of``), ``by_source``
  (``{source: [in, kept]}``, top :data:`TOP_KEYS` plus ``(other)``), ``by_language``
  (``{language: kept}`` from the ``language`` column a language filter adds, else the
  dominant Unicode script of the first characters, ``language_from: "script"``), and
  ``examples`` (per drop reason, :data:`EXAMPLES_PER_REASON` documents truncated to
  :data:`EXAMPLE_CHARS` characters).
* tokenize: ``hist_tokens`` (tokens per kept document, BOS/EOS included).

Missing fields (markers of an older run) just leave their section of the report empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.io.store import Store

__all__ = ["CleanProfile", "add_counts", "log2_histogram", "merge_histograms", "dominant_script", "documents_in",
           "group_rounds", "SHARD_STAGES", "SLICE_STAGES", "ROUND_PREFIX", "ROUNDS_ROW", "SAMPLE_DOCS",
           "EXAMPLES_PER_REASON", "EXAMPLE_CHARS"]

log = logging.getLogger("preproc")

HIST_BINS = 40                # bin 0: length 0; bin k: [2**(k-1), 2**k)
SAMPLE_DOCS = 128             # documents tokenized per clean index for "tokens before cleaning"
SAMPLE_HEAD_CHARS = 2048      # a longer sampled document: tokens of its head, scaled by its length
TOP_KEYS = 50                 # sources / languages kept per marker
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 240
MAX_REASONS = 40
SCRIPT_HEAD_CHARS = 100
_SCRIPTS = ("Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Han (CJK)", "Kana (Japanese)",
            "Hangul", "Thai")


def _lead_table() -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 lead byte → script position in ``_SCRIPTS`` (len: none), and which lead
    bytes need the next byte to decide."""
    t = np.full(256, len(_SCRIPTS), dtype=np.uint8)
    t[0x41:0x5B] = t[0x61:0x7B] = t[0xC3:0xCA] = 0      # ASCII letters, Latin-1 and Latin Extended
    t[0xCE:0xD0] = 2                                    # Greek
    t[0xD0:0xD4] = 1                                    # Cyrillic
    t[0xD7] = 4                                         # Hebrew
    t[0xD8:0xDC] = 3                                    # Arabic
    t[0xE4:0xEA] = 6                                    # CJK unified ideographs
    t[0xEB:0xED] = 8                                    # Hangul syllables
    amb = np.zeros(256, dtype=bool)
    amb[[0xCD, 0xD6, 0xE0, 0xE3, 0xEA, 0xED]] = True
    return t, amb


_LEAD, _AMBIGUOUS = _lead_table()


# == collecting (in the stages) ===============================================================

def log2_histogram(lengths: np.ndarray) -> list[int]:
    """Counts per log2 bin (bin 0: 0; bin k: [2**(k-1), 2**k)), trailing zeros trimmed."""
    x = np.asarray(lengths, dtype=np.int64)
    if x.size == 0:
        return []
    bins = np.zeros(x.shape, dtype=np.int64)
    pos = x > 0
    bins[pos] = np.minimum(np.floor(np.log2(x[pos])).astype(np.int64) + 1, HIST_BINS - 1)
    counts = np.bincount(bins, minlength=HIST_BINS)
    nz = np.flatnonzero(counts)
    return [int(c) for c in counts[: nz[-1] + 1]] if nz.size else []


def add_counts(dicts: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """Counts by key, added up over ``dicts`` (None skipped), keys sorted: the reasons of
    many indices, or a group index's per-shard stats."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def merge_histograms(hists: Iterable[Sequence[float] | None], weights: Iterable[float] | None = None) -> list[float]:
    out: list[float] = []
    ws = iter(weights) if weights is not None else None
    for h in hists:
        w = next(ws) if ws is not None else 1.0
        if not h:
            continue
        if len(h) > len(out):
            out += [0] * (len(h) - len(out))
        for i, v in enumerate(h):
            out[i] += v * w if ws is not None else v
    return out


def _count_into(acc: dict[str, int], col: pa.Array | pa.ChunkedArray) -> None:
    if len(col) == 0:
        return
    vc = pc.value_counts(pc.fill_null(col.cast(pa.string()), "(none)"))
    for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        acc[v] = acc.get(v, 0) + int(n)
    if len(acc) > 20 * TOP_KEYS:   # very many distinct values: fold the small ones now
        _fold(acc, 10 * TOP_KEYS)


def _fold(acc: dict[str, int], keep: int) -> None:
    if len(acc) <= keep:
        return
    top = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))
    other = sum(n for _, n in top[keep:])
    acc.clear()
    acc.update(top[:keep])
    acc["(other)"] = acc.get("(other)", 0) + other


def dominant_script(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Per document, the Unicode script with most letters among its first characters.

    One vectorized pass over the UTF-8 bytes of each document's head: a letter's script is
    read from its lead byte (and the next byte where a lead byte covers several blocks).
    """
    head = pc.utf8_slice_codeunits(text, 0, SCRIPT_HEAD_CHARS)
    if isinstance(head, pa.ChunkedArray):
        head = head.combine_chunks()
    head = head.cast(pa.large_string())
    n = len(head)
    if n == 0:
        return pa.array([], type=pa.string())
    offsets = np.frombuffer(head.buffers()[1], dtype=np.int64)[head.offset:head.offset + n + 1]
    data = head.buffers()[2]
    b = (np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8))[offsets[0]:offsets[-1]]
    doc = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    k = len(_SCRIPTS)
    cls = _LEAD[b]                                      # k: not a letter we classify
    amb = np.flatnonzero(_AMBIGUOUS[b])                 # lead bytes shared by several blocks
    if amb.size:
        lead = b[amb]
        nx = b[np.minimum(amb + 1, len(b) - 1)]
        fix = np.full(amb.size, k, dtype=np.uint8)
        fix[(lead == 0xCD) & (nx >= 0xB0)] = 2                                   # Greek
        fix[(lead == 0xD6) & (nx >= 0x90)] = 4                                   # Hebrew
        fix[(lead == 0xE0) & ((nx == 0xA4) | (nx == 0xA5))] = 5                  # Devanagari
        fix[(lead == 0xE0) & ((nx == 0xB8) | (nx == 0xB9))] = 9                  # Thai
        fix[(lead == 0xE3) & (nx >= 0x90)] = 6                                   # CJK ext. A
        fix[(lead == 0xE3) & (nx >= 0x81) & (nx <= 0x83)] = 7                    # kana
        fix[((lead == 0xEA) & (nx >= 0xB0)) | ((lead == 0xED) & (nx <= 0x9E))] = 8  # Hangul
        cls[amb] = fix
    counts = np.bincount(doc * (k + 1) + cls.astype(np.int64), minlength=n * (k + 1)).reshape(n, k + 1)[:, :k]
    names = np.array(list(_SCRIPTS) + ["other"], dtype=object)
    best = counts.argmax(axis=1)
    best[counts.max(axis=1) == 0] = k
    # Japanese mixes Han and kana: any real share of kana makes it Japanese, not Chinese.
    han, kana = counts[:, 6], counts[:, 7]
    best[(best == 6) & (kana * 5 >= han) & (kana > 0)] = 7
    return pa.array(names[best], type=pa.string())


class CleanProfile:
    """Bounded statistics of one clean index for the report (see the module docstring)."""

    def __init__(self, index: int):
        self.hist_in: list[float] = []
        self.hist_out: list[float] = []
        self.src_in: dict[str, int] = {}
        self.src_out: dict[str, int] = {}
        self.lang: dict[str, int] = {}
        self.lang_from: str | None = None
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.rng = np.random.default_rng(index)
        self.sample: list[str] = []       # heads of the sampled documents
        self.sample_chars: list[int] = []  # and their full lengths
        self.seen = 0

    def observe_in(self, batch: pa.RecordBatch) -> None:
        """A batch as read, before the clean steps."""
        text = batch.column("text")
        self.hist_in = merge_histograms([self.hist_in, log2_histogram(pc.utf8_length(text).to_numpy(zero_copy_only=False))])
        if "source" in batch.schema.names:
            _count_into(self.src_in, batch.column("source"))
        self._reservoir(text)

    def observe_out(self, kept: pa.RecordBatch) -> None:
        """The rows the clean steps kept."""
        text = kept.column("text")
        self.hist_out = merge_histograms([self.hist_out, log2_histogram(pc.utf8_length(text).to_numpy(zero_copy_only=False))])
        if "source" in kept.schema.names:
            _count_into(self.src_out, kept.column("source"))
        if "language" in kept.schema.names:
            self.lang_from = "language"
            _count_into(self.lang, kept.column("language"))
        elif self.lang_from != "language":
            self.lang_from = "script"
            _count_into(self.lang, dominant_script(text))

    def observe_removed(self, removed: pa.Table | pa.RecordBatch | None) -> None:
        """Rows a step dropped (``reason`` column ``step:reason``), for examples."""
        if removed is None or removed.num_rows == 0:
            return
        reasons = removed.column("reason")
        for r in pc.unique(reasons).to_pylist():
            have = self.examples.get(r)
            if (have is not None and len(have) >= EXAMPLES_PER_REASON) or (have is None and len(self.examples) >= MAX_REASONS):
                continue
            have = self.examples.setdefault(r, [])
            rows = removed.filter(pc.equal(reasons, r)).slice(0, EXAMPLES_PER_REASON - len(have))
            names = rows.schema.names
            for k in range(rows.num_rows):
                text = rows.column("text")[k].as_py() or ""
                have.append({"id": rows.column("id")[k].as_py() if "id" in names else None,
                             "source": rows.column("source")[k].as_py() if "source" in names else None,
                             "text": text[:EXAMPLE_CHARS], "chars": len(text)})

    def observe_rejects(self, rejects: list[dict[str, Any]]) -> None:
        for r in rejects:
            key = f"rejected:{r.get('reason')}"
            have = self.examples.get(key)
            if (have is not None and len(have) >= EXAMPLES_PER_REASON) or (have is None and len(self.examples) >= MAX_REASONS):
                continue
            self.examples.setdefault(key, []).append({"id": r.get("location"), "source": r.get("file"),
                                                      "text": str(r.get("head", ""))[:EXAMPLE_CHARS]})

    def _reservoir(self, text: pa.Array | pa.ChunkedArray) -> None:
        n = len(text)
        if n == 0:
            return
        take: list[tuple[int, int]] = []          # (slot, row)
        fill = max(0, min(SAMPLE_DOCS - self.seen, n))
        take += [(self.seen + r, r) for r in range(fill)]
        if fill < n:   # Algorithm R, vectorized: row at stream position p replaces slot j < k
            pos = np.arange(self.seen + fill, self.seen + n, dtype=np.int64)
            j = self.rng.integers(0, pos + 1)
            hit = np.flatnonzero(j < SAMPLE_DOCS)
            take += [(int(j[h]), fill + int(h)) for h in hit]
        for slot, row in take:
            s = text[row].as_py() or ""
            if slot < len(self.sample):
                self.sample[slot], self.sample_chars[slot] = s[:SAMPLE_HEAD_CHARS], len(s)
            else:
                self.sample.append(s[:SAMPLE_HEAD_CHARS])
                self.sample_chars.append(len(s))
        self.seen += n

    def to_stats(self, tokenizer: Any = None, *, special_tokens: int = 0) -> dict[str, Any]:
        """The marker fields; ``tokenizer(texts) -> list of id lists`` measures the sample."""
        _fold(self.src_in, TOP_KEYS)
        src = {k: [v, self.src_out.get(k, 0)] for k, v in self.src_in.items()}
        folded_out = sum(v for k, v in self.src_out.items() if k not in src)
        if folded_out:
            src.setdefault("(other)", [0, 0])[1] += folded_out
        _fold(self.lang, TOP_KEYS)
        out: dict[str, Any] = {"hist_chars_in": self.hist_in, "hist_chars_out": self.hist_out,
                               "by_source": src, "by_language": dict(self.lang),
                               "language_from": self.lang_from, "examples": self.examples}
        if tokenizer is not None and self.sample:
            try:
                ids = tokenizer(self.sample)
                # Bounded cost: a long document's count is its head's, scaled by its length.
                lens = np.array([round(len(x) * max(1.0, n / max(1, len(h)))) + special_tokens
                                 for x, h, n in zip(ids, self.sample, self.sample_chars)], dtype=np.int64)
                out.update(hist_tokens_in=log2_histogram(lens), sample_docs=len(self.sample), sample_of=self.seen)
            except Exception:  # noqa: BLE001 - the sample is for a chart only
                log.debug("token sample failed", exc_info=True)
        return out

    def finish(self, plan: Plan, store: Store, encoder: Callable[..., Any] | None = None) -> dict[str, Any]:
        """:meth:`to_stats` with the run's tokenizer (if it can be loaded).

        ``encoder(store, tokenizer_info, encode_special_tokens=...)`` makes it (the clean stage
        passes :class:`preproc.tokenize.tokenizer.Encoder`): statistics never import a
        tokenizer themselves, so the stages and the report load this module cheaply."""
        tok = None
        info = plan.tokenizer or {}
        if encoder is not None and self.sample and info.get("sha256"):
            special_text = plan.spec.tokenize.encode_special_tokens
            try:
                tok = encoder(store, info, encode_special_tokens=special_text).ids
            except Exception:  # noqa: BLE001
                log.debug("no tokenizer for the length sample", exc_info=True)
        special = (info.get("bos_id") is not None) + (info.get("eos_id") is not None)
        return self.to_stats(tok, special_tokens=special)


# == rows per stage (status and the report) ====================================================

# Stages whose index i reads shards of the inputs: clean shard i, near dedup's per-shard
# stages a group of them (``Plan.shards_of``; failures name their input files).
SHARD_STAGES = ("clean", "near_signatures", "near_shingles", "near_verify", "near_drops")
# Stages whose index i reads slice i of the clean output (its marker names the slice:
# preproc.io.slices).
SLICE_STAGES = ("tokenize",)


# Near dedup's connected-component rounds (near_cc_00, near_cc_01, ...): up to max_rounds
# stages, most of them with nothing to compute once components converge. Status and the
# report show them as one row, the rounds inside.
ROUND_PREFIX = "near_cc_"
ROUNDS_ROW = "near_cc"


def group_rounds(rows: list[dict[str, Any]], merge) -> list[dict[str, Any]]:
    """``rows`` (one per stage, ``row["stage"]``) with consecutive component rounds replaced
    by one row ``merge(rounds)``."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for r in rows + [{"stage": ""}]:
        if str(r["stage"]).startswith(ROUND_PREFIX):
            run.append(r)
            continue
        if run:
            out.append(merge(run))
            run = []
        if r["stage"]:
            out.append(r)
    return out


def documents_in(stats: dict[str, Any]) -> int:
    """Documents an index processed (its input), whatever the stage."""
    for k in ("read", "keys"):
        if k in stats:
            return int(stats[k] or 0)
    return int(stats.get("docs", 0) or 0) + int(stats.get("dropped", 0) or 0) or int(stats.get("documents", 0) or 0)


# == the run's totals (finalize's stats.json) =================================================
