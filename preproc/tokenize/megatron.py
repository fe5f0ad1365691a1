"""Megatron-LM's indexed dataset (``.bin`` + ``.idx``), written and read exactly as
Megatron-LM / Megatron-Core's ``IndexedDataset`` expects, so Megatron-LM and NeMo read our
token files as they are.

``.bin``: every document's token ids, back to back, in the dtype named by the index.

``.idx`` (little-endian)::

    9 bytes   magic  b"MMIDIDX\\x00\\x00"
    uint64    version = 1
    uint8     dtype code   (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                            7 float32, 8 uint16)
    uint64    sequence count S
    uint64    document count D + 1
    int32[S]  sequence lengths (tokens)
    int64[S]  sequence pointers (byte offset of each sequence in .bin)
    int64[D+1] document indices (sequence index where each document starts, then S)

We write one sequence per document, so the document indices are ``0, 1, ..., S``.
Megatron has no uint32 code: a vocabulary over 65,535 ids is written as int32 (code 4).

This module is the writer and owns the format's constants. The reader training code uses,
:mod:`preproc.training.megatron`, imports them from here, so this module must stay light
(numpy only).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

__all__ = ["MAGIC", "VERSION", "DTYPE_CODES", "megatron_dtype", "write_index"]

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES: dict[int, type] = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
                                6: np.float64, 7: np.float32, 8: np.uint16}
_CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


def megatron_dtype(max_token_id: int) -> np.dtype:
    """uint16 when every id fits, else int32 (Megatron's own rule for large vocabularies)."""
    return np.dtype(np.uint16) if max_token_id <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def write_index(f: BinaryIO, lengths: np.ndarray, dtype: np.dtype) -> None:
    """Write the ``.idx`` of a ``.bin`` holding one sequence per document, ``lengths[i]``
    tokens of ``dtype`` each, back to back."""
    lengths = np.asarray(lengths, dtype=np.int32)
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    f.write(MAGIC)
    f.write(struct.pack("<Q", VERSION))
    f.write(struct.pack("<B", _CODE_OF[np.dtype(dtype)]))
    f.write(struct.pack("<Q", n))
    f.write(struct.pack("<Q", n + 1))
    f.write(lengths.tobytes(order="C"))
    f.write(pointers.tobytes(order="C"))
    f.write(np.arange(n + 1, dtype=np.int64).tobytes(order="C"))
