"""Gaussian guide family for latent sites with a Normal prior (e.g. the DBB offsets β)."""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from pyro.nn import PyroModule, PyroParam

from pyro_sparse.settings import param_value


class NormalFamily(PyroModule):
    def __init__(self, init_loc: torch.Tensor, log_scale_init: float = -5.0):
        super().__init__()
        self.loc = PyroParam(init_loc.detach().clone())
        self.log_scale = PyroParam(torch.full_like(self.loc, log_scale_init))

    def distribution(self) -> Normal:
        return Normal(param_value(self, "loc"), param_value(self, "log_scale").exp(), validate_args=False)

    @classmethod
    def from_site(cls, prior, init, shape: torch.Size) -> NormalFamily:
        return cls(init if init is not None else torch.zeros(shape))
