"""The public path of the token loader: ``from preproc.loader import torch_dataset``.

The loader lives in :mod:`preproc.training.loader`; this module re-exports its public
names so that training code keeps the short, documented import (README, "Training"). It is
the package's one deliberate public face over a moved module, and it stays light: importing
it loads numpy and the loader, never torch (only :func:`torch_dataset` does, when called).
"""

from preproc.training.loader import TokenDataset, torch_dataset, window_order

__all__ = ["TokenDataset", "torch_dataset", "window_order"]
