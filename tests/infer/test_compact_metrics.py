"""Pruning rules, compaction and the metrics arithmetic."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model
from torch import nn

from pyro_sparse.compact import compact, full_network, load_compact, save_compact
from pyro_sparse.distributions import log_alpha
from pyro_sparse.metrics import network_cost, summarize
from pyro_sparse.sparsify import METHODS


def test_svd_pruning_rule_threshold():
    q = pyro.distributions.Normal(torch.tensor([[1.0, 1.0], [1.0, 1.0]]),
                                  torch.exp(0.5 * torch.tensor([[2.9, 3.1], [-5.0, 10.0]])))
    keep = METHODS["svd"].weight_keep(q, 3.0)
    assert keep.tolist() == [[True, False], [True, False]]


def test_flops_and_memory_lenet5_by_hand():
    full = full_network(build_model("lenet5", "dense", (1, 28, 28), 10))
    conv1 = 20 * 24 * 24 * (2 * 25 * 1 - 1) + 20 * 24 * 24  # + bias
    relu1, pool1 = 20 * 24 * 24, 4 * 20 * 12 * 12
    conv2 = 50 * 8 * 8 * (2 * 25 * 20 - 1) + 50 * 8 * 8
    relu2, pool2 = 50 * 8 * 8, 4 * 50 * 4 * 4
    fc1, relu3, fc2 = (2 * 800 - 1) * 500 + 500, 500, (2 * 500 - 1) * 10 + 10
    cost = network_cost(full, torch.zeros(2, 1, 28, 28))
    assert cost["flops"] == conv1 + relu1 + pool1 + conv2 + relu2 + pool2 + fc1 + relu3 + fc2
    params = 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10
    assert cost["memory"] == params + 20 * 24 * 24 + 50 * 8 * 8
    assert cost["units"] == [20, 50, 800, 500]


def test_flops_lenet500_matches_paper_convention():
    """BB paper Table 2: LeNet-500-300 BB 294-110-71 → 13.26× FLOPs, 7.52% memory."""
    full = full_network(build_model("lenet500", "dense", (1, 28, 28), 10))
    small = nn.Sequential(nn.Linear(294, 110), nn.ReLU(), nn.Linear(110, 71), nn.ReLU(), nn.Linear(71, 10))
    c, f = network_cost(small, torch.zeros(2, 294)), network_cost(full, torch.zeros(2, 1, 28, 28))
    assert f["flops"] / c["flops"] == pytest.approx(13.26, rel=0.01)
    assert c["memory"] / f["memory"] == pytest.approx(0.0752, abs=5e-4)


def test_compression_arithmetic():
    model = build_model("logreg", "svd", (4,), 3)
    guide = MeanFieldGuide(model)
    with torch.no_grad():
        fam = guide.sites["weights__fc1__weight"]
        fam.loc.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 2.0]]))
        fam.log_sigma2.fill_(-10.0)
    small = compact(model, guide)
    m = summarize(small, full_network(model), torch.zeros(2, 4))
    assert m["n_weights"] == 12 and m["n_nonzero"] == 3
    assert m["compression"] == pytest.approx(4.0)
    assert m["layer_sparsity"] == [pytest.approx(0.75)]
    assert m["units"] == [3]  # input 2 has no outgoing weight left: the compact fc1 selects 3 of 4 inputs
    assert small.fc1[1].in_features == 3


@torch.no_grad()
def _reference_forward(model, guide, x, weight_threshold=3.0):
    """Masked full network at test time, written out: mean weights with pruned ones zeroed; unit latents as
    keep·multiplier on conv outputs and on dense-layer inputs (METHODS.md §2, §3 placement)."""
    def units(name):
        key = f"{name}_units"
        if key not in model.units:
            return None
        unit = model.units[key]
        keep, mult = unit.keep(guide.posterior(f"units.{key}.{unit.latent_site}"))
        return keep * mult

    for name, m in model.net.named_children():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = m.weight
            if name in model.weight_layers.values():
                q = guide.posterior(f"weights.{name}.weight")
                w = torch.where(log_alpha(q.loc, q.scale) < weight_threshold, q.loc, 0 * q.loc)
            if isinstance(m, nn.Linear):
                v = units(name)
                x = F.linear(x if v is None else x * v, w, m.bias)
            else:
                x = F.conv2d(x, w, m.bias)
                v = units(name)
                x = x if v is None else x * v.view(1, -1, 1, 1)
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
    small = compact(model, guide)
    m = summarize(small, full_network(model), torch.zeros(2, 1, 28, 28))
    assert any(u < f for u, f in zip(m["units"], m["units_full"], strict=True)), "test posterior pruned nothing"
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        ref = _reference_forward(model, guide, x)
        out = small(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    save_compact(small, tmp_path)
    loaded = load_compact(tmp_path)
    assert torch.equal(loaded(x), out)
    assert loaded.pyro_sparse_compact == small.pyro_sparse_compact


def test_load_compact_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="compact"):
        load_compact(tmp_path)
    (tmp_path / "compact.json").write_text("{not json")
    (tmp_path / "compact.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable JSON"):
        load_compact(tmp_path)
