"""``compact``: a trained :class:`~pyro_sparse.SparseModel` → the user's architecture, physically smaller, checked.

Steps (docs/design.md, contracts 1 and 7):

1. **Weights** (SVD): each latent weight becomes θ with the weights of ``log α >= threshold`` zeroed.
2. **Fold**: each unit latent's test-time multiplier (E θ for SBP, E[π] for BB, 1 for DBB's kept units) times its
   keep mask is folded where the model applies it: into the BatchNorm affine parameters after the producer (or the
   producer's rows and bias), or into a dense layer's input columns. Pruned units are now exact zeros.
3. **Remove**: in every coupled channel group (Torch-Pruning's dependency graph, traced again on the copy) the pruned
   channels and the channels that no consuming layer reads any more (all their columns zero, e.g. after SVD) are
   removed from every layer of the group at once (convs, BatchNorm weights and running statistics, linears);
   Torch-Pruning does the surgery. Input features that a first dense layer no longer reads are dropped by a
   :class:`~pyro_sparse.nn.Select` in front of it (``fc1`` becomes ``Sequential(Select, Linear)``), so the compact
   network still takes full inputs; a scalar input standardisation right before it is left to the ``Select``, which
   standardises only the features it keeps (:func:`defer_standardize`; the same values).
4. **DBB**: the input-dependent gates stay, as :class:`~pyro_sparse.nn.DynamicGate` modules next to the layer they
   act on (``Sequential(layer, gate)``), restricted to the kept units.
5. **Check**: the compact network must equal the model in ``.eval()`` mode on a probe batch; otherwise
   :class:`~pyro_sparse.errors.CompactMismatchError` names the first layer that differs.

The result is a plain ``nn.Module`` (no Pyro inside) in eval mode, with a JSON-able description in its
``pyro_sparse_compact`` attribute (the pruning history, selects, gates, units kept per latent), which
:func:`save_compact` writes beside the tensors (safetensors) and :func:`load_compact` replays on a freshly built base
network: nothing is unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load, save
from torch import nn

from pyro_sparse.models import nets

from . import csr, layers
from .devices import resolve_device
from .errors import (
    CompactMismatchError,
    InvalidInputError,
    MissingRunFileError,
    PyroSparseError,
    RunDirError,
    UnsupportedModelError,
    one_line,
)
from .layers import NORM_LAYERS, WEIGHT_LAYERS
from .model import Classifier
from .nn import DynamicGate, Select
from .nn.attention import (
    HeadGate,
    PrunedMultiheadAttention,
    head_count,
    head_layout,
    head_projection,
    is_qkv_attention,
    prune_qkv_heads,
)
from .nn.units import Standardize
from .settings import ieee_fp32
from .sparsify import (
    SparseModel,
    _attention_projections,
    _group_places,
    _output_layers,
    channel_groups,
    customized_pruners_of,
    dependency_graph,
)
from .trust import recorded_network

COMPACT_SPEC = "compact.json"
COMPACT_WEIGHTS = "compact.safetensors"
COMPACT_FORMAT = "pyro-sparse-compact/4"
#: formats load_compact reads (/3: every tensor dense; /4 adds sparse storage, :mod:`pyro_sparse.csr`)
READ_FORMATS = ("pyro-sparse-compact/3", COMPACT_FORMAT)
INFO_ATTR = "pyro_sparse_compact"
#: entries of compact.json that describe the tensor file, not the network
_FILE_KEYS = ("tensors", "sha256", "sparse")
#: the most heads one attention layer of a compact network file may keep
MAX_HEADS = 4096


def _fold(net: nn.Module, where: str, path: str, index, root_index, factor: torch.Tensor) -> None:
    """Multiply the channels of ``path``'s output (``where="out"``) or input (``"in"``) by ``factor [K]``."""
    layers.fold(net.get_submodule(path), where, factor, index, root_index)


def _wrap(net: nn.Module, path: str, build: Callable[[nn.Module], nn.Module]) -> None:
    parent, _, name = path.rpartition(".")
    owner = net.get_submodule(parent) if parent else net
    setattr(owner, name, build(getattr(owner, name)))


@torch.no_grad()
def compact(model: SparseModel, guide=None, *, weight_threshold: float | None = None,
            unit_threshold: float | None = None, probe: torch.Tensor | None = None, rtol: float = 1e-3,
            atol: float = 1e-4) -> nn.Module:
    """The compact deterministic network of a trained ``model`` (see the module docstring).

    :param guide: the trained guide (default: the one bound to ``model``).
    :param weight_threshold: SVD log α threshold (default: the model's ``thresholds``, else the method's, 3).
    :param unit_threshold: SBP SNR / BB E[π] threshold (default: the model's ``thresholds``, else 1 / 1e-3).
        Thresholds given here become the model's ``thresholds`` (:meth:`SparseModel.set_thresholds`: its ``.eval()``
        network prunes alike); a threshold for a rule the model does not have is refused.
    :param probe: float inputs ``[B, *input_shape]`` for the self-check (default: the model's ``example_input``).
    :param rtol, atol: tolerance of the self-check (``atol`` relative to the largest logit, at least 1), ``>= 0``.
    :returns: a plain ``nn.Module`` in eval mode, on the model's device, with ``pyro_sparse_compact`` (a dict:
        ``units`` kept per latent, ``units_full``, the pruning ``history``, ``selects``, ``gates``, ``factory``,
        ``heads`` kept per pruned attention layer).
    :raises InvalidInputError: not a pyro-sparse model, no guide or the guide of another model, a threshold the
        model has no rule for, a probe of the wrong shape or dtype, a negative tolerance.
    :raises CompactMismatchError: the compact network differs from the eval-mode model on the probe batch.
    """
    _check_compact_args(model, probe, rtol, atol)
    if not isinstance(model, SparseModel):  # a model without latents (the dense baseline): its network as it is
        return _dense_compact(model, weight_threshold, unit_threshold)
    guide = guide or model.guide
    if guide is None:
        raise InvalidInputError("compact needs the trained guide: compact(model, guide)")
    check_guide(model, guide)
    model.set_thresholds(weight=weight_threshold, unit=unit_threshold)  # the eval-mode model prunes alike
    model.bind_guide(guide)
    weight_threshold, unit_threshold = model.thresholds["weight"], model.thresholds["unit"]
    net = copy.deepcopy(model.net).eval()
    example = model.example_input
    for path, w in model.test_weights(guide, weight_threshold).items() if model.weight_layers else ():
        module, _, attr = path.rpartition(".")
        layer = net.get_submodule(module)
        delattr(layer, attr)  # a buffer in the SparseModel (see sparsify): a parameter again in the plain network
        setattr(layer, attr, nn.Parameter(w.clone()))
    prune_root, dynamic, kept_units, kept_heads = _fold_units(model, guide, net, unit_threshold)
    try:
        dg = dependency_graph(net, example, model.customized_pruners)
    except UnsupportedModelError:
        if model.placements:
            raise
        dg = None  # SVD needs no channel surgery: the pruned weights stay zeros, unread inputs still go
    alive, grouped_inputs = _prune_channels(net, dg, example, prune_root) if dg is not None else ({}, set())
    selects = _select_inputs(net, grouped_inputs, alive)
    _prune_heads(net, kept_heads, gated={p.module for _, _, p in dynamic.values() if p.where == "heads"})
    gates = _attach_gates(net, dynamic, alive, selects, unit_threshold, example.device, kept_heads)
    defer_standardize(net)
    net.eval()
    info = {
        "format": COMPACT_FORMAT, "method": model.method, "input_shape": list(model.input_shape),
        "units": kept_units, "units_full": {key: model.units[key].num_units for key in model.placements},
        "history": [[n, bool(o), list(map(int, i))] for n, o, i in (dg.pruning_history() if dg else [])],
        "selects": selects, "gates": gates,
        "factory": getattr(model.net, nets.FACTORY_ATTR, None), "heads": kept_heads,
        "customized": _customized_layers(net, model.customized_pruners, dg),
    }
    setattr(net, INFO_ATTR, info)
    _check(net, model, example if probe is None else probe, rtol, atol)
    return net


def _check_compact_args(model, probe, rtol, atol) -> None:
    if not isinstance(model, Classifier):
        raise InvalidInputError(f"compact takes a pyro_sparse model (made by sparsify or build_model), got a "
                                f"{type(model).__name__}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InvalidInputError(f"compact: {name} must be a finite number >= 0, got {v!r}")
    if probe is not None:
        shape = list(getattr(model, "input_shape", ()))
        if not torch.is_tensor(probe) or probe.dim() != len(shape) + 1 or list(probe.shape[1:]) != shape \
                or probe.shape[0] < 1 or not probe.is_floating_point():
            got = f"{probe.dtype} {list(probe.shape)}" if torch.is_tensor(probe) else type(probe).__name__
            raise InvalidInputError(f"compact: probe must be a float batch [B, {', '.join(map(str, shape))}], got "
                                    f"{got}")


def _dense_compact(model, weight_threshold, unit_threshold) -> nn.Module:
    """The network of a model without latents, as it is (with the compact description)."""
    if weight_threshold is not None or unit_threshold is not None:
        raise InvalidInputError("compact: a dense model has no keep rule; weight_threshold and unit_threshold "
                                "apply to sparsified models")
    net = full_network(model)
    setattr(net, INFO_ATTR, {"format": COMPACT_FORMAT, "method": "dense", "input_shape": list(model.input_shape),
                             "units": {}, "units_full": {}, "history": [], "selects": {}, "gates": {},
                             "factory": getattr(model.net, nets.FACTORY_ATTR, None), "heads": {}})
    return net


def _fold_units(model: SparseModel, guide, net: nn.Module, unit_threshold):
    """Fold every unit latent's test-time multiplier into ``net`` (pruned units: 0; DBB: 1, its gate stays);
    returns ``(pruned channels per group root, DBB gates to attach, units kept per latent, kept heads per attention
    layer)``."""
    group_of = {g.unit: g for g in model.groups if g.unit is not None}
    prune_root: dict[str, set[int]] = {}
    dynamic: dict[str, tuple] = {}
    kept_units: dict[str, int] = {}
    kept_heads: dict[str, list[int]] = {}
    for key, places in model.placements.items():
        unit = model.units[key]
        post = model.unit_posterior(key, guide)
        keep, mult = unit.keep(post[unit.latent_site], unit_threshold)
        is_dynamic = unit.input_dependent
        factor = torch.where(keep, torch.ones_like(mult) if is_dynamic else mult, torch.zeros_like(mult)).float()
        for p in places:
            _fold(net, p.where, p.module, p.index, p.root_index, factor)
        kept_units[key] = int(keep.sum())
        for p in places:
            if p.where == "heads":  # at least one (zeroed) head, so that the layer keeps a valid shape
                kept_heads[p.module] = keep.nonzero().flatten().tolist() or [0]
        if key in group_of:
            tie = group_of[key].tie  # (a group entering a grouped conv: one latent per position in its conv groups)
            prune_root[group_of[key].root] = set((~keep).nonzero().flatten().tolist()) if tie is None else {
                r for r, j in enumerate(tie) if not keep[j]}
        if is_dynamic:
            dynamic[key] = (unit, post, places[0])
    return prune_root, dynamic, kept_units, kept_heads


def _prune_heads(net: nn.Module, kept: dict[str, list[int]], gated: set[str] = frozenset()) -> None:
    """Replace each ``nn.MultiheadAttention`` named in ``kept`` by a :class:`PrunedMultiheadAttention` holding only
    its kept heads (when any is pruned, or its heads are ``gated``: the DBB gate lives in that module); shrink each
    qkv attention (timm's ``Attention``) in place (:func:`~pyro_sparse.nn.attention.prune_qkv_heads`)."""
    for path, heads in kept.items():
        m = net.get_submodule(path)
        if not isinstance(m, nn.MultiheadAttention):
            if len(heads) < head_count(m):
                prune_qkv_heads(m, heads)
        elif len(heads) < m.num_heads or path in gated:
            _wrap(net, path, lambda attention, heads=heads: PrunedMultiheadAttention.from_attention(attention, heads))


def _customized_layers(net: nn.Module, pruners: dict, dg) -> list[str]:
    """The layers of ``net`` that the user's ``customized_pruners`` cover, when any pruning is recorded (Torch-Pruning's
    history names only each group's root, so load_compact needs the pruners whenever such a layer is there)."""
    if not pruners or dg is None or not dg.pruning_history():
        return []
    return sorted(n for n, m in net.named_modules() if n and isinstance(m, tuple(pruners)))


def _prune_channels(net: nn.Module, dg, example: torch.Tensor, prune_root: dict[str, set[int]]):
    """Remove, group by group, the pruned channels and those no layer reads any more (Torch-Pruning's groups);
    returns ``(alive channels per (layer, "in"/"out"), layers whose inputs belong to a group)``."""
    outputs = _output_layers(net, example)
    names = {m: n for n, m in net.named_modules()}
    heads = _head_channels(net)
    grouped_inputs: set[str] = set()
    for root, group in channel_groups(net, dg, outputs):
        if group is None:  # the tracer did not close it (sparsify left it dense): it stays whole
            prune_root[root] = set()
            continue
        k = len(group.items[0].idxs)
        if any((it.dep.target.module, layers.is_out(it.dep.handler, dg)) in heads for it in group.items):
            continue  # a qkv attention's heads: they go a whole head at a time (_prune_heads)
        problem, tie = _group_places(group, root, k, names, dg)[1:]
        if problem is not None:  # not removable exactly: the group stays whole
            prune_root[root] = set()  # (a dense layer reading it still drops unread inputs, through a Select)
            continue
        readers = [it for it in group.items if not layers.is_out(it.dep.handler, dg) and it.dep.target.module in names
                   and isinstance(it.dep.target.module, WEIGHT_LAYERS)]
        grouped_inputs.update(names[it.dep.target.module] for it in readers)
        dead = set(prune_root.get(root, ()))
        if readers:
            cols: dict[int, list[tuple[nn.Module, int]]] = {}
            for it in readers:
                for i, r in zip(it.idxs, it.root_idxs, strict=True):
                    cols.setdefault(int(r), []).append((it.dep.target.module, int(i)))
            for r, where in cols.items():
                if all(layers.zero_columns(m, [i]) for m, i in where):
                    dead.add(r)
        for it in group.items:  # a grouped convolution producing them loses equally many per group
            if layers.is_out(it.dep.handler, dg) and layers.is_grouped(it.dep.target.module):
                dead = layers.equal_per_group(it.dep.target.module, list(map(int, it.idxs)), dead,
                                              dict(zip(map(int, it.idxs), map(int, it.root_idxs), strict=True)))
        latent = tie if tie is not None else list(range(k))  # each root channel's latent
        # (entering a grouped convolution: a position goes in every conv group or in none)
        alive_latents = {latent[r] for r in range(k) if r not in dead}
        dead = {r for r in range(k) if latent[r] not in alive_latents}
        if len(dead) >= k:  # keep one (zeroed) channel, or position, so that every layer keeps a valid shape
            dead = {r for r in dead if latent[r] != latent[min(dead)]}
        prune_root[root] = dead
    alive: dict[tuple[str, str], list[int]] = {}
    for root in list(prune_root):
        dead = sorted(prune_root[root])
        if not dead:
            continue
        m = net.get_submodule(root)
        group = dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, dead)
        for it in group.items:
            t = it.dep.target.module
            if t not in names:
                continue
            slot = (names[t], "out" if layers.is_out(it.dep.handler, dg) else "in")
            size = layers.channels(t, slot[1], dg)
            cur = alive.setdefault(slot, list(range(size)))
            gone = set(map(int, it.idxs))
            alive[slot] = [c for i, c in enumerate(cur) if i not in gone]
        group.prune()
    return alive, grouped_inputs


def _head_channels(net: nn.Module) -> set[tuple[nn.Module, bool]]:
    """``(layer, is output side)`` of every qkv attention's head features: ``qkv`` and ``gate`` outputs, ``proj``
    inputs (Torch-Pruning couples them through the reshapes, but not head by head)."""
    out = set()
    for m in net.modules():
        layout = head_layout(m)
        if layout is not None:
            out |= {(m.get_submodule(path), True) for path, _ in layout.rows} | {(m.get_submodule(layout.proj), False)}
    return out


def _select_inputs(net: nn.Module, grouped_inputs: set[str], alive: dict) -> dict[str, int]:
    """Input features no dense layer outside a group reads any more: dropped, with a ``Select`` before the layer;
    returns ``{layer: inputs kept}``."""
    import torch_pruning as tp

    selects: dict[str, int] = {}
    attention = set(_attention_projections(net, dict(net.named_modules())))  # read directly: no Select in front
    for name, m in list(net.named_modules()):
        if not isinstance(m, nn.Linear) or name in grouped_inputs or name in attention:
            continue
        read = m.weight.ne(0).any(0)
        if bool(read.all()):
            continue
        if not bool(read.any()):
            read[0] = True
        idx = read.nonzero().flatten()
        tp.prune_linear_in_channels(m, (~read).nonzero().flatten().tolist())
        alive[(name, "in")] = idx.tolist()
        selects[name] = int(idx.numel())
        _wrap(net, name, lambda layer, idx=idx: nn.Sequential(Select(idx), layer))
    return selects


def defer_standardize(net: nn.Module) -> None:
    """Where a compact network standardises its whole input with scalar mean and std (:class:`~pyro_sparse.nn.units.
    Standardize`, the zoo's MLPs) and its next layer reads only some features through a ``Select`` (``Flatten`` may
    sit between them), the ``Select`` standardises the features it keeps instead (:meth:`Standardize.defer_to`; the
    same values). Set from the structure alone, by :func:`compact` and again by :func:`load_compact`."""
    for parent in net.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        kids = list(parent.children())
        for i, m in enumerate(kids):
            if not isinstance(m, Standardize) or m.mean.dim() or m.std.dim():
                continue
            j = i + 1
            while j < len(kids) and isinstance(kids[j], nn.Flatten):
                j += 1
            nxt = kids[j] if j < len(kids) else None
            if isinstance(nxt, nn.Sequential) and len(nxt) and isinstance(nxt[0], Select):
                m.defer_to(nxt[0])


def _attach_gates(net: nn.Module, dynamic: dict, alive: dict, selects: dict, unit_threshold,
                  device: torch.device, kept_heads: dict[str, list[int]]) -> dict[str, dict]:
    """DBB: a :class:`~pyro_sparse.nn.DynamicGate` (Eq. 24 on the kept units) beside each gated layer (inside a
    :class:`PrunedMultiheadAttention` for head gates); returns the gates' description ``{layer: {where, n, eps,
    threshold}}``."""
    gates: dict[str, dict] = {}
    for unit, post, p in dynamic.values():
        size = unit.num_units
        kept = kept_heads[p.module] if p.where == "heads" else alive.get((p.module, p.where), list(range(size)))
        index = torch.tensor(kept, dtype=torch.long)
        gate = unit.compact_gate(post, index, unit_threshold, features_last=p.where == "in").to(device)
        if p.where == "heads":
            _attach_head_gate(net, p.module, gate)
        elif p.where == "out":
            _wrap(net, p.module, lambda layer, gate=gate: nn.Sequential(layer, gate))
        elif p.module in selects:  # the gate acts on the inputs the Select keeps
            _wrap(net, p.module, lambda s, gate=gate: nn.Sequential(s[0], gate, s[1]))
        else:
            _wrap(net, p.module, lambda layer, gate=gate: nn.Sequential(gate, layer))
        gates[p.module] = {"where": p.where, "n": int(index.numel()), "eps": gate.eps, "threshold": gate.threshold}
    return gates


def _attach_head_gate(net: nn.Module, path: str, gate: DynamicGate) -> None:
    """A DBB head gate: inside the :class:`PrunedMultiheadAttention` at ``path``, or in front of a qkv attention's
    ``proj`` (:class:`~pyro_sparse.nn.attention.HeadGate`)."""
    m = net.get_submodule(path)
    if isinstance(m, PrunedMultiheadAttention):
        m.gate = gate
    else:
        _wrap(net, f"{path}.{head_projection(m)[0]}" if path else head_projection(m)[0],
              lambda proj: nn.Sequential(HeadGate(gate, head_count(m)), proj))


def check_guide(model: SparseModel, guide) -> None:
    """:raises InvalidInputError: ``guide`` is not the guide of ``model``: its sites differ in name or shape."""
    from pyro_sparse.guides import latent_sites

    names = getattr(guide, "site_names", None)
    if names is None or not callable(getattr(guide, "posterior", None)):
        raise InvalidInputError(f"expected the model's guide (pyro_sparse.guides.MeanFieldGuide), got a "
                                f"{type(guide).__name__}")
    sites = {name: tuple(prior.shape()) for name, _, _, prior in latent_sites(model)}
    if set(names) != set(sites):
        other = sorted(set(names) ^ set(sites))[0]
        raise InvalidInputError(f"the guide does not belong to this model: site {other!r} is in one and not the "
                                "other; pass the guide built for this model (MeanFieldGuide(model))")
    for name, shape in sites.items():
        got = tuple(guide.posterior(name).batch_shape)
        if got != shape:
            raise InvalidInputError(f"the guide does not belong to this model: site {name!r} has shape {list(got)} "
                                    f"in the guide, {list(shape)} in the model")


@torch.no_grad()
def full_network(model) -> nn.Module:
    """The unpruned deterministic network of ``model``'s architecture, in eval mode: a copy of its ``net`` with every
    SVD weight a parameter again (θ where a guide is bound). The baseline of FLOPs, memory and latency."""
    net = copy.deepcopy(model.net).eval()
    guide = getattr(model, "guide", None)
    for key in getattr(model, "weight_layers", {}):
        module, _, attr = model.weight_param(key).rpartition(".")
        layer = net.get_submodule(module)
        w = getattr(layer, attr) if guide is None else guide.posterior(model.site_name("weights", key, "weight")).loc
        delattr(layer, attr)
        setattr(layer, attr, nn.Parameter(w.detach().clone()))
    return net


def _check(net: nn.Module, model: SparseModel, probe: torch.Tensor, rtol: float, atol: float) -> None:
    """Raise :class:`CompactMismatchError` naming the first layer where ``net`` and ``model.eval()`` differ."""
    was_training = model.training
    model.eval()
    try:
        seen_model, seen_net = _record(model.net), _record(net)
        try:
            with ieee_fp32():  # on CUDA, not TF32: the check is of the compaction, not of the rounding
                expected = model(probe)
                got = net(probe)
        finally:
            for h in seen_model[1] + seen_net[1]:
                h.remove()
    finally:
        model.train(was_training)
    scale = max(1.0, float(expected.abs().max()))
    if got.shape == expected.shape and torch.allclose(got, expected, rtol=rtol, atol=atol * scale):
        return
    where = "the network output"
    for name, out in seen_model[0].items():
        other = seen_net[0].get(name)
        if other is not None and other.shape == out.shape and not torch.allclose(
                other, out, rtol=rtol, atol=atol * max(1.0, float(out.abs().max()))):
            where = f"layer {name!r}"
            break
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("nan")
    raise CompactMismatchError(
        f"compact network differs from the eval-mode model at {where} (max logit difference {diff:.3g}); "
        "this construct is not compacted exactly: exclude that layer from sparsify (exclude=[...])")


def _record(net: nn.Module):
    outs: dict[str, torch.Tensor] = {}

    def record(name, o):
        if torch.is_tensor(o):
            outs.setdefault(name, o)

    handles = [m.register_forward_hook(lambda m, i, o, n=n: record(n, o)) for n, m in net.named_modules() if n]
    return outs, handles


def save_compact(net: nn.Module, directory: str | os.PathLike) -> dict:
    """Write ``compact.json`` (the description) and ``compact.safetensors`` (the tensors) into ``directory``,
    atomically. The description records every tensor's name, shape and dtype and the SHA-256 of the tensor file, so
    that :func:`load_compact` checks the two files against each other before it builds anything. Weight tensors
    that are mostly zeros (SVD's pruned weights) are stored in compressed sparse row form where that is smaller
    (:mod:`pyro_sparse.csr`); :func:`load_compact` rebuilds them exactly.

    :returns: ``{"bytes": size of compact.safetensors, "dense_bytes": its size with every tensor dense,
        "sparse": [names of the tensors stored sparse]}``.
    :raises InvalidInputError: ``net`` is not a network made by :func:`compact`.
    :raises RunDirError: ``directory`` is a file.
    """
    from .runfiles import atomic_write_bytes

    info = getattr(net, INFO_ATTR, None)
    if not isinstance(net, nn.Module) or not isinstance(info, dict):
        raise InvalidInputError(f"save_compact takes a network made by pyro_sparse.compact, got a {type(net).__name__}"
                                " without its pyro_sparse_compact description")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"save_compact: {directory} is a file; expected a directory (new or existing)")
    directory.mkdir(parents=True, exist_ok=True)
    dense = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors, sparse = csr.pack(dense)
    data = save(tensors)
    spec = {**info, "format": COMPACT_FORMAT,
            "tensors": {k: {"shape": list(v.shape), "dtype": _dtype_name(v)} for k, v in tensors.items()},
            "sparse": sparse, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(directory / COMPACT_WEIGHTS, data)
    atomic_write_bytes(directory / COMPACT_SPEC, json.dumps(spec, indent=1).encode())
    return {"bytes": len(data), "dense_bytes": len(save(dense)), "sparse": sorted(sparse)}


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _bad_spec(path: Path, what: str):
    raise RunDirError(f"{path} is not a valid compact network description ({what}); expected the files written by "
                      "pyro_sparse.save_compact")


def _is_int(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_compact_spec(directory: str | os.PathLike) -> dict:
    """The validated ``compact.json`` of ``directory`` (data only: nothing it names is imported or called).

    :raises MissingRunFileError: (a FileNotFoundError) the files are not there.
    :raises RunDirError: (a ValueError) unreadable, of another format, or with an entry of the wrong type or range.
    """
    from .runfiles import read_json

    directory = Path(directory)
    spec_path, weights_path = directory / COMPACT_SPEC, directory / COMPACT_WEIGHTS
    if not spec_path.is_file() or not weights_path.is_file():
        raise MissingRunFileError(f"{directory} holds no compact network ({COMPACT_SPEC} and {COMPACT_WEIGHTS} "
                                  "expected)")
    info = read_json(spec_path, "compact network description")
    if info.get("format") not in READ_FORMATS:
        _bad_spec(spec_path, f"format {info.get('format')!r}, expected one of {', '.join(map(repr, READ_FORMATS))}")
    info.setdefault("sparse", {})  # (format /3 stored every tensor dense)
    info.setdefault("heads", {})  # (only networks with pruned attention heads record them)
    info.setdefault("customized", [])  # (only networks pruned through a user's Torch-Pruning pruner record them)
    checks = {
        "method": lambda v: isinstance(v, str),
        "input_shape": lambda v: isinstance(v, list) and 1 <= len(v) <= 4 and all(_is_int(d, 1) for d in v)
        and math.prod(v) <= nets.MAX_INPUT_FEATURES,
        "units": lambda v: isinstance(v, dict) and all(_is_int(n) for n in v.values()),
        "units_full": lambda v: isinstance(v, dict) and all(_is_int(n) for n in v.values()),
        "history": lambda v: isinstance(v, list) and all(
            isinstance(h, list) and len(h) == 3 and isinstance(h[0], str) and isinstance(h[1], bool)
            and isinstance(h[2], list) and all(_is_int(i) for i in h[2]) for h in v),
        "selects": lambda v: isinstance(v, dict) and all(_is_int(n, 1) for n in v.values()),
        "customized": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "gates": lambda v: isinstance(v, dict) and all(
            isinstance(g, dict) and set(g) == {"where", "n", "eps", "threshold"}
            and g["where"] in ("in", "out", "heads") and _is_int(g["n"], 1) and _is_number(g["eps"])
            and _is_number(g["threshold"]) for g in v.values()),
        "factory": lambda v: v is None or isinstance(v, dict),
        "heads": lambda v: isinstance(v, dict) and all(
            isinstance(h, list) and 1 <= len(h) <= MAX_HEADS and all(_is_int(i) for i in h) and len(set(h)) == len(h)
            for h in v.values()),
        "tensors": lambda v: isinstance(v, dict) and all(
            isinstance(t, dict) and set(t) == {"shape", "dtype"} and isinstance(t["dtype"], str)
            and isinstance(t["shape"], list) and all(_is_int(d) for d in t["shape"]) for t in v.values()),
        "sha256": lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
        "sparse": csr.check_description,
    }
    for key, ok in checks.items():
        if key not in info or not ok(info[key]):
            _bad_spec(spec_path, f"entry {key!r} is missing or malformed")
    return info


def _read_tensors(directory: Path, info: dict) -> dict[str, torch.Tensor]:
    """The tensors of ``compact.safetensors``, checked against the description: SHA-256, names, shapes, dtypes,
    finite values. :raises RunDirError: naming the file and what differs."""
    path = directory / COMPACT_WEIGHTS
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RunDirError(f"{path} is unreadable ({one_line(e)})") from None
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise RunDirError(f"{path} does not match {directory / COMPACT_SPEC} (its SHA-256 differs from the recorded "
                          "one): the two files come from different saves, or one was changed or truncated")
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise RunDirError(f"{path} is not a readable safetensors file ({one_line(e)})") from None
    spec = info["tensors"]
    if set(tensors) != set(spec):
        diff = sorted(set(tensors) ^ set(spec))
        raise RunDirError(f"{path} and {COMPACT_SPEC} name different tensors (e.g. {diff[0]!r})")
    for name, t in tensors.items():
        if list(t.shape) != spec[name]["shape"] or _dtype_name(t) != spec[name]["dtype"]:
            raise RunDirError(f"{path}: tensor {name!r} is {_dtype_name(t)} {list(t.shape)}, {COMPACT_SPEC} records "
                              f"{spec[name]['dtype']} {spec[name]['shape']}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RunDirError(f"{path}: tensor {name!r} holds non-finite values; expected a trained network's "
                              "finite weights")
    return tensors


def load_compact(directory: str | os.PathLike, factory: Callable[[], nn.Module] | None = None,
                 device: str | torch.device = "cpu", *, trust_code: bool = False,
                 customized_pruners: dict | None = None) -> nn.Module:
    """Load a compact network saved by :func:`save_compact`. Files are data: nothing is unpickled, and nothing
    named in the files is imported or called unless ``trust_code=True`` (:mod:`pyro_sparse.trust`).

    Order: the description is validated (types, ranges), the tensor file is checked against it (SHA-256, names,
    shapes, dtypes, finite values), the base network is built fresh — one of :mod:`pyro_sparse.models` from its
    recorded name and options, or the user's by ``factory()`` — the recorded pruning is replayed on it
    (Torch-Pruning's pruning history, module names checked first), the selects and gates are put back, and the
    tensors are loaded strictly.

    :param factory: a zero-argument callable returning a fresh, unpruned instance of the user's own architecture.
    :param device: where the network goes (``cpu``, ``cuda``, ``cuda:N``).
    :param trust_code: import and call the ``package.module:factory`` that ``compact.json`` names (only for files
        you trust).
    :param customized_pruners: the Torch-Pruning pruners of your own layer types that :func:`sparsify` was given
        (``{layer type: pruner}``); needed when ``compact.json`` lists layers under ``customized``.
    :raises MissingRunFileError: (a FileNotFoundError) the files are not there.
    :raises UntrustedCodeError: the files name a user's factory and neither ``factory`` nor ``trust_code`` is given.
    :raises InvalidInputError: a bad ``factory`` or ``device``.
    :raises RunDirError: (a ValueError) the files are unreadable, disagree with each other, or do not fit the base
        network.
    """
    directory = Path(directory)
    device = resolve_device(device)
    if not isinstance(trust_code, bool):
        raise InvalidInputError(f"trust_code must be True or False, got {trust_code!r}")
    info = read_compact_spec(directory)
    tensors = _read_tensors(directory, info)
    builder = recorded_network(info["factory"], str(directory / COMPACT_SPEC), factory, trust_code)
    try:
        base = builder()
    except PyroSparseError:
        raise
    except Exception as e:
        raise RunDirError(f"cannot build the base network of {directory} ({one_line(e)})") from None
    if not isinstance(base, nn.Module):
        raise InvalidInputError(f"the factory returned a {type(base).__name__}, expected an nn.Module")
    try:
        base.eval()
        _replay(base, info, customized_pruners)
    except PyroSparseError:
        raise
    except Exception as e:
        raise RunDirError(f"cannot replay the pruning recorded in {directory / COMPACT_SPEC} on the base network "
                          f"({one_line(e)}); expected the files written by pyro_sparse.save_compact for it") from None
    own = base.state_dict()
    for name, sp in info["sparse"].items():  # shapes first: a dense tensor is only built at the network's size
        if name not in own or list(own[name].shape) != sp["shape"]:
            raise RunDirError(f"{directory / COMPACT_SPEC}: the sparse tensor {name!r} of shape {sp['shape']} is no "
                              "tensor of that shape in the network rebuilt from it")
    tensors = csr.unpack(tensors, info["sparse"], str(directory / COMPACT_WEIGHTS))
    for name, t in tensors.items():
        if name in own and own[name].shape != t.shape:
            raise RunDirError(f"{directory / COMPACT_WEIGHTS}: tensor {name!r} has shape {list(t.shape)}, the network "
                              f"rebuilt from {COMPACT_SPEC} has {list(own[name].shape)}")
    if set(own) != set(tensors):
        diff = sorted(set(own) ^ set(tensors))
        raise RunDirError(f"{directory / COMPACT_WEIGHTS} does not fit the network rebuilt from {COMPACT_SPEC} "
                          f"(tensor {diff[0]!r} is in one and not the other)")
    base.load_state_dict(tensors)
    # the network's description, as compact() made it (the file's own integrity entries stay with the file)
    setattr(base, INFO_ATTR, {k: v for k, v in info.items() if k not in _FILE_KEYS})
    return base.to(device).eval()


def _replay(base: nn.Module, info: dict, customized_pruners: dict | None) -> None:
    """Replay the recorded pruning, selects and gates on ``base`` (every name checked before it is used)."""
    import torch_pruning as tp

    modules = dict(base.named_modules())
    pruners = customized_pruners_of(customized_pruners)
    missing = [n for n in info["customized"] if not isinstance(modules.get(n), tuple(pruners))]
    if missing:
        raise InvalidInputError(f"layers {', '.join(map(repr, missing))} of this compact network were pruned through "
                                "customized_pruners; pass load_compact(..., customized_pruners={layer type: pruner}) "
                                "with the pruners sparsify was given")
    for name, _, _ in info["history"]:
        if name not in modules or not (isinstance(modules[name], (*WEIGHT_LAYERS, *NORM_LAYERS))
                                       or name in info["customized"]):
            raise RunDirError(f"the recorded pruning names {name!r}, which is no prunable layer of the base network")
    for name in info["selects"]:
        if not isinstance(modules.get(name), nn.Linear):
            raise RunDirError(f"the recorded select names {name!r}, which is no nn.Linear of the base network")
    for name, g in info["gates"].items():
        if g["where"] == "heads":
            if name not in info["heads"] or g["n"] != len(info["heads"][name]):
                raise RunDirError(f"the recorded head gate of {name!r} does not match its recorded heads")
        elif not isinstance(modules.get(name), (*WEIGHT_LAYERS, *NORM_LAYERS)):
            raise RunDirError(f"the recorded gate names {name!r}, which is no weight or normalisation layer of the "
                              "base network")
    for name, kept in info["heads"].items():
        m = modules.get(name)
        if not (isinstance(m, nn.MultiheadAttention) or is_qkv_attention(m)) or max(kept) >= head_count(m):
            raise RunDirError(f"the recorded heads of {name!r} ({len(kept)} kept, up to head {max(kept)}) are no heads "
                              "of an attention layer (nn.MultiheadAttention, qkv attention) of the base network")
    if info["history"]:  # (an SVD network of a net the tracer cannot follow records none)
        dg = dependency_graph(base, torch.zeros(1, *info["input_shape"]), pruners)
        dg.load_pruning_history([(n, o, i) for n, o, i in info["history"]])
    for name, n in info["selects"].items():
        layer = base.get_submodule(name)
        if n > layer.in_features:
            raise RunDirError(f"the recorded select of {name!r} keeps {n} inputs of {layer.in_features}")
        tp.prune_linear_in_channels(layer, list(range(n, layer.in_features)))
        _wrap(base, name, lambda layer, n=n: nn.Sequential(Select(torch.zeros(n, dtype=torch.long)), layer))
    heads_gated = {name for name, g in info["gates"].items() if g["where"] == "heads"}
    _prune_heads(base, info["heads"], gated=heads_gated)
    for name, g in info["gates"].items():
        gate = DynamicGate(g["n"], g["eps"], g["threshold"], features_last=g["where"] == "in")
        if g["where"] == "heads":
            _attach_head_gate(base, name, gate)
        elif g["where"] == "out":
            _wrap(base, name, lambda layer, gate=gate: nn.Sequential(layer, gate))
        elif name in info["selects"]:
            _wrap(base, name, lambda s, gate=gate: nn.Sequential(s[0], gate, s[1]))
        else:
            _wrap(base, name, lambda layer, gate=gate: nn.Sequential(gate, layer))
    defer_standardize(base)
