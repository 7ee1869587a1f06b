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

import statistics
import time

import torch
from torch import nn


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
