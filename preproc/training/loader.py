"""What training code imports: fixed-length token windows over a preproc output.

A run's Megatron ``.bin`` files hold every kept document's tokens back to back, each document
ending with EOS; in shard order they form one token stream of ``T`` tokens. A
:class:`TokenDataset` cuts that stream into windows of ``seq_len + 1`` tokens (inputs and
the next-token labels), window ``k`` starting at token ``k * seq_len``, so consecutive windows
share one token and every token is an input exactly once per epoch::

    import preproc

    ds = preproc.TokenDataset("s3://datasets/web-v1", seq_len=2048,
                              rank=rank, world_size=world_size, seed=1234)
    for window in ds:                        # numpy int64, shape (2049,)
        x, y = window[:-1], window[1:]
    state = ds.state_dict()                  # save with the checkpoint
    ds.load_state_dict(state)                # resume exactly there, also with a new world size

* **Reading.** Local and PVC paths are memory-mapped. Remote files (``s3://``) are read by
  byte ranges in blocks of ``block_bytes`` that are kept in a local cache directory, so an
  epoch after the first reads from disk (several ranks and DataLoader workers on one node
  share the cache; blocks are written atomically).
* **Order.** The windows of an epoch are shuffled by a keyed pseudo-random permutation
  (a Feistel network with cycle walking): deterministic in ``(seed, epoch)``, computed per
  index in O(1) memory however many windows there are. ``shuffle=False`` keeps stream order.
* **Ranks.** Position ``p`` of the epoch's order goes to rank ``p % world_size``; rank sizes
  differ by at most one window.
* **Resume.** The state is the epoch and how many windows of its order were consumed by all
  ranks together (ranks step in lockstep in data-parallel training). Loading it on any
  world size yields exactly the windows not yet consumed.
* ``drop_last=True`` keeps only full windows (the last ``< seq_len + 1`` tokens are unused);
  ``False`` adds one final shorter window so that every token is covered.

:func:`torch_dataset` wraps a dataset as a ``torch.utils.data.IterableDataset`` that splits
its rank's windows across DataLoader workers without duplicates. This module never imports
torch; only that function does (through :mod:`preproc.training.torch`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from preproc.errors import ConfigError
from preproc.io.s3 import StorageLike, as_storage, open_fs

if TYPE_CHECKING:
    from preproc.io.s3 import StorageSpec

__all__ = ["TokenDataset", "torch_dataset", "window_order"]

STATE_VERSION = 1
DEFAULT_BLOCK_BYTES = 4 * 2**20
_MEMORY_BLOCKS = 16          # remote blocks kept in memory per process (besides the disk cache)
_FS_RECHECK_S = 30.0


# ---------------------------------------------------------------------------------------
# A keyed permutation of [0, n) in O(1) memory

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, epoch: int) -> list[np.uint64]:
    h = hashlib.sha256(f"preproc.loader:{seed}:{epoch}".encode()).digest()
    return [np.uint64(int.from_bytes(h[8 * r:8 * r + 8], "little")) for r in range(4)]


def window_order(positions: np.ndarray, num_windows: int, *, seed: int, epoch: int) -> np.ndarray:
    """The window at each of ``positions`` of epoch ``epoch``'s shuffled order.

    A bijection of ``[0, num_windows)``: four Feistel rounds over the smallest even number of
    bits that covers it, with cycle walking for values outside.
    """
    pos = np.asarray(positions, dtype=np.uint64)
    if num_windows <= 1:
        return pos.astype(np.int64)
    bits = max(2, int(num_windows - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    keys = _round_keys(seed, epoch)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << half) | right

    out = feistel(pos)
    bad = out >= np.uint64(num_windows)
    while bad.any():  # the domain is < 4 × num_windows: a few walks at most, on average
        out[bad] = feistel(out[bad])
        bad = out >= np.uint64(num_windows)
    return out.astype(np.int64)


# ---------------------------------------------------------------------------------------
# Reading the token stream

def _read_manifest(source: str, storage: StorageSpec) -> tuple[str, dict[str, Any]]:
    src = str(source).rstrip("/")
    if src.endswith(".json"):
        base, name = posixpath.dirname(src) if "://" in src else os.path.dirname(os.path.abspath(src)), src
    else:
        base, name = src, posixpath.join(src, "dataset.json")
    fs, path = open_fs(name, storage)
    try:
        with fs.open(path, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ConfigError(f"{name}: no dataset.json (is the run finished? `preproc status` tells)") from None
    if manifest.get("format_version") != 1:
        raise ConfigError(f"{name}: dataset format {manifest.get('format_version')!r}; this preproc reads 1")
    if not manifest.get("shards") or any("megatron" not in s for s in manifest["shards"]):
        raise ConfigError(f"{name}: the run wrote no Megatron .bin files (tokenize.formats needs megatron)")
    return base, manifest


class _TokenStream:
    """Random access to ``[a, b)`` of the concatenated shards, local or remote."""

    def __init__(self, base: str, manifest: dict[str, Any], storage: StorageSpec, *,
                 cache_dir: str | os.PathLike | bool | None, block_bytes: int):
        self.base = base
        self.storage = storage
        self.dtype = np.dtype(manifest.get("megatron_dtype") or manifest["dtype"])
        self.bins = [posixpath.join(base, s["megatron"] + ".bin") if "://" in base
                     else os.path.join(base, s["megatron"] + ".bin") for s in manifest["shards"]]
        self.counts = np.array([int(s["tokens"]) for s in manifest["shards"]], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.counts)])
        self.remote = "://" in base and not base.startswith("file://")
        self.block_bytes = max(self.dtype.itemsize, block_bytes - block_bytes % self.dtype.itemsize)
        if cache_dir is None:
            cache_dir = os.environ.get("PREPROC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "preproc")
        self.cache_dir = None if cache_dir is False else str(cache_dir)
        # Per run, so a rerun into the same output never reads another run's cached blocks.
        self.cache_key = hashlib.sha256(f"{base}|{manifest.get('run_id')}|{manifest.get('created_s')}".encode()).hexdigest()[:20]
        self._maps: dict[int, np.ndarray] = {}
        self._blocks: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._checked: set[int] = set()
        self._fss: dict[int, tuple[float, Any, str]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps, open filesystems and cached blocks stay in the process that made them.
        d = dict(self.__dict__)
        d["_maps"], d["_blocks"], d["_checked"], d["_fss"] = {}, OrderedDict(), set(), {}
        return d

    @property
    def total(self) -> int:
        return int(self.cum[-1])

    def read(self, a: int, b: int) -> np.ndarray:
        parts = []
        s = int(np.searchsorted(self.cum, a, side="right")) - 1
        while a < b:
            lo = a - int(self.cum[s])
            hi = min(b, int(self.cum[s + 1])) - int(self.cum[s])
            if hi > lo:
                parts.append(self._read_shard(s, lo, hi))
            a = int(self.cum[s]) + hi
            s += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # -- local: memory maps ------------------------------------------------------------
    def _read_shard(self, s: int, lo: int, hi: int) -> np.ndarray:
        if not self.remote:
            m = self._maps.get(s)
            if m is None:
                path = self.bins[s].removeprefix("file://")
                m = np.memmap(path, dtype=self.dtype, mode="r")
                if len(m) != self.counts[s]:
                    raise ConfigError(f"{path}: holds {len(m)} tokens, dataset.json says {self.counts[s]}")
                self._maps[s] = m
            return m[lo:hi]
        return np.frombuffer(self._read_remote(s, lo * self.dtype.itemsize, hi * self.dtype.itemsize), dtype=self.dtype)

    # -- remote: ranged reads through a block cache ----------------------------------------
    def _fs(self, s: int):
        # Resolved again now and then, not per window: the lookup checks the credential
        # sources, and a long training job must follow their rotation (see preproc.io.store).
        now = time.monotonic()
        hit = self._fss.get(s)
        if hit is None or now - hit[0] > _FS_RECHECK_S:
            hit = self._fss[s] = (now, *open_fs(self.bins[s], self.storage))
        return hit[1], hit[2]

    def _read_remote(self, s: int, lo: int, hi: int) -> bytes:
        fs, path = self._fs(s)
        if s not in self._checked:
            size = fs.size(path)
            if size != self.counts[s] * self.dtype.itemsize:
                raise ConfigError(f"{self.bins[s]}: holds {size} bytes, dataset.json says "
                                  f"{self.counts[s]} tokens of {self.dtype}")
            self._checked.add(s)
        bb = self.block_bytes
        out = []
        for k in range(lo // bb, (hi - 1) // bb + 1):
            block = self._block(fs, path, s, k)
            start, end = max(lo - k * bb, 0), min(hi - k * bb, len(block))
            out.append(block[start:end])
        return out[0] if len(out) == 1 else b"".join(out)

    def _block(self, fs, path: str, s: int, k: int) -> bytes:
        key = (s, k)
        data = self._blocks.get(key)
        if data is not None:
            self._blocks.move_to_end(key)
            return data
        cached = None
        if self.cache_dir is not None:
            cached = os.path.join(self.cache_dir, self.cache_key, f"{s:05d}", f"{k:08d}.blk")
            try:
                with open(cached, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = None
        if data is None:
            size = int(self.counts[s]) * self.dtype.itemsize
            start = k * self.block_bytes
            data = fs.cat_file(path, start=start, end=min(start + self.block_bytes, size))
            if cached is not None:
                os.makedirs(os.path.dirname(cached), exist_ok=True)
                tmp = f"{cached}.tmp-{uuid.uuid4().hex[:12]}"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, cached)   # readers on this node see a block whole or not at all
        self._blocks[key] = data
        if len(self._blocks) > _MEMORY_BLOCKS:
            self._blocks.popitem(last=False)
        return data


# ---------------------------------------------------------------------------------------
# The dataset

class TokenDataset:
    """Windows of ``seq_len + 1`` tokens over a preproc output, for one rank; see the module
    docstring.

    ``source``: the run's output (local, PVC or ``s3://``) or its ``dataset.json``.
    ``storage``: S3 settings (a :class:`~preproc.io.s3.StorageSpec` or ``{"s3": {...}}``);
    default: the AWS environment. ``cache_dir``: where remote blocks are cached (default
    ``$PREPROC_CACHE`` or ``~/.cache/preproc``; ``False``: memory only). ``dtype``: of the
    yielded arrays.
    """

    def __init__(self, source: str | os.PathLike, seq_len: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True, storage: StorageLike = None,
                 cache_dir: str | os.PathLike | bool | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 dtype: Any = np.int64):
        if int(seq_len) < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.seq_len = int(seq_len)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.dtype = np.dtype(dtype)
        storage = as_storage(storage)
        base, self.manifest = _read_manifest(os.fspath(source), storage)
        self._stream = _TokenStream(base, self.manifest, storage, cache_dir=cache_dir, block_bytes=block_bytes)
        self.epoch = 0
        self._origin = 0      # position of the last load_state_dict / set_epoch
        self._start = 0       # global position in the epoch's order where the next pass begins
        self._yielded = 0     # windows this rank yielded since then

    # -- sizes ---------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self._stream.total

    @property
    def num_windows(self) -> int:
        """Windows per epoch, all ranks together."""
        t, L = self.num_tokens, self.seq_len
        if t == 0:
            return 0
        return (t - 1) // L if self.drop_last else -(-t // L)

    def __len__(self) -> int:
        """Windows this rank yields from the current position to the end of the epoch."""
        return len(range(self._position() + self.rank, self.num_windows, self.world_size))

    def _position(self) -> int:
        return min(self.num_windows, self._start + self._yielded * self.world_size)

    def _fold(self) -> None:
        # A new pass continues where the last one stopped (what state_dict() reports).
        self._start, self._yielded = self._position(), 0

    # -- windows -------------------------------------------------------------------------
    def window(self, k: int) -> np.ndarray:
        """Window ``k`` of the stream (stream order, not shuffled)."""
        a = k * self.seq_len
        return np.asarray(self._stream.read(a, min(a + self.seq_len + 1, self.num_tokens)), dtype=self.dtype)

    def _order(self, positions: np.ndarray, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return positions.astype(np.int64)
        return window_order(positions, self.num_windows, seed=self.seed, epoch=epoch)

    def _positions(self, *, worker: int = 0, num_workers: int = 1, batch_size: int | None = None) -> np.ndarray:
        """This rank's (and worker's) positions in the epoch's order, from the current start.

        Worker ``w`` of ``K`` takes every ``K``-th of the rank's windows, or with
        ``batch_size`` every ``K``-th batch of them: DataLoader takes one item from each worker
        in turn, so the items arrive in the same order as without workers.
        """
        pos = np.arange(self._start + self.rank, self.num_windows, self.world_size, dtype=np.int64)
        if num_workers > 1:
            j = np.arange(len(pos))
            group = j // batch_size if batch_size else j
            pos = pos[group % num_workers == worker]
        return pos

    def _iter_windows(self, positions: np.ndarray, epoch: int, chunk: int = 4096) -> Iterator[np.ndarray]:
        for c in range(0, len(positions), chunk):
            for k in self._order(positions[c:c + chunk], epoch):
                yield self.window(int(k))

    def __iter__(self) -> Iterator[np.ndarray]:
        """This rank's remaining windows of the current epoch; then the next epoch begins."""
        self._fold()
        epoch = self.epoch
        for w in self._iter_windows(self._positions(), epoch):
            self._yielded += 1
            yield w
        if self.epoch == epoch and self._position() + self.rank >= self.num_windows:
            self.set_epoch(epoch + 1)

    def iter_worker_windows(self, worker: int, num_workers: int) -> Iterator[np.ndarray]:
        """Worker ``worker`` of ``num_workers`` readers of this rank: every ``num_workers``-th
        of the rank's remaining windows of the current epoch, in the epoch's order. Nothing is
        counted as consumed (a worker cannot know what its siblings yielded): resume from the
        training loop's own count (``state_dict(consumed=...)``)."""
        yield from self._iter_windows(self._positions(worker=worker, num_workers=num_workers), self.epoch)

    def iter_batches(self, batch_size: int, *, worker: int = 0, num_workers: int = 1) -> Iterator[np.ndarray]:
        """This rank's windows stacked ``(batch, seq_len + 1)``; with ``num_workers``, the
        batches of one worker (every ``num_workers``-th). A final shorter window (``drop_last=
        False``) comes as a batch of its own."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        count = num_workers == 1   # only a single reader knows what was consumed
        if count:
            self._fold()
        # A worker's positions are whole batches (runs of batch_size) of the rank's order.
        pos = self._positions(worker=worker, num_workers=num_workers, batch_size=batch_size)
        buf: list[np.ndarray] = []
        for w in self._iter_windows(pos, self.epoch):
            if buf and len(w) != len(buf[0]):
                yield self._emit(buf, count)
                buf = []
            buf.append(w)
            if len(buf) == batch_size:
                yield self._emit(buf, count)
                buf = []
        if buf:
            yield self._emit(buf, count)

    def _emit(self, buf: list[np.ndarray], count: bool) -> np.ndarray:
        if count:
            self._yielded += len(buf)
        return np.stack(buf)

    # -- epochs and resume ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Go to the beginning of epoch ``epoch`` (its own shuffled order); nothing changes
        when it is the current epoch already, so a loop that calls ``set_epoch(e)`` after
        :meth:`load_state_dict` continues where the state says."""
        if int(epoch) != self.epoch:
            self.epoch, self._origin, self._start, self._yielded = int(epoch), 0, 0, 0

    def state_dict(self, *, consumed: int | None = None) -> dict[str, Any]:
        """Where training stands: the epoch and the windows of its order consumed by all ranks.

        ``consumed``: windows this rank's training loop consumed since the last
        :meth:`load_state_dict` or the start of the epoch (default: what this object yielded;
        pass it when DataLoader workers iterate copies of the dataset: ``steps * batch_size``).
        """
        pos = self._position() if consumed is None else min(self.num_windows,
                                                             self._origin + int(consumed) * self.world_size)
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": pos,
                "seed": self.seed, "seq_len": self.seq_len, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "num_windows": self.num_windows, "run_id": self.manifest.get("run_id")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from any rank of any world size)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}; expected {STATE_VERSION}")
        for k in ("seed", "seq_len", "shuffle", "drop_last", "num_windows", "run_id"):
            if state.get(k) != self.state_dict()[k]:
                raise ValueError(f"loader state is for another dataset or settings: {k} is {state.get(k)!r}, "
                                 f"here {self.state_dict()[k]!r}")
        self.epoch, self._yielded = int(state["epoch"]), 0
        self._origin = self._start = int(state["position"])

    def __repr__(self) -> str:
        return (f"TokenDataset({self._stream.base!r}, seq_len={self.seq_len}, rank={self.rank}/{self.world_size}, "
                f"{self.num_tokens:,} tokens, {self.num_windows:,} windows, epoch {self.epoch})")


def torch_dataset(source: TokenDataset | str | os.PathLike, seq_len: int | None = None, *,
                  batch_size: int | None = None, **kwargs: Any):
    """A ``torch.utils.data.IterableDataset`` over :class:`TokenDataset` windows (int64 tensors).

    DataLoader workers split the rank's windows without duplicates. With ``batch_size`` the
    dataset yields whole batches (use ``DataLoader(ds, batch_size=None, num_workers=K)``):
    the batches then arrive in the same order for any ``K``, and ``steps * batch_size``
    windows is exactly what was consumed, for :meth:`state_dict`. Call ``set_epoch(e)``
    before each epoch when iterating through workers (each ``iter(loader)`` copies the
    dataset into the workers, so not with ``persistent_workers=True``).

    >>> ds = torch_dataset("/data/web-v1", 2048, batch_size=8, rank=rank, world_size=ws)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=4)          # doctest: +SKIP
    """
    # Function-level on purpose: torch is an optional dependency (preproc[torch]) and
    # preproc.training.torch imports it at module level; nothing else loads that module.
    from preproc.training.torch import TorchTokenDataset

    if not isinstance(source, TokenDataset):
        if seq_len is None:
            raise TypeError("torch_dataset: seq_len is required with a path")
        source = TokenDataset(source, seq_len, **kwargs)
    elif kwargs or (seq_len is not None and seq_len != source.seq_len):
        raise TypeError("torch_dataset: pass options to TokenDataset, not with a dataset")
    return TorchTokenDataset(source, batch_size=batch_size)
