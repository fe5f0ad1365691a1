"""preproc: clean, deduplicate and tokenize LLM pre-training corpora, on one machine, on
Kubernetes (one Indexed Job per stage) or on Ray.

What training code and scripts may import is exactly ``__all__`` (pinned by a test)::

    import preproc
    result = preproc.run("jobs/web.yaml", output="s3://datasets/web-v1")
    print(result.tokens, result.stats["duplicates"])
"""

from ._version import __version__
from .config import Spec, load_spec
from .errors import ConfigError, PreprocError, StageFailed
from . import loader
from .hf import to_hf_dataset
from .loader import TokenDataset
from .megatron import IndexedDataset
from .plan import Plan
from .refresh import RefreshResult, refresh
from .runner import RunResult, plan, run

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
