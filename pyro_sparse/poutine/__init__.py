"""Effect handlers of pyro-sparse."""

from .local import (
    LocalReparameterizationMessenger,
    conv2d,
    linear,
    local_distribution,
    local_reparameterization,
    local_sample,
)

__all__ = [
    "LocalReparameterizationMessenger",
    "conv2d",
    "linear",
    "local_distribution",
    "local_reparameterization",
    "local_sample",
]
