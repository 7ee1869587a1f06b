"""Guide family of sparse variational dropout: a Gaussian per weight, additive parametrisation.

q(w) = N(θ, σ²) with free parameters θ (``loc``) and log σ² (``log_sigma2``), init log σ² = −10
(Molchanov et al. 2017, Sec. 4.1 and the authors' code). Matches the ``LogUniform`` prior.
"""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from pyro.nn import PyroModule, PyroParam
from torch.distributions.utils import lazy_property

from pyro_sparse.settings import param_value


class LogVarianceNormal(Normal):
    """``N(loc, exp(log_variance))`` (a Pyro ``Normal``) parametrised by the log-variance: the KL and the local
    reparameterisation read ``log_variance`` directly, and ``scale = exp(log_variance / 2)`` is computed only if
    something reads it (a global draw, ``stddev``); the training step of a large layer then skips one exponential
    over all its weights. Shapes: ``loc`` and ``log_variance`` alike."""

    def __init__(self, loc: torch.Tensor, log_variance: torch.Tensor, validate_args: bool | None = None):
        self.loc, self.log_variance = loc, log_variance
        torch.distributions.Distribution.__init__(self, loc.shape, torch.Size(), validate_args=False)

    @lazy_property
    def scale(self) -> torch.Tensor:
        return torch.exp(0.5 * self.log_variance)

    def expand(self, batch_shape, _instance=None) -> LogVarianceNormal:
        batch_shape = torch.Size(batch_shape)
        return LogVarianceNormal(self.loc.expand(batch_shape), self.log_variance.expand(batch_shape))


class GaussianWeights(PyroModule):
    """``N(loc, exp(log_sigma2))`` with batch shape = the weight's shape, reinterpreted as one event."""

    def __init__(self, init_loc: torch.Tensor, log_sigma2_init: float = -10.0):
        super().__init__()
        self.loc = PyroParam(init_loc.detach().clone())
        self.log_sigma2 = PyroParam(torch.full_like(self.loc, log_sigma2_init))

    def distribution(self) -> Normal:
        return LogVarianceNormal(param_value(self, "loc"), param_value(self, "log_sigma2"))

    @classmethod
    def from_site(cls, prior, init: torch.Tensor | None, shape: torch.Size) -> GaussianWeights:
        return cls(init if init is not None else torch.zeros(shape))
