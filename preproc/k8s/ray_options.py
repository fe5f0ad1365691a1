"""The Ray executor's options (``executor.options`` of ``kind: ray``), validated.

They live with the Kubernetes rendering rather than with the executor because both read
them: :class:`preproc.executors.ray.RayExecutor` runs with them, and
:func:`preproc.k8s.ray.render_rayjob` checks them where the RayJob will run, without
importing an executor (or Ray).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from preproc.errors import ConfigError
from preproc.spec.sizes import Size

if TYPE_CHECKING:
    from preproc.spec.model import Spec

__all__ = ["RayOptions", "ray_options"]


class RayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None
    num_cpus: float = Field(default=1.0, gt=0)
    memory: Size | None = None
    runtime_env: dict[str, Any] = {}
    # Local Ray only: how many CPUs to give it (default: this machine's cores).
    local_cpus: int | None = Field(default=None, ge=1)
    # Rendering a RayJob (preproc manifests --executor ray); validated there.
    kuberay: dict[str, Any] = {}


def ray_options(spec: Spec, address: str | None = None) -> RayOptions:
    """The spec's ``executor.options`` as :class:`RayOptions` (``address`` overrides its own);
    a typo or a bad value is a ``ConfigError`` naming the option."""
    opts = dict(spec.executor.options)
    if address is not None:
        opts["address"] = address
    try:
        return RayOptions.model_validate(opts)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"] if err["type"] != "extra_forbidden" else f"unknown option; allowed: {', '.join(RayOptions.model_fields)}"
        raise ConfigError(f"executor.options.{loc}: {msg}") from None
