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
    assert w.shape == loc.shape and not torch.equal(w, loc)  # the trace records a draw from q, not its mean
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
    assert torch.equal(local_sample(w, 4, site_dim=2), w)
    # untagged with a leading sample dim [S=3, K=5]: sample s serves block s of a batch of S·B = 6 examples
    blocks = local_sample(w, 6)
    assert torch.equal(blocks, w.repeat_interleave(2, dim=0))


def test_local_sample_draws_per_example():
    theta = _tagged(dist.Normal(torch.zeros(6), torch.ones(6)))
    draws = local_sample(theta, 1000)
    assert draws.shape == (1000, 6)
    assert draws.std(0).min() > 0.9


def test_train_clip_drops_pruned_weights_from_the_mean_only():
    """``clip_threshold``: weights with log α >= threshold leave the mean (no gradient through it), keep their
    variance — the reference code's train_clip."""
    torch.manual_seed(2)
    loc = torch.tensor([[1.0, 0.01, -0.5], [0.02, 2.0, 0.3]], requires_grad=True)
    scale = torch.full((2, 3), 0.1)
    pruned = (2 * scale.log() - (loc.detach() ** 2 + 1e-8).log()) >= 3.0
    assert pruned.tolist() == [[False, True, False], [True, False, False]]
    x = torch.randn(100_000, 3)
    w = _tagged(dist.Normal(loc, scale))
    out = linear(x, w, clip_threshold=3.0)
    kept = torch.where(pruned, 0.0, loc.detach())
    resid = out.detach() - x @ kept.T
    assert torch.allclose(resid.mean(0), torch.zeros(2), atol=0.01)  # mean: pruned weights zeroed
    assert torch.allclose(resid.var(0), (x**2).mean(0) @ (scale**2).T, rtol=0.03)  # variance: all weights
    out.sum().backward()
    grad_mean = x.sum(0).expand(2, 3)
    assert torch.allclose(loc.grad[~pruned], grad_mean[~pruned])
    assert torch.all(loc.grad[pruned] == 0)
    conv_w = _tagged(dist.Normal(loc.detach().reshape(2, 3, 1, 1), scale.reshape(2, 3, 1, 1)))
    conv_out = conv2d(x[:4].reshape(4, 3, 1, 1), conv_w, clip_threshold=3.0)
    assert conv_out.shape == (4, 2, 1, 1)
