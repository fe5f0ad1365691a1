"""MinHash of whole Arrow batches with numpy: shingles, signatures, LSH band keys, Jaccard.

Everything here works on a batch at once (no Python loop per document or per shingle) and
uses only integer arithmetic on ``uint64`` (wrapping), so the same text gives the same
bits on every machine, whatever the batch boundaries:

1. **Normalize and split** (:func:`unit_hashes`): the text is lower-cased
   (``pyarrow.compute.utf8_lower``); *word characters* are letters, digits, combining
   marks and ``_`` (Python's ``\\w`` plus marks), everything else (punctuation, whitespace,
   symbols) only separates words. A word is hashed 8 bytes at a time straight from the
   Arrow buffer. With ``unit="char"`` (Chinese, Japanese, Thai: no spaces) every word
   character is a unit and non-word characters are dropped.
2. **Shingles** (:func:`shingle_hashes`): the 64-bit hash of every run of ``n``
   consecutive units of a document; a document with fewer than ``n`` units has one
   shingle made of all of them, a document without units has none (and never matches).
3. **Signatures** (:class:`MinHasher`): ``h_j(x) = a_j * x + b_j (mod 2**64)`` for
   ``bands * rows`` permutations drawn from the seed with splitmix64; the signature of a
   document is the minimum of each ``h_j`` over its shingles. Computed one permutation at
   a time over all shingles of the batch (``np.minimum.reduceat``), the fastest layout on
   CPUs without 64-bit SIMD multiplies.
4. **Band keys** (:meth:`MinHasher.band_keys`): one 64-bit key per band (the hash of the
   band's ``rows`` values and its index); two documents are candidates when any key is
   equal. The probability is ``1 - (1 - J**rows)**bands`` for Jaccard ``J``
   (:func:`candidate_probability`); :func:`lsh_params` picks ``bands x rows`` for a
   target threshold.
5. **Verification** (:func:`shingle_sets`, :func:`jaccard`): the exact Jaccard of two
   documents' shingle sets (32-bit shingle hashes), for many pairs at once by sorting.

>>> import pyarrow as pa
>>> mh = MinHasher(MinHashParams(bands=14, rows=8))
>>> sh, ns = shingle_hashes(*unit_hashes(pa.array(["The cat sat on the mat today", "the CAT sat on the mat, today!"])), 5)
>>> sig = mh.signatures(sh, ns)
>>> bool((sig[:, 0] == sig[:, 1]).all())
True
"""

from __future__ import annotations

import functools
import math
import unicodedata
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["MinHashParams", "MinHasher", "unit_hashes", "shingle_hashes", "shingle_sets", "jaccard",
           "lsh_params", "candidate_probability", "fmix64", "splitmix64"]

U64 = np.uint64
_MAX = np.iinfo(np.uint64).max
_GOLDEN = U64(0x9E3779B97F4A7C15)
# MASKS[k] keeps the first k bytes of a little-endian 8-byte load.
_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=U64)
# Shingles of a batch are processed in slices of this many (memory: 8 bytes each, twice).
CHUNK_SHINGLES = 1 << 18


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection with full avalanche), element-wise."""
    x = x ^ (x >> U64(33))
    x *= U64(0xFF51AFD7ED558CCD)
    x ^= x >> U64(33)
    x *= U64(0xC4CEB9FE1A85EC53)
    x ^= x >> U64(33)
    return x


def splitmix64(seed: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 from ``seed``: fixed arithmetic, unlike numpy's generators
    whose streams may change between numpy versions."""
    state = (np.arange(1, n + 1, dtype=U64) * _GOLDEN) + U64(seed & 0xFFFFFFFFFFFFFFFF)
    z = state.copy()
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


@dataclass(frozen=True)
class MinHashParams:
    """What decides the signatures and band keys (and so names their folder)."""

    ngram: int = 5
    unit: Literal["word", "char"] = "word"
    bands: int = 14
    rows: int = 8
    seed: int = 1

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def canonical(self) -> str:
        """``minhash-5g-14b8r-s1``: ``g`` word n-grams, ``c`` character n-grams."""
        kind = "g" if self.unit == "word" else "c"
        return f"minhash-{self.ngram}{kind}-{self.bands}b{self.rows}r-s{self.seed}"


# -- 1. units ------------------------------------------------------------------------------

# Word-character flag per code point: -1 unknown, 0 no, 1 yes. Filled lazily with the
# code points a worker meets (a few thousand), instead of classifying all 1.1M at start.
_CP_FLAGS = np.full(0x110000, -1, dtype=np.int8)


def _cp_flags(cp: np.ndarray) -> np.ndarray:
    f = _CP_FLAGS[cp]
    unknown = f < 0
    if unknown.any():
        for c in np.unique(cp[unknown]).tolist():
            ch = chr(c)
            _CP_FLAGS[c] = ch.isalnum() or ch == "_" or unicodedata.category(ch)[0] == "M"
        f = _CP_FLAGS[cp]
    return f.astype(bool)


def _as_buffers(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(bytes padded with 8 zero bytes, int64 offsets from 0)`` of a string array."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if not pa.types.is_large_string(text.type):
        text = text.cast(pa.large_string())
    n = len(text)
    offs = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset:text.offset + n + 1]
    buf = text.buffers()[2]
    raw = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.empty(0, np.uint8)
    lo, hi = int(offs[0]), int(offs[-1])
    data = np.zeros(hi - lo + 8, dtype=np.uint8)
    data[:hi - lo] = raw[lo:hi]
    return data, offs - lo


def _load8(data: np.ndarray) -> np.ndarray:
    """A view where element ``i`` is the little-endian uint64 of ``data[i:i+8]``."""
    return np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))


def _word_flags(data: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per byte: is it part of a word character; and the lead bytes of multibyte chars."""
    d = data[:n]
    # After lower-casing, ASCII word characters are [0-9_a-z]; uint8 wraps below 0x30/0x61.
    flag = ((d - np.uint8(0x30)) < 10) | ((d - np.uint8(0x61)) < 26) | (d == 0x5F)
    lead = np.flatnonzero(d >= 0xC0)
    if len(lead):
        b0 = d[lead].astype(np.int32)
        b1 = data[lead + 1].astype(np.int32) & 0x3F
        b2 = data[lead + 2].astype(np.int32) & 0x3F
        b3 = data[lead + 3].astype(np.int32) & 0x3F
        four, three = b0 >= 0xF0, (b0 >= 0xE0) & (b0 < 0xF0)
        cp = np.where(four, ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3,
                      np.where(three, ((b0 & 0x0F) << 12) | (b1 << 6) | b2, ((b0 & 0x1F) << 6) | b1))
        f = _cp_flags(np.minimum(cp, 0x10FFFF))
        # Every byte of a character carries its flag (continuation bytes follow the lead).
        flag[lead] = f
        flag[np.minimum(lead + 1, n - 1)] = f
        m = three | four
        flag[np.minimum(lead[m] + 2, n - 1)] = f[m]
        flag[np.minimum(lead[four] + 3, n - 1)] = f[four]
    return flag, lead


def unit_hashes(text: pa.Array, unit: Literal["word", "char"] = "word") -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, counts)``: the 64-bit hash of every unit (word or character) of every
    document, documents one after another, and how many units each document has."""
    low = pc.utf8_lower(text)
    data, offs = _as_buffers(low)
    n = len(data) - 8
    docs = len(offs) - 1
    if n == 0:
        return np.empty(0, U64), np.zeros(docs, np.int64)
    flag, lead = _word_flags(data, n)
    v8 = _load8(data)
    if unit == "char":
        # Lead bytes of word characters; a character's bytes are its unit value.
        start = flag.copy()
        start[(data[:n] & 0xC0) == 0x80] = False
        pos = np.flatnonzero(start)
        b0 = data[pos]
        clen = np.where(b0 < 0x80, 1, np.where(b0 < 0xE0, 2, np.where(b0 < 0xF0, 3, 4)))
        h = fmix64(v8[pos] & _MASKS[clen])
        counts = np.diff(np.searchsorted(pos, offs))
        return h, counts
    # Word starts/ends; a document boundary always ends a word.
    prev = np.zeros(n, dtype=bool)
    prev[1:] = flag[:-1]
    nxt = np.zeros(n, dtype=bool)
    nxt[:-1] = flag[1:]
    inner = offs[1:-1]
    inner = inner[(inner > 0) & (inner < n)]
    prev[inner] = False
    nxt[inner - 1] = False
    ws = np.flatnonzero(flag & ~prev)
    we = np.flatnonzero(flag & ~nxt) + 1
    wl = we - ws
    # First 8 bytes of every word, then the extra 8-byte chunks of longer words.
    h = fmix64(v8[ws] & _MASKS[np.minimum(wl, 8)])
    long = np.flatnonzero(wl > 8)
    if len(long):
        extra = (wl[long] - 1) >> 3
        first = np.cumsum(extra) - extra
        ci = np.arange(int(extra.sum()), dtype=np.int64) - np.repeat(first, extra) + 1
        owner = np.repeat(long, extra)
        rem = wl[owner] - (ci << 3)
        v = v8[ws[owner] + (ci << 3)] & _MASKS[np.minimum(rem, 8)]
        v = fmix64(v + ci.astype(U64) * _GOLDEN)
        h[long] += np.add.reduceat(v, first)
    h = fmix64(h ^ (wl.astype(U64) * _GOLDEN))
    counts = np.diff(np.searchsorted(ws, offs))
    return h, counts


# -- 2. shingles ---------------------------------------------------------------------------

@functools.cache
def _ngram_multipliers(n: int) -> np.ndarray:
    return splitmix64(0x5348494E474C45, n) | U64(1)


def shingle_hashes(units: np.ndarray, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(shingles, per_doc)``: the hash of every ``n``-gram of units of each document, in
    document order, and how many each document has (``max(count - n + 1, 1)``, or 0)."""
    counts = np.asarray(counts, dtype=np.int64)
    w = len(units)
    mult = _ngram_multipliers(n)
    wo = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=wo[1:])
    acc = np.zeros(w, dtype=U64)
    if w >= n:
        m = w - n + 1
        acc[:m] = units[:m] * mult[0]
        for j in range(1, n):
            acc[:m] += units[j:j + m] * mult[j]
    valid = np.ones(w, dtype=bool)
    for j in range(1, n):
        sel = counts >= j
        valid[wo[1:][sel] - j] = False
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short):
        s_acc = np.zeros(len(short), dtype=U64)
        for j in range(n - 1):
            sel = counts[short] > j
            s_acc[sel] += units[wo[short[sel]] + j] * mult[j]
        acc[wo[short]] = s_acc
        valid[wo[short]] = True
    per_doc = np.where(counts >= n, counts - n + 1, (counts > 0).astype(np.int64))
    return fmix64(acc[valid]), per_doc


# -- 3./4. signatures and band keys --------------------------------------------------------

class MinHasher:
    """Signatures and band keys for :class:`MinHashParams` (permutations from its seed)."""

    def __init__(self, params: MinHashParams):
        self.params = params
        k = params.num_perm
        r = splitmix64(params.seed, 2 * k + params.rows)
        self.a = r[:k] | U64(1)                     # odd multipliers: bijections of uint64
        self.b = r[k:2 * k]
        self.row_mult = r[2 * k:] | U64(1)

    def signatures(self, shingles: np.ndarray, per_doc: np.ndarray, *,
                   chunk: int = CHUNK_SHINGLES) -> np.ndarray:
        """``(num_perm, docs)`` uint64; a document without shingles gets all ``2**64-1``.

        Shingles are taken ``chunk`` at a time (memory: 8 bytes each); a document cut by
        a chunk boundary gets the minimum of its parts, so the result does not depend on
        ``chunk``."""
        per_doc = np.asarray(per_doc, dtype=np.int64)
        docs = len(per_doc)
        k = self.params.num_perm
        sig = np.full((k, docs), _MAX, dtype=U64)
        so = np.zeros(docs + 1, dtype=np.int64)
        np.cumsum(per_doc, out=so[1:])
        total = int(so[-1])
        nonempty = np.flatnonzero(per_doc > 0)
        if total == 0:
            return sig
        tmp = np.empty(min(total, chunk), dtype=U64)
        for lo in range(0, total, chunk):
            hi = min(total, lo + chunk)
            # Documents overlapping [lo, hi): a long document spans slices; min merges them.
            i0 = np.searchsorted(so[1:][nonempty], lo, side="right")
            i1 = np.searchsorted(so[:-1][nonempty], hi, side="left")
            dsel = nonempty[i0:i1]
            starts = np.maximum(so[dsel], lo) - lo
            x = shingles[lo:hi]
            t = tmp[:hi - lo]
            whole = lo == 0 and hi == total
            for j in range(k):
                np.multiply(x, self.a[j], out=t)
                t += self.b[j]
                part = np.minimum.reduceat(t, starts)
                sig[j, dsel] = part if whole else np.minimum(sig[j, dsel], part)
        return sig

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """``(bands, docs)`` uint64: the key of each band of each signature."""
        p = self.params
        keys = np.empty((p.bands, sig.shape[1]), dtype=U64)
        for t in range(p.bands):
            acc = np.full(sig.shape[1], U64(((t + 1) * int(_GOLDEN)) & 0xFFFFFFFFFFFFFFFF), dtype=U64)
            for i in range(p.rows):
                acc += sig[t * p.rows + i] * self.row_mult[i]
            keys[t] = fmix64(acc)
        return keys


def candidate_probability(j: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two documents with Jaccard ``j`` share at least one band key."""
    return 1.0 - (1.0 - np.asarray(j, dtype=np.float64) ** rows) ** bands


def _powi(x: np.ndarray, n: int) -> np.ndarray:
    """``x ** n`` by repeated squaring: the same IEEE products on every machine (libm's
    ``pow`` may differ in the last bit between platforms)."""
    out = np.ones_like(x)
    base = x.copy()
    while n:
        if n & 1:
            out = out * base
        base = base * base
        n >>= 1
    return out


def _area(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid area with an exactly rounded sum (``math.fsum``): platform-independent."""
    if len(x) < 2:
        return 0.0
    return math.fsum(((y[1:] + y[:-1]) * (x[1:] - x[:-1]) * 0.5).tolist())


@functools.cache
def lsh_params(threshold: float, num_perm: int, *, verify: bool = False) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` for a Jaccard ``threshold``.

    Without verification every candidate is a duplicate, so false positives (area under the
    S-curve below the threshold) and false negatives (area above it) weigh the same, as in
    datasketch. With verification a false positive costs only a Jaccard computation, so
    the choice is the fewest candidates below the threshold among the ``bands x rows`` that
    find a pair *at* the threshold with probability >= 0.99 (the most likely one if none
    does). Every worker recomputes this from the spec, so it is computed with
    platform-independent arithmetic only.
    """
    x = np.linspace(0.0, 1.0, 2001)
    below, above = x <= threshold, x >= threshold
    t = np.array([threshold])
    best: tuple[float, int, int] | None = None
    fallback: tuple[float, int, int] | None = None
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - _powi(1.0 - _powi(x, r), b)
            fp = _area(p[below], x[below])
            if verify:
                at = float(1.0 - _powi(1.0 - _powi(t, r), b)[0])
                if fallback is None or at > fallback[0]:
                    fallback = (at, b, r)
                if at < 0.99:
                    continue
                cost = fp
            else:
                cost = 0.5 * fp + 0.5 * _area(1.0 - p[above], x[above])
            if best is None or cost < best[0]:
                best = (cost, b, r)
    chosen = best or fallback
    assert chosen is not None
    return chosen[1], chosen[2]


# -- 5. verification -----------------------------------------------------------------------

def shingle_sets(text: pa.Array, *, unit: Literal["word", "char"], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, offsets)``: each document's set of shingles as sorted unique uint32
    (the high half of the 64-bit shingle hash), ``values[offsets[i]:offsets[i+1]]``."""
    sh, per_doc = shingle_hashes(*unit_hashes(text, unit), ngram)
    doc = np.repeat(np.arange(len(per_doc), dtype=U64), per_doc)
    keys = (doc << U64(32)) | (sh >> U64(32))
    keys.sort()
    if len(keys):
        keep = np.ones(len(keys), dtype=bool)
        keep[1:] = keys[1:] != keys[:-1]
        keys = keys[keep]
    offsets = np.searchsorted(keys >> U64(32), np.arange(len(per_doc) + 1, dtype=U64)).astype(np.int64)
    return (keys & U64(0xFFFFFFFF)).astype(np.uint32), offsets


def _gather(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the segments ``idx`` of a (values, offsets) list; and their lengths."""
    lens = offsets[idx + 1] - offsets[idx]
    first = np.cumsum(lens) - lens
    pos = np.repeat(offsets[idx] - first, lens) + np.arange(int(lens.sum()), dtype=np.int64)
    return values[pos], lens


def jaccard(a_values: np.ndarray, a_offsets: np.ndarray, a_idx: np.ndarray,
            b_values: np.ndarray, b_offsets: np.ndarray, b_idx: np.ndarray,
            *, chunk_elements: int = 1 << 22) -> np.ndarray:
    """Exact Jaccard of set ``a_idx[p]`` of A and set ``b_idx[p]`` of B for every pair ``p``.

    Both sides' elements are tagged with the pair number, sorted together, and equal
    neighbours counted: one sort per chunk of pairs, no loop per pair.
    """
    a_idx = np.asarray(a_idx, dtype=np.int64)
    b_idx = np.asarray(b_idx, dtype=np.int64)
    npairs = len(a_idx)
    out = np.zeros(npairs, dtype=np.float64)
    sizes = (a_offsets[a_idx + 1] - a_offsets[a_idx]) + (b_offsets[b_idx + 1] - b_offsets[b_idx])
    ends = np.cumsum(sizes)
    lo = 0
    while lo < npairs:
        # Pairs [lo, hi) with at most chunk_elements elements (at least one pair).
        done = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, done + chunk_elements, side="right")))
        hi = min(hi, npairs)
        av, al = _gather(a_values, a_offsets, a_idx[lo:hi])
        bv, bl = _gather(b_values, b_offsets, b_idx[lo:hi])
        p = np.arange(hi - lo, dtype=U64)
        keys = np.concatenate([(np.repeat(p, al) << U64(32)) | av.astype(U64),
                               (np.repeat(p, bl) << U64(32)) | bv.astype(U64)])
        keys.sort()
        same = keys[1:] == keys[:-1]
        inter = np.bincount((keys[1:][same] >> U64(32)).astype(np.int64), minlength=hi - lo)
        union = al + bl - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:hi] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        lo = hi
    return out
