"""sparsify / compact / save_compact / load_compact over a zoo of networks × every method (issue 14).

Each case trains a few steps on real images, then forces pruning (the posterior of a fixed random part of the units
or weights is set to "pruned", so no case passes vacuously), and checks: the compact network equals the eval-mode
model on a probe batch, units really go, FLOPs and parameters go down, coupled channels go together, and a
save/load round trip (no unpickling) gives the same network.
"""

import copy
import sys
import warnings

import numpy as np
import pyro
import pytest
import torch
import torchvision
from conftest import data_root
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import nets
from torch import nn

from pyro_sparse import compact, load_compact, save_compact, sparsify
from pyro_sparse.errors import InvalidInputError, UnsupportedModelError
from pyro_sparse.infer import SparseELBO
from pyro_sparse.metrics import network_cost, summarize

METHODS = ("svd", "sbp", "bb", "dbb")


class Custom(nn.Module):
    """A user's own CNN: a depthwise-separable block with a residual addition, a concatenation, a tuple kernel,
    a dilated strided conv, a functional global average pool."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.bn_dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.pw, self.bn_pw = nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16)
        self.branch = nn.Conv2d(16, 8, (3, 1), padding=(1, 0))
        self.mix = nn.Conv2d(24, 32, 3, stride=2, padding=2, dilation=2)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(self.bn_pw(self.pw(torch.relu(self.bn_dw(self.dw(h))))) + h)
        h = torch.cat([h, torch.relu(self.branch(h))], 1)
        return self.head(torch.relu(self.mix(h)).mean((2, 3)))


ZOO = {
    "lenet5": lambda: nets.build("lenet5", (1, 28, 28), 10, mean=0.13, std=0.3),
    "vgg_like": lambda: nets.build("vgg_like", (3, 32, 32), 10, k=0.125),
    "resnet20": lambda: nets.build("resnet20", (3, 32, 32), 10),
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "custom": Custom,
}


def _images(arch: str, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` real training images: MNIST for LeNet-5, CIFAR-10 for the others."""
    root = data_root()
    if arch == "lenet5":
        from torchvision.datasets import MNIST

        if not (root / "MNIST" / "raw").is_dir():
            pytest.skip(f"MNIST not under {root}")
        ds = MNIST(str(root), train=True)
        return ds.data[:n].unsqueeze(1).float() / 255, ds.targets[:n].long()
    folder = root / "CIFAR10"
    if not (folder / "train_images.npy").is_file():
        pytest.skip(f"CIFAR-10 not under {folder}")
    x = np.load(folder / "train_images.npy", mmap_mode="r", allow_pickle=False)[:n]
    y = np.load(folder / "train_labels.npy", mmap_mode="r", allow_pickle=False)[:n]
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(np.array(y)).long()


@torch.no_grad()
def force_prune(guide: MeanFieldGuide, fraction: float = 0.5, seed: int = 0) -> None:
    """Set the posterior of a random ``fraction`` of every latent site to one its keep rule prunes; for SVD weights,
    whole input columns too, so that channels die."""
    g = torch.Generator().manual_seed(seed)
    for fam in guide.sites.values():
        params = dict(fam.named_parameters())
        shape = next(iter(params.values())).shape
        mask = torch.rand(shape, generator=g) < fraction
        if "a_uc_unconstrained" in params:  # Kumaraswamy: a → 0 gives E[π] → 0
            params["a_uc_unconstrained"][mask] = -12.0
        elif "log_sigma2_unconstrained" in params:  # Gaussian weights: log α ≫ 3
            cols = torch.rand(shape[1], generator=g) < 0.4
            mask[:, cols] = True
            params["log_sigma2_unconstrained"][mask] = 12.0
            params["loc_unconstrained"][mask] = 1e-3
        elif "loc_unconstrained" in params and "log_scale_unconstrained" in params and len(shape) == 1 \
                and type(fam).__name__.startswith("Truncated"):  # truncated log-normal: SNR ≪ 1
            params["loc_unconstrained"][mask] = -15.0
            params["log_scale_unconstrained"][mask] = 1.5


@torch.no_grad()
def hand_pruned(model, guide, x: torch.Tensor) -> torch.Tensor:
    """An independent reference for ``compact``: the full network (a copy of ``model.net``, nothing removed) with
    the pruning done by hand from the guide's posterior parameters — the papers' keep rules written out here again,
    not the units' ``keep`` or the model's ``.eval()`` path:

    * SVD: θ where log σ² − log(θ² + 10⁻⁸) < 3, else 0 (Molchanov et al. 2017, Sec. 4.3, with the ε that keeps
      θ = 0 finite);
    * SBP: E θ where E θ / sqrt(Var θ) ≥ 1, else 0 (from the guide's mean and variance, not its ``snr``);
    * BB: E[π] = b·B(1 + 1/a, b) of the Kumaraswamy where ≥ 1e-3, else 0 (Lee et al. 2018);
    * DBB: E[π]·clamp(γ (h − μ)/s + E[β], ε, 1 − ε) per example, 0 below 1e-3 (Eq. 24), h the unit's input
      averaged over space.
    """
    net = copy.deepcopy(model.net).eval()
    for key, path in model.weight_layers.items():
        q = guide.posterior(f"weights.{key}.weight")
        theta, log_var = q.loc.detach(), q.log_variance.detach()  # the SVD guide's parameters: θ and log σ²
        layer = net.get_submodule(path)
        del layer.weight
        layer.weight = nn.Parameter(torch.where(log_var - torch.log(theta**2 + 1e-8) < 3.0, theta, 0.0))
    hooks = []
    for key, places in model.placements.items():
        unit = model.units[key]
        q = {attr: guide.posterior(f"units.{key}.{attr}") for attr in unit._pyro_samples}
        if "theta" in q:
            mean, var = q["theta"].mean.double(), q["theta"].variance.double()
            static = torch.where(mean / var.sqrt() >= 1.0, mean, 0.0).float()
        else:
            a, b = q["pi"].concentration1.double(), q["pi"].concentration0.double()
            e_pi = b * torch.exp(torch.lgamma(1 + 1 / a) + torch.lgamma(b) - torch.lgamma(1 + 1 / a + b))
            static = torch.where(e_pi >= 1e-3, e_pi, 0.0).float()

        def multiplier(t, unit=unit, q=q, static=static):
            if "beta" not in q:
                return static.expand(t.shape[0], -1)
            h = t if t.dim() == 2 else t.flatten(2).mean(-1)
            z = unit.gamma * (h - unit.running_mean) / unit.running_std + q["beta"].mean
            g = q["pi"].mean * z.clamp(unit.eps, 1 - unit.eps)
            return torch.where(g >= 1e-3, g, 0.0)

        for p in places:
            def apply(t, p=p, multiplier=multiplier):
                u = t if p.index is None else t[:, p.index]
                m = multiplier(u)
                if p.index is not None:
                    full = torch.ones(t.shape[0], t.shape[1])
                    full[:, p.index] = m[:, p.root_index]
                    m = full
                return t * m.view(*m.shape, *[1] * (t.dim() - 2))

            module = net.get_submodule(p.module)
            hooks.append(module.register_forward_hook(lambda mod, i, o, apply=apply: apply(o)) if p.where == "out"
                         else module.register_forward_pre_hook(lambda mod, i, apply=apply: (apply(i[0]), *i[1:])))
    try:
        return net(x)
    finally:
        for h in hooks:
            h.remove()


def _train(model, guide, x, y, steps: int = 2):
    elbo = SparseELBO()
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-2)
    for _ in range(steps):
        loss = elbo.differentiable_loss(model, guide, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)


#: (arch, method) → the zoo case, built once per session by whichever test asks first (test_zoo, test_export)
_CASES: dict[tuple[str, str], tuple] = {}


def _zoo_case(arch: str, method: str):
    """``(net, its state before, model, guide, compact network, images)`` of one zoo case: sparsify, 2 SVI steps,
    forced pruning, compact (built once per session)."""
    if (arch, method) not in _CASES:
        _CASES[arch, method] = _build_zoo_case(arch, method)
    return _CASES[arch, method]


def _build_zoo_case(arch: str, method: str):
    x, y = _images(arch)
    net = ZOO[arch]()
    before = copy.deepcopy(net.state_dict())
    with pyro.settings.context(module_local_params=True):
        model = sparsify(net, method, x[:2], num_data=50)
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y)
        force_prune(guide)
        small = compact(model, guide, probe=x)
    return net, before, model, guide, small, x


def compact_zoo(arch: str, method: str) -> tuple[nn.Module, torch.Tensor]:
    """The compact network of a zoo case and its images (built once per session)."""
    return _zoo_case(arch, method)[4:]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo(arch, method, tmp_path):
    net, before, model, guide, small, x = _zoo_case(arch, method)
    # the user's network is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # compact == the eval-mode model
    model.eval()
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(small(x), expected, rtol=1e-3, atol=1e-4 * max(1.0, float(expected.abs().max())))
    # ... and the full network pruned by hand from the posterior, on images compact never saw, at a tighter tolerance
    held_out, _ = _images(arch, 20)
    held_out = held_out[12:]
    with pyro.settings.context(module_local_params=True), torch.no_grad():
        reference = hand_pruned(model, guide, held_out)
    assert torch.allclose(small(held_out), reference, rtol=1e-5, atol=1e-5 * max(1.0, float(reference.abs().max())))
    # really smaller
    full = ZOO[arch]().eval()
    report = summarize(small, full, x[:2])
    assert report["flops_speedup"] > 1.05
    info = small.pyro_sparse_compact
    if method == "svd":
        assert report["compression"] > 1.5
    else:
        assert sum(info["units"].values()) < sum(info["units_full"].values())
        assert report["params"] < report["params_full"]
    # save / load: safetensors + JSON, replayed on a fresh base network
    save_compact(small, tmp_path)
    again = load_compact(tmp_path, factory=ZOO[arch] if arch in ("resnet18", "custom") else None)
    assert torch.allclose(again(x), small(x), atol=1e-6)
    assert type(again) is type(net)


def test_coupled_channels_go_together():
    x, y = _images("custom")
    with pyro.settings.context(module_local_params=True):
        model = sparsify(Custom(), "bb", x[:2], num_data=50)
        assert [p.module for p in model.placements["stem_units"]] == ["bn", "bn_dw", "bn_pw"]
        guide = MeanFieldGuide(model)
        force_prune(guide)
        small = compact(model, guide, probe=x)
    kept = small.pyro_sparse_compact["units"]["stem_units"]
    assert 0 < kept < 16
    # the residual stream, the depthwise conv and the three BatchNorms on it lose the same channels
    for layer in (small.stem, small.dw, small.pw):
        assert layer.out_channels == kept
    assert small.dw.groups == kept and small.pw.in_channels == kept
    assert small.bn.num_features == small.bn_dw.num_features == small.bn_pw.num_features == kept
    assert small.mix.in_channels == kept + small.branch.out_channels  # the concatenation


def test_resnet20_residual_stream_and_units():
    x, _ = _images("resnet20")
    with pyro.settings.context(module_local_params=True):
        model = sparsify(nets.build("resnet20", (3, 32, 32), 10), "sbp", x[:2])
        guide = MeanFieldGuide(model)
        force_prune(guide)
        small = compact(model, guide, probe=x)
    stream = small.conv1.out_channels
    assert stream < 16
    for block in small.layer1:
        assert block.conv2.out_channels == stream and block.conv1.in_channels == stream
    # one latent for the stage-1 stream, one per block-internal group, one per projected stream, fc's inputs
    assert len(model.placements) == 13


def test_selectors_and_precedence():
    x, _ = _images("vgg_like", 2)
    net = nets.build("vgg_like", (3, 32, 32), 10, k=0.125)
    svd_fc = sparsify(net, "svd", x, include=nn.Linear)
    assert sorted(svd_fc.weight_layers.values()) == ["fc1", "fc2"]
    sbp = sparsify(net, "sbp", x, exclude="conv1")
    assert "conv1_units" not in sbp.placements and "conv2_units" in sbp.placements
    both = sparsify(net, "svd", x, include=["conv*", nn.Linear], exclude=lambda name, m: name == "fc2")
    assert "fc2" not in both.weight_layers.values() and "conv13" in both.weight_layers.values()
    with pytest.raises(InvalidInputError, match="no layer selected"):
        sparsify(net, "svd", x, include="nothing*")
    with pytest.raises(InvalidInputError, match="unknown method"):
        sparsify(net, "nope", x)
    with pytest.raises(InvalidInputError, match="selector"):
        sparsify(net, "svd", x, include=3)


def test_paper_placement():
    x = torch.rand(2, 1, 28, 28)
    lenet5 = sparsify(nets.build("lenet5", (1, 28, 28), 10), "bb", x)
    assert {k: u.num_units for k, u in lenet5.units.items()} == {
        "conv1_units": 20, "conv2_units": 50, "fc1_units": 800, "fc2_units": 500}
    lenet500 = sparsify(nets.build("lenet500", (1, 28, 28), 10), "sbp", x)
    assert [u.num_units for u in lenet500.units.values()] == [784, 500, 300]
    vgg = sparsify(nets.build("vgg_like", (3, 32, 32), 10), "dbb", torch.rand(2, 3, 32, 32))
    assert len(vgg.units) == 15  # the 13 conv outputs + the inputs of the two dense layers


def test_unsupported_layer_is_named():
    class GN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gn, self.fc = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.gn(self.conv(x)).mean((2, 3)))

    with pytest.raises(UnsupportedModelError, match=r"'gn'.*exclude 'conv'"):
        sparsify(GN(), "bb", torch.rand(2, 3, 8, 8), strict=True)
    with pytest.warns(UserWarning, match=r"1 channel group\(s\) left dense .*'conv'.*strict=True refuses"):
        lenient = sparsify(GN(), "bb", torch.rand(2, 3, 8, 8))  # the default: the group stays dense, with a report
    assert [s["group"] for s in lenient.skipped] == ["conv"] and "'gn' (GroupNorm)" in lenient.skipped[0]["reason"]
    assert list(lenient.placements) == ["fc_units"]
    ok = sparsify(GN(), "bb", torch.rand(2, 3, 8, 8), exclude="conv")
    assert list(ok.placements) == ["fc_units"] and ok.skipped == []


def test_eval_mode_needs_a_guide():
    model = sparsify(nets.build("lenet300", (1, 28, 28), 10), "sbp", torch.rand(2, 1, 28, 28))
    model.eval()
    with pytest.raises(InvalidInputError, match="MeanFieldGuide"):
        model(torch.rand(2, 1, 28, 28))


def test_svi_and_predictive_global_store():
    """The SparseModel is a Pyro model: SVI with the global param store, vectorised particles, Predictive."""
    x, y = _images("custom", 8)
    pyro.clear_param_store()
    for method in ("svd", "bb"):
        model = sparsify(Custom(), method, x[:2], num_data=100)
        guide = MeanFieldGuide(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO(num_particles=2,
                                                                                  vectorize_particles=True))
        losses = [svi.step(x, y) for _ in range(3)]
        assert all(np.isfinite(losses))
        draws = Predictive(model, guide=guide, num_samples=3, parallel=True, return_sites=["obs"])(x)
        assert draws["obs"].shape == (3, 8)
        pyro.clear_param_store()


def test_flops_conventions():
    x = torch.zeros(2, 1, 28, 28)
    # the LeNet counts of the Sequential-only metrics (METHODS.md §5), hand-checked for LeNet-5:
    # conv1 20·24²·(2·25−1) + 20·24² + relu 20·24² + pool 4·20·12², conv2 50·8²·(2·500−1) + 50·8² + 50·8² + 4·50·4²,
    # fc1 (2·800−1)·500 + 500 + 500, fc2 (2·500−1)·10 + 10
    lenet5 = (20 * 576 * 49 + 2 * 20 * 576 + 4 * 20 * 144 + 50 * 64 * 999 + 2 * 50 * 64 + 4 * 50 * 16
              + 1599 * 500 + 1000 + 999 * 10 + 10)
    assert network_cost(nets.build("lenet5", (1, 28, 28), 10), x)["flops"] == lenet5 == 4615940
    assert network_cost(nets.build("lenet500", (1, 28, 28), 10), x)["flops"] == 1090800
    # VGG-like k = 1, by hand: per conv C_out·H²·(2·9·C_in − 1) + bias + BN (2) + ReLU (1) per output element,
    # max-pool 4 per output, fc1 + BN1d + ReLU, fc2
    flops, c_in, h = 0, 3, 32
    for widths in nets.VGG_WIDTHS:
        for c in widths:
            out = c * h * h
            flops += out * (2 * 9 * c_in - 1) + out + 2 * out + out
            c_in = c
        h //= 2
        flops += 4 * c_in * h * h
    flops += 1023 * 512 + 512 + 2 * 512 + 512 + 1023 * 10 + 10
    assert network_cost(nets.build("vgg_like", (3, 32, 32), 10), torch.zeros(2, 3, 32, 32))["flops"] == flops


def test_compact_refuses_a_network_it_would_change():
    """A raw conv output that bypasses the BatchNorm where the gate acts: removing a gated channel would change
    the function, so compact raises instead of returning a different network."""

    class Leak(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)

        def forward(self, x):
            h = self.conv(x)
            return self.fc((torch.relu(self.bn(h)) + h).mean((2, 3)))

    from pyro_sparse.errors import CompactMismatchError

    x = torch.rand(4, 3, 8, 8)
    model = sparsify(Leak(), "bb", x, exclude=nn.Linear)  # only the conv's gate: after the BatchNorm
    guide = MeanFieldGuide(model)
    force_prune(guide)
    with pytest.raises(CompactMismatchError, match="differs from the eval-mode model"):
        compact(model, guide, probe=x)


def test_compact_self_check_runs_in_ieee_float32_and_restores_the_callers_precision():
    """cuDNN convolutions default to TF32 on the GPU: a BB LeNet-5 on an H200 (2026-12-04) failed the self-check by
    1.9e-4 in its logits at epoch 21 (E[pi] folded into the weights rounds differently in TF32). The check now runs
    with CUDA's float32 convolutions and matrix products in IEEE float32; the caller's settings come back after."""
    from pyro_sparse.settings import ieee_fp32

    backends = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    before = [b.fp32_precision for b in backends]
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        seen = []
        net = nets.lenet5()
        net[0].register_forward_hook(lambda m, i, o: seen.append([b.fp32_precision for b in backends]))
        x = torch.rand(3, 1, 28, 28)
        model = sparsify(net, "bb", x)
        guide = MeanFieldGuide(model)
        force_prune(guide)
        seen.clear()
        compact(model, guide, probe=x)
        assert seen[-2:] == [["ieee", "ieee"]] * 2  # the check's two forward passes: the model's, the compact net's
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        with pytest.raises(RuntimeError), ieee_fp32():
            raise RuntimeError("restored on an exception too")
        assert [b.fp32_precision for b in backends] == ["tf32", before[1]]
    finally:
        for b, w in zip(backends, before, strict=True):
            b.fp32_precision = w


@pytest.mark.parametrize("method, site", [("sbp", "theta"), ("bb", "pi"), ("dbb", "beta")])
def test_unit_priors_are_reused_until_their_buffers_change(method, site):
    """A unit's prior is built once and reused by later traces; loading other buffer values or changing the dtype
    rebuilds it from the new buffers (so the trace never sees a stale prior)."""
    from pyro import poutine

    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model = sparsify(net, method, torch.zeros(2, 6), num_data=10)
    x = torch.rand(4, 6)
    name = next(n for n in poutine.trace(model).get_trace(x).nodes if n.endswith(f".{site}"))
    prior = lambda m, x=x: poutine.trace(m).get_trace(x).nodes[name]["fn"]  # noqa: E731
    first = prior(model)
    assert prior(model) is first
    bound = {"theta": lambda d: d.base_dist.a, "pi": lambda d: d.base_dist.concentration1,
             "beta": lambda d: d.base_dist.scale}[site]
    before = bound(first).clone()
    state = model.state_dict()
    key = next(k for k in state if k.endswith({"theta": ".a", "pi": ".alpha_over_k", "beta": ".rho"}[site]))
    state[key] = state[key] - 1.0
    model.load_state_dict(state)
    rebuilt = prior(model)
    assert rebuilt is not first
    assert torch.allclose(bound(rebuilt), before - 1.0)
    assert bound(prior(model.double(), x.double())).dtype == torch.float64


def test_sparse_vd_cifar_net_and_its_table_4_configurations():
    """The sparse-VD paper's CIFAR-10 net (``conv3fc3``) in its Table 4 configurations, through sparsify's
    selectors: no regularisation, binary dropout everywhere, binary dropout on the convs + SVD on the dense layers,
    SVD everywhere; each trains a step on real images and compacts exactly."""
    x, y = _images("vgg_like", 8)
    assert nets.build("conv3fc3", (3, 32, 32), 10)(x).shape == (8, 10)
    drops = {mode: [n for n, m in nets.build("conv3fc3", (3, 32, 32), 10, dropout=mode).named_modules()
                    if isinstance(m, nn.Dropout)] for mode in ("none", "conv", "all")}
    assert drops["none"] == [] and drops["conv"] == ["drop_conv1", "drop_conv2", "drop_conv3"]
    assert drops["all"] == [*drops["conv"], "drop_fc1", "drop_fc2", "drop_fc3"]
    for dropout, include in (("conv", nn.Linear), ("none", None)):
        with pyro.settings.context(module_local_params=True):
            model = sparsify(nets.build("conv3fc3", (3, 32, 32), 10, dropout=dropout), "svd", x[:2], num_data=50,
                             include=include)
            guide = MeanFieldGuide(model)
            expected = {"fc1", "fc2", "fc3"} | (set() if include else {"conv1", "conv2", "conv3"})
            assert set(model.weight_layers.values()) == expected
            _train(model, guide, x, y)
            force_prune(guide)
            small = compact(model, guide, probe=x)
            reference = hand_pruned(model, guide, x)
        assert torch.allclose(small(x), reference, rtol=1e-5, atol=1e-5 * max(1.0, float(reference.abs().max())))
    with pytest.raises(ValueError, match="dropout must be one of none, conv, all"):
        nets.build("conv3fc3", (3, 32, 32), 10, dropout="fc")


def test_svd_needs_no_dependency_tracer(tmp_path):
    """SVD removes no channel group, so a network Torch-Pruning's tracer cannot follow (ShuffleNet's channel
    shuffle) still sparsifies, compacts exactly (pruned weights zero, unread inputs of the classifier dropped) and
    reloads; the unit methods still refuse it in one line."""
    from pyro_sparse.errors import UnsupportedModelError

    def factory():
        return torchvision.models.shufflenet_v2_x0_5(num_classes=10)

    torch.manual_seed(0)
    net = factory().eval()
    x = torch.randn(2, 3, 32, 32)
    model = sparsify(net, "svd", x, num_data=100)
    guide = MeanFieldGuide(model)
    model.set_thresholds(weight=-3.0)  # untrained: prune a good share so that compact has work to do
    small = compact(model, guide)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)
    assert small.pyro_sparse_compact["history"] == [] and small.pyro_sparse_compact["selects"]["fc"] < 1024
    save_compact(small, tmp_path / "shuffle")
    assert torch.allclose(load_compact(tmp_path / "shuffle", factory=factory)(x), small(x), atol=1e-6)
    with pytest.raises(UnsupportedModelError, match="cannot follow this network"):
        sparsify(net, "sbp", x)


@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
def test_vision_transformer_units_where_exact(method, tmp_path):
    """A torchvision ViT (small config): the residual stream, normalised by LayerNorm across its channels, stays
    dense and is reported (``model.skipped`` and one warning); each attention layer gets one latent per head (DBB:
    an input-dependent gate per head), the MLP hidden units and the dense layers' input features of ``[B, T, F]``
    tokens one per unit; one SVI step, then ``compact`` removes heads and MLP units
    physically (a :class:`PrunedMultiheadAttention` holds the kept heads), exact against the eval-mode model, with
    fewer FLOPs, and reloads."""
    import warnings

    from pyro_sparse.metrics import network_cost
    from pyro_sparse.nn import PrunedMultiheadAttention

    def factory():
        return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                    hidden_dim=32, mlp_dim=64, num_classes=10)

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = sparsify(factory(), method, x, num_data=100)
    attention = "encoder.layers.encoder_layer_0.self_attention"
    heads = [key for key, places in model.placements.items() if places[0].where == "heads"]
    if method != "svd":
        assert any("left dense" in str(w.message) for w in caught)
        skipped = {s["group"]: s["reason"] for s in model.skipped}
        assert heads == ["encoder__layers__encoder_layer_0__self_attention_heads",
                         "encoder__layers__encoder_layer_1__self_attention_heads"]
        assert model.units[heads[0]].num_units == 4 and f"{attention}.out_proj" not in skipped
        with pytest.raises(UnsupportedModelError):
            sparsify(factory(), method, x, strict=True)
    guide = MeanFieldGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    assert np.isfinite(svi.step(x, y))
    rows = model.summary(guide)
    if method == "svd":
        model.set_thresholds(weight=float(torch.cat([r["values"].flatten() for r in rows]).median()))
    else:  # spread the (barely trained) posterior, then prune about half of the first block's MLP hidden units
        with torch.no_grad():
            for p in guide.parameters():
                p.add_(torch.randn_like(p))
        (mlp_units,) = [r for r in model.summary(guide) if "encoder_layer_0__mlp__3" in r["site"]]
        model.set_thresholds(unit=float(mlp_units["values"].median()))
    small = compact(model, guide)
    assert torch.allclose(small(x), model.eval()(x), atol=1e-5)
    if method != "svd":
        mlp = small.encoder.layers.encoder_layer_0.mlp  # (a Select / DBB gate may sit in front of a Linear)
        fc1, fc2 = (m if isinstance(m, nn.Linear) else m[-1] for m in (mlp[0], mlp[3]))
        assert fc1.out_features < 64 and fc2.in_features == fc1.out_features
    if heads:
        kept = small.pyro_sparse_compact["heads"]
        assert set(kept) == {attention, attention.replace("_0", "_1")}
        assert any(len(idx) < 4 for idx in kept.values())  # (this seed prunes heads)
        for path, idx in kept.items():
            m = small.get_submodule(path)
            if len(idx) == 4:
                assert isinstance(m, nn.MultiheadAttention)
                continue
            assert isinstance(m, PrunedMultiheadAttention) and m.num_heads == len(idx) and m.kept.tolist() == idx
            assert m.in_proj_weight.shape == (3 * 8 * len(idx), 32) and m.out_proj.in_features == 8 * len(idx)
        full = network_cost(factory().eval(), x)["flops"]
        assert network_cost(small, x)["flops"] < full
    save_compact(small, tmp_path / "vit")
    assert torch.allclose(load_compact(tmp_path / "vit", factory=factory)(x), small(x), atol=1e-6)


class GroupedBlock(nn.Module):
    """RegNet's / ResNeXt's construct in small: a grouped (not depthwise) 3×3 conv between two 1×1 convs."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.grouped, self.bn1 = nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32)
        self.point, self.bn2 = nn.Conv2d(32, 24, 1), nn.BatchNorm2d(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(self.bn1(self.grouped(h)))
        return self.head(torch.relu(self.bn2(self.point(h))).mean((2, 3)))


@pytest.mark.parametrize("method", METHODS)
def test_grouped_convolutions_prune_per_group(method, tmp_path):
    """Grouped convolutions (issue 28, item 3): the channels a grouped convolution produces are units and go in equal
    counts per group (pruned channels of the groups that lose more are revived — their multiplier, 0, is already
    folded in); the channels entering it get one latent per position inside a group, shared by the groups
    (Torch-Pruning removes a grouped conv's inputs at the same positions in every group). The layer stays valid,
    compact exact, and it reloads. Before: both groups stayed whole (and earlier, an index error in compact,
    RegNet-x-400mf)."""
    torch.manual_seed(0)
    x, y = _images("custom", 12)
    with pyro.settings.context(module_local_params=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sparsify(GroupedBlock(), method, x[:2], num_data=50)
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y)
        force_prune(guide)
        small = compact(model, guide, probe=x)
        model.eval()
        with torch.no_grad():
            assert torch.allclose(small(x), model(x), atol=1e-5)
    if method != "svd":
        assert not model.skipped
        tied = next(g for g in model.groups if g.root == "stem")
        assert tied.tie == [c % 4 for c in range(16)] and model.units[tied.unit].num_units == 4  # 4 positions
        assert small.point.out_channels < 24  # the group after the pointwise conv is pruned too
    g = small.grouped
    assert g.groups == 4 and g.in_channels % 4 == 0 and g.out_channels % 4 == 0
    assert g.out_channels < 32 and (method == "svd" or g.in_channels < 16)  # SVD: the stem's filters stay alive
    save_compact(small, tmp_path / "g")
    assert torch.allclose(load_compact(tmp_path / "g", factory=GroupedBlock)(x), small(x), atol=1e-6)


def test_a_group_between_two_grouped_convolutions_stays_dense_and_is_reported():
    """Channels produced by one grouped convolution and entering another would be constrained by both groupings:
    left dense, reported with both names (``strict=True``: refused in one line)."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, groups=4), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(32, 10))
    x = torch.rand(2, 3, 16, 16)
    with pytest.warns(UserWarning, match="left dense"):
        model = sparsify(net, "bb", x)
    reasons = {s["group"]: s["reason"] for s in model.skipped}
    assert set(reasons) == {"2"} and "meet two grouped convolutions ('2' and '4')" in reasons["2"]
    assert next(g for g in model.groups if g.root == "0").tie == [c % 4 for c in range(16)]
    with pytest.raises(UnsupportedModelError, match=r"^channel group of '2': .*exclude '2'"):
        sparsify(net, "bb", x, strict=True)


MODERN = {  # torchvision's modern families, the same classes at sizes a test can train (issue 28, item 4)
    "convnext": lambda: torchvision.models.convnext.ConvNeXt(
        [torchvision.models.convnext.CNBlockConfig(16, 32, 1), torchvision.models.convnext.CNBlockConfig(32, None, 1)],
        num_classes=10),
    "resnext": lambda: torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], groups=4,
                                                        width_per_group=4, num_classes=10),
    "regnet": lambda: torchvision.models.regnet.RegNet(torchvision.models.regnet.BlockParams.from_init_params(
        depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8), num_classes=10),
}


@pytest.mark.parametrize("method", ["svd", "sbp", "bb"])
@pytest.mark.parametrize("arch", list(MODERN))
def test_modern_zoo(arch, method, tmp_path):
    """ConvNeXt (LayerNorm over channels-last maps, depthwise 7×7, Linear on [B, H, W, C]), ResNeXt and RegNet
    (grouped convolutions): forced pruning, compact equals the eval-mode model, fewer (non-zero) parameters, reload
    exact; the unit methods leave ConvNeXt's LayerNorm-normalised groups dense, reported, and prune the others;
    grouped convolutions lose channels on both sides, equally many per group."""
    torch.manual_seed(0)
    x, y = _images("custom", 8)
    net = MODERN[arch]()
    with pyro.settings.context(module_local_params=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sparsify(net, method, x[:2], num_data=50)
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y)
        force_prune(guide)
        small = compact(model, guide, probe=x)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
    stored = sum(int(p.count_nonzero()) if method == "svd" else p.numel() for p in small.parameters())
    assert stored < 0.9 * sum(p.numel() for p in net.parameters())  # SVD: non-zero weights; units: parameters
    if method != "svd" and arch == "convnext":  # the LayerNorm-normalised groups stay whole, the others get units
        assert model.skipped and model.units and "LayerNorm" in " ".join(s["reason"] for s in model.skipped)
    if arch != "convnext":  # grouped convolutions lose channels on both sides, equally many per group
        assert not model.skipped
        before = [(m.in_channels, m.out_channels) for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        after = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert all(m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0 for m in after)
        assert sum(m.out_channels for m in after) < sum(o for _, o in before)
        assert method == "svd" or sum(m.in_channels for m in after) < sum(i for i, _ in before)
    save_compact(small, tmp_path / arch)
    assert torch.equal(load_compact(tmp_path / arch, factory=MODERN[arch])(x), small(x))


@pytest.mark.parametrize("name", ["regnet_x_400mf", "resnext50_32x4d"])
def test_torchvision_grouped_conv_constructors_as_they_come(name):
    """The named torchvision models with grouped convolutions themselves (random weights, 32×32 inputs; issue 28,
    item 4; ConvNeXt-tiny's class is in test_modern_zoo), BB: one step, forced pruning, compact equals the eval-mode
    model with fewer FLOPs, no channel group left dense."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(num_classes=10)
    x, y = _images("custom", 8)
    with pyro.settings.context(module_local_params=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sparsify(net, "bb", x[:2], num_data=50)
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y, steps=1)
        force_prune(guide)
        small = compact(model, guide, probe=x)
        model.eval()
        with torch.no_grad():
            expected = model(x)
    assert torch.allclose(small(x), expected, atol=1e-4 * max(1.0, float(expected.abs().max())))
    assert network_cost(small, x[:2])["flops"] < 0.5 * network_cost(net.eval(), x[:2])["flops"]
    assert not model.skipped


def test_the_threshold_option_sets_every_methods_keep_rule():
    """``sparsify(..., threshold=t)`` is the keep rule's threshold for weight methods too (SVD's log α; it was refused
    before the latent weights were attached)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.zeros(2, 4)
    assert sparsify(net, "svd", x, threshold=2.0).weight_threshold() == 2.0
    assert sparsify(net, "svd", x).weight_threshold() == 3.0
    with pytest.raises(InvalidInputError, match="weight threshold must be a finite number"):
        sparsify(net, "svd", x, threshold=float("nan"))


class ChannelScale(nn.Module):
    """A user's layer of its own: a learned scale per channel (as a LayerScale), no torch layer type."""

    def __init__(self, c: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class ScaledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.s, self.c2, self.fc = nn.Conv2d(1, 8, 3), ChannelScale(8), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.s(self.c1(x))))).mean((2, 3)))


@pytest.mark.parametrize("method", ["sbp", "bb"])
def test_a_users_per_channel_parameter_is_pruned_with_its_channels(method, tmp_path):
    """A parameter outside any torch layer type, applied per channel (Torch-Pruning's "unwrapped parameters", pruned
    along their channel dimension): the channel group through it gets a unit, compact removes the pruned channels
    from it too, exactly, and the network reloads."""
    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 12, 12), torch.randint(0, 10, (12,))
    with pyro.settings.context(module_local_params=True):
        model = sparsify(ScaledNet(), method, x[:2], num_data=12)
        assert "c1_units" in model.units and not model.skipped
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y)
        force_prune(guide, seed=2)
        small = compact(model, guide, probe=x)
    assert small.c1.out_channels == small.s.scale.numel() == small.c2.in_channels < 8
    save_compact(small, tmp_path / "s")
    assert torch.allclose(load_compact(tmp_path / "s", factory=ScaledNet)(x), small(x), atol=1e-6)


class GainConv(nn.Module):
    """A user's own layer: a 3x3 convolution with a learned gain per output channel, written with ``F.conv2d`` (no
    ``nn.Conv2d`` inside, so Torch-Pruning meets its parameters only as loose tensors)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.gain = nn.Parameter(torch.rand(cout) + 0.5)

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight * self.gain[:, None, None, None], padding=1)


def _gain_conv_pruner():
    from torch_pruning.pruner.function import BasePruningFunc

    class GainConvPruner(BasePruningFunc):  # the user's rule, as Torch-Pruning's examples write one
        def prune_out_channels(self, layer, idxs):
            keep = [i for i in range(layer.weight.shape[0]) if i not in set(idxs)]
            layer.weight, layer.gain = nn.Parameter(layer.weight.data[keep]), nn.Parameter(layer.gain.data[keep])
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = [i for i in range(layer.weight.shape[1]) if i not in set(idxs)]
            layer.weight = nn.Parameter(layer.weight.data[:, keep])
            return layer

        def get_out_channels(self, layer):
            return layer.weight.shape[0]

        def get_in_channels(self, layer):
            return layer.weight.shape[1]

    return GainConvPruner()


class WithGainConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.own, self.fc = nn.Conv2d(3, 8, 3, padding=1), GainConv(8, 6), nn.Linear(6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.own(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("method", ["sbp", "bb", "dbb"])
def test_a_users_own_layer_prunes_through_their_torch_pruning_pruner(method, tmp_path):
    """Issue 27 (``customized_pruners`` passed through to Torch-Pruning; issue 28 item 3): conv1's channels feed a
    layer of the user's own type. Without a pruner for it the group stays dense and is reported (before: a unit was
    placed, and compact crashed with a raw IndexError after training); with one, conv1's channels are pruned, the
    user's layer loses the matching input channels, and save/load replays it given the same pruners."""
    pyro.set_rng_seed(0)
    x = torch.rand(4, 3, 8, 8)
    model = sparsify(WithGainConv(), method, x)
    assert [s["group"] for s in model.skipped] == ["conv1"] and "conv1_units" not in model.units
    reason = model.skipped[0]["reason"]
    assert "'own' (GainConv)" in reason and "customized_pruners={GainConv: pruner}" in reason
    guide = MeanFieldGuide(model)
    force_prune(guide)
    assert compact(model, guide, probe=x).own.weight.shape[1] == 8  # exact: the group kept whole

    pruners = {GainConv: _gain_conv_pruner()}
    model = sparsify(WithGainConv(), method, x, customized_pruners=pruners)
    assert not model.skipped and model.units["conv1_units"].num_units == 8
    guide = MeanFieldGuide(model)
    force_prune(guide, seed=1)
    small = compact(model, guide, probe=x)  # raises CompactMismatchError unless exact
    kept = small.own.weight.shape[1]  # conv1's channels left, the user's layer's inputs
    assert kept < 8 and small.fc(torch.zeros(1, 6)).shape == (1, 10)
    save_compact(small, tmp_path)
    with pytest.raises(InvalidInputError, match=r"'own'.*customized_pruners") as e:
        load_compact(tmp_path, factory=WithGainConv)
    assert "\n" not in str(e.value)
    back = load_compact(tmp_path, factory=WithGainConv, customized_pruners=pruners)
    assert torch.equal(back(x), small(x))


def test_customized_pruners_bad_input_is_one_line():
    x = torch.rand(2, 3, 8, 8)
    net = WithGainConv()
    for bad, match in (([GainConv], "must be a dict"), ({GainConv: object()}, "Torch-Pruning pruner"),
                       ({net.own: _gain_conv_pruner()}, "no layer type"), ({"own": _gain_conv_pruner()}, "no layer")):
        with pytest.raises(InvalidInputError, match=match) as e:
            sparsify(net, "bb", x, customized_pruners=bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["sbp", "bb"])
def test_a_channel_group_the_tracer_does_not_close_is_left_whole_and_reported(method, monkeypatch):
    """The dependency tracer runs within a bound (issue 28, item 3): a channel group it does not close within
    ``TRACER_VISITS_PER_DEPENDENCY`` visits of one dependency (here: none may be followed) is left dense and reported,
    ``compact`` leaves it whole and stays exact, ``strict=True`` refuses in one line. Before, ``sparsify`` followed a
    runaway group without end (a Llama decoder's rotary embeddings: 8 CPU minutes and counting)."""
    sp = sys.modules["pyro_sparse.sparsify"]  # (the package exports the function under the module's name)
    monkeypatch.setattr(sp, "TRACER_VISITS_PER_DEPENDENCY", 0)
    torch.manual_seed(0)
    x, y = _images("custom", 12)
    with pyro.settings.context(module_local_params=True):
        with pytest.warns(UserWarning, match="left dense"):
            model = sparsify(Custom(), method, x[:2], num_data=50)
        reasons = {s["group"]: s["reason"] for s in model.skipped}
        assert {"stem", "branch"} <= set(reasons) and "more than 0 times" in reasons["stem"]
        assert all(p.where == "in" for ps in model.placements.values() for p in ps)  # only the head's inputs
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y)
        force_prune(guide)
        small = compact(model, guide, probe=x)
        with pytest.raises(UnsupportedModelError, match=r"^channel group of '\w+': the dependency tracer .* did not "
                                                          r"close it \(it followed one dependency more than 0 "
                                                          r"times.*exclude") as e:
            sparsify(Custom(), method, x[:2], num_data=50, strict=True)
    assert "\n" not in str(e.value)
    assert small.stem.out_channels == 16 and small.mix.out_channels == 32  # whole
    model.eval()
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
