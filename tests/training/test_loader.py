"""The training side: TokenDataset windows cover every token exactly once per epoch across
ranks (and DataLoader workers), resume exactly (also on another world size), decode back to
the documents with GPT-2, and read S3 by ranges through a local cache."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import preproc
from preproc.training.loader import TokenDataset, torch_dataset, window_order
from preproc.training.megatron import IndexedDataset

L = 64
EOS = 50256


@pytest.fixture(scope="module")
def gpt2_run(demo_inputs, gpt2, tmp_path_factory):
    """The demo corpus tokenized with GPT-2, text unchanged (clean: false), in 4 shards."""
    out = tmp_path_factory.mktemp("gpt2") / "out"
    preproc.run({"input": {"paths": [str(demo_inputs / "input" / "*")]}, "clean": False, "shards": 4,
                 "executor": {"workers": 2}}, output=str(out), tokenizer=str(gpt2))
    ds = json.loads((out / "dataset.json").read_text())
    stream = np.concatenate([np.asarray(IndexedDataset(str(out / s["megatron"])).bin) for s in ds["shards"]])
    assert len(stream) == ds["tokens"] and ds["megatron_dtype"] == "uint16"
    return out, stream.astype(np.int64)


def _reference(stream: np.ndarray, seq_len: int, drop_last: bool) -> list[bytes]:
    t = len(stream)
    n = (t - 1) // seq_len if drop_last else -(-t // seq_len)
    return [stream[k * seq_len:min(k * seq_len + seq_len + 1, t)].tobytes() for k in range(n)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_token_once_per_epoch_across_ranks(gpt2_run, world_size, drop_last):
    out, stream = gpt2_run
    ranks = [list(TokenDataset(out, L, rank=r, world_size=world_size, seed=7, drop_last=drop_last))
             for r in range(world_size)]
    got = Counter(w.tobytes() for rank in ranks for w in rank)
    ref = _reference(stream, L, drop_last)
    assert got == Counter(ref)
    assert max(map(len, ranks)) - min(map(len, ranks)) <= 1
    assert all(w.dtype == np.int64 for w in ranks[0][:3])
    if drop_last:
        assert all(len(w) == L + 1 for rank in ranks for w in rank)
        assert len(stream) - len(ref) * L <= L      # only the tail is unused
    else:
        # Window k holds tokens [kL, kL+L) as inputs (its last one is the next one's first).
        assert sum(len(w[:L]) for rank in ranks for w in rank) == len(stream)
    if world_size == 1:
        stream_order = [w.tobytes() for w in ranks[0]]
        assert stream_order != ref                           # shuffled ...
        assert stream_order == [w.tobytes() for w in TokenDataset(out, L, seed=7, drop_last=drop_last)]  # ... by seed


def test_permutation_is_a_bijection():
    for n in (1, 2, 3, 5, 17, 1000, 4097, 65537):
        for epoch in (0, 1):
            order = window_order(np.arange(n), n, seed=11, epoch=epoch)
            assert sorted(order.tolist()) == list(range(n))
    a = window_order(np.arange(1000), 1000, seed=1, epoch=0)
    assert not np.array_equal(a, window_order(np.arange(1000), 1000, seed=1, epoch=1))
    assert not np.array_equal(a, window_order(np.arange(1000), 1000, seed=2, epoch=0))
    # O(1) memory: any index of a huge epoch, no array of its size.
    big = window_order(np.array([0, 10**12 - 1]), 10**12, seed=0, epoch=0)
    assert ((0 <= big) & (big < 10**12)).all()


def test_resume_yields_exactly_the_remaining_windows(gpt2_run):
    out, stream = gpt2_run
    order = [w.tobytes() for w in TokenDataset(out, L, seed=3)]          # one rank: the epoch's order
    k = 1234
    first = [TokenDataset(out, L, rank=r, world_size=2, seed=3) for r in range(2)]
    consumed = []
    for ds in first:
        it = iter(ds)
        consumed += [next(it).tobytes() for _ in range(k)]
    state = first[0].state_dict()
    assert state == first[1].state_dict() and state["position"] == 2 * k and state["epoch"] == 0
    assert Counter(consumed) == Counter(order[:2 * k])

    # Resume on three ranks: exactly what was not consumed, nothing twice.
    rest = []
    for r in range(3):
        ds = TokenDataset(out, L, rank=r, world_size=3, seed=3)
        ds.load_state_dict(json.loads(json.dumps(state)))               # as a checkpoint stores it
        rest += [w.tobytes() for w in ds]
        assert ds.epoch == 1                                            # the epoch ended
    assert Counter(rest) == Counter(order[2 * k:])

    # The next epoch is another order of the same windows.
    ds = TokenDataset(out, L, seed=3)
    ds.set_epoch(1)
    nxt = [w.tobytes() for w in ds]
    assert nxt != order and Counter(nxt) == Counter(order)

    # An interrupted pass continues where it stopped; set_epoch of the current epoch keeps
    # the loaded position (a training loop calls it at the top of every epoch).
    ds = TokenDataset(out, L, seed=3)
    ds.load_state_dict(state)
    ds.set_epoch(0)
    it = iter(ds)
    part = [next(it).tobytes() for _ in range(10)]
    del it
    assert ds.state_dict()["position"] == 2 * k + 10
    assert part + [w.tobytes() for w in ds] == order[2 * k:]

    other = TokenDataset(out, L + 1, seed=3)
    with pytest.raises(ValueError, match="seq_len"):
        other.load_state_dict(state)


def test_windows_decode_back_to_the_documents(gpt2_run, gpt2):
    from tokenizers import Tokenizer

    out, _ = gpt2_run
    tok = Tokenizer.from_file(str(gpt2))
    # clean: false, so the clean parts hold every document's text exactly as read.
    texts = {}
    for p in sorted((out / "clean").glob("part-*.parquet")):
        t = pq.read_table(p, columns=["id", "text"])
        texts.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
    ids = [i for s in json.loads((out / "dataset.json").read_text())["shards"]
           for i in pq.read_table(out / s["parquet"], columns=["id"]).column("id").to_pylist()]

    # Stream order, no shuffle: the owned parts of the windows, cut at EOS, are the documents.
    ds = TokenDataset(out, L, shuffle=False, drop_last=False)
    flat = np.concatenate([w[:L] for w in ds])
    ends = np.flatnonzero(flat == EOS)
    assert len(ends) == len(ids) and ends[-1] == len(flat) - 1
    for doc_id, doc in zip(ids, np.split(flat, ends + 1)[:-1]):
        assert tok.decode(doc[:-1].tolist(), skip_special_tokens=False) == texts[doc_id]

    # Shuffled windows too: every document that lies whole inside a window decodes to its text.
    known = set(texts.values())
    inside = 0
    for w in TokenDataset(out, 1024, seed=5):
        cut = np.flatnonzero(w == EOS)
        for a, b in zip(cut[:-1], cut[1:]):
            assert tok.decode(w[a + 1:b].tolist()) in known
            inside += 1
        if inside >= 300:
            break
    assert inside >= 300


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_torch_dataloader_workers(gpt2_run):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    out, stream = gpt2_run
    L = 256   # fewer, longer windows: a DataLoader pays per item it passes between processes
    ref = Counter(_reference(stream, L, True))
    B = 8
    got: Counter = Counter()
    for r in range(2):
        ds = torch_dataset(out, L, batch_size=B, rank=r, world_size=2, seed=1)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        # Whole batches from the workers, in the same order as without workers.
        alone = [torch.from_numpy(b) for b in TokenDataset(out, L, rank=r, world_size=2, seed=1).iter_batches(B)]
        assert len(batches) == len(alone) and all(torch.equal(a, b) for a, b in zip(batches, alone))
        assert batches[0].dtype == torch.int64 and batches[0].shape == (B, L + 1)
        got.update(row.numpy().tobytes() for b in batches for row in b)
    assert got == ref

    # Windows one by one, batched by the DataLoader per worker: still each exactly once.
    ds = torch_dataset(out, L, world_size=1, seed=1)
    rows = [row.numpy().tobytes() for b in DataLoader(ds, batch_size=16, num_workers=3) for row in b]
    assert Counter(rows) == ref

    # Resume from the step count: the training loop knows how many batches it took.
    steps = 29
    taken: Counter = Counter()
    for r in range(2):
        ds = torch_dataset(out, L, batch_size=B, rank=r, world_size=2, seed=1)
        for i, b in enumerate(DataLoader(ds, batch_size=None, num_workers=2)):
            if i == steps:
                break
            taken.update(row.numpy().tobytes() for row in b)
    state = ds.state_dict(consumed=steps * B)
    rest: Counter = Counter()
    for r in range(3):
        ds = torch_dataset(out, L, batch_size=B, rank=r, world_size=3, seed=1)
        ds.load_state_dict(state)
        rest.update(row.numpy().tobytes() for b in DataLoader(ds, batch_size=None, num_workers=2) for row in b)
    assert sum(taken.values()) == 2 * steps * B
    assert taken + rest == ref


def test_s3_ranged_reads_with_a_local_cache(gpt2_run, s3, tmp_path):
    out, _ = gpt2_run
    b = s3.bucket()
    s3.client.put_object(Bucket=b, Key="ds/dataset.json", Body=(out / "dataset.json").read_bytes())
    for p in sorted((out / "tokens").glob("part-*.bin")):
        s3.client.put_object(Bucket=b, Key=f"ds/tokens/{p.name}", Body=p.read_bytes())
    proxy = s3.proxy()
    opts = dict(seed=9, storage={"s3": {"endpoint_url": proxy.endpoint_url}}, cache_dir=tmp_path / "cache",
                block_bytes=64 * 1024)
    local = [w.tobytes() for w in TokenDataset(out, L, seed=9)]
    remote = [w.tobytes() for w in TokenDataset(f"s3://{b}/ds", L, **opts)]
    assert remote == local
    bin_gets = [r for r in proxy.requests if r[0] == "GET" and ".bin" in r[1]]
    total_bytes = sum(p.stat().st_size for p in (out / "tokens").glob("part-*.bin"))
    assert 0 < len(bin_gets) <= total_bytes // (64 * 1024) + 8       # each block fetched once
    cached = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.blk"))
    assert cached == total_bytes

    # Another epoch in a new process-like object: every block comes from the disk cache.
    proxy.requests.clear()
    again = TokenDataset(f"s3://{b}/ds", L, **opts)
    again.set_epoch(1)
    assert Counter(w.tobytes() for w in again) == Counter(local)
    assert not [r for r in proxy.requests if r[0] == "GET" and ".bin" in r[1]]

    # Memory only (cache_dir=False): ranged reads, same windows.
    nocache = TokenDataset(f"s3://{b}/ds", L, seed=9, storage=opts["storage"], cache_dir=False, block_bytes=64 * 1024)
    assert [w.tobytes() for w, _ in zip(nocache, range(50))] == local[:50]


def test_package_never_imports_torch(gpt2_run):
    out, _ = gpt2_run
    code = ("import sys, preproc, preproc.loader, preproc.training, preproc.training.hf\n"
            f"ds = preproc.loader.TokenDataset({str(out)!r}, 16)\n"
            "next(iter(ds)); ds.state_dict()\n"
            "assert 'torch' not in sys.modules and 'datasets' not in sys.modules, sorted(sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert p.returncode == 0, p.stderr[-2000:]


def test_public_loader_path_is_the_training_loader():
    # README: ``from preproc.loader import torch_dataset``; the face re-exports, nothing more.
    import preproc.loader
    import preproc.training
    import preproc.training.loader as impl

    assert preproc.loader is sys.modules["preproc.loader"] and preproc.loader.__all__ == impl.__all__
    for name in impl.__all__:
        assert getattr(preproc.loader, name) is getattr(impl, name), name
    assert preproc.training.torch_dataset is impl.torch_dataset
    assert preproc.training.IndexedDataset is IndexedDataset is preproc.IndexedDataset
