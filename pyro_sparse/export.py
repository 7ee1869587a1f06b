"""Export a compact network for use outside pyro-sparse: ONNX (onnxruntime, other runtimes) or a ``torch.export``
program (``.pt2``), with the batch dimension dynamic, checked against the network before it returns (issue 29).

Torch's own exporters do the work (``torch.onnx.export(..., dynamo=True)`` and ``torch.export.export``); what this
module adds is what a user would otherwise find out alone: a compact network traces with a batch of one only as a
static shape (torch.export specialises size-1 dimensions), the weights belong inside the one file, the modules'
train/eval flags must not change, and the file must compute what the network computes — checked here on the example
and on a batch of another size, with onnxruntime for ONNX and the reloaded program for ``torch.export``.

Every compact network of the zoo exports, DBB's input-dependent gates included (:class:`~pyro_sparse.nn.dbb.
DynamicGate` is plain tensor arithmetic). ONNX needs the ``export`` extra: ``pip install "pyro-sparse[export]"``
(onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from pathlib import Path

import torch
from torch import nn

from .errors import ExportError, InvalidInputError, one_line

#: the formats :func:`export` writes
FORMATS = ("onnx", "torch.export")

_EXTRA = 'pip install "pyro-sparse[export]"'


def export(net: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, format: str = "onnx", *,
           dynamic_batch: bool = True, sparse: bool = True, check: bool = True, rtol: float = 1e-4,
           atol: float = 1e-5) -> Path:
    """Write ``net`` (a compact network from :func:`pyro_sparse.compact` / :func:`pyro_sparse.load_compact`, or any
    deterministic ``nn.Module``) to ``path`` in eval mode and check the file.

    :param net: the network; exported in eval mode, every module's train/eval flag is restored afterwards.
    :param path: the file to write (``.onnx`` or ``.pt2`` by convention); its folder must exist. ONNX files hold
        their weights inside (no ``.data`` side file) and none of the exporter's per-node debug records (Python
        stack traces naming the caller's files); file size ≈ 4 bytes × stored float32 parameters and buffers (12
        bytes per non-zero for weights stored sparse, ``sparse``) + the graph (a few kB to tens of kB).
    :param example_input: one input batch ``[B, *input_shape]`` (e.g. ``[B, 1, 28, 28]`` for LeNet-5), on the
        network's device. A batch of one is repeated to two rows for tracing: torch.export would otherwise fix
        the batch size to 1.
    :param format: ``"onnx"`` (opset of torch's exporter, runs in onnxruntime) or ``"torch.export"`` (a ``.pt2``
        :class:`torch.export.ExportedProgram`; reload with ``torch.export.load(path).module()``).
    :param dynamic_batch: the batch dimension is symbolic in the file (any batch size ≥ 1 runs); else it is
        fixed to the example's.
    :param sparse: ONNX only: store weights with fewer than a third of their entries non-zero (SVD) as sparse
        initializers (onnxruntime densifies them on loading; other runtimes may not read them — pass ``False``).
    :param check: run the file on the example and on a batch of another size and compare with ``net``: the largest
        absolute difference must be ≤ ``atol + rtol · max|net(x)|`` (float32; measured differences on the zoo are
        ≤ 1e-7 relative). ONNX is run with onnxruntime on the CPU.
    :returns: ``path`` as a :class:`~pathlib.Path`.
    :raises InvalidInputError: ``net`` is not an ``nn.Module`` or is a :class:`~pyro_sparse.SparseModel` (compact it
        first), ``example_input`` is not a tensor with a batch dimension, ``format`` is unknown, the folder of
        ``path`` does not exist, or tolerances are negative.
    :raises ExportError: the exporter refused the network (its first line is quoted), the ``export`` extra is not
        installed, or the file's outputs differ from the network's beyond the tolerance (the file is kept, so that
        it can be inspected).
    """
    path = _check_args(net, path, example_input, format, rtol, atol)
    x = example_input if example_input.shape[0] > 1 or not dynamic_batch else example_input.repeat(
        2, *[1] * (example_input.dim() - 1))
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with _eval_mode(net):
        if format == "onnx":
            _write_onnx(net, x, path, shapes, sparse)
        else:
            _write_program(net, x, path, shapes)
        if check:
            probe = torch.cat([x, x[:1]]) if dynamic_batch else x
            with torch.no_grad():
                expected = net(probe)
            got = _run_onnx(path, probe) if format == "onnx" else _run_program(path, probe)
            _compare(got, expected, path, rtol, atol)
    return path


def _check_args(net, path, example_input, format, rtol, atol) -> Path:
    from .sparsify import SparseModel

    if isinstance(net, SparseModel):
        raise InvalidInputError("export takes a deterministic network, got a SparseModel: export "
                                "compact(model, guide) (or load_compact(run_dir)) instead")
    if not isinstance(net, nn.Module):
        raise InvalidInputError(f"export: net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise InvalidInputError("export: example_input must be a tensor [B, *input_shape] with B >= 1, got "
                                f"{type(example_input).__name__}{list(getattr(example_input, 'shape', []))}")
    if format not in FORMATS:
        raise InvalidInputError(f"export: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not (rtol >= 0 and atol >= 0):
        raise InvalidInputError(f"export: rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidInputError(f"export: the folder {path.parent} does not exist; expected the path of a file "
                                "in an existing folder")
    if format == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"export(format='onnx') needs {' and '.join(missing)}: {_EXTRA}")
    return path


@contextlib.contextmanager
def _eval_mode(net: nn.Module):
    flags = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _write_onnx(net, x, path: Path, shapes, sparse: bool) -> None:
    try:
        # the exporter reports its progress on stdout; a library call stays quiet
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(net, (x,), str(path), dynamo=True, external_data=False, dynamic_shapes=shapes,
                              verbose=False)
    except Exception as e:  # the exporter raises its own types; the user gets one line and the cause chained
        raise ExportError(f"torch.onnx.export could not export {type(net).__name__}: {one_line(e)}") from e
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:  # the exporter's debug records: stack traces naming the user's files, ~1 kB a node
        del node.metadata_props[:]
    if sparse:
        _sparse_initializers(model)
    onnx.save(model, str(path))


def _sparse_initializers(model) -> None:
    """Weights (≥ 2 dims, floating) with fewer than a third of their entries non-zero become ONNX sparse initializers
    (values + int64 flat indices: 12 bytes per non-zero against 4 per entry), which onnxruntime densifies when it
    loads the file: SVD's compact networks shrink on disk as they do in ``compact.safetensors``."""
    import numpy as np
    from onnx import helper, numpy_helper

    for init in list(model.graph.initializer):
        a = numpy_helper.to_array(init)
        if a.ndim < 2 or not np.issubdtype(a.dtype, np.floating):
            continue
        flat = a.reshape(-1)
        index = np.flatnonzero(flat).astype(np.int64)
        if 12 * index.size >= 4 * flat.size:
            continue
        values = numpy_helper.from_array(flat[index], init.name)
        model.graph.sparse_initializer.append(
            helper.make_sparse_tensor(values, numpy_helper.from_array(index, f"{init.name}.indices"), list(a.shape)))
        model.graph.initializer.remove(init)


def _write_program(net, x, path: Path, shapes) -> None:
    try:
        program = torch.export.export(net, (x,), dynamic_shapes=shapes)
        torch.export.save(program, str(path))
    except Exception as e:
        raise ExportError(f"torch.export could not export {type(net).__name__}: {one_line(e)}") from e


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportError(f"export(check=True) runs the ONNX file with onnxruntime, which is not installed: {_EXTRA} "
                          "(or pass check=False)")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})[0])


def _run_program(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.export.load(str(path)).module()(x)


def _compare(got: torch.Tensor, expected: torch.Tensor, path: Path, rtol: float, atol: float) -> None:
    expected = expected.detach().cpu()
    got = got.detach().cpu()
    if got.shape != expected.shape:
        raise ExportError(f"{path} gives outputs of shape {list(got.shape)}, the network {list(expected.shape)}")
    diff = float((got.float() - expected.float()).abs().max())
    bound = atol + rtol * float(expected.abs().max())
    if not diff <= bound:
        raise ExportError(f"{path} differs from the network by {diff:.3g} (max |difference|), more than "
                          f"atol + rtol * max|output| = {bound:.3g}; the file is kept for inspection")
