"""Kumaraswamy with a log-space reparameterised sampler (the BB guide's family for π; Lee et al. 2018, Sec. 3.2)."""

from __future__ import annotations

import torch
from pyro.distributions import Kumaraswamy as _Kumaraswamy

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
    """

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
