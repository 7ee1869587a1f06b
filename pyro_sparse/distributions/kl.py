"""Every (guide, prior) KL divergence of pyro-sparse, registered with ``torch.distributions.kl.register_kl``.

Pyro's ``TraceMeanField_ELBO`` looks these up through ``kl_divergence``; ``Independent`` wrappers are unwrapped by
Pyro's own registrations, so sites written as ``prior.expand(shape).to_event(n)`` keep their analytic KL.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Beta, Kumaraswamy, Normal
from torch.distributions.kl import register_kl

from .beta1 import Beta1
from .log_uniform import LogUniform
from .truncated import TruncatedLogNormal, TruncatedLogUniform

# Molchanov et al. 2017, Eq. 14 (constants from the authors' code)
K1, K2, K3 = 0.63576, 1.87320, 1.48695
EULER_GAMMA = 0.5772156649015329
#: terms of the Kumaraswamy–Beta series summed exactly before the integral tail correction
KUMARASWAMY_SERIES_TERMS = 512


def log_alpha(loc: torch.Tensor, scale: torch.Tensor | None, eps: float = 1e-8,
              log_variance: torch.Tensor | None = None) -> torch.Tensor:
    """Dropout rate ``log α = log σ² − log θ²`` of a Gaussian weight posterior N(θ, σ²) (Molchanov 2017, Sec. 4.1).

    ``eps`` keeps θ = 0 finite; ``log_variance`` (log σ², if known) is used instead of ``scale`` (then ``None``).
    Shape: broadcast of ``loc`` and ``scale``.
    """
    log_var = 2 * torch.log(scale) if log_variance is None else log_variance
    return log_var - torch.log(loc * loc + eps)


def normal_log_alpha(q: Normal) -> torch.Tensor:
    """:func:`log_alpha` of a Gaussian guide ``q``; reads ``q.log_variance`` where ``q`` has one (the SVD guide's
    :class:`~guides.svd.LogVarianceNormal`), so that ``q.scale`` is never computed for it. Shape: ``q.batch_shape``."""
    log_var = getattr(q, "log_variance", None)
    return log_alpha(q.loc, q.scale if log_var is None else None, log_variance=log_var)


def kl_normal_log_uniform_from_log_alpha(la: torch.Tensor) -> torch.Tensor:
    """``KL(N(θ, αθ²) ‖ LogUniform)`` as a function of log α (Molchanov 2017, Eq. 14), normalised to 0 as α → ∞.

    ``−KL ≈ k1·sigmoid(k2 + k3·log α) − 0.5·log1p(exp(−log α)) − k1``; smooth for every log α (no clipping).
    """
    return K1 - K1 * torch.sigmoid(K2 + K3 * la) + 0.5 * torch.nn.functional.softplus(-la)


@register_kl(Normal, LogUniform)
def _kl_normal_log_uniform(q: Normal, p: LogUniform) -> torch.Tensor:
    kl = kl_normal_log_uniform_from_log_alpha(normal_log_alpha(q))
    return kl if kl.shape == p.batch_shape else kl.expand(torch.broadcast_shapes(kl.shape, p.batch_shape))


@register_kl(TruncatedLogNormal, TruncatedLogUniform)
def _kl_truncated_log_normal_log_uniform(q: TruncatedLogNormal, p: TruncatedLogUniform) -> torch.Tensor:
    """Closed form of METHODS.md §2: ``−H(q on log θ) + log(b − a)``; q's interval must lie inside p's."""
    return -q.entropy() + torch.log(p.b - p.a).to(q.loc.dtype)


def kumaraswamy_expected_log1m(a: torch.Tensor, b: torch.Tensor, terms: int = KUMARASWAMY_SERIES_TERMS):
    """``E_q[log(1 − π)]`` for ``π ~ Kumaraswamy(a, b)``: ``−b·Σ_{m≥1} B(m/a, b)/(m + a·b)``.

    The first ``terms`` terms are summed exactly; the rest by the integral of their large-m asymptote
    ``Γ(b)·a^b·m^{−(b+1)}``, which brings the error well below 1e-3 for a, b ∈ [0.05, 20] (tested against
    quadrature). Shape: broadcast of ``a`` and ``b``.
    """
    m = torch.arange(1, terms + 1, dtype=a.dtype, device=a.device)
    a_, b_ = a.unsqueeze(-1), b.unsqueeze(-1)
    log_beta = torch.lgamma(m / a_) + torch.lgamma(b_) - torch.lgamma(m / a_ + b_)
    series = (torch.exp(log_beta) / (m + a_ * b_)).sum(-1)
    tail = torch.exp(torch.lgamma(b) + b * torch.log(a) - b * math.log(terms + 0.5)) / b
    return -b * (series + tail)


def _kl_kumaraswamy_beta_closed(q: Kumaraswamy, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """All terms of KL(Kumaraswamy(a, b) ‖ Beta(α, β)) but the one in ``E_q[log(1 − π)]`` (exact for β = 1)."""
    a, b = q.concentration1, q.concentration0
    log_b_fn = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return (1 - alpha / a) * (-EULER_GAMMA - torch.digamma(b) - 1 / b) + torch.log(a * b) + log_b_fn - (b - 1) / b


@register_kl(Kumaraswamy, Beta)
def _kl_kumaraswamy_beta(q: Kumaraswamy, p: Beta) -> torch.Tensor:
    """KL(Kumaraswamy(a, b) ‖ Beta(α, β)) (Nalisnick & Smyth 2017; Lee et al. 2018, Eq. 13).

    ``(1 − α/a)(−γ − ψ(b) − 1/b) + log(ab) + log B(α, β) − (b − 1)/b − (β − 1)·E_q[log(1 − π)]``;
    the last term vanishes (and the result is exact) for β = 1. A general ``Beta`` prior decides on the host whether
    it needs the series (one read per call); :class:`~pyro_sparse.distributions.Beta1` (the BB prior) never does.
    """
    alpha, beta = p.concentration1, p.concentration0
    kl = _kl_kumaraswamy_beta_closed(q, alpha, beta)
    if bool((beta != 1).any()):
        kl = kl - (beta - 1) * kumaraswamy_expected_log1m(q.concentration1, q.concentration0)
    return kl


@register_kl(Kumaraswamy, Beta1)
def _kl_kumaraswamy_beta1(q: Kumaraswamy, p: Beta1) -> torch.Tensor:
    """KL(Kumaraswamy(a, b) ‖ Beta(α, 1)), exact: the Eq. 13 terms without the series (β − 1 = 0)."""
    return _kl_kumaraswamy_beta_closed(q, p.concentration1, p.concentration0)
