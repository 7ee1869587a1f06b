"""compact's own rewrites beyond the channel surgery that tests/test_sparsify.py covers over the zoo (issue 29: the
compact network's wall-clock follows its FLOPs)."""

import pyro
import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import nets
from test_sparsify import _images, _train, force_prune

from pyro_sparse import compact, export, load_compact, save_compact, sparsify
from pyro_sparse.compact import defer_standardize
from pyro_sparse.nn import Select
from pyro_sparse.nn.units import Standardize


def _undeferred(net, x):
    """``net(x)`` with every deferred standardisation put back where the architecture has it."""
    modules = list(net.modules())
    saved = [(m, m.__dict__.get("_deferred"), m.__dict__.get("_after")) for m in modules]
    for m in modules:
        m.__dict__.pop("_deferred", None), m.__dict__.pop("_after", None)
    try:
        return net(x)
    finally:
        for m, deferred, after in saved:
            if deferred is not None:
                m._deferred = deferred
            if after is not None:
                m._after = after


@pytest.mark.parametrize("method", ["svd", "bb", "dbb"])
def test_a_compact_mlp_standardises_only_the_input_pixels_it_reads(method, tmp_path):
    x, y = _images("lenet5")  # 12 MNIST training images, [12, 1, 28, 28]
    net = nets.build("lenet500", (1, 28, 28), 10, mean=0.13, std=0.31)
    with pyro.settings.context(module_local_params=True):
        model = sparsify(net, method, x[:2], num_data=50)
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y)
        force_prune(guide)
        small = compact(model, guide, probe=x)  # (compact's self-check: equal to the eval-mode model)
    select = small.fc1[0]
    assert isinstance(select, Select) and select.index.numel() < 784  # pixels were dropped
    assert small.standardize._deferred and select._after == (small.standardize,)
    out = small(x)
    assert torch.equal(out, _undeferred(small, x))  # the same values, bit for bit
    assert "standardize.mean" in small.state_dict() and not any("_after" in k for k in small.state_dict())
    save_compact(small, tmp_path)
    again = load_compact(tmp_path)
    assert again.standardize._deferred and again.fc1[0]._after == (again.standardize,)
    assert torch.equal(again(x), out)
    # ONNX: the Select gathers rows of xᵀ under export; export() checks the file against the network in onnxruntime
    pytest.importorskip("onnxruntime")
    export(again, tmp_path / "net.onnx", x[:1])


def test_only_a_scalar_standardisation_right_before_a_select_is_deferred():
    per_channel = Standardize([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="scalar mean and std"):
        per_channel.defer_to(Select(torch.arange(3)))
    net = torch.nn.Sequential(per_channel, torch.nn.Flatten(), torch.nn.Sequential(Select(torch.arange(5)),
                                                                                    torch.nn.Linear(5, 2)))
    defer_standardize(net)
    assert not per_channel._deferred  # per-channel: left where it is
    scalar = Standardize(0.5, 2.0)
    apart = torch.nn.Sequential(scalar, torch.nn.ReLU(), torch.nn.Sequential(Select(torch.arange(5)),
                                                                             torch.nn.Linear(5, 2)))
    defer_standardize(apart)
    assert not scalar._deferred  # another op between them: left where it is
    x = torch.randn(4, 3, 2, 2)
    assert torch.allclose(Standardize(0.5, 2.0)(x), (x - 0.5) / 2.0)  # the formula itself, written out here
    near = torch.nn.Sequential(torch.nn.Flatten(), Standardize(0.5, 2.0), torch.nn.Flatten(),
                               torch.nn.Sequential(Select(torch.tensor([0, 3, 7])), torch.nn.Linear(3, 2)))
    expected = near(x)
    defer_standardize(near)
    assert near[1]._deferred and torch.equal(near(x), expected)
