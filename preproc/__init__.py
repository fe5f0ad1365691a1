"""preproc: clean, deduplicate and tokenize LLM pre-training corpora, on one machine, on
Kubernetes (one Indexed Job per stage) or on Ray.

What training code and scripts may import is exactly ``__all__`` (pinned by a test)::

    import preproc
    result = preproc.run("jobs/web.yaml", output="s3://datasets/web-v1")
    print(result.tokens, result.stats["duplicates"])
"""

from preproc._version import __version__
from preproc.spec import Spec, load_spec
from preproc.errors import ConfigError, PreprocError, StageFailed
from preproc import loader
from preproc.training.hf import to_hf_dataset
from preproc.training.loader import TokenDataset
from preproc.training.megatron import IndexedDataset
from preproc.engine.plan import Plan
from preproc.engine.refresh import RefreshResult, refresh
from preproc.engine.runner import RunResult, plan, run

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
