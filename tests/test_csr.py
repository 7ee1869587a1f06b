"""Sparse storage and sparse kernels of compact SVD networks (issue 29, item 4): weights stored in CSR form where that
is smaller, rebuilt exactly, every part checked before a value is written; SparseLinear computes what Linear does."""

import hashlib
import json

import pyro
import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import nets
from safetensors.torch import load, save
from test_sparsify import _images, _train, force_prune
from torch import nn

from pyro_sparse import compact, csr, load_compact, save_compact, sparse_kernels, sparsify
from pyro_sparse.errors import InvalidInputError, RunDirError
from pyro_sparse.nn import SparseLinear


@pytest.mark.parametrize("shape, density", [((30, 40), 0.05), ((8, 3, 5, 5), 0.2), ((10, 7), 0.0), ((6, 6), 0.9)])
def test_pack_unpack_is_exact(shape, density):
    g = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    packed, sparse = csr.pack({"w": t, "b": torch.randn(shape[0], generator=g)})
    assert ("w" in sparse) == (density < 0.4)  # stored sparse exactly when that is smaller
    assert "b" in packed  # 1-D tensors stay dense
    again = csr.unpack(packed, sparse, "file")
    assert torch.equal(again["w"], t) and again["w"].shape == t.shape


@pytest.fixture(scope="module")
def svd_mlp(tmp_path_factory):
    """A compact SVD LeNet-300-100 at the papers' sparsity (97% of the weights forced to log α ≫ 3), saved."""
    torch.manual_seed(0)
    x, y = _images("lenet5", 32)
    with pyro.settings.context(module_local_params=True):
        model = sparsify(nets.build("lenet300", (1, 28, 28), 10), "svd", x[:2], num_data=60_000)
        guide = MeanFieldGuide(model)
        _train(model, guide, x, y)
        force_prune(guide, fraction=0.97)
        small = compact(model, guide, probe=x)
    folder = tmp_path_factory.mktemp("svd_mlp")
    return small, x, folder, save_compact(small, folder)


def test_svd_network_is_stored_sparse_and_reloads_exactly(svd_mlp):
    small, x, folder, saved = svd_mlp
    assert saved["sparse"] == ["fc1.1.weight", "fc2.weight", "fc3.weight"]
    assert saved["bytes"] == (folder / "compact.safetensors").stat().st_size
    assert saved["bytes"] < 0.15 * saved["dense_bytes"]  # ~3% of the weights kept: file ~8x smaller
    again = load_compact(folder)
    mine, theirs = small.state_dict(), again.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(again(x), small(x))


def test_sparse_kernels_compute_what_the_dense_layers_do(svd_mlp):
    small, x, _, _ = svd_mlp
    fast = sparse_kernels(small)
    density = {n: float((m.weight != 0).float().mean()) for n, m in small.named_modules() if type(m) is nn.Linear}
    assert fast.sparse_layers == [n for n, d in density.items() if d <= 0.05] and "fc2" in fast.sparse_layers
    assert isinstance(fast.fc2, SparseLinear)
    assert type(small.fc2) is nn.Linear  # the original is untouched
    assert fast.fc2.density < 0.05
    with torch.no_grad():
        for batch in (x[:1], x):
            torch.testing.assert_close(fast(batch), small(batch), rtol=1e-5, atol=1e-5)
    assert sparse_kernels(small, max_density=1e-6).sparse_layers == []
    # tokens [B, T, F] and a layer without bias
    layer = nn.Linear(20, 6, bias=False)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(6, 20) < 0.1)
    tokens = torch.randn(3, 5, 20)
    torch.testing.assert_close(sparse_kernels(layer, 0.5)(tokens), layer(tokens), rtol=1e-5, atol=1e-6)
    for bad in (0, 1.5, "all"):
        with pytest.raises(InvalidInputError, match="max_density must be a fraction"):
            sparse_kernels(small, bad)


def _rewrite(folder, tmp_path, edit_tensors=None, edit_spec=None):
    """A copy of ``folder`` with its tensors and description edited, the SHA-256 restamped (an attacker who knows
    the format)."""
    out = tmp_path / "edited"
    out.mkdir(exist_ok=True)
    tensors = load((folder / "compact.safetensors").read_bytes())
    spec = json.loads((folder / "compact.json").read_text())
    if edit_tensors:
        edit_tensors(tensors)
    spec["tensors"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                       for k, v in tensors.items()}
    if edit_spec:
        edit_spec(spec)
    data = save(tensors)
    (out / "compact.safetensors").write_bytes(data)
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    (out / "compact.json").write_text(json.dumps(spec))
    return out


def _set(name, value):
    return lambda t: t.__setitem__(name, value)


@pytest.mark.parametrize("edit_tensors, edit_spec, words", [
    (lambda t: t["fc2.weight.col_indices"].__setitem__(0, 10_000), None, "column indices in"),
    (lambda t: t["fc2.weight.col_indices"].__setitem__(0, -1), None, "column indices in"),
    (lambda t: t["fc2.weight.crow_indices"].__setitem__(1, 10_000), None, "row pointers rising"),
    (lambda t: t["fc2.weight.col_indices"].__setitem__(1, int(t["fc2.weight.col_indices"][0])), None,
     "increasing within each row"),
    (lambda t: t.__setitem__("fc2.weight.col_indices", t["fc2.weight.col_indices"].long()), None, "int32 indices"),
    (lambda t: t.pop("fc2.weight.values"), None, "needs exactly its parts"),
    (None, lambda s: s["sparse"]["fc2.weight"].__setitem__("shape", [100, 3000]), "no tensor of that shape"),
    # (a size that would exhaust memory: refused before anything is allocated)
    (None, lambda s: s["sparse"]["fc2.weight"].__setitem__("shape", [2**30, 2**30]), "no tensor of that shape"),
    (None, lambda s: s["sparse"]["fc2.weight"].__setitem__("shape", [100]), "entry 'sparse'"),
    (None, lambda s: s["sparse"]["fc2.weight"].__setitem__("nnz", 5), "100 column indices|row pointers"),
    (None, lambda s: s["sparse"].__setitem__("fc9.weight", {"shape": [3, 3], "nnz": 1}), "no tensor of that shape"),
])
def test_hostile_sparse_parts_are_refused(svd_mlp, tmp_path, edit_tensors, edit_spec, words):
    _, _, folder, _ = svd_mlp
    bad = _rewrite(folder, tmp_path, edit_tensors, edit_spec)
    with pytest.raises(RunDirError, match=words) as e:
        load_compact(bad)
    assert "\n" not in str(e.value)
