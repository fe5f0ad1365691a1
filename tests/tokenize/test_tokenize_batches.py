"""The tokenize stage reads rows ``start..end`` of a clean part and regroups them into bounded
batches: in order, drops applied, at most ``batch_size`` documents and about ``batch_bytes``
of text (one huge document alone)."""

import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preproc.tokenize.stage import _regroup, _rows


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
    start = r.choice([0, 0, r.randrange(len(texts))])
    end = r.choice([None, len(texts), r.randrange(start, len(texts) + 1)])
    out = list(_regroup(_rows(pq.ParquetFile(buf), start, end, drops, counts), max_docs, max_bytes))
    ids = [i for b in out for i in b.column("id").to_pylist()]
    stop = len(texts) if end is None else end
    assert ids == [str(i) for i in range(start, stop) if i not in set(drops.tolist())]
    assert counts["dropped"] == sum(start <= d < stop for d in drops.tolist())
    # Where the input batches are cut does not change the output's batches.
    again = list(_regroup((b.slice(k, 1) for b in _rows(pq.ParquetFile(buf), start, end, drops, {"dropped": 0})
                           for k in range(b.num_rows)), max_docs, max_bytes))
    assert [b.num_rows for b in again] == [b.num_rows for b in out]
    for b in out:
        size = sum(len(x) for x in b.column("text").to_pylist())
        assert 1 <= b.num_rows <= max_docs
        assert size <= max_bytes or b.num_rows == 1
