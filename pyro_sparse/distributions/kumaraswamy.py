"""Kumaraswamy with a log-space reparameterised sampler (the BB guide's family for π; Lee et al. 2018, Sec. 3.2)."""

from __future__ import annotations

import torch
from pyro.distributions import Kumaraswamy as _Kumaraswamy
from torch.distributions import Distribution, Uniform
from torch.distributions.transforms import AffineTransform, PowerTransform
from torch.distributions.utils import broadcast_all

#: u is drawn from U(EPS, 1 − EPS) so that log u and log(1 − u^{1/b}) stay finite
EPS = 1e-6


class Kumaraswamy(_Kumaraswamy):
    """``Kumaraswamy(a, b)`` (``a`` = ``concentration1``, ``b`` = ``concentration0``) whose ``rsample`` is
    ``π = exp(log(−expm1(log u / b)) / a)``, ``u ~ U(EPS, 1 − EPS)``: the inverse CDF ``(1 − u^{1/b})^{1/a}`` computed
    in log space.

    torch's transform chain computes the same value directly; when ``1 − u^{1/b}`` rounds to 0 (large ``b``) or
    ``π`` underflows (small ``a``), its gradient is ``0·∞ = NaN`` and one such draw poisons every gate parameter.
    Here every intermediate is finite for ``a, b`` in ``[1e-8, 1e8]``. Same distribution, so it keeps torch's
    registered KLs (``register_kl(Kumaraswamy, Beta)`` in :mod:`pyro_sparse.distributions.kl`) and its moments.

    Draws are clamped to ``[tiny, 1 − eps/2]`` of their dtype (float32: ``[1.2e-38, 1 − 6e-8]``): a draw that
    rounds to exactly 0 or 1 has an infinite or NaN log density under the BB prior ``Beta(α/K, 1)`` and under q
    itself, which Pyro's stock ELBOs evaluate (and warn about) even though the analytic KL never uses it. The BB
    gate clamps π to ``[1e-6, 1 − 1e-6]`` anyway, so training is unaffected.
    Shapes: ``rsample(sample_shape)`` → ``sample_shape + batch_shape``, values in ``(0, 1)``.

    Construction is cheap (it runs every training step per gate site): torch's uniform base and transform chain,
    which nothing here uses, are built only if something reads ``base_dist`` or ``transforms``.
    """

    def __init__(self, concentration1, concentration0, validate_args: bool | None = None):
        self.concentration1, self.concentration0 = broadcast_all(concentration1, concentration0)
        Distribution.__init__(self, self.concentration1.shape, torch.Size(), validate_args=validate_args)

    def _chain(self):
        """torch's representation: ``Uniform(0, 1)`` through ``u^(1/b)``, ``1 − ·``, ``·^(1/a)`` (built lazily)."""
        chain = self.__dict__.get("_chain_cache")
        if chain is None:
            zero = torch.zeros_like(self.concentration0)
            chain = self.__dict__["_chain_cache"] = (
                Uniform(zero, zero + 1, validate_args=False),
                [PowerTransform(self.concentration0.reciprocal()), AffineTransform(1.0, -1.0),
                 PowerTransform(self.concentration1.reciprocal())])
        return chain

    @property
    def base_dist(self):
        return self._chain()[0]

    @property
    def transforms(self):
        return self._chain()[1]

    def expand(self, batch_shape, _instance=None) -> Kumaraswamy:
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.concentration1.expand(batch_shape), self.concentration0.expand(batch_shape),
                          validate_args=False)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """``1 − (1 − π^a)^b``."""
        return 1 - (1 - value.pow(self.concentration1)).pow(self.concentration0)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """``(1 − (1 − p)^(1/b))^(1/a)``."""
        return (1 - (1 - value).pow(self.concentration0.reciprocal())).pow(self.concentration1.reciprocal())

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        a, b = self.concentration1, self.concentration0
        u = torch.rand(shape, dtype=a.dtype, device=a.device).clamp(EPS, 1 - EPS)
        # π = (1 − u^(1/b))^(1/a) in log space; the reciprocals are per unit, the products per draw
        pi = (torch.log(-torch.expm1(torch.log(u) * b.reciprocal())) * a.reciprocal()).exp()
        info = torch.finfo(pi.dtype)
        return pi.clamp(info.tiny, 1 - info.eps / 2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log a + log b + (a − 1) log π + (b − 1) log(1 − π^a)``, with ``log(1 − π^a) = log(−expm1(a log π))``.

        Closed form in log space: torch's transform-chain density is NaN where ``π^a`` rounds to 1 (small ``a``).
        Shape: broadcast of ``value`` and the batch shape.
        """
        a, b = self.concentration1, self.concentration0
        log_v = torch.log(value)
        return torch.log(a) + torch.log(b) + (a - 1) * log_v + (b - 1) * torch.log(-torch.expm1(a * log_v))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)
