"""Truncated log-normal guide and truncated log-uniform prior of structured Bayesian pruning."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import kl_divergence

from pyro_sparse.distributions import TruncatedLogNormal, TruncatedLogUniform

GRID = [(0.0, -1.0), (-3.0, 0.5), (-10.0, 1.0), (0.5, -2.0), (-1.0, 1.5), (-19.0, 0.0)]


@pytest.mark.parametrize("loc, log_scale", GRID)
def test_kl_closed_form_matches_monte_carlo(loc, log_scale):
    torch.manual_seed(0)
    q = TruncatedLogNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64).exp())
    p = TruncatedLogUniform(torch.tensor(-20.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    theta = q.rsample((400_000,)).clamp(math.exp(-20), 1.0)
    mc = (q.log_prob(theta) - p.log_prob(theta)).mean()
    assert kl_divergence(q, p).item() == pytest.approx(mc.item(), abs=0.02)


@pytest.mark.parametrize("loc, log_scale", GRID)
def test_mean_variance_snr_match_monte_carlo_and_quadrature(loc, log_scale):
    from scipy import integrate, stats

    torch.manual_seed(1)
    q = TruncatedLogNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64).exp())
    s = q.rsample((400_000,))
    se_mean = (s.std() / math.sqrt(s.numel())).item()
    assert abs(q.mean.item() - s.mean().item()) < 5 * se_mean + 1e-12
    # exact moments by quadrature over log θ
    sd = math.exp(log_scale)
    z = stats.norm.cdf(0.0, loc, sd) - stats.norm.cdf(-20.0, loc, sd)
    m1, m2 = (integrate.quad(lambda x, k=k: math.exp(k * x) * stats.norm.pdf(x, loc, sd) / z, -20.0, 0.0,
                             points=[min(max(loc, -20.0), 0.0)], limit=200, epsabs=0, epsrel=1e-10)[0]
              for k in (1, 2))
    assert q.mean.item() == pytest.approx(m1, rel=1e-6)
    assert q.variance.item() == pytest.approx(m2 - m1 * m1, rel=1e-4)
    assert q.snr().item() == pytest.approx(m1 / math.sqrt(m2 - m1 * m1), rel=1e-4)


def test_prior_moments_and_support():
    p = TruncatedLogUniform(-20.0, 0.0).expand([3])
    assert isinstance(p, TruncatedLogUniform) and p.batch_shape == (3,)
    s = p.rsample((100_000,))
    assert ((s >= math.exp(-20)) & (s <= 1.0)).all()
    assert p.mean[0].item() == pytest.approx(s.mean().item(), rel=0.03)
    assert p.log_prob(torch.tensor([2.0, 0.5, 0.5]))[0] == -math.inf


def test_no_normal_inheritance():
    assert not issubclass(TruncatedLogNormal, torch.distributions.Normal)
    q = TruncatedLogNormal(torch.zeros(4), torch.ones(4)).expand([2, 4])
    assert isinstance(q, TruncatedLogNormal) and q.batch_shape == (2, 4)


@settings(max_examples=200, deadline=None)
@given(loc=st.floats(-25.0, 5.0), log_scale=st.floats(-20.0, 5.0))
def test_finite_at_parameter_extremes(loc, log_scale):
    loc_t = torch.tensor(loc, requires_grad=True)
    ls_t = torch.tensor(log_scale, requires_grad=True)
    q = TruncatedLogNormal(loc_t, ls_t.exp())
    p = TruncatedLogUniform(-20.0, 0.0)
    kl = kl_divergence(q, p)
    mean, var, snr = q.mean, q.variance, q.snr()
    sample = q.rsample((64,))
    for v in (kl, mean, var, snr, sample):
        assert torch.isfinite(v).all()
    assert math.exp(-20) * 0.999 <= mean.item() <= 1.0 + 1e-6
    assert var.item() >= 0 and snr.item() > 0
    assert ((sample >= math.exp(-20) * 0.999) & (sample <= 1.0 + 1e-6)).all()
    assert kl.item() > -1e-3  # a KL is non-negative (the far-tail limit is accurate to O(1/β²))
    (kl + sample.sum()).backward()
    assert torch.isfinite(loc_t.grad) and torch.isfinite(ls_t.grad)


def test_snr_pruning_rule():
    from pyro_sparse.nn import SBPNoise

    layer = SBPNoise(2)
    q = TruncatedLogNormal(torch.tensor([0.0, -5.0]), torch.tensor([0.01, 3.0]))
    keep, mult = layer.keep(q)
    assert keep.tolist() == [True, False]
    assert torch.allclose(mult, q.mean)


@pytest.mark.parametrize("loc, scale", [(0.0, 1.0), (0.1, 0.0067), (0.05, 0.005), (0.06, 0.0067), (0.3, 0.01),
                                        (2.0, 0.01), (0.2, 0.1), (-19.99, 0.001), (-25.0, 0.5)])
def test_float32_draws_match_float64_draws_of_the_same_uniforms(loc, scale, monkeypatch):
    """Training draws with float32 parameters (float64 only inside the inverse CDF) equal float64 draws of the same
    uniforms to float32 precision of log θ — in the bulk, in the tails (9 to 200 standard deviations) and at both
    bounds."""
    torch.manual_seed(0)
    u = torch.rand(20_000, dtype=torch.float64)
    u[:3] = torch.tensor([2.0**-25, 0.5, 1.0])
    monkeypatch.setattr(torch, "rand", lambda shape, dtype=None, device=None: u.to(dtype).reshape(shape))
    draws = {}
    for dtype in (torch.float32, torch.float64):
        q = TruncatedLogNormal(torch.tensor([loc], dtype=dtype), torch.tensor([scale], dtype=dtype))
        draws[dtype] = q.rsample((20_000,)).double().log()
    assert (draws[torch.float32] - draws[torch.float64]).abs().max() < 2e-6
    assert ((draws[torch.float32] >= -20.0 - 1e-5) & (draws[torch.float32] <= 1e-6)).all()


def test_cached_parts_follow_in_place_parameter_updates():
    loc = torch.nn.Parameter(torch.zeros(3))
    q = TruncatedLogNormal(loc, torch.ones(3))
    before = q.entropy().detach().clone()
    with torch.no_grad():
        loc.add_(-3.0)  # as an optimiser step does
    assert torch.allclose(q.entropy(), TruncatedLogNormal(loc.detach().clone(), torch.ones(3)).entropy())
    assert not torch.allclose(before, q.entropy())
