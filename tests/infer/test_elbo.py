"""The strict ELBO: analytic KL only, KL warm-up on the KL term, equal to TraceMeanField_ELBO otherwise."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.infer import MissingAnalyticKLError, SparseELBO


def _model_guide(method="svd"):
    model = build_model("logreg", method, (64,), 10, num_data=1000)
    return model, MeanFieldGuide(model, local=False)


def test_equals_trace_mean_field_elbo():
    model, guide = _model_guide()
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    pyro.set_rng_seed(3)
    ref = TraceMeanField_ELBO().differentiable_loss(model, guide, x, y)
    pyro.set_rng_seed(3)
    elbo = SparseELBO()
    ours = elbo.differentiable_loss(model, guide, x, y)
    assert torch.allclose(ours, ref)
    assert ours.item() == pytest.approx(float(elbo.nll + elbo.kl), rel=1e-5)


def test_kl_weight_scales_only_the_kl():
    model, guide = _model_guide()
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    elbo = SparseELBO(kl_weight=0.25)
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(model, guide, x, y)
    assert loss.item() == pytest.approx(float(elbo.nll + 0.25 * elbo.kl), rel=1e-5)
    assert elbo.kl > 0


def test_kl_scale_multiplies_only_that_layers_kl():
    """kl_scale on the guide: KL = Σ_sites s_site · KL(q_site ‖ p_site), the NLL untouched."""
    from pyro_sparse.poutine import kl_scale, resolve_kl_scale

    model = build_model("lenet5", "sbp", (1, 28, 28), 10, num_data=1000)
    guide = MeanFieldGuide(model)
    with torch.no_grad():  # distinct per-site KLs
        for i, p in enumerate(guide.parameters()):
            p.add_(0.3 * (i + 1))
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with torch.no_grad():
        per_site = {n: torch.distributions.kl_divergence(guide.posterior(n), model_prior(model, n)).sum().item()
                    for n in guide.site_names}
    scales = {"conv1": 40.0, "fc2": 0.5}
    assert resolve_kl_scale(guide.site_names, scales) == {"units.conv1_units.theta": 40.0, "units.fc2_units.theta": 0.5}
    elbo = SparseELBO()
    pyro.set_rng_seed(1)
    loss = elbo.differentiable_loss(model, kl_scale(guide, scales), x, y)
    expected = sum(per_site.values()) + 39.0 * per_site["units.conv1_units.theta"] - 0.5 * per_site[
        "units.fc2_units.theta"]
    assert float(elbo.kl) == pytest.approx(expected, rel=1e-4)
    assert loss.item() == pytest.approx(float(elbo.nll + elbo.kl), rel=1e-5)
    pyro.set_rng_seed(1)  # Pyro's own mean-field ELBO reads the same scale from the guide side
    assert TraceMeanField_ELBO().differentiable_loss(model, kl_scale(guide, scales), x, y).item() == pytest.approx(
        loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="layer 'conv9' has no latent site"):
        resolve_kl_scale(guide.site_names, {"conv9": 2.0})
    with pytest.raises(ValueError, match="positive number"):
        resolve_kl_scale(guide.site_names, {"conv1": float("inf")})


def model_prior(model, name):
    """The prior of latent site ``name`` (batch shape = the site's shape)."""
    from pyro_sparse.poutine.local import base_distribution

    trace = pyro.poutine.trace(model).get_trace(torch.rand(1, 1, 28, 28))
    return base_distribution(trace.nodes[name]["fn"])


def test_raises_naming_the_site_without_analytic_kl():
    def model():
        pyro.sample("scale_site", dist.Gamma(2.0, 1.0))

    def guide():
        pyro.sample("scale_site", dist.LogNormal(0.0, 1.0))

    with pytest.raises(MissingAnalyticKLError, match="scale_site"):
        SparseELBO().differentiable_loss(model, guide)


def test_raises_for_expanded_distribution_trap():
    """A distribution without its own expand() becomes ExpandedDistribution in a plate and loses its KL."""

    class Bare(dist.TorchDistribution):
        arg_constraints = {}
        support = dist.constraints.real
        has_rsample = True

        def __init__(self):
            super().__init__(torch.Size(), torch.Size())

        def rsample(self, sample_shape=torch.Size()):
            return torch.randn(sample_shape)

    @torch.distributions.kl.register_kl(dist.Normal, Bare)
    def _kl(q, p):
        return torch.zeros(q.batch_shape)

    def model():
        with pyro.plate("p", 3):
            pyro.sample("w", Bare())

    def guide():
        with pyro.plate("p", 3):
            pyro.sample("w", dist.Normal(torch.zeros(3), 1.0))

    with pytest.raises(MissingAnalyticKLError, match="'w'"):
        SparseELBO().differentiable_loss(model, guide)
