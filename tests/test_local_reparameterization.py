"""The local reparameterisation trick gives the same pre-activation distribution as sampling weights."""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyro_sparse.poutine import conv2d, linear, local_reparameterization, local_sample


def _tagged(q):
    def guide():
        return pyro.sample("w", q.to_event(q.batch_shape.__len__()))

    return local_reparameterization(guide)()


def test_linear_lrt_matches_weight_space_sampling():
    torch.manual_seed(0)
    loc, scale = torch.randn(3, 5), torch.rand(3, 5) * 0.5 + 0.1
    x = torch.randn(1, 5)
    w = _tagged(dist.Normal(loc, scale))
    assert torch.equal(w, loc)  # the value handed to the model is the mean
    out = linear(x.expand(200_000, 5), w)
    ws = dist.Normal(loc, scale).sample((200_000,))
    ref = torch.einsum("i,nji->nj", x[0], ws)
    assert torch.allclose(out.mean(0), ref.mean(0), atol=0.02)
    assert torch.allclose(out.var(0), ref.var(0), rtol=0.03)
    assert torch.allclose(out.var(0), (x**2) @ (scale**2).T, rtol=0.03)


def test_conv_lrt_matches_weight_space_sampling():
    torch.manual_seed(1)
    loc, scale = torch.randn(2, 1, 3, 3), torch.rand(2, 1, 3, 3) * 0.3 + 0.05
    x = torch.randn(1, 1, 4, 4)
    w = _tagged(dist.Normal(loc, scale))
    out = conv2d(x.expand(50_000, 1, 4, 4), w)
    ws = dist.Normal(loc, scale).sample((50_000,))
    ref = torch.stack([F.conv2d(x, wi)[0] for wi in ws[:5000]])
    assert torch.allclose(out.mean(0), F.conv2d(x, loc)[0], atol=0.03)
    assert torch.allclose(out.var(0), ref.var(0), rtol=0.08)


def test_untagged_values_pass_through():
    w, x = torch.randn(3, 5), torch.randn(4, 5)
    assert torch.equal(linear(x, w), F.linear(x, w))
    assert torch.equal(local_sample(w, 4), w)


def test_local_sample_draws_per_example():
    theta = _tagged(dist.Normal(torch.zeros(6), torch.ones(6)))
    draws = local_sample(theta, 1000)
    assert draws.shape == (1000, 6)
    assert draws.std(0).min() > 0.9
