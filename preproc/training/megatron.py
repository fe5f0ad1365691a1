"""Reading Megatron-LM's indexed dataset (``.bin`` + ``.idx``) that the tokenize stage
writes: :class:`IndexedDataset` memory-maps one ``prefix.bin``/``prefix.idx`` pair, as
Megatron-LM / Megatron-Core would read it.

The format (and its constants) is owned by the writer, :mod:`preproc.tokenize.megatron`;
the reader checks the header against the same constants, so the two cannot drift apart.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from preproc.tokenize.megatron import DTYPE_CODES, MAGIC, VERSION

__all__ = ["Index", "read_index", "IndexedDataset"]


@dataclass
class Index:
    dtype: np.dtype
    lengths: np.ndarray
    pointers: np.ndarray
    doc_idx: np.ndarray


def read_index(data: bytes | memoryview) -> Index:
    """Parse an ``.idx`` buffer, checking the header as Megatron does."""
    buf = memoryview(data)
    if bytes(buf[:9]) != MAGIC:
        raise ValueError("not a Megatron index: bad magic")
    (version,) = struct.unpack("<Q", buf[9:17])
    if version != VERSION:
        raise ValueError(f"unsupported Megatron index version {version}")
    (code,) = struct.unpack("<B", buf[17:18])
    (s,) = struct.unpack("<Q", buf[18:26])
    (d,) = struct.unpack("<Q", buf[26:34])
    off = 34
    lengths = np.frombuffer(buf, dtype=np.int32, count=s, offset=off)
    off += 4 * s
    pointers = np.frombuffer(buf, dtype=np.int64, count=s, offset=off)
    off += 8 * s
    doc_idx = np.frombuffer(buf, dtype=np.int64, count=d, offset=off)
    return Index(np.dtype(DTYPE_CODES[code]), lengths, pointers, doc_idx)


class IndexedDataset:
    """A read-only view of one ``prefix.bin``/``prefix.idx`` pair (local files, memory-mapped).

    >>> ds = IndexedDataset("out/tokens/part-00000")   # doctest: +SKIP
    >>> ds[0]                                           # tokens of the first document
    """

    def __init__(self, prefix: str):
        with open(prefix + ".idx", "rb") as f:
            self.index = read_index(f.read())
        self.bin = np.memmap(prefix + ".bin", dtype=self.index.dtype, mode="r")

    def __len__(self) -> int:
        return len(self.index.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = self.index.pointers[i] // self.index.dtype.itemsize
        return np.asarray(self.bin[start:start + self.index.lengths[i]])
