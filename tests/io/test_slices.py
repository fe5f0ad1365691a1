"""Balanced slices of the clean output (preproc.io.slices): the profile clean records, and
the cut later stages read."""

import random

import numpy as np
import pytest

from preproc.io.slices import MAX_CHECKPOINTS, Piece, TextProfile, balanced_slices


def _profile(lengths, cuts):
    p = TextProfile()
    for a, b in zip([0, *cuts], [*cuts, len(lengths)]):
        p.add(np.asarray(lengths[a:b], dtype=np.int64))
    return p.to_json()


@pytest.mark.parametrize("seed", range(12))
def test_profile_is_exact_bounded_and_independent_of_batches(seed):
    r = random.Random(seed)
    lengths = [r.choice([0, 1, 40, 900, 5000, 70000]) for _ in range(r.randrange(1, 5000))]
    cum = np.cumsum(lengths)
    cuts = sorted(r.sample(range(1, len(lengths)), min(len(lengths) - 1, r.randrange(0, 50)))) if len(lengths) > 1 else []
    prof = _profile(lengths, cuts)
    assert prof == _profile(lengths, [])                  # batches do not matter
    assert len(prof) <= MAX_CHECKPOINTS
    assert prof[-1] == [len(lengths), int(cum[-1])]
    rows = [row for row, _ in prof]
    assert rows == sorted(set(rows)) and rows[0] >= 1
    for row, nbytes in prof:                               # each checkpoint: bytes of rows 0..row
        assert nbytes == int(cum[row - 1])


def test_profile_of_a_large_part_spreads_its_checkpoints():
    prof = _profile([1000] * 200_000, [])                  # 200 MB in 1 KB documents
    assert MAX_CHECKPOINTS // 2 <= len(prof) <= MAX_CHECKPOINTS
    gaps = np.diff([0] + [b for _, b in prof])
    assert gaps.max() <= 2 * 200_000_000 / MAX_CHECKPOINTS


def _rows_of(slices):
    return [(p.part, row) for s in slices for p in s for row in range(p.start, p.end)]


def test_unequal_parts_cut_into_equal_slices():
    # 8 parts of 1:2:4:...:128 (as 8 gzip files would give), 1 KB documents.
    profiles = [_profile([1000] * (64 * 2**k), []) for k in range(8)]
    slices = balanced_slices(profiles, 8)
    # Every row once, in order: the slices are the clean output, cut.
    assert _rows_of(slices) == [(i, row) for i in range(8) for row in range(64 * 2**i)]
    sizes = [sum(p.text_bytes for p in s) for s in slices]
    assert sum(sizes) == 1000 * 64 * 255
    assert max(sizes) / (sum(sizes) / 8) <= 1.05
    # The big last part is read by several indices, the small first ones by one together.
    assert {p.part for p in slices[0]} == {0, 1, 2, 3, 4, 5}
    assert all(s == [Piece(7, s[0].start, s[0].end, s[0].text_bytes)] for s in slices[4:])


def test_more_slices_than_pieces_and_empty_parts():
    profiles = [[[0, 0]], [[1, 500]], [[0, 0]], [[2, 10]]]       # parts 0 and 2 are empty
    slices = balanced_slices(profiles, 5)
    assert _rows_of(slices) == [(1, 0), (3, 0), (3, 1)]
    assert sum(1 for s in slices if not s) == 3
    assert balanced_slices([[[0, 0]]] * 3, 2) == [[], []]
    # One slice: the whole clean output, part after part.
    assert balanced_slices(profiles, 1) == [[Piece(1, 0, 1, 500), Piece(3, 0, 2, 10)]]
