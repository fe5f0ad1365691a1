"""The tokenize stage regroups a clean part into bounded batches: in order, drops applied,
at most ``batch_size`` documents and about ``batch_bytes`` of text (one huge document alone)."""

import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preproc.tokenize.stage import _kept_batches


@pytest.mark.parametrize("seed", range(40))
def test_kept_batches_are_bounded_ordered_and_complete(seed):
    r = random.Random(seed)
    texts = [("x" * r.choice([0, 1, 5, 50, 700, 1600, 3000])) or "y" for _ in range(r.randrange(1, 600))]
    t = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    buf = io.BytesIO()
    pq.write_table(t, buf, row_group_size=r.choice([7, 100, 1000]))
    buf.seek(0)
    drops = np.array(sorted(r.sample(range(len(texts)), min(len(texts), r.randrange(0, 20)))), dtype=np.uint32)
    counts = {"dropped": 0}
    max_docs, max_bytes = r.choice([1, 3, 7, 64]), r.choice([1, 100, 1500, 5000])
    out = list(_kept_batches(pq.ParquetFile(buf), drops, max_docs, max_bytes, counts))
    ids = [i for b in out for i in b.column("id").to_pylist()]
    assert ids == [str(i) for i in range(len(texts)) if i not in set(drops.tolist())]
    assert counts["dropped"] == len(drops)
    for b in out:
        size = sum(len(x) for x in b.column("text").to_pylist())
        assert 1 <= b.num_rows <= max_docs
        assert size <= max_bytes or b.num_rows == 1
