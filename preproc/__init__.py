"""preproc: clean, deduplicate and tokenize LLM pre-training corpora, on one machine, on
Kubernetes (one Indexed Job per stage) or on Ray.

What training code and scripts may import is exactly ``__all__`` (pinned by a test)::

    import preproc
    result = preproc.run("jobs/web.yaml", output="s3://datasets/web-v1")
    print(result.tokens, result.stats["duplicates"])

``import preproc`` stays light for training code: the token readers and the errors load
here; the engine's entry points (``run``, ``plan``, ``refresh``, the spec, HF export) load on
first use (module ``__getattr__``), so a training job never imports executors or stages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from preproc import loader
from preproc._version import __version__
from preproc.errors import ConfigError, PreprocError, StageFailed
from preproc.training.loader import TokenDataset
from preproc.training.megatron import IndexedDataset

if TYPE_CHECKING:
    from preproc.engine.plan import Plan
    from preproc.engine.refresh import RefreshResult, refresh
    from preproc.engine.runner import RunResult, plan, run
    from preproc.spec import Spec, load_spec
    from preproc.training.hf import to_hf_dataset

__all__ = [
    "__version__",
    "ConfigError",
    "IndexedDataset",
    "Plan",
    "PreprocError",
    "RunResult",
    "Spec",
    "StageFailed",
    "RefreshResult",
    "TokenDataset",
    "load_spec",
    "loader",
    "plan",
    "refresh",
    "run",
    "to_hf_dataset",
]

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "Plan": "preproc.engine.plan",
    "RefreshResult": "preproc.engine.refresh",
    "refresh": "preproc.engine.refresh",
    "RunResult": "preproc.engine.runner",
    "plan": "preproc.engine.runner",
    "run": "preproc.engine.runner",
    "Spec": "preproc.spec",
    "load_spec": "preproc.spec",
    "to_hf_dataset": "preproc.training.hf",
}


def __getattr__(name: str) -> Any:
    """Load an engine entry point when first used (PEP 562), then keep it as a plain attribute."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'preproc' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
