"""``preproc manifests``: the objects a Kubernetes run creates, for review, GitOps and ``kubectl``.

:func:`render_manifests` returns the ConfigMap that holds the spec and one Indexed Job per
stage, exactly as the coordinator would create them (same names, same pod templates).

The stage Jobs are not independent: stage *k+1* reads what stage *k* wrote, and every
worker reads ``<output>/plan.json``. Applied by hand they must go in order, after
``preproc plan`` wrote the plan (see ``manifests/README.md``); the coordinator Job of
``manifests/base`` does all of that in-cluster.
"""

from __future__ import annotations

from typing import Any

import yaml

from preproc.k8s.job import render_job
from preproc.k8s.render import render_spec_configmap

__all__ = ["render_manifests", "dump_yaml_stream"]


def render_manifests(spec: Any, plan: Any) -> list[dict[str, Any]]:
    """The ConfigMap with ``spec`` and one Job per stage of ``plan``, in run order.

    Options come from ``spec.executor.options`` and per-index retries from
    ``spec.executor.retries``, whatever executor kind the spec names (``preproc manifests``
    renders for Kubernetes either way).
    """
    options = spec.executor.options
    objects = [render_spec_configmap(plan, options, spec=spec)]
    objects += [render_job(plan, s.name, options, retries=spec.executor.retries) for s in plan.stages]
    return objects


def dump_yaml_stream(objects: list[dict[str, Any]]) -> str:
    """Objects as one YAML stream (``---`` between documents), the form ``kubectl apply -f -`` reads."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, allow_unicode=True)

