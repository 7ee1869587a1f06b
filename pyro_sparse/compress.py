"""One pruning protocol: posterior summary → masks → compact deterministic ``torch.nn.Module`` (DESIGN.md §6).

Every method supplies, per layer, its posterior summary and keep rule (the model's modules do: ``weight_mask`` for
SVD weights, ``keep`` for unit noise/gates); :func:`compress` then builds one compact network:

* unit multipliers (E θ for SBP, E[π] for BB) are folded into the next weight layer's input columns — valid because
  they are ≥ 0 and commute with ReLU and max-pooling;
* removed units disappear physically: smaller ``Linear``/``Conv2d`` layers, the producing layer's rows included,
  and a :class:`~pyro_sparse.nn.Select` for pruned input pixels, so the compact network still takes full inputs;
* SVD zeroes weights with log α ≥ threshold, and units whose every outgoing weight is zero are removed as well.

The compact network is a plain ``nn.Sequential`` described by a JSON-able ``spec`` (list of layer dicts), so it can
be saved as ``safetensors`` + JSON and loaded without unpickling (:func:`save_compressed`, :func:`load_compressed`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from .nn import DynamicGate, Select, Standardize, UnitModule
from .nn.dbb import dynamic_gate_from
from .nn.svd import _SVDMixin

COMPACT_SPEC = "compact.json"
COMPACT_WEIGHTS = "compact.safetensors"


def _is_weight_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Conv2d, _SVDMixin))


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) or hasattr(m, "in_channels")


def _out_shape(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one example after ``m`` (no batch dim)."""
    if _is_weight_layer(m):
        if _is_conv(m):
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
            return (m.out_channels, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
        return (m.out_features,)
    if isinstance(m, nn.MaxPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        return (shape[0], shape[1] // k, shape[2] // k)
    if isinstance(m, nn.Flatten):
        return (int(torch.Size(shape).numel()),)
    return shape


def _site_names(model: nn.Module) -> dict[tuple[int, str], str]:
    """``(id(module), attribute) → site name`` for every latent site of ``model``."""
    from pyro_sparse.guides import latent_sites

    return {(id(module), attr): name for name, module, attr, _ in latent_sites(model)}


@torch.no_grad()
def compress(model: nn.Module, guide=None, weight_threshold: float = 3.0, unit_threshold: float | None = None,
             keep_all: bool = False) -> nn.Sequential:
    """Build the compact deterministic network of a trained ``model`` (a ``Classifier``) and its ``guide``.

    :param weight_threshold: SVD: weights with ``log α >= weight_threshold`` are removed (paper: 3).
    :param unit_threshold: SBP: SNR threshold (default 1); BB: E[π] threshold (default 1e-3).
    :param keep_all: build the full-size deterministic network (no pruning; used for the dense baseline's FLOPs).
    :returns: ``nn.Sequential`` with a ``spec`` attribute (list of layer dicts) and a ``units`` attribute (units left
        at each unit position: inputs of dense layers and output channels of conv layers).
    :raises ValueError: a latent layer but no guide.
    """
    net = model.net
    sites = _site_names(model) if guide is not None else {}
    shape = tuple(model.input_shape)
    # ---- pass 1: effective weights and input keep masks / multipliers per weight layer ----------------------
    ops: list[dict] = []
    mask = mult = None  # over the features of the current tensor (dim 1), full indexing
    for name, m in net.named_children():
        if isinstance(m, UnitModule):
            k = m.num_units
            dynamic = getattr(m, "dynamic", False) and not keep_all
            if keep_all:
                keep, factor = torch.ones(k, dtype=torch.bool), torch.ones(k)
            else:
                if guide is None:
                    raise ValueError(f"layer {name!r} has latent units; compress needs the guide")
                keep, factor = m.keep(guide.posterior(sites[id(m), m.latent_site]), unit_threshold)
            keep, factor = keep.cpu(), factor.float().cpu()
            if dynamic:  # input-dependent gate: kept in the compact network, E[π] applied there, not folded
                factor = torch.ones(k)
            mask = keep if mask is None else mask & keep
            mult = factor if mult is None else mult * factor
            op = {"kind": "unit", "name": name, "dynamic": dynamic, "module": m}
            if dynamic:
                op["q_pi"] = guide.posterior(sites[id(m), "pi"])
                op["q_beta"] = guide.posterior(sites[id(m), "beta"])
                op["threshold"] = m.default_threshold if unit_threshold is None else unit_threshold
            ops.append(op)
        elif _is_weight_layer(m):
            if isinstance(m, _SVDMixin):
                if guide is None:
                    raise ValueError(f"layer {name!r} has latent weights; compress needs the guide")
                q = guide.posterior(sites[id(m), "weight"])
                w, _ = m.weight_mask(q, float("inf") if keep_all else weight_threshold)
            else:
                w = m.weight.detach()
            w = w.float().cpu().clone()
            b = m.bias.detach().float().cpu().clone() if m.bias is not None else None
            n_in = w.shape[1]
            in_mask = torch.ones(n_in, dtype=torch.bool) if mask is None else mask.clone()
            in_mult = torch.ones(n_in) if mult is None else mult.clone()
            if not keep_all:  # a unit whose every outgoing weight is zero is dead (SVD)
                in_mask &= w.ne(0).transpose(0, 1).reshape(n_in, -1).any(1)
            if not in_mask.any():  # everything pruned: keep one zeroed unit so that shapes stay valid
                in_mask[0], in_mult[0] = True, 0.0
            ops.append({"kind": "weight", "name": name, "module": m, "w": w, "b": b, "in_mask": in_mask,
                        "in_mult": in_mult, "in_shape": shape, "conv": _is_conv(m)})
            mask = mult = None
        else:
            spatial = int(torch.Size(shape[1:]).numel()) if isinstance(m, nn.Flatten) else 1
            if spatial > 1 and mask is not None:  # channel mask → per-feature mask
                mask, mult = mask.repeat_interleave(spatial), mult.repeat_interleave(spatial)
            ops.append({"kind": "other", "name": name, "module": m, "spatial": spatial})
        shape = _out_shape(m, shape)
    weights = [op for op in ops if op["kind"] == "weight"]
    # ---- pass 2: output rows kept by each weight layer = what the next one consumes ------------------------
    for i, op in enumerate(weights):
        n_out = op["w"].shape[0]
        if i + 1 == len(weights):
            op["out_mask"] = torch.ones(n_out, dtype=torch.bool)
            continue
        nxt = weights[i + 1]["in_mask"]
        if nxt.numel() == n_out:
            op["out_mask"] = nxt.clone()
        else:  # conv channels flattened into features
            op["out_mask"] = nxt.view(n_out, -1).any(1)
    # a unit kept downstream needs its producer row; consumer columns follow the producer's rows
    for i in range(1, len(weights)):
        prev, op = weights[i - 1], weights[i]
        n_out = prev["w"].shape[0]
        if op["in_mask"].numel() == n_out:
            op["in_mask"] &= prev["out_mask"]
        else:
            op["in_mask"] &= prev["out_mask"].repeat_interleave(op["in_mask"].numel() // n_out)
    # ---- build ---------------------------------------------------------------------------------------------
    layers: list[nn.Module] = []
    spec: list[dict] = []
    units: list[int] = []
    carried = None  # full indices of the features (dim 1) the compact tensor carries; None = all
    pending = None  # a dynamic gate waiting to be placed

    def emit_gate(index):
        gate = dynamic_gate_from(pending["module"], pending["q_pi"], pending["q_beta"], index, pending["threshold"])
        layers.append(gate)
        spec.append({"type": "dbb_gate", "n": int(index.numel()), "eps": gate.eps, "threshold": gate.threshold})

    for op in ops:
        if op["kind"] == "unit":
            if op["dynamic"]:
                pending = op
            continue
        m = op["module"]
        if op["kind"] == "other" and pending is not None:  # conv placement: gate right after the conv
            emit_gate(carried if carried is not None else torch.arange(pending["module"].num_units))
            pending = None
        if op["kind"] == "other":
            layer, entry = _copy_structural(op["name"], m)
            layers.append(layer)
            spec.append(entry)
            if op["spatial"] > 1 and carried is not None:  # channels → flattened features
                sp = op["spatial"]
                carried = (carried.view(-1, 1) * sp + torch.arange(sp).view(1, -1)).flatten()
            continue
        w, b, in_mult = op["w"], op["b"], op["in_mult"]
        n_in = w.shape[1]
        w = w * in_mult.view(1, -1, *([1] * (w.dim() - 2)))  # fold unit multipliers into input columns
        in_idx, out_idx = op["in_mask"].nonzero().flatten(), op["out_mask"].nonzero().flatten()
        have = torch.arange(n_in) if carried is None else carried
        if have.numel() != in_idx.numel():
            pos = torch.searchsorted(have, in_idx)
            layers.append(Select(pos))
            spec.append({"type": "select", "n": int(pos.numel())})
        if pending is not None:  # dense placement: gate on this layer's kept inputs
            emit_gate(in_idx)
            pending = None
        w = w[out_idx][:, in_idx]
        b = b[out_idx] if b is not None else None
        if op["conv"]:
            entry = {"type": "conv2d", "in": w.shape[1], "out": w.shape[0], "kernel_size": w.shape[2],
                     "stride": m.stride[0], "padding": m.padding[0], "bias": b is not None}
            units.append(int(out_idx.numel()))
        else:
            entry = {"type": "linear", "in": w.shape[1], "out": w.shape[0], "bias": b is not None}
            units.append(int(in_idx.numel()))
        layer = _make_layer(entry)
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
        layers.append(layer)
        spec.append(entry)
        carried = out_idx
    compact = nn.Sequential(*layers)
    compact.spec = spec
    compact.units = units
    compact.input_shape = tuple(model.input_shape)
    return compact.eval()


def _copy_structural(name: str, m: nn.Module) -> tuple[nn.Module, dict]:
    if isinstance(m, Standardize):
        entry = {"type": "standardize", "mean": float(m.mean), "std": float(m.std)}
    elif isinstance(m, nn.ReLU):
        entry = {"type": "relu"}
    elif isinstance(m, nn.MaxPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        entry = {"type": "maxpool2d", "kernel_size": k}
    elif isinstance(m, nn.Flatten):
        entry = {"type": "flatten"}
    else:
        raise TypeError(f"compress does not know layer {name!r} of type {type(m).__name__}")
    return _make_layer(entry), entry


def _make_layer(entry: dict) -> nn.Module:
    t = entry["type"]
    if t == "standardize":
        return Standardize(entry["mean"], entry["std"])
    if t == "relu":
        return nn.ReLU()
    if t == "maxpool2d":
        return nn.MaxPool2d(entry["kernel_size"])
    if t == "flatten":
        return nn.Flatten()
    if t == "select":
        return Select(torch.zeros(entry["n"], dtype=torch.long))
    if t == "dbb_gate":
        return DynamicGate(entry["n"], entry["eps"], entry["threshold"])
    if t == "linear":
        return nn.Linear(entry["in"], entry["out"], bias=entry["bias"])
    if t == "conv2d":
        return nn.Conv2d(entry["in"], entry["out"], entry["kernel_size"], stride=entry["stride"],
                         padding=entry["padding"], bias=entry["bias"])
    raise ValueError(f"unknown layer type {t!r} in compact spec")


def save_compressed(compact: nn.Sequential, run_dir: str | os.PathLike) -> None:
    """Write ``compact.json`` (spec, units, input shape) and ``compact.safetensors`` (tensors) atomically."""
    from .runfiles import atomic_write_bytes

    run_dir = Path(run_dir)
    meta = {"spec": compact.spec, "units": compact.units, "input_shape": list(compact.input_shape)}
    tensors = {k: v.contiguous().cpu() for k, v in compact.state_dict().items()}
    atomic_write_bytes(run_dir / COMPACT_WEIGHTS, save(tensors))
    atomic_write_bytes(run_dir / COMPACT_SPEC, json.dumps(meta, indent=1).encode())


def load_compressed(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Sequential:
    """Load the compact network of a finished run (``RUN_DIR/compact.{json,safetensors}``), never unpickling.

    :returns: ``nn.Sequential`` in eval mode taking inputs ``[B, *input_shape]`` as ``ToTensor()`` gives them.
    :raises MissingRunFileError: (a FileNotFoundError) the run has no compact network (not finished?).
    :raises RunDirError: (a ValueError) the files are unreadable, of another version, or do not match each other.
    """
    from .errors import MissingRunFileError, RunDirError, one_line

    run_dir = Path(run_dir)
    spec_path, weights_path = run_dir / COMPACT_SPEC, run_dir / COMPACT_WEIGHTS
    if not spec_path.is_file() or not weights_path.is_file():
        raise MissingRunFileError(f"{run_dir} holds no compact network ({COMPACT_SPEC} and {COMPACT_WEIGHTS} "
                                  "expected: is the run finished?)")
    try:
        meta = json.loads(spec_path.read_text())
        compact = nn.Sequential(*[_make_layer(e) for e in meta["spec"]])
        compact.load_state_dict(load_file(str(weights_path)))
        compact.spec, compact.units, compact.input_shape = meta["spec"], meta["units"], tuple(meta["input_shape"])
    except Exception as e:  # corrupted, truncated, foreign or mismatched files
        raise RunDirError(f"cannot load the compact network from {run_dir} ({one_line(e)}); expected the "
                          f"{COMPACT_SPEC} and {COMPACT_WEIGHTS} written by pyro-sparse") from None
    return compact.to(device).eval()
