"""Hugging Face ``datasets`` on our outputs.

The token Parquet files (``tokens/part-*.parquet``: ``id``, ``input_ids``, ``num_tokens``)
are plain Parquet, so ``datasets.load_dataset("parquet", data_files=...)`` reads them as
they are; :func:`to_hf_dataset` is that call with the file list from ``dataset.json`` and
the run's S3 settings::

    import preproc
    ds = preproc.to_hf_dataset("s3://datasets/web-v1")      # datasets.Dataset
    ds[0]["input_ids"]                                       # a document's ids, EOS last

``datasets`` is imported only when this function is called (``pip install 'preproc[hf]'``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from preproc.errors import ConfigError
from preproc.io.s3 import StorageLike, as_storage, is_remote, join, open_fs, s3_options

__all__ = ["to_hf_dataset", "parquet_files"]


def parquet_files(output: str | os.PathLike, *, storage: StorageLike = None) -> list[str]:
    """The token Parquet files of a finished run, in shard order (URIs as ``output`` is)."""
    out = os.fspath(output).rstrip("/")
    fs, path = open_fs(join(out, "dataset.json"), storage)
    try:
        with fs.open(path, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ConfigError(f"{out}/dataset.json: not found (is the run finished? `preproc status` tells)") from None
    shards = manifest.get("shards") or []
    if any("parquet" not in s for s in shards):
        raise ConfigError(f"{out}: the run wrote no token Parquet files (tokenize.formats needs parquet)")
    base = out if is_remote(out) else os.path.abspath(out)
    return [join(base, s["parquet"]) for s in shards]


def to_hf_dataset(output: str | os.PathLike, *, storage: StorageLike = None, split: str = "train",
                  streaming: bool = False, cache_dir: str | None = None, **kwargs: Any):
    """The run's tokens as a ``datasets.Dataset`` (``IterableDataset`` with ``streaming``).

    Columns: ``id`` (string), ``input_ids`` (list of uint16/uint32), ``num_tokens``; one row
    per kept document, in shard order. ``storage``: S3 settings as in the spec
    (``{"s3": {"endpoint_url": ...}}``); extra ``kwargs`` go to ``datasets.load_dataset``.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError("to_hf_dataset needs Hugging Face datasets: pip install 'preproc[hf]'") from None
    st = as_storage(storage)
    files = parquet_files(output, storage=st)
    if any(f.startswith(("s3://", "s3a://")) for f in files):
        kwargs.setdefault("storage_options", s3_options(st.s3))
    return datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming,
                                 cache_dir=cache_dir, **kwargs)
