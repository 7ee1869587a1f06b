"""Guide family of sparse variational dropout: a Gaussian per weight, additive parametrisation.

q(w) = N(θ, σ²) with free parameters θ (``loc``) and log σ² (``log_sigma2``), init log σ² = −10
(Molchanov et al. 2017, Sec. 4.1 and the authors' code). Matches the ``LogUniform`` prior.
"""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from pyro.nn import PyroModule, PyroParam


class GaussianWeights(PyroModule):
    """``N(loc, exp(log_sigma2))`` with batch shape = the weight's shape, reinterpreted as one event."""

    def __init__(self, init_loc: torch.Tensor, log_sigma2_init: float = -10.0):
        super().__init__()
        self.loc = PyroParam(init_loc.detach().clone())
        self.log_sigma2 = PyroParam(torch.full_like(self.loc, log_sigma2_init))

    def distribution(self) -> Normal:
        q = Normal(self.loc, torch.exp(0.5 * self.log_sigma2), validate_args=False)
        q.log_variance = self.log_sigma2  # lets the KL and the LRT skip a log/exp round trip (same values)
        return q

    @classmethod
    def from_site(cls, prior, init: torch.Tensor | None, shape: torch.Size) -> GaussianWeights:
        return cls(init if init is not None else torch.zeros(shape))
