"""One metrics function for every method, in the papers' conventions (METHODS.md §5).

* **test error**: percent of misclassified test examples (0–100).
* **compression**: (#weights of the full network) / (#non-zero weights of the compact one), biases excluded
  (Molchanov et al. 2017 convention); ``layer_sparsity``: fraction (0–1) of each full layer's weights that are zero
  or removed.
* **units**: units left at each unit position (inputs of dense layers, output channels of conv layers).
* **FLOPs** (beta-Bernoulli code convention, dense counting on the compact layers): dense ``(2·in − 1)·out`` + ``out``
  (bias); conv ``C_out·H'·W'·(2·k²·C_in − 1)`` + ``C_out·H'·W'`` (bias); ReLU one per element; max-pool ``k²`` per
  output. ``flops_speedup = FLOPs(full) / FLOPs(compact)``.
* **memory_fraction**: (parameters + conv output feature maps) of the compact network / the same for the full one.
* **latency**: median wall-clock seconds of a forward pass (``torch.inference_mode``), measured by
  :func:`measure_latency` — used by benchmarks and ``metrics.json``, never by tests.
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


def count_flops(net: nn.Sequential, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one example (convention in the module docstring)."""
    total = 0
    for layer, _, shp_out in _walk(net, input_shape):
        out = int(torch.Size(shp_out).numel())
        if isinstance(layer, nn.Linear):
            total += (2 * layer.in_features - 1) * layer.out_features + (
                layer.out_features if layer.bias is not None else 0
            )
        elif isinstance(layer, nn.Conv2d):
            k2 = layer.kernel_size[0] * layer.kernel_size[1]
            total += out * (2 * k2 * layer.in_channels - 1) + (out if layer.bias is not None else 0)
        elif isinstance(layer, nn.ReLU):
            total += out
        elif isinstance(layer, nn.MaxPool2d):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            total += k * k * out
    return total


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
    flops, flops_full = count_flops(compact, shape), count_flops(full, shape)
    out = {
        "units": list(compact.units),
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
def measure_latency(
    net: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    repeats: int = 30,
    warmup: int = 5,
    device: str | torch.device = "cpu",
) -> float:
    """Median wall-clock seconds of ``net`` on a random batch ``[batch_size, *input_shape]``."""
    net = net.to(device).eval()
    x = torch.rand(batch_size, *input_shape, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        net(x)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        net(x)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def latency_report(compact: nn.Module, full: nn.Module, repeats: int = 30) -> dict:
    """Measured CPU latency (median seconds) of full vs compact at batch 1 and 1000, and their ratios."""
    shape = tuple(compact.input_shape)
    out = {}
    for bs in (1, 1000):
        t_full = measure_latency(full, shape, bs, repeats)
        t_comp = measure_latency(compact, shape, bs, repeats)
        out[f"latency_full_b{bs}"] = t_full
        out[f"latency_compact_b{bs}"] = t_comp
        out[f"speedup_measured_b{bs}"] = t_full / t_comp
    return out
