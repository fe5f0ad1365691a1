"""What training code imports: token datasets, torch and HF wrappers, Megatron's reader.

Light on purpose: its own imports reach numpy and the storage layer, never the engine, torch
or ``datasets`` (those two load only when :func:`torch_dataset` or :func:`to_hf_dataset`
is called).
"""

from preproc.training.hf import to_hf_dataset
from preproc.training.loader import TokenDataset, torch_dataset
from preproc.training.megatron import IndexedDataset

__all__ = ["TokenDataset", "IndexedDataset", "to_hf_dataset", "torch_dataset"]
