"""Shared, vectorized text structure for the quality filters: lines, words, hashes.

Most rules in Gopher, C4 and FineWeb are statistics over the lines and words of a document.
:class:`TextView` computes that structure once per batch with Arrow compute and numpy —
lines (``split_pattern``), words (``utf8_split_whitespace``), a word id per distinct word
(``dictionary_encode``) — and keeps it in flat arrays with the document (and line) each
element belongs to, so a per-document statistic is one numpy reduction. Nothing loops over
documents or characters in Python. Per word it holds about 30 bytes (id, hash, length,
line), so a view costs a few times its batch's text; only the latest two are kept.

Views are cached per thread under a fingerprint of the text column's bytes, so the steps of
one batch (gopher quality, gopher repetition, fineweb, ...) share one view. When a step
drops documents it registers the view of the surviving rows (:func:`derive_view`), which is
cheap (numpy masks), so the next step finds its view in the cache too. A content fingerprint
(not object identity) makes the cache safe: any change to the text, by a mapper or a
filter, is a different key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

__all__ = ["TextView", "view_of", "derive_view", "in_scope", "source_regex", "mix64",
           "first_reason", "value_offsets"]

_U64 = np.uint64
_K1 = _U64(0x9E3779B97F4A7C15)   # golden-ratio odd constant (Fibonacci hashing)
_K2 = _U64(0xC2B2AE3D27D4EB4F)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer over a uint64 array (wrapping arithmetic), a good 64-bit mixer."""
    x = x.astype(_U64, copy=True)
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def as_string_array(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous ``string``/``large_string`` array with nulls as empty strings."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    return arr


def with_type_of(arr: pa.Array, column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``arr`` cast back to the type of the batch's original ``column`` (e.g. string_view)."""
    return arr if arr.type == column.type else arr.cast(column.type)


def value_offsets(arr: pa.Array) -> np.ndarray:
    """The value offsets of a (possibly sliced) string or list array, as int64."""
    dtype = np.int64 if (pa.types.is_large_string(arr.type) or pa.types.is_large_list(arr.type)) \
        else np.int32
    raw = np.frombuffer(arr.buffers()[1], dtype=dtype)
    return raw[arr.offset:arr.offset + len(arr) + 1].astype(np.int64)


def fingerprint(text: pa.Array) -> tuple:
    """A content key of a string array: xxh3-128 of its offsets and bytes (a few ms/100 MB)."""
    offs = value_offsets(text)
    h = xxhash.xxh3_128()
    h.update((offs - offs[0]).tobytes())
    data = text.buffers()[2]
    if data is not None and offs[-1] > offs[0]:
        h.update(memoryview(data)[offs[0]:offs[-1]])
    return (len(text), str(text.type), h.intdigest())


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """For CSR offsets (n+1 entries), the segment index of every element."""
    counts = np.diff(offsets)
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)   # intp: indexes fast


def segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sums of ``values`` over the CSR segments ``offsets`` (empty segments sum to 0)."""
    if values.dtype == np.bool_ or values.dtype.kind in "iu":
        cs = np.empty(len(values) + 1, dtype=np.int64)
    else:
        cs = np.empty(len(values) + 1, dtype=np.float64)
    cs[0] = 0
    np.cumsum(values, out=cs[1:])
    return cs[offsets[1:]] - cs[offsets[:-1]]


class TextView:
    """Lines and words of every document of a text column, as flat numpy/Arrow arrays.

    Documents, lines and words are numbered within the view. CSR offsets tie them together:
    ``doc_line_start[d]:doc_line_start[d+1]`` are the lines of document ``d``,
    ``line_word_start[l]:line_word_start[l+1]`` the words of line ``l``. A line is the text
    between ``\\n``; a word is a maximal run of non-whitespace characters. Components are
    computed on first use.
    """

    def __init__(self, text: pa.Array):
        self.text = text
        self.n_docs = len(text)
        self._c: dict[str, object] = {}

    # -- documents ---------------------------------------------------------------------
    @property
    def doc_chars(self) -> np.ndarray:
        """Characters (code points) per document."""
        if "doc_chars" not in self._c:
            self._c["doc_chars"] = pc.utf8_length(self.text).to_numpy(zero_copy_only=False) \
                .astype(np.int64)
        return self._c["doc_chars"]  # type: ignore[return-value]

    # -- lines -------------------------------------------------------------------------
    def _ensure_lines(self) -> None:
        if "lines" in self._c:
            return
        if "lazy:lines" in self._c:                 # a subset view: filter the parent's
            parent, mask = self._c.pop("lazy:lines")  # type: ignore[misc]
            self._c["lines"] = parent.filter(mask)
            return
        split = pc.split_pattern(self.text, "\n")
        offs = value_offsets(split)
        lines = split.values
        if offs[0] != 0 or offs[-1] != len(lines):
            lines = lines.slice(offs[0], offs[-1] - offs[0])
            offs = offs - offs[0]
        self._c["lines"] = lines
        self._c["doc_line_start"] = offs

    @property
    def lines(self) -> pa.Array:
        """Every line of every document (without its ``\\n``), documents in order."""
        self._ensure_lines()
        return self._c["lines"]  # type: ignore[return-value]

    @property
    def doc_line_start(self) -> np.ndarray:
        self._ensure_lines()
        return self._c["doc_line_start"]  # type: ignore[return-value]

    @property
    def line_doc(self) -> np.ndarray:
        if "line_doc" not in self._c:
            self._c["line_doc"] = segment_ids(self.doc_line_start)
        return self._c["line_doc"]  # type: ignore[return-value]

    @property
    def line_chars(self) -> np.ndarray:
        """Characters per line (without the newline)."""
        if "line_chars" not in self._c:
            self._c["line_chars"] = pc.utf8_length(self.lines).to_numpy(zero_copy_only=False) \
                .astype(np.int64)
        return self._c["line_chars"]  # type: ignore[return-value]

    @property
    def stripped_lines(self) -> pa.Array:
        """Lines without leading/trailing whitespace (what line rules look at)."""
        if "stripped_lines" not in self._c and "lazy:stripped_lines" in self._c:
            parent, mask = self._c.pop("lazy:stripped_lines")  # type: ignore[misc]
            self._c["stripped_lines"] = parent.filter(mask)
        if "stripped_lines" not in self._c:
            self._c["stripped_lines"] = pc.utf8_trim_whitespace(self.lines)
        return self._c["stripped_lines"]  # type: ignore[return-value]

    # -- words -------------------------------------------------------------------------
    def _ensure_words(self) -> None:
        if "word_id" in self._c:
            return
        lines = self.stripped_lines
        split = pc.utf8_split_whitespace(lines)
        offs = value_offsets(split)
        words = split.values
        if offs[0] != 0 or offs[-1] != len(words):
            words = words.slice(offs[0], offs[-1] - offs[0])
            offs = offs - offs[0]
        # Arrow yields one empty token for an empty (blank, once stripped) line: drop it.
        nonempty = np.diff(value_offsets(words)) > 0
        if not nonempty.all():
            keep_cum = np.concatenate([[0], np.cumsum(nonempty)])
            offs = keep_cum[offs]
            words = words.filter(pa.array(nonempty))
        enc = pc.dictionary_encode(words)
        self._c["word_id"] = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self._c["dictionary"] = enc.dictionary
        self._c["line_word_start"] = offs

    @property
    def word_id(self) -> np.ndarray:
        """For every word, the index of its string in :attr:`dictionary` (equal words, equal ids)."""
        self._ensure_words()
        return self._c["word_id"]  # type: ignore[return-value]

    @property
    def dictionary(self) -> pa.Array:
        """The distinct words of the batch; per-word features are computed once per entry."""
        self._ensure_words()
        return self._c["dictionary"]  # type: ignore[return-value]

    @property
    def line_word_start(self) -> np.ndarray:
        self._ensure_words()
        return self._c["line_word_start"]  # type: ignore[return-value]

    @property
    def line_words(self) -> np.ndarray:
        return np.diff(self.line_word_start)

    @property
    def doc_word_start(self) -> np.ndarray:
        return self.line_word_start[self.doc_line_start]

    @property
    def doc_words(self) -> np.ndarray:
        return np.diff(self.doc_word_start)

    @property
    def word_doc(self) -> np.ndarray:
        if "word_doc" not in self._c:
            self._c["word_doc"] = segment_ids(self.doc_word_start)
        return self._c["word_doc"]  # type: ignore[return-value]

    @property
    def word_line(self) -> np.ndarray:
        if "word_line" not in self._c:
            self._c["word_line"] = segment_ids(self.line_word_start)
        return self._c["word_line"]  # type: ignore[return-value]

    def memo(self, name: str, fn):
        """``fn()`` computed once per view (e.g. statistics two steps share)."""
        key = "memo:" + name
        if key not in self._c:
            self._c[key] = fn()
        return self._c[key]

    def dict_feature(self, name: str, fn) -> np.ndarray:
        """``fn(dictionary) -> numpy array`` computed once per view and cached under ``name``."""
        key = "dict:" + name
        if key not in self._c:
            self._c[key] = fn(self.dictionary)
        return self._c[key]  # type: ignore[return-value]

    @property
    def word_chars(self) -> np.ndarray:
        """Characters per word."""
        if "word_chars" not in self._c:
            per_entry = self.dict_feature(
                "chars", lambda d: pc.utf8_length(d).to_numpy(zero_copy_only=False))
            self._c["word_chars"] = per_entry[self.word_id]
        return self._c["word_chars"]  # type: ignore[return-value]

    @property
    def word_hash(self) -> np.ndarray:
        """A 64-bit hash per word, equal for equal words (from the dictionary id)."""
        if "word_hash" not in self._c:
            self._c["word_hash"] = mix64(self.word_id.astype(np.uint64) + _K2)
        return self._c["word_hash"]  # type: ignore[return-value]

    def per_doc_sum(self, per_word: np.ndarray) -> np.ndarray:
        """Sum a per-word array (bool, int or float) into per-document totals."""
        return segment_sums(per_word, self.doc_word_start)

    def per_doc_line_sum(self, per_line: np.ndarray) -> np.ndarray:
        """Sum a per-line array into per-document totals."""
        return segment_sums(per_line, self.doc_line_start)

    # -- derived views -----------------------------------------------------------------
    def subset(self, keep: np.ndarray, text: pa.Array) -> TextView:
        """The view of the rows where ``keep`` is true (``text`` is those rows' text).

        Already computed components are carried over with numpy masks instead of being
        computed again from the text.
        """
        out = TextView(text)
        c = self._c
        if "doc_chars" in c:
            out._c["doc_chars"] = c["doc_chars"][keep]  # type: ignore[index]
        if "lines" not in c:
            return out
        dls = c["doc_line_start"]
        line_keep = np.repeat(keep, np.diff(dls))  # type: ignore[arg-type]
        line_mask = pa.array(line_keep)
        # Arrow line arrays are filtered only if a later step reads them.
        out._c["lazy:lines"] = (c["lines"], line_mask)
        out._c["doc_line_start"] = np.concatenate([[0], np.cumsum(np.diff(dls)[keep])])  # type: ignore[arg-type]
        for name in ("line_chars",):
            if name in c:
                out._c[name] = c[name][line_keep]  # type: ignore[index]
        if "stripped_lines" in c:
            out._c["lazy:stripped_lines"] = (c["stripped_lines"], line_mask)
        if "word_id" in c:
            lws = c["line_word_start"]
            word_keep = np.repeat(line_keep, np.diff(lws))  # type: ignore[arg-type]
            out._c["word_id"] = c["word_id"][word_keep]  # type: ignore[index]
            out._c["dictionary"] = c["dictionary"]
            out._c["line_word_start"] = np.concatenate(
                [[0], np.cumsum(np.diff(lws)[line_keep])])  # type: ignore[arg-type]
            for name in ("word_chars", "word_hash"):
                if name in c:
                    out._c[name] = c[name][word_keep]  # type: ignore[index]
            for name, val in c.items():
                if name.startswith("dict:"):
                    out._c[name] = val
        return out


# -- the per-thread cache ----------------------------------------------------------------
_local = threading.local()
_CACHE_ENTRIES = 2          # a batch's view and the view of its surviving rows


def _cache() -> OrderedDict:
    c = getattr(_local, "views", None)
    if c is None:
        c = _local.views = OrderedDict()
    return c


def _put(key: tuple, view: TextView) -> None:
    c = _cache()
    c[key] = view
    c.move_to_end(key)
    while len(c) > _CACHE_ENTRIES:
        c.popitem(last=False)


def view_of(text: pa.Array | pa.ChunkedArray) -> TextView:
    """The (cached) :class:`TextView` of a text column."""
    text = as_string_array(text)
    key = fingerprint(text)
    c = _cache()
    view = c.get(key)
    if view is None:
        view = TextView(text)
        _put(key, view)
    else:
        c.move_to_end(key)
    return view


def derive_view(text: pa.Array | pa.ChunkedArray, keep: np.ndarray) -> None:
    """Register the view of ``text`` filtered by ``keep`` (what the pipeline passes on next).

    Only does work when a view of ``text`` is cached; cheap next to recomputing it.
    """
    text = as_string_array(text)
    c = _cache()
    view = c.get(fingerprint(text))
    if view is None or keep.all():
        return
    sub_text = text.filter(pa.array(keep))
    _put(fingerprint(sub_text), view.subset(keep, sub_text))


# -- which documents a step applies to --------------------------------------------------
def source_regex(patterns: Iterable[str]) -> str | None:
    """Glob patterns (``*``, ``?``) as one anchored RE2 regex, e.g. ``code/*`` → ``^(?:code/.*)$``."""
    alts = []
    for p in patterns:
        out = []
        for ch in p:
            if ch == "*":
                out.append(".*")
            elif ch == "?":
                out.append(".")
            elif ch.isalnum() or ch in "_/-":
                out.append(ch)
            else:
                out.append("\\" + ch if ch.isascii() else ch)
        alts.append("".join(out))
    return "^(?:" + "|".join(alts) + ")$" if alts else None


def in_scope(batch: pa.RecordBatch, skip_sources: Sequence[str],
             languages: Sequence[str] | None) -> np.ndarray:
    """Rows a step applies to: ``source`` matches none of ``skip_sources`` and, when
    ``languages`` is given and the batch has a ``language`` column (from ``langid``), the
    row's language is one of them. Without a ``language`` column every language is in."""
    n = batch.num_rows
    scope = np.ones(n, dtype=bool)
    names = batch.schema.names
    rx = source_regex(skip_sources)
    if rx is not None and "source" in names:
        src = batch.column("source")
        hit = pc.match_substring_regex(pc.fill_null(src.cast(pa.string()), ""), rx)
        scope &= ~hit.to_numpy(zero_copy_only=False)
    if languages is not None and "language" in names:
        lang = batch.column("language")
        ok = pc.is_in(lang, value_set=pa.array(list(languages), type=lang.type))
        scope &= pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    return scope


def first_reason(n: int, checks: Sequence[tuple[int, np.ndarray | None]]) -> np.ndarray:
    """Codes per row from ``(code, failed_mask)`` checks in priority order: each row gets
    the code of the first check it fails (0 = passes all). ``None`` masks are skipped."""
    codes = np.zeros(n, dtype=np.uint8)
    for code, mask in checks:
        if mask is None:
            continue
        codes[(codes == 0) & mask] = code
    return codes
