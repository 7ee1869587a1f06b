"""Effect handlers of pyro-sparse."""

from .local import (
    LocalOps,
    LocalReparameterizationMessenger,
    conv,
    conv2d,
    linear,
    local_distribution,
    local_reparameterization,
    local_sample,
)
from .scale import KLScaleMessenger, check_kl_scale, kl_scale, resolve_kl_scale

__all__ = [
    "KLScaleMessenger",
    "LocalOps",
    "LocalReparameterizationMessenger",
    "conv",
    "check_kl_scale",
    "conv2d",
    "kl_scale",
    "linear",
    "local_distribution",
    "local_reparameterization",
    "local_sample",
    "resolve_kl_scale",
]
