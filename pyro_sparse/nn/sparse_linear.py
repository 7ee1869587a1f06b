"""Sparse kernels for the fully connected layers of a compact network (issue 29, item 4).

Sparse VD removes single weights: the compact network keeps each ``nn.Linear`` at its full width, mostly zeros
(LeNet-300-100 at the paper's sparsity: 1–5% of the weights non-zero). :func:`sparse_kernels` swaps such layers
for :class:`SparseLinear`, which multiplies with the weight in compressed sparse row form (``torch.sparse.mm``).
Measured on this project's 2-core CPU, one thread (``benchmarks/latency.py``, engine ``eager+csr``, and the
micro-benchmark in the issue-29 note): at 2–5% non-zero a 300×784 layer runs 4–10× faster than dense at batch 32
and 1000, about as fast at batch 1; at 10% non-zero CSR is still 2–3× faster at batch ≥ 32 but slower at batch 1.
Hence the default ``max_density=0.05``. At batch 1000, the SVD LeNet-500-300 rows run faster with
``max_density=0.12``: their ``fc1`` is 10.8% non-zero, and the compact network goes from 5.6–5.7× to 7.1–7.3× faster
than the full one (quiet machine, RESULTS.md "Latency on a quiet machine"). At batch 32 that setting is a little
slower. The swapped network computes the same function (float32 sums in another order: differences of ~1e-6
relative); it is for running, not for saving or exporting — :func:`pyro_sparse.save_compact` stores sparse weights
anyway (:mod:`pyro_sparse.csr`), and torch's ONNX exporter takes no sparse tensors.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..errors import InvalidInputError


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` held in CSR form: ``x [*, in_features] → y [*, out_features]``.

    :param linear: the dense layer to copy (its weight's zeros are dropped; the layer is not changed).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # torch says once per process that its CSR support is "in beta"
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            weight = linear.weight.detach().to_sparse_csr()
        self.register_buffer("weight_csr", weight, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    @property
    def density(self) -> float:
        """Fraction of the weight's entries stored (non-zero), in [0, 1]."""
        return self.weight_csr.values().numel() / max(1, self.in_features * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, density={self.density:.4f}"


def sparse_kernels(net: nn.Module, max_density: float = 0.05) -> nn.Module:
    """A copy of ``net`` whose ``nn.Linear`` layers with at most ``max_density`` of their weights non-zero run as
    :class:`SparseLinear` (the others, and ``nn.MultiheadAttention``'s ``out_proj``, which the attention reads
    directly, stay dense). ``net`` itself is not changed.

    :param max_density: fraction in (0, 1]; the measured crossover is in the module docstring.
    :returns: the copy, in ``net``'s train/eval mode; its ``sparse_layers`` attribute lists the swapped layers' names.
    :raises InvalidInputError: ``net`` is not an ``nn.Module`` or ``max_density`` is outside (0, 1].
    """
    if not isinstance(net, nn.Module):
        raise InvalidInputError(f"sparse_kernels takes an nn.Module, got {type(net).__name__}")
    if not (isinstance(max_density, (int, float)) and 0 < max_density <= 1):
        raise InvalidInputError(f"max_density must be a fraction in (0, 1], got {max_density!r}")
    out = copy.deepcopy(net)
    swapped = []
    for name, module in list(out.named_modules()):
        if type(module) is not nn.Linear or module.weight.numel() == 0:
            continue
        if float((module.weight != 0).float().mean()) <= max_density:
            if not name:  # the network is one Linear
                out = SparseLinear(module)
            else:
                parent, _, leaf = name.rpartition(".")
                setattr(out.get_submodule(parent), leaf, SparseLinear(module))
            swapped.append(name)
    out.sparse_layers = swapped
    return out
