"""The pipeline spec: YAML to validated, frozen objects, with errors naming the key."""

from preproc.spec.load import load_spec
from preproc.spec.model import (
                                DedupSpec,
                                ExactDedupSpec,
                                ExecutorSpec,
                                InputSpec,
                                MetricsSpec,
                                S3Spec,
                                Spec,
                                StorageSpec,
                                TokenizeSpec,
)
from preproc.spec.sizes import Size, parse_size

__all__ = ["Spec", "load_spec", "InputSpec", "DedupSpec", "ExactDedupSpec", "TokenizeSpec", "ExecutorSpec",
           "MetricsSpec", "StorageSpec", "S3Spec", "Size", "parse_size"]
