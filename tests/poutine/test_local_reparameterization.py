"""The local reparameterisation trick gives the same pre-activation distribution as sampling weights."""

import pyro
import pyro.distributions as dist
import pytest
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


def test_local_sample_per_batch_shares_one_draw_per_block():
    """The authors' estimator: one draw per minibatch (per sample block under particles), the same distribution."""
    q = dist.Normal(torch.arange(6.0), torch.ones(6))
    draws = local_sample(_tagged(q), 1000, per_batch=True)
    assert draws.shape == (1000, 6) and torch.equal(draws, draws[:1].expand(1000, 6))
    means = torch.stack([local_sample(_tagged(q), 5, per_batch=True)[0] for _ in range(4000)]).mean(0)
    assert torch.allclose(means, q.mean, atol=0.1)  # unbiased: E[draw] = E q (4000 draws: 4.7 standard errors)
    # vectorised particles: S = 2 sample blocks of B = 3 examples, one draw each
    lead = _tagged(dist.Normal(torch.zeros(2, 6), torch.ones(2, 6)))
    blocks = local_sample(lead, 6, per_batch=True)
    assert torch.equal(blocks[:3], blocks[:1].expand(3, 6)) and torch.equal(blocks[3:], blocks[3:4].expand(3, 6))
    assert not torch.equal(blocks[0], blocks[3])


@pytest.mark.parametrize("method", ["sbp", "bb", "dbb"])
def test_per_batch_noise_trains_and_shares_the_latent_draw(method):
    """``sparsify(..., noise="per-batch")``: θ (SBP) and π (BB, DBB) are drawn once per minibatch — SBP's multiplier
    is the same for every example — while BB's relaxed Bernoulli gates stay per example; training runs through the
    engine and the guide's parameters move."""
    from pyro_sparse.guides import MeanFieldGuide

    from pyro_sparse import sparsify
    from pyro_sparse.data import load_dataset, subset
    from pyro_sparse.infer import SparseELBO, TrainConfig, fit

    data = subset(load_dataset("digits"), 200)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    model = sparsify(net, method, data.x_train[:2], noise="per-batch")
    unit = model.units["0_units"]
    assert unit.noise == "per-batch"
    guide = MeanFieldGuide(model)
    seen, multiplier = [], unit.multiplier
    unit.multiplier = lambda x: seen.append(multiplier(x)) or seen[-1]  # record the training-time multiplier
    SparseELBO().differentiable_loss(model, guide, data.x_train[:8], data.y_train[:8])
    del unit.multiplier
    m = seen[0]
    assert m.shape == (8, 64)
    if method == "sbp":
        assert torch.equal(m, m[:1].expand(8, 64))
    else:
        assert not torch.equal(m, m[:1].expand(8, 64))  # the gates z are per example
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    fit(model, guide, data, TrainConfig(epochs=1, batch_size=50, lr_latent=1e-2, measure_latency=False),
        progress=False)
    assert any(not torch.equal(before[k], v) for k, v in guide.state_dict().items())


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
