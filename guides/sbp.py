"""Guide family of structured Bayesian pruning: a truncated log-normal per unit (Neklyudov et al. 2017).

log θ ~ N(μ, σ²) truncated to the prior's [a, b]; init μ = 0, log σ = −5 (authors' code). Matches
``TruncatedLogUniform``.
"""

from __future__ import annotations

import torch
from pyro.nn import PyroModule, PyroParam

from pyro_sparse.distributions import TruncatedLogNormal
from pyro_sparse.settings import param_value


class TruncatedLogNormalUnits(PyroModule):
    def __init__(self, num_units: int, a: torch.Tensor, b: torch.Tensor, loc_init: float = 0.0,
                 log_scale_init: float = -5.0):
        super().__init__()
        self.loc = PyroParam(torch.full((num_units,), float(loc_init)))
        self.log_scale = PyroParam(torch.full((num_units,), float(log_scale_init)))
        self.register_buffer("a", torch.as_tensor(a).detach().clone().float())
        self.register_buffer("b", torch.as_tensor(b).detach().clone().float())

    def distribution(self) -> TruncatedLogNormal:
        return TruncatedLogNormal(param_value(self, "loc"), param_value(self, "log_scale").exp(), self.a, self.b,
                                  validate_args=False)

    @classmethod
    def from_site(cls, prior, init, shape: torch.Size) -> TruncatedLogNormalUnits:
        return cls(shape.numel(), prior.a.reshape(-1)[0], prior.b.reshape(-1)[0])
