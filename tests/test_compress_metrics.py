"""Pruning rules, compaction and the metrics arithmetic."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model
from torch import nn

from pyro_sparse.compress import compress, load_compressed, save_compressed
from pyro_sparse.metrics import count_flops, memory_count, summarize
from pyro_sparse.nn import SVDConv2d, SVDLinear, UnitModule


def test_svd_pruning_rule_threshold():
    layer = SVDLinear(2, 2)
    q = pyro.distributions.Normal(torch.tensor([[1.0, 1.0], [1.0, 1.0]]),
                                  torch.exp(0.5 * torch.tensor([[2.9, 3.1], [-5.0, 10.0]])))
    w, keep = layer.weight_mask(q, threshold=3.0)
    assert keep.tolist() == [[True, False], [True, False]]
    assert w.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_flops_lenet5_by_hand():
    model = build_model("lenet5", "dense", (1, 28, 28), 10)
    full = compress(model, keep_all=True)
    conv1 = 20 * 24 * 24 * (2 * 25 * 1 - 1) + 20 * 24 * 24  # + bias
    relu1, pool1 = 20 * 24 * 24, 4 * 20 * 12 * 12
    conv2 = 50 * 8 * 8 * (2 * 25 * 20 - 1) + 50 * 8 * 8
    relu2, pool2 = 50 * 8 * 8, 4 * 50 * 4 * 4
    fc1, relu3, fc2 = (2 * 800 - 1) * 500 + 500, 500, (2 * 500 - 1) * 10 + 10
    assert count_flops(full, (1, 28, 28)) == conv1 + relu1 + pool1 + conv2 + relu2 + pool2 + fc1 + relu3 + fc2
    params = 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10
    assert memory_count(full, (1, 28, 28)) == params + 20 * 24 * 24 + 50 * 8 * 8


def test_flops_lenet500_matches_paper_convention():
    """BB paper Table 2: LeNet-500-300 BB 294-110-71 → 13.26× FLOPs, 7.52% memory."""
    model = build_model("lenet500", "dense", (1, 28, 28), 10)
    full = compress(model, keep_all=True)
    small = nn.Sequential(nn.Flatten(), nn.Linear(294, 110), nn.ReLU(), nn.Linear(110, 71), nn.ReLU(),
                          nn.Linear(71, 10))
    ratio = count_flops(full, (1, 28, 28)) / count_flops(small, (1, 28, 28)[0:0] or (294,))
    assert ratio == pytest.approx(13.26, rel=0.01)
    assert memory_count(small, (294,)) / memory_count(full, (1, 28, 28)) == pytest.approx(0.0752, abs=5e-4)


def test_compression_arithmetic():
    model = build_model("logreg", "svd", (4,), 3)
    guide = MeanFieldGuide(model)
    with torch.no_grad():
        fam = guide.sites["net__fc1__weight"]
        fam.loc.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 2.0]]))
        fam.log_sigma2.fill_(-10.0)
    compact = compress(model, guide)
    m = summarize(compact, compress(model, guide, keep_all=True))
    assert m["n_weights"] == 12 and m["n_nonzero"] == 3
    assert m["compression"] == pytest.approx(4.0)
    assert m["layer_sparsity"] == [pytest.approx(0.75)]
    assert m["units"] == [3]  # input 2 has no outgoing weight left


def _reference_forward(model, guide, x, weight_threshold=3.0):
    """Masked full network at test time: mean weights with pruned ones zeroed, unit modules as keep·multiplier."""
    from pyro_sparse.guides import latent_sites

    names = {id(m): n for n, m, _, _ in latent_sites(model)}
    for m in model.net.children():
        if isinstance(m, (SVDLinear, SVDConv2d)):
            w, _ = m.weight_mask(guide.posterior(names[id(m)]), weight_threshold)
            x = F.linear(x, w, m.bias) if isinstance(m, SVDLinear) else F.conv2d(x, w, m.bias)
        elif isinstance(m, UnitModule):
            keep, mult = m.keep(guide.posterior(names[id(m)]))
            v = (keep * mult).view(1, -1, *([1] * (x.dim() - 2)))
            x = x * v
        else:
            x = m(x)
    return x


@pytest.mark.parametrize("arch", ["lenet500", "lenet5"])
@pytest.mark.parametrize("method", ["svd", "sbp", "bb"])
def test_compact_equals_masked_full_network(arch, method, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, method, (1, 28, 28), 10, mean=0.12, std=0.3)
    guide = MeanFieldGuide(model)
    with torch.no_grad():  # random posteriors so that some weights / units are pruned
        for fam in guide.sites.values():
            for name, p in fam.named_parameters():
                name = name.removesuffix("_unconstrained")  # PyroParam storage names
                if name == "log_sigma2":
                    p.copy_(torch.randn_like(p) * 6 - 6)
                elif name == "loc" and method == "svd" and p.shape[1] > 3:
                    p[:, :3] = 0.0  # whole input units die
                elif name == "log_scale":
                    p.copy_(torch.randn_like(p) * 2 - 1)
                elif name == "loc" and method == "sbp":
                    p.copy_(torch.randn_like(p))
                elif name == "a_uc":
                    p.copy_(torch.randn_like(p) * 3)
                elif name == "b_uc":
                    p.copy_(torch.randn_like(p) * 3 + 2)
    compact = compress(model, guide)
    full_units = compress(model, guide, keep_all=True).units
    assert any(u < f for u, f in zip(compact.units, full_units, strict=True)), "test posterior pruned nothing"
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        ref = _reference_forward(model, guide, x)
        out = compact(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    save_compressed(compact, tmp_path)
    loaded = load_compressed(tmp_path)
    assert torch.equal(loaded(x), out)
    assert loaded.units == compact.units


def test_load_compressed_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="compact"):
        load_compressed(tmp_path)
    (tmp_path / "compact.json").write_text("{not json")
    (tmp_path / "compact.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load"):
        load_compressed(tmp_path)
