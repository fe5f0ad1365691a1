"""Duplicate lines, paragraphs and word n-grams inside each document, vectorized.

Every unit (line, paragraph, n-gram) gets a 64-bit hash; the hash, salted with the document
index, goes into the high bits of a uint64 and the unit's position into the low bits. One
``np.sort`` then groups equal units of the same document together, in position order, so
"is this the first occurrence?" and "how often does it occur?" are run-length questions
answered with a handful of numpy passes — no per-document Python, no hash tables.

With at least 2**31 hash values per document, two different units of one document collide
with a probability far below anything the thresholds can notice.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import numpy as np

from preproc.clean.filters._text import TextView, mix64

_U64 = np.uint64
_K1 = _U64(0x9E3779B97F4A7C15)
_K3 = _U64(0xD6E8FEB86659FD93)

# Words per chunk of documents in the n-gram pass: sorting a few million uint64 at a time
# stays in cache and bounds the scratch memory.
_CHUNK_WORDS = 1 << 20


def _sorted_runs(keys: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal ``(group, key)`` pairs: ``(order, starts, run_len)``.

    ``order`` lists the unit indices grouped by equal units, each group in index order;
    ``starts[j]``/``run_len[j]`` locate group ``j`` in ``order`` (its first unit is the
    first occurrence). ``keys`` must be well-mixed 64-bit hashes, ``group`` non-negative
    and non-decreasing (documents).
    """
    n = len(keys)
    pos_bits = max(1, int(n - 1).bit_length())
    n_groups = int(group[-1]) + 1
    group_bits = max(1, (n_groups - 1).bit_length())
    if pos_bits > 32:
        raise ValueError("too many units in one batch for the duplicate finder")
    lo = _U64((1 << pos_bits) - 1)
    if group_bits + pos_bits <= 32:
        # The group in the top bits, at least 32 bits of the hash below, the position last.
        packed = keys >> _U64(group_bits + pos_bits) << _U64(pos_bits)
        packed |= group.astype(_U64) << _U64(64 - group_bits)
    else:
        packed = mix64(keys ^ mix64(group.astype(_U64) * _K1 + _K3)) & ~lo
    packed |= np.arange(n, dtype=_U64)
    packed.sort()
    order = (packed & lo).astype(np.int64)
    packed >>= _U64(pos_bits)
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(packed[1:], packed[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    run_len = np.diff(np.append(starts, n))
    return order, starts, run_len


def repeats(keys: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For units with hashes ``keys`` in documents ``group``: ``(is_repeat, count)``.

    ``is_repeat[i]``: an equal unit of the same group occurs at a smaller index.
    ``count[i]``: how many units of the group equal unit ``i`` (1 = unique).
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    order, starts, run_len = _sorted_runs(keys, group)
    is_repeat = np.ones(n, dtype=bool)
    is_repeat[order[starts]] = False
    count = np.empty(n, dtype=np.int64)
    count[order] = np.repeat(run_len, run_len)
    return is_repeat, count


def segment_hashes(word_hash: np.ndarray, seg_word_start: np.ndarray,
                   seg_nonempty: np.ndarray, word_seg: np.ndarray) -> np.ndarray:
    """Order-sensitive hash of the word sequence of each segment (line or paragraph).

    ``seg_word_start``: CSR word offsets of the segments; segments without words get 0.
    """
    n_seg = len(seg_word_start) - 1
    out = np.zeros(n_seg, dtype=_U64)
    if len(word_hash) == 0:
        return out
    rank = np.arange(len(word_hash), dtype=np.int64) - seg_word_start[word_seg]
    contrib = mix64(word_hash ^ (rank.astype(_U64) * _K1))
    starts = seg_word_start[:-1][seg_nonempty]
    if len(starts):
        out[seg_nonempty] = mix64(np.add.reduceat(contrib, starts))
    return out


class LineStats:
    """Per-document duplicate statistics of lines and paragraphs of a :class:`TextView`.

    Lines are compared by their word sequence (so indentation and spacing do not matter),
    paragraphs by the sequence of their lines; blank lines are neither lines nor paragraphs
    here, and separate paragraphs.
    """

    @property
    def view(self) -> TextView:
        v = self._view()
        if v is None:  # pragma: no cover - only reachable through the view that owns us
            raise RuntimeError("LineStats outlived its TextView")
        return v

    def __init__(self, view: TextView):
        # A weak reference: the view memoizes this object, and a strong one back would make
        # a reference cycle that keeps a whole batch's arrays alive until the cyclic GC runs
        # (measured: +150 MB of RSS per batch).
        self._view = weakref.ref(view)
        lw = view.line_words
        self.nonblank = lw > 0
        self.line_hash = segment_hashes(view.word_hash, view.line_word_start, self.nonblank,
                                        view.word_line)
        nb = np.flatnonzero(self.nonblank)
        self.nonblank_idx = nb
        rep, _ = repeats(self.line_hash[nb], view.line_doc[nb])
        self.line_repeat = np.zeros(len(lw), dtype=bool)
        self.line_repeat[nb] = rep

    def per_doc(self, per_line: np.ndarray) -> np.ndarray:
        return self.view.per_doc_line_sum(per_line.astype(np.float64))

    @property
    def nonblank_lines(self) -> np.ndarray:
        return self.per_doc(self.nonblank)

    @property
    def repeated_lines(self) -> np.ndarray:
        return self.per_doc(self.line_repeat)

    @property
    def repeated_line_chars(self) -> np.ndarray:
        return self.per_doc(self.line_repeat * self.view.line_chars)

    def paragraphs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per document: paragraphs, repeated paragraphs, characters in repeated paragraphs."""
        v = self.view
        n_lines = len(self.nonblank)
        line_idx = np.arange(n_lines, dtype=np.int64)
        first_of_doc = np.zeros(n_lines, dtype=bool)
        first_of_doc[v.doc_line_start[:-1][np.diff(v.doc_line_start) > 0]] = True
        prev_blank = np.concatenate([[True], ~self.nonblank[:-1]])
        new_para = self.nonblank & (prev_blank | first_of_doc)
        para_of_line = np.cumsum(new_para) - 1          # valid on non-blank lines
        para_first_line = line_idx[new_para]
        n_para = len(para_first_line)
        para_doc = v.line_doc[para_first_line]
        # A paragraph's hash: of its sequence of line hashes (its non-blank lines are
        # contiguous), so the work is per line, not per word.
        nb = self.nonblank
        nb_idx = self.nonblank_idx
        para_line_start = np.searchsorted(nb_idx, para_first_line)
        para_hash = segment_hashes(self.line_hash[nb_idx], np.append(para_line_start, len(nb_idx)),
                                   np.ones(n_para, dtype=bool), para_of_line[nb_idx])
        para_chars = np.bincount(para_of_line[nb], weights=v.line_chars[nb] + 1,
                                 minlength=n_para) - 1  # lines + the newlines between them
        rep, _ = repeats(para_hash, para_doc)
        paras = np.bincount(para_doc, minlength=v.n_docs).astype(np.float64)
        rep_paras = np.bincount(para_doc, weights=rep, minlength=v.n_docs)
        rep_chars = np.bincount(para_doc, weights=rep * para_chars, minlength=v.n_docs)
        return paras, rep_paras, rep_chars


def ngram_fractions(view: TextView, docs: np.ndarray, top: Mapping[int, float],
                    dup: Mapping[int, float]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Gopher's n-gram repetition statistics for the documents where ``docs`` is true.

    Returns ``(top_frac, dup_frac)``, per n an array over the view's documents:

    * ``top_frac[n]``: characters in the most frequent word n-gram (occurring at least twice;
      ties → the longest), counted at every occurrence, over the document's characters.
    * ``dup_frac[n]``: characters in repeated n-grams (every occurrence after the first),
      each word counted once however many repeats overlap it, over the document's
      characters.

    An n-gram's characters are its words' and the ``n - 1`` single spaces between them
    (datatrove measures ``" ".join(words)``); a run of covered words counts the spaces
    inside it.

    ``top``/``dup`` map n to its threshold. The thresholds only let the pass stop early: the
    covered fraction can only shrink as n grows, so a document at or below every remaining
    ``dup`` threshold is not followed further (its later values are left at 0).
    """
    n_docs = view.n_docs
    top_frac = {n: np.zeros(n_docs) for n in top}
    dup_frac = {n: np.zeros(n_docs) for n in dup}
    if not top and not dup:
        return top_frac, dup_frac
    dws = view.doc_word_start
    counts = np.diff(dws)
    chosen = np.flatnonzero(docs & (counts >= 2))
    if len(chosen) == 0:
        return top_frac, dup_frac
    word_hash = view.word_hash
    word_chars = view.word_chars
    # Chunks of consecutive chosen documents with about _CHUNK_WORDS words each.
    cum = np.cumsum(counts[chosen])
    cut = np.searchsorted(cum, np.arange(_CHUNK_WORDS, cum[-1], _CHUNK_WORDS), side="left") + 1
    for part in np.split(chosen, np.unique(cut)):
        if len(part) == 0:
            continue
        c = counts[part]
        if part[-1] - part[0] == len(part) - 1:      # consecutive documents: a slice
            sl = slice(dws[part[0]], dws[part[-1] + 1])
            hw, ch = word_hash[sl], word_chars[sl]
        else:
            ldoc = np.repeat(np.arange(len(part), dtype=np.int64), c)
            local_start = np.concatenate([[0], np.cumsum(c)[:-1]])
            idx = dws[part][ldoc] + (np.arange(len(ldoc), dtype=np.int64) - local_start[ldoc])
            hw, ch = word_hash[idx], word_chars[idx]
        t, d = _ngram_chunk(hw, ch, c, view.doc_chars[part], top, dup)
        for n, v in t.items():
            top_frac[n][part] = v
        for n, v in d.items():
            dup_frac[n][part] = v
    return top_frac, dup_frac


def _ngram_chunk(hw: np.ndarray, ch: np.ndarray, counts: np.ndarray, doc_chars: np.ndarray,
                 top: Mapping[int, float], dup: Mapping[int, float]):
    """:func:`ngram_fractions` for the words ``hw``/``ch`` of consecutive documents."""
    W = len(hw)
    nd = len(counts)
    ends = np.cumsum(counts)
    ldoc = np.repeat(np.arange(nd, dtype=np.int64), counts)
    remaining = ends[ldoc] - np.arange(W, dtype=np.int64)   # words from here to doc end
    cum_chars = np.zeros(W + 1, dtype=np.int64)
    np.cumsum(ch, out=cum_chars[1:])
    safe_total = np.where(doc_chars > 0, doc_chars, 1).astype(np.float64)
    top_out = {n: np.zeros(nd) for n in top}
    dup_out = {n: np.zeros(nd) for n in dup}
    g = hw.copy()
    cand = np.arange(W, dtype=np.int64)
    rem = remaining
    need = np.ones(nd, dtype=bool)
    last_top = max(top, default=0)
    for n in range(2, max(list(top) + list(dup)) + 1):
        # An n-gram can repeat only where the (n-1)-gram at the same place repeats, so the
        # candidates shrink with n (they start as every position).
        keep = rem >= n
        if not need.all():
            keep &= need[ldoc[cand]]
        cand, rem = cand[keep], rem[keep]
        if len(cand) == 0:
            break
        # Rolling hash: rotate (order matters), add the next word's (mixed) hash, multiply
        # by an odd constant — the high bits, which the grouping uses, mix well.
        gc = g[cand]
        gc = ((gc << _U64(27)) | (gc >> _U64(37))) ^ hw[cand + (n - 1)]
        gc *= _K1
        g[cand] = gc
        order, starts, run_len = _sorted_runs(gc, ldoc[cand])
        multi = run_len >= 2
        if n in top and multi.any():
            p = cand[order[starts[multi]]]          # first occurrence of each repeated n-gram
            chars = cum_chars[p + n] - cum_chars[p] + (n - 1)
            score = (run_len[multi].astype(np.int64) << 32) | chars.astype(np.int64)
            best = np.zeros(nd, dtype=np.int64)
            np.maximum.at(best, ldoc[p], score)
            top_out[n] = (best >> 32) * (best & 0xFFFFFFFF) / safe_total
        if n in dup:
            first = np.zeros(len(order), dtype=bool)
            first[starts] = True
            r = cand[np.sort(order[~first])]          # starts of repeated n-grams, in order
            if len(r):
                # Union of the intervals [r, r + n): each start covers up to the next start;
                # a piece that runs into the next one also covers the space between them.
                span = np.full(len(r), n, dtype=np.int64)
                np.minimum(span[:-1], np.diff(r), out=span[:-1])
                joined = np.zeros(len(r), dtype=np.int64)
                joined[:-1] = (r[:-1] + span[:-1] == r[1:]) & (ldoc[r[:-1]] == ldoc[r[1:]])
                covered = cum_chars[r + span] - cum_chars[r] + (span - 1) + joined
                dup_out[n] = np.bincount(ldoc[r], weights=covered, minlength=nd) / safe_total
            later = [th for k, th in dup.items() if k > n]
            if later and n >= last_top:
                need &= dup_out[n] > min(later)
        sel = np.sort(order[np.repeat(multi, run_len)])
        cand, rem = cand[sel], rem[sel]
    return top_out, dup_out
