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

    The density is not normalisable, so the distribution has no draws: it is meant to be used as the prior of a
    latent site whose guide is a Gaussian (see :func:`pyro_sparse.distributions.kl`), where the KL divergence is
    defined up to a constant (Molchanov et al. 2017, Eq. 14).

    ``sample()`` returns **zeros** of shape ``sample_shape + batch_shape``: not a draw, but the point where all of
    the prior's mass concentrates (``p(w) ∝ 1/|w|`` is unbounded at 0). Pyro runs a model's prior to discover its
    shapes (``Predictive``'s plate guess) and to initialise (``init_to_sample``, ``init_to_median``); with zeros these
    work, and the model's output under the prior is that of a network whose sparsified weights are all pruned.
    ``log_prob(0)`` is ``+inf``; the analytic KL never evaluates it.

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

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Zeros ``[*sample_shape, *batch_shape]`` (see the class docstring: a placeholder, not a draw)."""
        return torch.zeros(self._extended_shape(sample_shape))

    def __repr__(self) -> str:
        return f"LogUniform(batch_shape={tuple(self.batch_shape)})"
