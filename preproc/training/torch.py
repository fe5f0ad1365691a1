"""The torch side of :mod:`preproc.training.loader`: :class:`TorchTokenDataset`, a
``torch.utils.data.IterableDataset`` over a :class:`~preproc.training.loader.TokenDataset`.

The one module of the package that imports torch (an optional dependency, ``pip install
'preproc[torch]'``), at module level. Only :func:`preproc.training.loader.torch_dataset`
imports it, inside the function, so training code that never asks for torch never loads
it. It needs ``TokenDataset`` only for annotations, so it does not import the loader back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

if TYPE_CHECKING:
    from preproc.training.loader import TokenDataset


class TorchTokenDataset(IterableDataset):
    """Yields int64 tensors: windows ``(seq_len + 1,)``, or batches ``(B, seq_len + 1)``.

    Each DataLoader worker takes every ``num_workers``-th window (or batch) of the rank's
    order, so together they yield each of the rank's windows exactly once.
    """

    def __init__(self, dataset: TokenDataset, *, batch_size: int | None = None):
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ds = self.dataset
        if self.batch_size:
            for b in ds.iter_batches(self.batch_size, worker=worker, num_workers=workers):
                yield torch.from_numpy(b.astype("int64", copy=False))
        elif workers == 1:
            for w in ds:
                yield torch.from_numpy(w.astype("int64", copy=False))
        else:
            for w in ds.iter_worker_windows(worker, workers):
                yield torch.from_numpy(w.astype("int64", copy=False))

    def __len__(self) -> int:
        n = len(self.dataset)
        return -(-n // self.batch_size) if self.batch_size else n

    # Resume and epochs act on the dataset the DataLoader copies into its workers.
    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self, *, consumed: int | None = None) -> dict[str, Any]:
        return self.dataset.state_dict(consumed=consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
