"""LogUniform prior and KL(Normal ‖ LogUniform) (Molchanov et al. 2017, Eq. 14)."""

import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence

from pyro_sparse.distributions import LogUniform, kl_normal_log_uniform_from_log_alpha, log_alpha


def test_log_uniform_basics():
    p = LogUniform().expand([3, 4])
    assert isinstance(p, LogUniform) and p.batch_shape == (3, 4)
    w = torch.tensor([0.5, -2.0, 1e-3])
    assert torch.allclose(LogUniform().log_prob(w), -w.abs().log())
    assert torch.isfinite(p.log_prob(torch.full((3, 4), 0.1))).all()
    # no draws: sample() gives the documented placeholder, zeros of the right shape (Predictive, init_to_sample)
    assert torch.equal(p.sample((2,)), torch.zeros(2, 3, 4))
    assert p.log_prob(torch.zeros(3, 4)).eq(float("inf")).all()


def test_kl_registered_through_independent():
    loc, scale = torch.randn(3, 4), torch.rand(3, 4) + 0.1
    q = dist.Normal(loc, scale)
    kl = kl_divergence(q, LogUniform().expand([3, 4]))
    assert kl.shape == (3, 4)
    expected = kl_normal_log_uniform_from_log_alpha(log_alpha(loc, scale))
    assert torch.allclose(kl, expected)
    kl_event = kl_divergence(q.to_event(2), LogUniform().expand([3, 4]).to_event(2))
    assert torch.allclose(kl_event, kl.sum())


def test_kl_matches_monte_carlo_over_log_alpha_range():
    """-KL = 0.5 log α − E_{ε~N(1,α)} log|ε| + C: the approximation's error is below 0.01 on log α ∈ [−10, 10]."""
    g = torch.Generator().manual_seed(0)
    las = torch.linspace(-10, 10, 21, dtype=torch.float64)
    z = torch.randn(2_000_000, generator=g, dtype=torch.float64)
    exact = torch.stack([0.5 * la - torch.log((1 + torch.exp(0.5 * la) * z).abs()).mean() for la in las])
    approx = -kl_normal_log_uniform_from_log_alpha(las)
    resid = approx - exact  # = constant C up to the approximation (and MC) error
    assert (resid - resid.median()).abs().max() < 0.01
    # normalised: KL → 0 as α → ∞, and it decreases in α
    assert kl_normal_log_uniform_from_log_alpha(torch.tensor(30.0)).abs() < 1e-6
    kls = kl_normal_log_uniform_from_log_alpha(las)
    assert (kls[1:] < kls[:-1]).all()


def test_log_alpha_finite_at_zero_mean():
    la = log_alpha(torch.tensor([0.0, 1.0]), torch.tensor([1e-3, 1e-3]))
    assert torch.isfinite(la).all() and la[0] > la[1]


def test_guide_family_log_variance_normal_is_the_same_normal():
    """The SVD guide's ``LogVarianceNormal`` (σ computed only when read) takes the registered Normal–LogUniform KL
    and gives the values of a plain ``Normal`` with the same parameters, so the Monte-Carlo check above covers it."""
    from pyro_sparse.guides.svd import LogVarianceNormal

    loc, log_var = torch.randn(3, 4), torch.randn(3, 4) - 2
    q, ref = LogVarianceNormal(loc, log_var), dist.Normal(loc, torch.exp(0.5 * log_var))
    p = LogUniform().expand([3, 4])
    assert torch.allclose(kl_divergence(q, p), kl_divergence(ref, p), atol=1e-6)
    assert torch.allclose(q.scale, ref.scale) and torch.allclose(q.log_prob(loc + 0.1), ref.log_prob(loc + 0.1))
    assert torch.allclose(kl_divergence(q.expand([2, 3, 4]).to_event(2), p.expand([2, 3, 4]).to_event(2)),
                          kl_divergence(ref, p).sum().expand(2))
