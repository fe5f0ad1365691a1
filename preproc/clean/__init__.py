"""The clean stage: the step framework, the basic steps and the quality filters.

This package's import is the step registry's one loader: it imports the framework
(:mod:`preproc.clean.steps`), then the built-in step modules, which register themselves
with :func:`~preproc.clean.steps.register`. The framework imports no step module, so there
is no cycle; and since Python runs this ``__init__`` before any ``preproc.clean.*`` module,
whoever imports ``preproc.clean.steps`` (or ``preproc.clean``) finds the registry filled.
Registration order (basic, then the filters) is the registry's iteration order.
"""

from preproc.clean import (
    basic,  # noqa: F401  (registers the basic steps)
    filters,  # noqa: F401  (registers the quality filters)
    steps,  # noqa: F401  (the framework first: the registry)
)
