"""One metrics function for every method, in the papers' conventions (METHODS.md §5).

* **test error**: percent of misclassified test examples (0–100).
* **compression**: (#weights of the full network) / (#non-zero weights of the compact one), biases excluded
  (Molchanov et al. 2017 convention); ``layer_sparsity``: fraction (0–1) of each full layer's weights that are zero
  or removed.
* **units**: units left at each unit position (inputs of dense layers, output channels of conv layers); for DBB the
  test-set average of the per-example active units (the DBB paper's convention), and FLOPs counted with them.
* **FLOPs** (beta-Bernoulli code convention, dense counting on the compact layers): dense ``(2·in − 1)·out`` + ``out``
  (bias); conv ``C_out·H'·W'·(2·k²·C_in − 1)`` + ``C_out·H'·W'`` (bias); ReLU one per element; max-pool ``k²`` per
  output. ``flops_speedup = FLOPs(full) / FLOPs(compact)``.
* **memory_fraction**: (parameters + conv output feature maps) of the compact network / the same for the full one.
* **latency**: median wall-clock seconds of a forward pass (``torch.inference_mode``), measured by
  :func:`compare_latency` (full and compact timed alternately) — used by benchmarks and ``metrics.json``, never by
  tests.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


@torch.inference_mode()
def classification_error(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Percent (0–100) of examples in ``x [N, ...]`` whose arg-max prediction differs from ``y [N]``."""
    net.eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    wrong = 0
    for i in range(0, x.shape[0], batch_size):
        logits = net(x[i : i + batch_size].to(device))
        wrong += int((logits.argmax(-1).cpu() != y[i : i + batch_size]).sum())
    return 100.0 * wrong / max(1, x.shape[0])


def _walk(net: nn.Sequential, input_shape: tuple[int, ...]):
    """Yield ``(layer, in_shape, out_shape)`` per layer for one example."""
    shape = tuple(input_shape)
    x = torch.zeros(1, *shape)
    with torch.inference_mode():
        for layer in net:
            y = layer(x)
            yield layer, tuple(x.shape[1:]), tuple(y.shape[1:])
            x = y


def _gate_fraction_after(layers: list[nn.Module], i: int, fractions: dict[int, float]) -> float:
    """Active fraction of the outputs of weight layer ``i``: that of the first dynamic gate before the next weight
    layer (1 when there is none)."""
    for layer in layers[i + 1:]:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            return 1.0
        if id(layer) in fractions:
            return fractions[id(layer)]
    return 1.0


def count_flops(net: nn.Sequential, input_shape: tuple[int, ...], gate_fractions: dict[int, float] | None = None,
                per_layer: bool = False):
    """FLOPs of one forward pass of one example (convention in the module docstring).

    :param gate_fractions: ``id(DynamicGate) → average fraction of its units active`` (DBB): layer widths are then
        the test-set average active units, as the DBB paper counts.
    :param per_layer: also return the effective unit counts at each unit position (inputs of dense layers, output
        channels of conv layers).
    """
    fractions = gate_fractions or {}
    layers = list(net)
    total, units = 0.0, []
    frac = 1.0  # active fraction of the features flowing at this point
    for i, (layer, _, shp_out) in enumerate(_walk(net, input_shape)):
        out = int(torch.Size(shp_out).numel())
        if id(layer) in fractions:
            frac = fractions[id(layer)]
        elif isinstance(layer, nn.Linear):
            f_out = _gate_fraction_after(layers, i, fractions)
            n_in, n_out = layer.in_features * frac, layer.out_features * f_out
            total += (2 * n_in - 1) * n_out + (n_out if layer.bias is not None else 0)
            units.append(n_in)
            frac = f_out
        elif isinstance(layer, nn.Conv2d):
            f_out = _gate_fraction_after(layers, i, fractions)
            k2 = layer.kernel_size[0] * layer.kernel_size[1]
            n_out = out * f_out
            total += n_out * (2 * k2 * layer.in_channels * frac - 1) + (n_out if layer.bias is not None else 0)
            units.append(layer.out_channels * f_out)
            frac = f_out
        elif isinstance(layer, nn.ReLU):
            total += out * frac
        elif isinstance(layer, nn.MaxPool2d):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            total += k * k * out * frac
    total = int(round(total))
    return (total, units) if per_layer else total


@torch.inference_mode()
def gate_fractions(net: nn.Sequential, x: torch.Tensor, batch_size: int = 1000) -> dict[int, float]:
    """Average fraction of active units of every dynamic gate of ``net`` over the examples ``x``."""
    from .nn import DynamicGate

    gates = [m for m in net if isinstance(m, DynamicGate)]
    if not gates:
        return {}
    sums = {id(g): 0.0 for g in gates}
    device = next((p.device for p in net.buffers()), torch.device("cpu"))
    for i in range(0, x.shape[0], batch_size):
        net(x[i:i + batch_size].to(device))
        for g in gates:
            sums[id(g)] += float(g.last_active.sum())
    return {id(g): sums[id(g)] / (x.shape[0] * g.num_units) for g in gates}


def memory_count(net: nn.Sequential, input_shape: tuple[int, ...]) -> int:
    """Parameters (weights + biases) + conv output feature-map elements of one example."""
    params = sum(p.numel() for p in net.parameters())
    maps = sum(int(torch.Size(o).numel()) for layer, _, o in _walk(net, input_shape) if isinstance(layer, nn.Conv2d))
    return params + maps


def _weight_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def summarize(
    compact: nn.Sequential, full: nn.Sequential, x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None
) -> dict:
    """All size and cost metrics of ``compact`` against ``full`` (the unpruned deterministic network, same arch),
    plus ``test_error`` when test data are given. Keys: test_error, units, units_full, n_weights, n_nonzero,
    compression, layer_sparsity, flops, flops_full, flops_speedup, memory_fraction.
    """
    shape = tuple(compact.input_shape)
    full_layers, comp_layers = _weight_layers(full), _weight_layers(compact)
    n_weights = sum(m.weight.numel() for m in full_layers)
    nnz = [int(m.weight.ne(0).sum()) for m in comp_layers]
    n_nonzero = sum(nnz)
    fractions = gate_fractions(compact, x_test) if x_test is not None else {}
    flops, units = count_flops(compact, shape, fractions, per_layer=True)
    flops_full = count_flops(full, shape)
    out = {
        "units": list(compact.units) if not fractions else [round(u, 2) for u in units],
        "units_full": list(full.units),
        "n_weights": n_weights,
        "n_nonzero": n_nonzero,
        "compression": n_weights / max(1, n_nonzero),
        "layer_sparsity": [1 - z / f.weight.numel() for z, f in zip(nnz, full_layers, strict=True)],
        "flops": flops,
        "flops_full": flops_full,
        "flops_speedup": flops_full / max(1, flops),
        "memory_fraction": memory_count(compact, shape) / memory_count(full, shape),
    }
    if x_test is not None and y_test is not None:
        out["test_error"] = classification_error(compact, x_test, y_test)
    return out


@torch.inference_mode()
def compare_latency(full: nn.Module, compact: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                    repeats: int = 30, warmup: int = 5) -> tuple[float, float]:
    """Median seconds of ``full`` and ``compact`` on the same random batch, timed alternately (one call of each per
    repeat) so that drifts of machine load or clock hit both alike."""
    full, compact = full.cpu().eval(), compact.cpu().eval()
    x = torch.rand(batch_size, *input_shape)
    for _ in range(warmup):
        full(x)
        compact(x)
    t_full, t_comp = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        full(x)
        t1 = time.perf_counter()
        compact(x)
        t2 = time.perf_counter()
        t_full.append(t1 - t0)
        t_comp.append(t2 - t1)
    return statistics.median(t_full), statistics.median(t_comp)


def latency_report(compact: nn.Module, full: nn.Module, repeats: int = 30) -> dict:
    """Measured CPU latency (median seconds) of full vs compact at batch 1 and 1000, and their ratios."""
    shape = tuple(compact.input_shape)
    out = {}
    for bs in (1, 1000):
        t_full, t_comp = compare_latency(full, compact, shape, bs, repeats)
        out[f"latency_full_b{bs}"] = t_full
        out[f"latency_compact_b{bs}"] = t_comp
        out[f"speedup_measured_b{bs}"] = t_full / t_comp
    return out


class _CostCounter(TorchFunctionMode):
    """Counts FLOPs (module docstring convention) and conv output elements of the ops a forward pass calls."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch, self.flops, self.conv_maps = batch, 0.0, 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._count(func, args, kwargs, out)
        except Exception:  # an op signature this counter does not know: count nothing for it
            pass
        return out

    def _count(self, func, args, kwargs, out):
        if not torch.is_tensor(out):
            out = out[0] if isinstance(out, tuple) and out and torch.is_tensor(out[0]) else None
            if out is None:
                return
        n_out = out.numel() / self.batch
        if func is F.linear:
            w, b = args[1], args[2] if len(args) > 2 else kwargs.get("bias")
            rows = out.numel() / out.shape[-1] / self.batch
            self.flops += rows * ((2 * w.shape[1] - 1) * w.shape[0] + (w.shape[0] if b is not None else 0))
        elif func in (F.conv1d, F.conv2d):
            w, b = args[1], args[2] if len(args) > 2 else kwargs.get("bias")
            k = math.prod(w.shape[2:]) * w.shape[1]  # kernel elements × input channels per group
            self.flops += n_out * (2 * k - 1) + (n_out if b is not None else 0)
            self.conv_maps += n_out
        elif func in (F.relu, torch.relu, torch.relu_, F.relu_, torch.Tensor.relu, torch.Tensor.relu_):
            self.flops += n_out
        elif func in (F.max_pool1d, F.max_pool2d, F.max_pool1d_with_indices, F.max_pool2d_with_indices,
                      torch.max_pool2d, torch.max_pool1d):
            ks = args[1] if len(args) > 1 else kwargs["kernel_size"]
            ks = (ks,) * (out.dim() - 2) if isinstance(ks, int) else tuple(ks)
            self.flops += math.prod(ks) * n_out
        elif func in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.mean,
                      torch.Tensor.mean):
            self.flops += args[0].numel() / self.batch  # one addition per input element
        elif func in (F.batch_norm,):
            self.flops += 2 * n_out  # scale and shift per element at test time
        elif func in (torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__,
                      torch.Tensor.__radd__):
            a, b = args[0], args[1] if len(args) > 1 else None
            if torch.is_tensor(a) and torch.is_tensor(b) and a.dim() >= 2 and a.shape == b.shape:
                self.flops += n_out  # a residual addition


@torch.inference_mode()
def network_cost(net: nn.Module, example_input: torch.Tensor) -> dict:
    """FLOPs and memory of one forward pass of any network, per example, in the papers' convention (METHODS.md §5).

    The ops the forward pass calls are counted (a ``TorchFunctionMode``), so layers written as modules and as
    functional calls alike are seen: linear ``(2·in − 1)·out + out`` (bias); conv ``C_out·H'·W'·(2·k·C_in/groups
    − 1)`` + ``C_out·H'·W'`` (bias; ``k`` kernel elements); ReLU 1 per element; max-pool ``k`` per output (``k``
    window elements); average pooling (incl. adaptive, ``mean``) 1 per input element; BatchNorm 2 per element
    (test-time scale and shift); residual addition (two tensors of one shape) 1 per element. Input
    standardisation, reshapes and :class:`~pyro_sparse.nn.Select` cost nothing.

    :param example_input: a batch ``[B, *input_shape]``; counts are divided by ``B``.
    :returns: ``{"flops": float, "params": int (parameters, all), "nonzero_params": int (weights ≠ 0, biases
        included), "memory": float (parameters + conv output feature-map elements)}``.
    """
    was_training = net.training
    net.eval()
    counter = _CostCounter(example_input.shape[0])
    try:
        with counter:
            net(example_input)
    finally:
        net.train(was_training)
    params = sum(p.numel() for p in net.parameters())
    return {"flops": counter.flops, "params": params,
            "nonzero_params": sum(int(p.ne(0).sum()) for p in net.parameters()),
            "memory": params + counter.conv_maps}


def weight_count(net: nn.Module) -> tuple[int, int]:
    """``(weights, non-zero weights)`` of the conv and linear layers of ``net`` (biases excluded: the compression
    convention of Molchanov et al. 2017)."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    return sum(m.weight.numel() for m in layers), sum(int(m.weight.ne(0).sum()) for m in layers)


def compare(full: nn.Module, compact: nn.Module, example_input: torch.Tensor, latency_batches: tuple[int, ...] = (),
            repeats: int = 30) -> dict:
    """Size and cost of a compact network against the full one (same architecture, any network), in the papers'
    units: ``flops``/``flops_full`` (per example) and ``flops_speedup`` = full / compact; ``params``/``params_full``;
    ``compression`` = weights of the full net / non-zero weights of the compact one (biases excluded);
    ``memory_fraction`` (parameters + conv feature maps, compact / full, a fraction in 0–1); ``units`` and
    ``units_full`` per unit latent (from the compact network's ``pyro_sparse_compact`` description, when present);
    with ``latency_batches``, the measured CPU latency (median seconds, :func:`compare_latency`) and
    ``speedup_measured_b{B}`` at each batch size.
    """
    c, f = network_cost(compact, example_input), network_cost(full, example_input)
    n_full, _ = weight_count(full)
    _, nnz = weight_count(compact)
    info = getattr(compact, "pyro_sparse_compact", {}) or {}
    out = {"flops": c["flops"], "flops_full": f["flops"], "flops_speedup": f["flops"] / max(1.0, c["flops"]),
           "params": c["params"], "params_full": f["params"], "compression": n_full / max(1, nnz),
           "memory_fraction": c["memory"] / max(1.0, f["memory"]),
           "units": dict(info.get("units", {})), "units_full": dict(info.get("units_full", {}))}
    for bs in latency_batches:
        t_full, t_comp = compare_latency(full, compact, tuple(example_input.shape[1:]), bs, repeats)
        out[f"latency_full_b{bs}"], out[f"latency_compact_b{bs}"] = t_full, t_comp
        out[f"speedup_measured_b{bs}"] = t_full / t_comp
    return out
