"""Improper log-scale uniform prior on weights (sparse variational dropout).

Source: Molchanov, Ashukha, Vetrov, "Variational Dropout Sparsifies Deep Neural Networks", ICML 2017, Sec. 4.2:
p(log|w|) = const, i.e. p(w) ∝ 1/|w|.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints


class LogUniform(TorchDistribution):
    """Improper prior ``p(w) ∝ 1/|w|`` on real-valued weights.

    The density is not normalisable, so the distribution has no sampler: it is meant to be used as the prior of a
    latent site whose guide is a Gaussian (see :func:`pyro_sparse.distributions.kl`), where the KL divergence is
    defined up to a constant (Molchanov et al. 2017, Eq. 14).

    :param batch_shape: batch shape, e.g. ``(out_features, in_features)``; usually set with ``.expand(shape)``.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, batch_shape: torch.Size | tuple = torch.Size(), validate_args: bool | None = None):
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> LogUniform:
        new = self._get_checked_instance(LogUniform, _instance)
        super(LogUniform, new).__init__(torch.Size(batch_shape), torch.Size(), validate_args=False)
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density ``-log|w|`` (finite for ``w != 0``), broadcast to the batch shape."""
        lp = -value.abs().log()
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError(
            "LogUniform is an improper prior and cannot be sampled; pair it with a Normal guide "
            "(pyro_sparse guides do) and use an ELBO with analytic KL, e.g. TraceMeanField_ELBO."
        )

    def rsample(self, sample_shape=torch.Size()):
        return self.sample(sample_shape)

    def __repr__(self) -> str:
        return f"LogUniform(batch_shape={tuple(self.batch_shape)})"
