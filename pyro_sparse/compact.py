"""``compact``: a trained :class:`~pyro_sparse.SparseModel` → the user's architecture, physically smaller, checked.

Steps (DESIGN.md contracts 1 and 7):

1. **Weights** (SVD): each latent weight becomes θ with the weights of ``log α >= threshold`` zeroed.
2. **Fold**: each unit latent's test-time multiplier (E θ for SBP, E[π] for BB, 1 for DBB's kept units) times its
   keep mask is folded where the model applies it: into the BatchNorm affine parameters after the producer (or the
   producer's rows and bias), or into a dense layer's input columns. Pruned units are now exact zeros.
3. **Remove**: in every coupled channel group (Torch-Pruning's dependency graph, traced again on the copy) the pruned
   channels and the channels that no consuming layer reads any more (all their columns zero, e.g. after SVD) are
   removed from every layer of the group at once (convs, BatchNorm weights and running statistics, linears);
   Torch-Pruning does the surgery. Input features that a first dense layer no longer reads are dropped by a
   :class:`~pyro_sparse.nn.Select` in front of it (``fc1`` becomes ``Sequential(Select, Linear)``), so the compact
   network still takes full inputs.
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
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from .errors import CompactMismatchError, InvalidInputError, MissingRunFileError, RunDirError, one_line
from .nn import DBBGate, DynamicGate, Select
from .sparsify import NORM_LAYERS, WEIGHT_LAYERS, SparseModel, _is_out, _output_layers, channel_groups, dependency_graph

COMPACT_SPEC = "compact.json"
COMPACT_WEIGHTS = "compact.safetensors"
COMPACT_FORMAT = "pyro-sparse-compact/2"
INFO_ATTR = "pyro_sparse_compact"


def _fold(net: nn.Module, where: str, path: str, index, root_index, factor: torch.Tensor) -> None:
    """Multiply the channels of ``path``'s output (``where="out"``) or input (``"in"``) by ``factor [K]``."""
    m = net.get_submodule(path)
    if index is not None:
        full = torch.ones(m.num_features if isinstance(m, NORM_LAYERS) else m.weight.shape[0],
                          dtype=factor.dtype, device=factor.device)
        factor = full.index_copy(0, index.to(factor.device), factor.index_select(0, root_index.to(factor.device)))
    if where == "in":
        m.weight.mul_(factor.view(1, -1, *([1] * (m.weight.dim() - 2))).to(m.weight))
        return
    m.weight.mul_(factor.view(-1, *([1] * (m.weight.dim() - 1))).to(m.weight))
    if m.bias is not None:
        m.bias.mul_(factor.to(m.bias))


def _zero_columns(module: nn.Module, idxs: list[int]) -> bool:
    """Whether every weight column of input channels ``idxs`` of ``module`` is zero (unknown layouts: False)."""
    w = module.weight
    if isinstance(module, nn.Linear) or getattr(module, "groups", 1) == 1:
        return not bool(w[:, idxs].ne(0).any())
    if module.groups == module.in_channels:  # depthwise: input channel c is filter group c
        per = w.shape[0] // module.groups
        rows = [c * per + j for c in idxs for j in range(per)]
        return not bool(w[rows].ne(0).any())
    return False


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
        Thresholds given here become the model's ``thresholds`` (its ``.eval()`` network prunes alike).
    :param probe: inputs ``[B, *input_shape]`` for the self-check (default: the model's ``example_input``).
    :param rtol, atol: tolerance of the self-check (``atol`` relative to the largest logit, at least 1).
    :returns: a plain ``nn.Module`` in eval mode, on the model's device, with ``pyro_sparse_compact`` (a dict:
        ``units`` kept per latent, ``units_full``, the pruning ``history``, ``selects``, ``gates``, ``factory``).
    :raises InvalidInputError: no guide.
    :raises CompactMismatchError: the compact network differs from the eval-mode model on the probe batch.
    """
    if not isinstance(model, SparseModel):  # a model without latents (the dense baseline): its network as it is
        net = full_network(model)
        setattr(net, INFO_ATTR, {"format": COMPACT_FORMAT, "method": "dense", "input_shape": list(model.input_shape),
                                 "units": {}, "units_full": {}, "history": [], "selects": {}, "gates": {},
                                 "factory": getattr(model.net, "pyro_sparse_factory", None)})
        return net
    guide = guide or model.guide
    if guide is None:
        raise InvalidInputError("compact needs the trained guide: compact(model, guide)")
    model.bind_guide(guide)
    for kind, value in (("weight", weight_threshold), ("unit", unit_threshold)):
        if value is not None:  # the eval-mode model (and so the self-check) uses the same keep rule
            model.thresholds[kind] = value
    weight_threshold, unit_threshold = model.thresholds["weight"], model.thresholds["unit"]
    net = copy.deepcopy(model.net).eval()
    example = model.example_input
    for path, w in model.test_weights(guide, weight_threshold).items() if model.weight_layers else ():
        module, _, attr = path.rpartition(".")
        layer = net.get_submodule(module)
        del layer.weight  # a buffer in the SparseModel (see sparsify): a parameter again in the plain network
        layer.weight = nn.Parameter(w.clone())
    group_of = {g.unit: g for g in model.groups if g.unit is not None}
    prune_root: dict[str, set[int]] = {}
    dynamic: dict[str, tuple] = {}
    kept_units: dict[str, int] = {}
    for key, places in model.placements.items():
        unit = model.units[key]
        post = model.unit_posterior(key, guide)
        keep, mult = unit.keep(post[unit.latent_site], unit_threshold)
        is_dynamic = isinstance(unit, DBBGate)
        factor = torch.where(keep, torch.ones_like(mult) if is_dynamic else mult, torch.zeros_like(mult)).float()
        for p in places:
            _fold(net, p.where, p.module, p.index, p.root_index, factor)
        kept_units[key] = int(keep.sum())
        if key in group_of:
            prune_root[group_of[key].root] = set((~keep).nonzero().flatten().tolist())
        if is_dynamic:
            dynamic[key] = (unit, post, places[0])
    # ---- remove pruned and unread channels, group by group -------------------------------------------------
    dg = dependency_graph(net, example)
    outputs = _output_layers(net, example)
    names = {m: n for n, m in net.named_modules()}
    grouped_inputs: set[str] = set()
    for root, group in channel_groups(net, dg, outputs):
        k = len(group.items[0].idxs)
        readers = [it for it in group.items if not _is_out(it.dep.handler) and it.dep.target.module in names
                   and isinstance(it.dep.target.module, WEIGHT_LAYERS)]
        grouped_inputs.update(names[it.dep.target.module] for it in readers)
        dead = set(prune_root.get(root, ()))
        if readers:
            cols: dict[int, list[tuple[nn.Module, int]]] = {}
            for it in readers:
                for i, r in zip(it.idxs, it.root_idxs, strict=True):
                    cols.setdefault(int(r), []).append((it.dep.target.module, int(i)))
            for r, where in cols.items():
                if all(_zero_columns(m, [i]) for m, i in where):
                    dead.add(r)
        if len(dead) >= k:  # keep one (zeroed) channel so that every layer keeps a valid shape
            dead.discard(min(dead))
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
            slot = (names[t], "out" if _is_out(it.dep.handler) else "in")
            size = _channels(t, slot[1])
            cur = alive.setdefault(slot, list(range(size)))
            gone = set(map(int, it.idxs))
            alive[slot] = [c for i, c in enumerate(cur) if i not in gone]
        group.prune()
    # ---- input features no first dense layer reads any more ----------------------------------------------
    import torch_pruning as tp

    selects: dict[str, int] = {}
    for name, m in list(net.named_modules()):
        if not isinstance(m, nn.Linear) or name in grouped_inputs:
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
    # ---- DBB gates ----------------------------------------------------------------------------------------
    gates: dict[str, dict] = {}
    for unit, post, p in dynamic.values():
        size = unit.num_units
        index = torch.tensor(alive.get((p.module, p.where), list(range(size))), dtype=torch.long)
        gate = DynamicGate(int(index.numel()), unit.eps,
                           unit.default_threshold if unit_threshold is None else unit_threshold)
        keep, _ = unit.keep(post["pi"], unit_threshold)
        cpu = index.cpu()
        gate.scale.copy_(torch.where(keep, post["pi"].mean, torch.zeros_like(post["pi"].mean)).detach().cpu()[cpu])
        gate.gamma.copy_(unit.gamma.detach().cpu()[cpu])
        gate.mean.copy_(unit.running_mean.cpu()[cpu])
        gate.std.copy_(unit.running_std.cpu()[cpu])
        gate.beta.copy_(post["beta"].mean.detach().cpu()[cpu])
        gate.to(example.device)
        if p.where == "out":
            _wrap(net, p.module, lambda layer, gate=gate: nn.Sequential(layer, gate))
        elif p.module in selects:  # the gate acts on the inputs the Select keeps
            _wrap(net, p.module, lambda s, gate=gate: nn.Sequential(s[0], gate, s[1]))
        else:
            _wrap(net, p.module, lambda layer, gate=gate: nn.Sequential(gate, layer))
        gates[p.module] = {"where": p.where, "n": int(index.numel()), "eps": gate.eps, "threshold": gate.threshold}
    net.eval()
    info = {
        "format": COMPACT_FORMAT, "method": model.method, "input_shape": list(model.input_shape),
        "units": kept_units, "units_full": {key: model.units[key].num_units for key in model.placements},
        "history": [[n, bool(o), list(map(int, i))] for n, o, i in dg.pruning_history()],
        "selects": selects, "gates": gates,
        "factory": getattr(model.net, "pyro_sparse_factory", None),
    }
    setattr(net, INFO_ATTR, info)
    _check(net, model, example if probe is None else probe, rtol, atol)
    return net


@torch.no_grad()
def full_network(model) -> nn.Module:
    """The unpruned deterministic network of ``model``'s architecture, in eval mode: a copy of its ``net`` with every
    SVD weight a parameter again (θ where a guide is bound). The baseline of FLOPs, memory and latency."""
    net = copy.deepcopy(model.net).eval()
    guide = getattr(model, "guide", None)
    for key, path in getattr(model, "weight_layers", {}).items():
        layer = net.get_submodule(path)
        w = layer.weight if guide is None else guide.posterior(model.site_name("weights", key, "weight")).loc
        del layer.weight
        layer.weight = nn.Parameter(w.detach().clone())
    return net


def _channels(m: nn.Module, side: str) -> int:
    if isinstance(m, NORM_LAYERS):
        return m.num_features
    if isinstance(m, nn.Linear):
        return m.out_features if side == "out" else m.in_features
    return m.out_channels if side == "out" else m.in_channels


def _check(net: nn.Module, model: SparseModel, probe: torch.Tensor, rtol: float, atol: float) -> None:
    """Raise :class:`CompactMismatchError` naming the first layer where ``net`` and ``model.eval()`` differ."""
    was_training = model.training
    model.eval()
    try:
        seen_model, seen_net = _record(model.net), _record(net)
        try:
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


def save_compact(net: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``compact.json`` (the description) and ``compact.safetensors`` (the tensors) into ``directory``,
    atomically.

    :raises InvalidInputError: ``net`` is not a network made by :func:`compact`.
    """
    from .runfiles import atomic_write_bytes

    info = getattr(net, INFO_ATTR, None)
    if info is None:
        raise InvalidInputError("save_compact takes a network made by pyro_sparse.compact")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write_bytes(directory / COMPACT_WEIGHTS, save(tensors))
    atomic_write_bytes(directory / COMPACT_SPEC, json.dumps(info, indent=1).encode())


def load_compact(directory: str | os.PathLike, factory: Callable[[], nn.Module] | None = None,
                 device: str | torch.device = "cpu") -> nn.Module:
    """Load a compact network saved by :func:`save_compact`, never unpickling.

    The base network is built fresh — by ``factory()`` (the user's own architecture) or, for the networks of
    :mod:`pyro_sparse.models`, from the recorded name and options — then the recorded pruning is replayed on it
    (Torch-Pruning's pruning history), the selects and gates are put back, and the tensors are loaded strictly.

    :raises MissingRunFileError: (a FileNotFoundError) the files are not there.
    :raises InvalidInputError: no ``factory`` for a network that is not one of ``pyro_sparse.models``.
    :raises RunDirError: (a ValueError) the files are unreadable or do not fit the base network.
    """
    from pyro_sparse.models import nets

    directory = Path(directory)
    spec_path, weights_path = directory / COMPACT_SPEC, directory / COMPACT_WEIGHTS
    if not spec_path.is_file() or not weights_path.is_file():
        raise MissingRunFileError(f"{directory} holds no compact network ({COMPACT_SPEC} and {COMPACT_WEIGHTS} "
                                  "expected)")
    try:
        info = json.loads(spec_path.read_text())
        if info.get("format") != COMPACT_FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {COMPACT_FORMAT!r}")
    except Exception as e:
        raise RunDirError(f"cannot load the compact network from {directory}: {COMPACT_SPEC} is unreadable "
                          f"({one_line(e)}); expected the files written by pyro_sparse.save_compact") from None
    if factory is None and info.get("factory") is None:
        raise InvalidInputError(f"{directory} holds a compact network of a user's own architecture: pass "
                                "factory=... (a callable returning a fresh, unpruned instance)")
    try:
        base = factory() if factory is not None else nets.build(info["factory"]["name"],
                                                                **info["factory"]["kwargs"])
        base.eval()
        import torch_pruning as tp

        dg = dependency_graph(base, torch.zeros(1, *info["input_shape"]))
        dg.load_pruning_history([(n, o, i) for n, o, i in info["history"]])
        for name, n in info["selects"].items():
            layer = base.get_submodule(name)
            tp.prune_linear_in_channels(layer, list(range(n, layer.in_features)))
            _wrap(base, name, lambda layer, n=n: nn.Sequential(Select(torch.zeros(n, dtype=torch.long)), layer))
        for name, g in info["gates"].items():
            gate = DynamicGate(g["n"], g["eps"], g["threshold"])
            if g["where"] == "out":
                _wrap(base, name, lambda layer, gate=gate: nn.Sequential(layer, gate))
            elif name in info["selects"]:
                _wrap(base, name, lambda s, gate=gate: nn.Sequential(s[0], gate, s[1]))
            else:
                _wrap(base, name, lambda layer, gate=gate: nn.Sequential(gate, layer))
        base.load_state_dict(load_file(str(weights_path)))
    except Exception as e:
        raise RunDirError(f"cannot load the compact network from {directory} ({one_line(e)}); expected the files "
                          "written by pyro_sparse.save_compact for this base network") from None
    setattr(base, INFO_ATTR, info)
    return base.to(device).eval()
