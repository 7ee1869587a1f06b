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
    monkeypatch.setattr(torch, "rand", lambda shape, dtype=None, device=None: u.to(dtype).reshape(shape).clone())
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


def _reference_entropy_and_draws(loc, scale, u):
    """Plain autograd through the closed forms (valid away from the far tails): the entropy with ``log_ndtr_diff``
    and the inverse-CDF draws ``x = Φ⁻¹(Φ(α) + u·(Φ(β) − Φ(α)))`` in float64."""
    from pyro_sparse.distributions.truncated import log_ndtr_diff

    alpha, beta = (-20.0 - loc) / scale, (0.0 - loc) / scale
    log_z = log_ndtr_diff(alpha, beta)
    pdf = lambda t: torch.exp(-0.5 * t * t - 0.5 * math.log(2 * math.pi) - log_z)  # noqa: E731
    entropy = torch.log(scale) + 0.5 * math.log(2 * math.pi * math.e) + log_z + 0.5 * (alpha * pdf(alpha)
                                                                                          - beta * pdf(beta))
    pa, pb = torch.special.ndtr(alpha), torch.special.ndtr(beta)
    x = torch.special.ndtri(pa + u * (pb - pa))
    return entropy, loc + scale * x


def test_fused_unit_parts_match_autograd_of_the_closed_forms():
    """:class:`_UnitParts` (one node, analytic gradients) gives the entropy, the draws and their gradients of plain
    autograd through the closed forms, where those are exact (intervals within 8 sd, no flip needed)."""
    torch.manual_seed(0)
    loc = (torch.rand(40, dtype=torch.float64) * 18 - 19).requires_grad_()
    scale = torch.exp(torch.rand(40, dtype=torch.float64) * 4 - 1).requires_grad_()
    u = torch.rand(16, 40, dtype=torch.float64)
    q = TruncatedLogNormal(loc, scale)
    torch.manual_seed(1)
    ours_h = q.entropy()
    ref_h, ref_x = _reference_entropy_and_draws(loc, scale, u)
    assert torch.allclose(ours_h, ref_h, rtol=1e-9, atol=1e-9)
    w = torch.randn(16, 40, dtype=torch.float64)
    g_ours = torch.autograd.grad(ours_h.sum(), (loc, scale))
    g_ref = torch.autograd.grad(ref_h.sum(), (loc, scale), retain_graph=True)  # ref_x shares the graph
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
    # an interval in the upper tail (α > 0: computed flipped): the same entropy and gradients
    loc_up = (torch.rand(10, dtype=torch.float64) * 3.5 - 24).requires_grad_()
    scale_up = (torch.rand(10, dtype=torch.float64) * 4 + 1).requires_grad_()
    ref_up = _reference_entropy_and_draws(loc_up, scale_up, u[:, :10])[0]
    ours_up = TruncatedLogNormal(loc_up, scale_up).entropy()
    assert torch.allclose(ours_up, ref_up, rtol=1e-9, atol=1e-9)
    for a, b in zip(torch.autograd.grad(ours_up.sum(), (loc_up, scale_up)),
                    torch.autograd.grad(ref_up.sum(), (loc_up, scale_up)), strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)
    # draws: the same uniforms through rsample (patched torch.rand) against the reference inverse CDF
    import pyro_sparse.distributions.truncated as truncated

    rand = truncated.torch.rand
    truncated.torch.rand = lambda shape, dtype=None, device=None: u.to(dtype).reshape(shape).clone()
    try:
        log_theta = TruncatedLogNormal(loc, scale).rsample((16,)).log()
    finally:
        truncated.torch.rand = rand
    assert torch.allclose(log_theta, ref_x, rtol=1e-9, atol=1e-9)
    g_ours = torch.autograd.grad((log_theta * w).sum(), (loc, scale))
    g_ref = torch.autograd.grad((ref_x * w).sum(), (loc, scale))
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("hi", [-40.0, -200.0, -821.0, -5e4])
def test_entropy_gradient_in_the_far_tail(hi):
    """Beyond 30 sd the entropy is ``log σ + 1 − log|hi| − 2/hi² + 7.5/hi⁴``, and its gradient is that series'
    (the closed form's gradient cancels catastrophically there: it gave dH/dμ = 3.79 instead of −0.52 at −821)."""
    scale = torch.tensor([0.01], dtype=torch.float64, requires_grad=True)
    loc = (-hi * scale.detach()).clone().requires_grad_()  # β = −μ/σ = hi
    TruncatedLogNormal(loc, scale).entropy().sum().backward()
    dh = -1 / hi + 4 / hi**3 - 30 / hi**5
    assert loc.grad.item() == pytest.approx(-dh / 0.01, rel=1e-6)
    assert scale.grad.item() == pytest.approx(1 / 0.01 - hi * dh / 0.01, rel=1e-6)


def test_exponential_tail_draws_and_gradients(monkeypatch):
    """Intervals beyond 35 sd (both orientations) draw ``x = hi + log(u)/|hi|`` off the near bound; the fused draw's
    analytic gradients equal autograd through that closed form, and the units in the bulk beside them are unaffected
    (checked against the plain inverse CDF)."""
    loc = torch.tensor([0.5, -21.0, -5.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.01, 0.01, 2.0], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    u = torch.rand(64, 3, dtype=torch.float64).clamp(2.0**-25, 1.0)
    monkeypatch.setattr(torch, "rand", lambda shape, dtype=None, device=None: u.to(dtype).reshape(shape).clone())
    log_theta = TruncatedLogNormal(loc, scale).rsample((64,)).log()
    alpha, beta = (-20.0 - loc) / scale, (0.0 - loc) / scale
    upper = beta[0] + torch.log(u[:, 0]) / -beta[0]  # β = −50: the interval's near bound is b
    lower = -alpha[1] + torch.log(u[:, 1]) / alpha[1]  # α = 100: flipped, the near bound is a
    bulk = _reference_entropy_and_draws(loc[2:], scale[2:], u[:, 2:])[1][:, 0]
    ref = torch.stack([loc[0] + scale[0] * upper, loc[1] - scale[1] * lower, bulk], dim=1)
    assert torch.allclose(log_theta, ref, rtol=1e-9, atol=1e-9)
    w = torch.randn(64, 3, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((log_theta * w).sum(), (loc, scale)),
                    torch.autograd.grad((ref * w).sum(), (loc, scale)), strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_parts_prepared_together_equal_separate_ones():
    """``prepare_together`` (one fused call for several sites, as the guide makes it) gives each distribution the
    entropy, draws and gradients it computes on its own; distributions already prepared are left alone."""
    torch.manual_seed(0)
    params = [(torch.randn(k).mul(3).requires_grad_(), torch.rand(k).add(0.01).requires_grad_()) for k in (5, 3, 7)]
    results = []
    for together in (False, True):
        qs = [TruncatedLogNormal(loc, scale) for loc, scale in params]
        if together:
            TruncatedLogNormal.prepare_together(qs)
            assert all("_unit_cache" in q.__dict__ for q in qs)
        torch.manual_seed(1)
        total = sum((q.entropy().sum() + q.rsample((4,)).log().sum()) for q in qs)
        grads = torch.autograd.grad(total, [t for pair in params for t in pair])
        results.append((total.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    q = TruncatedLogNormal(*params[0])
    parts = q._unit_parts()
    TruncatedLogNormal.prepare_together([q, TruncatedLogNormal(*params[1])])
    assert q._unit_parts() is parts


def test_guide_prepares_its_sbp_sites_together():
    from pyro import poutine
    from pyro_sparse.guides import MeanFieldGuide

    from pyro_sparse import sparsify
    from pyro_sparse.poutine.local import base_distribution

    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.ReLU(),
                              torch.nn.Linear(4, 3))
    model = sparsify(net, "sbp", torch.zeros(2, 6), num_data=10)
    trace = poutine.trace(MeanFieldGuide(model)).get_trace(torch.zeros(2, 6), None)
    qs = [base_distribution(s["fn"]) for s in trace.nodes.values() if s["type"] == "sample"]
    assert len(qs) == 3
    nodes = {q.__dict__["_unit_cache"][0].grad_fn.next_functions[0][0] for q in qs}
    assert len(nodes) == 1  # the entropies are views of one fused node's output


@pytest.mark.parametrize("sds", [25.0, 30.5, 40.0, 100.0, 1000.0])
@pytest.mark.parametrize("side", ["below a", "above b"])
def test_entropy_far_in_the_tails_against_mpmath(sds, side):
    """The truncated normal's entropy where the interval [a, b] lies ``sds`` standard deviations into a tail (the
    series takes over from 30 on), against the closed form evaluated with 60-digit arithmetic (mpmath): an error of
    a constant there (e.g. one nat) fails."""
    import mpmath

    mpmath.mp.dps = 60
    a, b, scale = -20.0, 0.0, 0.05
    loc = b + sds * scale if side == "above b" else a - sds * scale
    q = TruncatedLogNormal(torch.tensor([loc], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64),
                           a, b)
    alpha, beta = (mpmath.mpf(a) - loc) / scale, (mpmath.mpf(b) - loc) / scale
    # Z = Φ(β) − Φ(α), written as a difference of lower-tail values on either side (no cancellation of 1 − 1)
    z = mpmath.ncdf(beta) - mpmath.ncdf(alpha) if alpha < 0 else mpmath.ncdf(-alpha) - mpmath.ncdf(-beta)
    pdf = mpmath.npdf
    exact = (mpmath.log(scale) + mpmath.log(2 * mpmath.pi * mpmath.e) / 2 + mpmath.log(z)
             + (alpha * pdf(alpha) - beta * pdf(beta)) / (2 * z))
    assert float(q.entropy()[0]) == pytest.approx(float(exact), abs=1e-6)
