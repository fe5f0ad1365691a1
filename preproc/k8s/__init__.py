"""Kubernetes support: options, rendering of Indexed Jobs and manifests, restricted-PSS checks.

The executor itself is :class:`preproc.executors.k8s.KubernetesExecutor`; this package holds
everything that needs no cluster (and no ``kubernetes`` client), so ``preproc manifests``
works with the base install.
"""

from preproc.k8s.indexes import format_indexes, parse_indexes
from preproc.k8s.job import render_job
from preproc.k8s.manifests import dump_yaml_stream, render_manifests
from preproc.k8s.options import KubernetesOptions, PVCVolume, Resources, S3Access, Toleration, parse_options
from preproc.k8s.render import job_name, render_spec_configmap

__all__ = [
    "KubernetesOptions", "PVCVolume", "Resources", "S3Access", "Toleration", "parse_options",
    "job_name", "render_job", "render_spec_configmap", "render_manifests", "dump_yaml_stream",
    "parse_indexes", "format_indexes",
]
