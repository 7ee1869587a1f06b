"""export(): every compact network of the zoo × every method, DBB gates included, to ONNX (run by onnxruntime) or to a
torch.export program (``ONNX_CASES`` / ``PROGRAM_CASES``); outputs equal the compact network's on images it was not
exported with, at a batch size it was not traced with; the ONNX file holds what the compact network stores, no more
(issue 29)."""

import copy
import importlib
import importlib.util

import numpy as np
import pytest
import torch
from test_sparsify import METHODS, ZOO, _images, compact_zoo
from torch import nn

from pyro_sparse import SparseModel, export
from pyro_sparse.errors import ExportError, InvalidInputError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                reason='the export extra is not installed (pip install -e ".[export]")')


def _stored_bytes(net: nn.Module, sparse: bool = False) -> int:
    """Bytes of the float tensors; with ``sparse``, weights under a third non-zero at 12 bytes per non-zero."""
    def size(t):
        dense = t.numel() * t.element_size()
        return min(dense, 12 * int(t.count_nonzero())) if sparse and t.dim() >= 2 else dense
    return sum(size(t) for t in net.state_dict().values() if t.is_floating_point())


def _held_out(arch: str) -> torch.Tensor:
    return _images(arch, 17)[0][12:]  # 5 images the network was neither trained, compacted nor exported with


#: every zoo network × method is exported in one of the two formats: ONNX (torch.export, then the translation to ONNX
#: ops, then onnxruntime) for every method on the small networks (the user's CNN has residual + concat + depthwise) and
#: for DBB — whose gates add the most op kinds — on VGG-like; torch.export alone for the rest (the ONNX translation is
#: per op, not per network; the suite's time: ONNX costs 10–25 s a case on the ResNets)
ONNX_CASES = [(a, m) for a in ("lenet5", "custom") for m in METHODS] + [("vgg_like", "dbb")]
PROGRAM_CASES = [(a, m) for a in ZOO for m in METHODS if (a, m) not in ONNX_CASES]


@pytest.mark.parametrize("arch, method", ONNX_CASES)
def test_onnx_equals_the_compact_network_and_is_smaller(arch, method, tmp_path):
    import onnxruntime

    small, x = compact_zoo(arch, method)
    path = export(small, tmp_path / "net.onnx", x[:1])  # a batch of one: the file still takes any batch
    assert not small.training
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]  # the weights are inside, no side file
    held_out = _held_out(arch)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: held_out.numpy()})[0]
    with torch.no_grad():
        expected = small(held_out).numpy()
    assert got.shape == expected.shape == (5, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    # the file's size follows what the compact network stores (and so the kept parameters), not the full network's
    size, stored, full = path.stat().st_size, _stored_bytes(small, sparse=True), _stored_bytes(ZOO[arch]())
    assert 0.9 * stored <= size <= 1.05 * stored + 60_000, (size, stored)
    assert size < full


@pytest.mark.parametrize("arch, method", PROGRAM_CASES)
def test_torch_export_program_equals_the_compact_network(arch, method, tmp_path):
    small, x = compact_zoo(arch, method)
    path = export(small, tmp_path / "net.pt2", x[:4], format="torch.export")
    held_out = _held_out(arch)
    with torch.no_grad():
        got, expected = torch.export.load(str(path)).module()(held_out), small(held_out)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 * max(1.0, float(expected.abs().max())))


def test_export_keeps_flags_and_refuses_bad_input(tmp_path):
    small, x = compact_zoo("custom", "bb")
    small.train()
    export(small, tmp_path / "net.onnx", x[:2], dynamic_batch=False)
    assert all(m.training for m in small.modules())  # restored
    small.eval()
    for args, kwargs, words in [
        ((small, tmp_path / "a.onnx", x[:2]), {"format": "tflite"}, "unknown format 'tflite'"),
        ((small, tmp_path / "missing" / "a.onnx", x[:2]), {}, "does not exist"),
        ((small, tmp_path / "a.onnx", x[0, 0, 0].tolist()), {}, "must be a tensor"),
        ((lambda t: t, tmp_path / "a.onnx", x[:2]), {}, "must be a torch.nn.Module"),
        ((small, tmp_path / "a.onnx", x[:2]), {"atol": -1.0}, "must be >= 0"),
    ]:
        with pytest.raises(InvalidInputError, match=words) as e:
            export(*args, **kwargs)
        assert "\n" not in str(e.value)
    model = SparseModel.__new__(SparseModel)
    nn.Module.__init__(model)
    with pytest.raises(InvalidInputError, match="compact"):
        export(model, tmp_path / "a.onnx", x[:2])


def test_export_reports_a_network_the_exporter_refuses(tmp_path):
    class HostBranch(nn.Module):  # data-dependent Python control flow: torch.export cannot trace it
        def forward(self, t):
            return t * 2 if float(t.sum()) > 0 else t

    with pytest.raises(ExportError, match="torch.export could not export HostBranch") as e:
        export(HostBranch(), tmp_path / "a.pt2", torch.ones(2, 3), format="torch.export")
    assert "\n" not in str(e.value)


def test_export_reports_a_file_that_computes_something_else(tmp_path, monkeypatch):
    module = importlib.import_module("pyro_sparse.export")  # (the package's attribute `export` is the function)
    small, x = compact_zoo("custom", "svd")
    monkeypatch.setattr(module, "_run_onnx", lambda path, t: small(t) + 1e-2)  # a runtime that drifts
    with pytest.raises(ExportError, match="differs from the network by 0.01"):
        export(small, tmp_path / "a.onnx", x[:2])
    assert (tmp_path / "a.onnx").is_file()  # kept for inspection


def test_onnx_stores_mostly_zero_weights_sparse(tmp_path):
    """SVD's compact network: weights with under a third non-zero go into the ONNX file as sparse initializers, which
    onnxruntime reads; the file is smaller than with dense weights, the outputs the same."""
    import onnx
    import onnxruntime

    small, x = compact_zoo("lenet5", "svd")
    small = copy.deepcopy(small)  # (the cached network stays as it is)
    with torch.no_grad():  # a network at the papers' sparsity: keep 5% of fc1's weights
        w = small.fc1.weight if isinstance(small.fc1, nn.Linear) else small.fc1[-1].weight
        w.mul_(torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) < 0.05)
    dense = export(small, tmp_path / "dense.onnx", x[:2], sparse=False)
    sparse = export(small, tmp_path / "sparse.onnx", x[:2])
    assert [t.values.name for t in onnx.load(str(sparse)).graph.sparse_initializer] != []
    assert sparse.stat().st_size < 0.6 * dense.stat().st_size
    session = onnxruntime.InferenceSession(str(sparse), providers=["CPUExecutionProvider"])
    held_out = _held_out("lenet5")
    got = session.run(None, {session.get_inputs()[0].name: held_out.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(held_out).numpy(), rtol=0, atol=1e-5)


def test_export_command(tmp_path, capsys):
    """``pyro-sparse export DIR FILE``: a committed compact network to ONNX (checked), its size printed; bad input is
    one line and exit status 2."""
    import json
    from pathlib import Path

    from conftest import cli_error

    from pyro_sparse.cli import main

    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "lenet500_svd_pb"
    assert main(["export", str(folder), str(tmp_path / "net.onnx")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bytes"] == (tmp_path / "net.onnx").stat().st_size and out["input_shape"] == ["batch", 1, 28, 28]
    assert "holds no compact network" in cli_error(["export", str(tmp_path), str(tmp_path / "a.onnx")], capsys)
    assert "does not exist" in cli_error(["export", str(folder), str(tmp_path / "no" / "a.onnx")], capsys)
