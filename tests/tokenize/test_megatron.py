import struct

import numpy as np
import pytest

from preproc.tokenize.megatron import megatron_dtype, write_index
from preproc.training.megatron import IndexedDataset, read_index


def _parse(buf: bytes):
    """An independent parse of the layout Megatron-LM documents (not via our reader)."""
    assert buf[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack_from("<Q", buf, 9)
    code, = struct.unpack_from("<B", buf, 17)
    seqs, = struct.unpack_from("<Q", buf, 18)
    docs, = struct.unpack_from("<Q", buf, 26)
    off = 34
    lengths = struct.unpack_from(f"<{seqs}i", buf, off)
    off += 4 * seqs
    pointers = struct.unpack_from(f"<{seqs}q", buf, off)
    off += 8 * seqs
    doc_idx = struct.unpack_from(f"<{docs}q", buf, off)
    off += 8 * docs
    assert off == len(buf)
    return version, code, list(lengths), list(pointers), list(doc_idx)


@pytest.mark.parametrize("max_id,code,item", [(50256, 8, 2), (65535, 8, 2), (129279, 4, 4)])
def test_index_layout(tmp_path, max_id, code, item):
    dt = megatron_dtype(max_id)
    docs = [np.array([1, 2, 3]), np.array([max_id]), np.array([7, 8])]
    with open(tmp_path / "x.bin", "wb") as f:
        for d in docs:
            f.write(d.astype(dt).tobytes())
    with open(tmp_path / "x.idx", "wb") as f:
        write_index(f, np.array([3, 1, 2]), dt)
    version, c, lengths, pointers, doc_idx = _parse((tmp_path / "x.idx").read_bytes())
    assert (version, c) == (1, code)
    assert lengths == [3, 1, 2]
    assert pointers == [0, 3 * item, 4 * item]
    assert doc_idx == [0, 1, 2, 3]
    ds = IndexedDataset(str(tmp_path / "x"))
    assert [ds[i].tolist() for i in range(len(ds))] == [d.tolist() for d in docs]


def test_bad_magic_is_refused():
    with pytest.raises(ValueError, match="magic"):
        read_index(b"NOTMMIDX" + b"\0" * 40)
