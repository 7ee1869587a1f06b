"""One metrics function for every method and network, in the papers' conventions (METHODS.md §5).

* **test error**: percent of misclassified test examples (0–100).
* **compression**: (#weights of the full network) / (#non-zero weights of the compact one), conv and linear weights,
  biases excluded (Molchanov et al. 2017 convention); ``layer_sparsity``: fraction (0–1) of each full layer's
  weights that are zero or removed.
* **units**: units left at each weight layer, in execution order: a dense layer's input features still read (input
  pixels included), a conv layer's output channels; for DBB the test-set average of the per-example active units
  (the DBB paper's convention), and FLOPs counted with them. ``units_kept``: per unit latent of the compact network.
* **FLOPs** (beta-Bernoulli code convention) of one example, counted on the ops a forward pass calls: dense
  ``(2·in − 1)·out`` + ``out`` (bias); conv ``C_out·H'·W'·(2·k·C_in/groups − 1)`` + ``C_out·H'·W'`` (bias; ``k``
  kernel elements); ReLU 1 per element; max-pool ``k`` per output; average pooling (incl. adaptive, ``mean``) 1 per
  input element; BatchNorm 2 per element; a residual addition 1 per element. ``flops_speedup = FLOPs(full) /
  FLOPs(compact)``.
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

from .errors import InvalidInputError


@torch.inference_mode()
def classification_error(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Percent (0–100) of examples in ``x [N, ...]`` whose arg-max prediction differs from ``y [N]``; ``x`` and ``y``
    on any device (each chunk goes to the network's), one host read at the end."""
    net.eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    wrong = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, x.shape[0], batch_size):
        logits = net(x[i : i + batch_size].to(device))
        wrong += (logits.argmax(-1) != y[i : i + batch_size].to(device)).sum()
    return 100.0 * int(wrong) / max(1, x.shape[0])


_RELU = (F.relu, torch.relu, torch.relu_, F.relu_, torch.Tensor.relu, torch.Tensor.relu_)
_MAXPOOL = (F.max_pool1d, F.max_pool2d, F.max_pool1d_with_indices, F.max_pool2d_with_indices, torch.max_pool2d,
            torch.max_pool1d)
_AVGPOOL = (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.mean, torch.Tensor.mean)
_ADD = (torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__,
        torch.Tensor.__radd__)


def extra_test_errors(net: nn.Module, data) -> dict[str, float]:
    """``{"test_error_<name>": percent (0–100)}`` of ``net`` on each of ``data.extra_tests`` (a
    :class:`~pyro_sparse.data.Dataset`; e.g. CIFAR-10's ``official1k``)."""
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    return {f"test_error_{name}": classification_error(net, x.to(device), y.to(device))
            for name, (x, y) in getattr(data, "extra_tests", {}).items()}


class _OpRecorder(TorchFunctionMode):
    """Records, in execution order, the ops a forward pass calls that the FLOPs convention counts."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch, self.ops, self.suppress = batch, [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.suppress:
            self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out):
        if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
            out = out[0]
        if not torch.is_tensor(out):
            return
        n_out = out.numel() / self.batch
        if func is F.linear:
            w, b = args[1], args[2] if len(args) > 2 else kwargs.get("bias")
            self.ops.append({"kind": "linear", "rows": out.numel() / out.shape[-1] / self.batch, "w": w,
                             "bias": b is not None})
        elif func is F.multi_head_attention_forward:  # its projections (as pyro_sparse.nn.attention computes them)
            self._record_attention(args, kwargs)
        elif func in (F.conv1d, F.conv2d):
            w, b = args[1], args[2] if len(args) > 2 else kwargs.get("bias")
            self.ops.append({"kind": "conv", "n_out": n_out, "k": math.prod(w.shape[1:]), "w": w,
                             "bias": b is not None})
        elif func in _RELU:
            self.ops.append({"kind": "elementwise", "flops": n_out})
        elif func in _MAXPOOL:
            ks = args[1] if len(args) > 1 else kwargs["kernel_size"]
            ks = (ks,) * (out.dim() - 2) if isinstance(ks, int) else tuple(ks)
            self.ops.append({"kind": "elementwise", "flops": math.prod(ks) * n_out})
        elif func in _AVGPOOL:
            self.ops.append({"kind": "elementwise", "flops": args[0].numel() / self.batch})
        elif func is F.batch_norm:
            self.ops.append({"kind": "elementwise", "flops": 2 * n_out})
        elif func in _ADD:
            a, b = args[0], args[1] if len(args) > 1 else None
            if torch.is_tensor(a) and torch.is_tensor(b) and a.dim() >= 2 and a.shape == b.shape:
                self.ops.append({"kind": "elementwise", "flops": n_out})


    def _record_attention(self, args, kwargs):
        from .nn.attention import _bind_mha_args

        a = _bind_mha_args(args, kwargs)
        q, k = a["query"], a["key"]
        per = (q.shape[1] if q.dim() == 3 else 1) / self.batch  # sequence-first [T, B, E]
        w, b = a["in_proj_weight"], a["in_proj_bias"]
        if w is None:  # separate projections (kdim/vdim)
            w, b = (a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]), (b.chunk(3) if b is not None
                                                                                   else (None,) * 3)
        elif q is k and k is a["value"]:  # self-attention: one packed product
            w, b = (w,), (b,)
        else:
            w, b = w.chunk(3), (b.chunk(3) if b is not None else (None,) * 3)
        rows = (q.shape[0],) if len(w) == 1 else (q.shape[0], k.shape[0], k.shape[0])
        for wi, bi, r in zip(w, b, rows, strict=True):
            self.ops.append({"kind": "linear", "rows": r * per, "w": wi, "bias": bi is not None})
        self.ops.append({"kind": "linear", "rows": q.shape[0] * per, "w": a["out_proj_weight"],
                         "bias": a["out_proj_bias"] is not None})


@torch.inference_mode()
def gate_fractions(net: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> dict[int, float]:
    """``id(gate) → average fraction of its units active`` over the examples ``x``, for every
    :class:`~pyro_sparse.nn.DynamicGate` (DBB) of ``net``; ``{}`` for a network without one."""
    from .nn import DynamicGate

    gates = [m for m in net.modules() if isinstance(m, DynamicGate)]
    if not gates:
        return {}
    sums = {id(g): 0.0 for g in gates}
    device = next((p.device for p in net.buffers()), torch.device("cpu"))
    net.eval()
    for i in range(0, x.shape[0], batch_size):
        net(x[i:i + batch_size].to(device))
        for g in gates:
            sums[id(g)] += float(g.last_active.sum())
    return {id(g): sums[id(g)] / (x.shape[0] * g.num_units) for g in gates}


@torch.inference_mode()
def network_cost(net: nn.Module, example_input: torch.Tensor, fractions: dict[int, float] | None = None) -> dict:
    """FLOPs, units and memory of one forward pass of any network, per example (module docstring convention).

    The ops the forward pass calls are recorded (a ``TorchFunctionMode``), so layers written as modules and as
    functional calls alike are seen; input standardisation, reshapes and :class:`~pyro_sparse.nn.Select` cost
    nothing. With ``fractions`` (:func:`gate_fractions`) the features after each DBB gate count with their average
    active fraction, along the execution order: a layer's inputs with the fraction of the last gate before it, its
    outputs with that of a gate between it and the next weight layer (the DBB paper's counting).

    :param example_input: a batch ``[B, *input_shape]``; counts are divided by ``B``.
    :returns: ``{"flops": float, "units": [float] (see the module docstring), "widths": [int] (each weight layer's
        input features (dense) or output channels (conv) as built), "params": int, "memory": float
        (parameters + conv output feature-map elements), "layers": [(weights, non-zero weights)] per weight op}``.
    """
    from .nn import DynamicGate

    fractions = fractions or {}
    was_training = net.training
    net.eval()
    rec = _OpRecorder(example_input.shape[0])

    def enter(gate, _):
        rec.ops.append({"kind": "gate", "fraction": fractions.get(id(gate), 1.0)})
        rec.suppress += 1

    def leave(gate, _, __):
        rec.suppress -= 1

    gates = [m for m in net.modules() if isinstance(m, DynamicGate)]
    handles = [h for g in gates for h in (g.register_forward_pre_hook(enter), g.register_forward_hook(leave))]
    try:
        with rec:
            net(example_input)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    flops, units, widths, layers, kinds, maps = 0.0, [], [], [], [], 0.0
    frac = 1.0
    ops = rec.ops
    for i, op in enumerate(ops):
        if op["kind"] == "gate":
            frac = op["fraction"]
            continue
        if op["kind"] == "elementwise":
            flops += op["flops"] * frac
            continue
        f_out = 1.0
        for nxt in ops[i + 1:]:
            if nxt["kind"] in ("linear", "conv"):
                break
            if nxt["kind"] == "gate":
                f_out = nxt["fraction"]
                break
        w = op["w"]
        layers.append((w.numel(), int(w.ne(0).sum())))
        kinds.append(op["kind"])
        if op["kind"] == "linear":
            n_out = w.shape[0] * f_out
            flops += op["rows"] * ((2 * w.shape[1] * frac - 1) * n_out + (n_out if op["bias"] else 0))
            units.append(int(w.ne(0).any(0).sum()) * frac)
            widths.append(w.shape[1])
        else:
            n_out = op["n_out"] * f_out
            flops += n_out * (2 * op["k"] * frac - 1) + (n_out if op["bias"] else 0)
            units.append(w.shape[0] * f_out)
            widths.append(w.shape[0])
            maps += op["n_out"]
        frac = f_out
    params = sum(p.numel() for p in net.parameters())
    return {"flops": flops, "units": units, "widths": widths, "params": params, "memory": params + maps,
            "layers": layers, "kinds": kinds}


def summarize(compact: nn.Module, full: nn.Module, example_input: torch.Tensor, x_test: torch.Tensor | None = None,
              y_test: torch.Tensor | None = None, latency_batches: tuple[int, ...] = (), repeats: int = 30) -> dict:
    """All size and cost metrics of ``compact`` against ``full`` (the unpruned network of the same architecture),
    for any network.

    :param example_input: ``[B, *input_shape]``, for tracing the forward pass (the values do not matter).
    :param x_test, y_test: with them, ``test_error`` (percent) and, for DBB gates, units and FLOPs as test-set
        averages.
    :param latency_batches: measure CPU latency (median seconds, :func:`compare_latency`) at these batch sizes:
        ``latency_full_b{B}``, ``latency_compact_b{B}``, ``speedup_measured_b{B}``.
    :raises InvalidInputError: an argument of the wrong kind, shape or range.
    :returns: keys ``test_error``, ``units``, ``units_full`` (per weight layer, see the module docstring),
        ``units_kept``/``units_latent`` (per unit latent, from the compact description), ``n_weights``,
        ``n_nonzero``, ``compression``, ``layer_sparsity``, ``layer_kinds`` (``"conv"`` / ``"linear"`` per weight
        layer, execution order), ``layer_weights`` (the full network's weights per layer), ``layer_nonzero`` (the
        compact one's non-zero weights per layer), ``flops``, ``flops_full``, ``flops_speedup``,
        ``params``, ``params_full``, ``memory_fraction``.
    """
    _check_summarize_args(compact, full, example_input, x_test, y_test, latency_batches, repeats)
    fractions = gate_fractions(compact, x_test) if x_test is not None else {}
    c, f = network_cost(compact, example_input, fractions), network_cost(full, example_input)
    n_weights = sum(n for n, _ in f["layers"])
    n_nonzero = sum(nz for _, nz in c["layers"])
    info = getattr(compact, "pyro_sparse_compact", None) or {}
    dynamic = bool(fractions)
    out = {
        "units": [round(u, 2) for u in c["units"]] if dynamic else [int(u) for u in c["units"]],
        "units_full": list(f["widths"]),
        "units_kept": dict(info.get("units", {})), "units_latent": dict(info.get("units_full", {})),
        "n_weights": n_weights, "n_nonzero": n_nonzero, "compression": n_weights / max(1, n_nonzero),
        "layer_sparsity": [1 - nz / n for (_, nz), (n, _) in zip(c["layers"], f["layers"], strict=False)],
        "layer_kinds": list(f["kinds"]), "layer_weights": [n for n, _ in f["layers"]],
        "layer_nonzero": [nz for _, nz in c["layers"]],
        "flops": round(c["flops"]), "flops_full": round(f["flops"]),
        "flops_speedup": round(f["flops"]) / max(1, round(c["flops"])),
        "params": c["params"], "params_full": f["params"],
        "memory_fraction": c["memory"] / max(1.0, f["memory"]),
    }
    if x_test is not None and y_test is not None:
        out["test_error"] = classification_error(compact, x_test, y_test)
    shape = tuple(example_input.shape[1:])
    for bs in latency_batches:
        t_full, t_comp = compare_latency(full, compact, shape, bs, repeats)
        out[f"latency_full_b{bs}"], out[f"latency_compact_b{bs}"] = t_full, t_comp
        out[f"speedup_measured_b{bs}"] = t_full / t_comp
    return out


def _check_summarize_args(compact, full, example_input, x_test, y_test, latency_batches, repeats) -> None:
    """:raises InvalidInputError: an argument of :func:`summarize` of the wrong kind, shape or range (one line)."""
    if not isinstance(compact, nn.Module) or not isinstance(full, nn.Module):
        raise InvalidInputError(f"summarize takes the compact and the full network as nn.Modules, got "
                                f"{type(compact).__name__} and {type(full).__name__}")
    if not torch.is_tensor(example_input) or example_input.dim() < 2 or not example_input.is_floating_point():
        raise InvalidInputError("summarize: example_input must be a float batch [B, *input_shape]")
    if (x_test is None) != (y_test is None):
        raise InvalidInputError("summarize: give x_test and y_test together (or neither)")
    if x_test is not None and (not torch.is_tensor(x_test) or not torch.is_tensor(y_test)
                               or tuple(x_test.shape[1:]) != tuple(example_input.shape[1:])
                               or y_test.shape != x_test.shape[:1]):
        raise InvalidInputError(f"summarize: x_test must be [N, {', '.join(map(str, example_input.shape[1:]))}] and "
                                "y_test [N] labels")
    if not isinstance(latency_batches, (tuple, list)) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in latency_batches):
        raise InvalidInputError(f"summarize: latency_batches must be positive batch sizes, got {latency_batches!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidInputError(f"summarize: repeats must be a positive integer, got {repeats!r}")


@torch.inference_mode()
def compare_latency(full: nn.Module, compact: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                    repeats: int = 30, warmup: int = 5) -> tuple[float, float]:
    """Median seconds of ``full`` and ``compact`` on the same random batch, timed alternately (one call of each per
    repeat) so that drifts of machine load or clock hit both alike."""
    full, compact = full.cpu().eval(), compact.cpu().eval()
    x = torch.rand(batch_size, *input_shape)
    return time_alternately(lambda: full(x), lambda: compact(x), repeats, warmup)


def time_alternately(run_a, run_b, repeats: int = 30, warmup: int = 5) -> tuple[float, float]:
    """Median seconds of two zero-argument callables, called alternately (one call of each per repeat, after
    ``warmup`` calls of each) so that drifts of machine load hit both alike."""
    for _ in range(warmup):
        run_a()
        run_b()
    t_a, t_b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_a()
        t1 = time.perf_counter()
        run_b()
        t2 = time.perf_counter()
        t_a.append(t1 - t0)
        t_b.append(t2 - t1)
    return statistics.median(t_a), statistics.median(t_b)


