"""The strict ELBO: analytic KL only, KL warm-up on the KL term, equal to TraceMeanField_ELBO otherwise."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from guides import MeanFieldGuide
from models import build_model
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
    assert ours.item() == pytest.approx(elbo.nll + elbo.kl, rel=1e-5)


def test_kl_weight_scales_only_the_kl():
    model, guide = _model_guide()
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    elbo = SparseELBO(kl_weight=0.25)
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(model, guide, x, y)
    assert loss.item() == pytest.approx(elbo.nll + 0.25 * elbo.kl, rel=1e-5)
    assert elbo.kl > 0


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
