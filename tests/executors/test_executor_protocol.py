"""Every executor implements the whole :class:`preproc.executors.base.Executor` protocol.

The runner calls ``prestart``, ``run_stage`` and ``close`` plainly (no ``hasattr``), so each
executor class must have them, with the protocol's parameters.
"""

from __future__ import annotations

import inspect

import pytest

from preproc.executors.base import Executor
from preproc.executors.local import LocalExecutor
from preproc.executors.ray import RayExecutor


def _classes() -> list[type]:
    out: list[type] = [LocalExecutor, RayExecutor]
    try:   # the kubernetes client is optional
        from preproc.executors.k8s import KubernetesExecutor
    except ImportError:
        return out
    return out + [KubernetesExecutor]


def _params(fn) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.__name__)
def test_executor_class_satisfies_the_protocol(cls: type) -> None:
    assert isinstance(cls, Executor)   # runtime_checkable: every member is there
    assert isinstance(cls.name, str) and cls.name
    for member in ("prestart", "run_stage", "close"):
        assert _params(getattr(cls, member)) == _params(getattr(Executor, member)), member


def test_a_local_executor_instance_is_an_executor() -> None:
    ex = LocalExecutor(workers=1)
    try:
        assert isinstance(ex, Executor)
    finally:
        ex.close()
