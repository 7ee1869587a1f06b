"""``sparsify``: attach a Bayesian sparsification method to any ``nn.Module`` (docs/design.md, contracts 1, 5, 7).

``sparsify(net, method, example_input)`` works on a deep copy of the user's network and returns a
:class:`SparseModel`: a Pyro model (the network + a categorical likelihood over a data plate of size N) whose
latent sites are

* **svd** (Molchanov et al. 2017): every selected ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` weight gets the
  log-uniform prior (site ``weights.<layer>.weight``; ``<layer>`` is the module path with ``.`` → ``__``). The
  user's layer classes stay: the network runs inside :class:`pyro_sparse.poutine.LocalOps`, which intercepts
  ``F.linear`` / ``F.conv1d`` / ``F.conv2d`` for the latent weights (local reparameterisation trick), so any stride,
  padding, dilation, groups, tuple kernel or missing bias works.
* **sbp / bb / dbb** (Neklyudov et al. 2017; Lee et al. 2018): one unit latent per **coupled channel group**, found
  by tracing the network once with ``example_input`` through Torch-Pruning's ``DependencyGraph``: the output channels
  of convolutions that must go together (residual additions, concatenations, depthwise convolutions and the
  normalisation layers on them) share one latent ``[K]`` (site ``units.<root>_units.<theta|pi>``). The multiplier
  acts on each channel after its normalisation layer (after the conv itself where none follows), in every layer of
  the group, so that a unit with multiplier 0 is exactly removable. Every selected ``nn.Linear`` also gets a latent
  on its input features (site ``units.<layer>_units...``) — the papers' placement "inputs of dense layers, input
  pixels included" — and groups made of linear layers only get none of their own (their consumer's input latent
  covers them). On the papers' nets this is exactly METHODS.md §2/§3: LeNet-5 20/50/800/500, LeNet-500-300
  784/500/300, VGG-like the 13 conv outputs + the inputs of the two dense layers.
  DBB's input-dependent gate needs one place to read its input from: a group with several producers (a residual
  stream) gets the BB gate instead (documented limitation; its keep rule is the same).

**Selectors** (TyXe's expose/hide): ``include`` / ``exclude`` each take a module type, a glob on the qualified
module name (``"features.*"``, ``"fc*"``), a predicate ``(name, module) -> bool``, or a list of these. A layer is
sparsified when it is of a type the method supports, matches ``include`` (``None``: everything) and does not match
``exclude`` — ``exclude`` wins. A channel group gets its unit latent only when all its producing convolutions are
selected, so ``exclude="conv1"`` on a ResNet leaves the whole residual stream that ``conv1`` feeds ungated.

**New methods**: :func:`register_method` with a :class:`Method` (its prior, keep rule, placement kind); the guide
family for a new prior type is registered with :func:`pyro_sparse.guides.register_family` and its KL with
``torch.distributions.kl.register_kl``.

In ``.eval()`` mode a :class:`SparseModel` called directly is the deterministic test-time network (posterior means,
pruned units and weights zeroed; it reads the posterior from the guide bound to it:
:class:`~pyro_sparse.guides.MeanFieldGuide` binds itself), as dropout layers behave in PyTorch. Under Pyro inference
(``SVI``, ``Predictive``, any ``poutine.trace``) it is always the probabilistic model; ``.eval()`` then only puts
BatchNorm and DBB's running statistics in inference mode. :func:`pyro_sparse.compact` turns it into a plain, smaller
network of the same architecture.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.trace_messenger import TraceMessenger
from torch import nn
from torch.func import functional_call

from pyro_sparse.model import Classifier

from .distributions import LogUniform, normal_log_alpha
from .errors import InvalidInputError, UnsupportedModelError, one_line
from .layers import NORM_LAYERS, PRODUCER_LAYERS, WEIGHT_LAYERS, channels, entering_positions, is_grouped, is_out
from .nn import BBGate, DBBGate, SBPNoise, UnitModule
from .nn.attention import (
    HeadLatents,
    features_of_heads,
    head_count,
    head_layout,
    head_projection,
    head_pruning_problem,
    heads_of_features,
    is_qkv_attention,
    qkv_head_problem,
)
from .nn.svd import WeightSite
from .nn.units import BN_INIT_KEEP, _broadcast_units
from .poutine.local import CLIP_TAG, LocalOps

Selector = type | str | Callable[[str, nn.Module], bool] | Sequence


@dataclass(frozen=True)
class Method:
    """A sparsification method as :func:`sparsify` attaches it.

    :ivar kind: ``"weights"`` (a prior on each selected weight tensor) or ``"units"`` (a latent per channel group
        and per dense-layer input).
    :ivar layer_types: the layer types it can be attached to.
    :ivar prior: ``weights``: ``prior(shape) -> distribution`` with event shape ``shape``.
    :ivar weight_keep: ``weights``: ``(q, threshold) -> keep [shape] bool`` from the guide distribution ``q``.
    :ivar threshold: ``weights``: the default threshold of ``weight_keep``.
    :ivar unit: ``units``: ``unit(num_units, **options) -> UnitModule`` (its ``keep`` is the keep rule).
    :ivar shared_unit: ``units``: the unit for a group with several placements, if ``unit`` cannot serve one.
    :ivar norm_options: ``units``: unit options used by default in a network with normalisation layers (BB, DBB: the
        authors' VGG init of the gates, ``init_keep`` ≈ 0.68); options the caller gives win.
    :ivar training: the method's training defaults, fields of :class:`pyro_sparse.infer.TrainConfig`
        (``lr_schedule``, ``lr_latent``, ``weight_decay``; ``kl_warmup=True``: the KL warm-up of training from
        scratch, epochs 5 → 20 of 200). :meth:`pyro_sparse.infer.TrainConfig.for_method` and ``pyro-sparse train``
        read them.
    :ivar starts_from: the other methods whose runs this one continues besides a dense run and its own (DBB: BB).
    :ivar freezes_source: continuing a run of ``starts_from``, its guide parameters are loaded and frozen (DBB keeps
        BB's q(π) and trains β and γ: the DBB paper's two-stage training).
    """

    name: str
    kind: str
    layer_types: tuple[type, ...] = WEIGHT_LAYERS
    prior: Callable | None = None
    weight_keep: Callable | None = None
    threshold: float | None = None
    unit: Callable[..., UnitModule] | None = None
    shared_unit: Callable[..., UnitModule] | None = None
    norm_options: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    starts_from: tuple[str, ...] = ()
    freezes_source: bool = False


#: the gate methods' schedule (the beta-Bernoulli authors' configs): a larger lr on the gates, steps ×0.1 at 50%/80%
_GATE_TRAINING = {"lr_schedule": "step", "lr_latent": 1e-2, "weight_decay": 1e-4}


def _log_uniform(shape: torch.Size):
    return LogUniform().expand(list(shape)).to_event(len(shape))


def _log_alpha_keep(q, threshold: float) -> torch.Tensor:
    """Molchanov et al. 2017, Sec. 4.3: keep the weights with ``log α = log σ² − log θ² < threshold``."""
    return normal_log_alpha(q) < threshold


METHODS: dict[str, Method] = {
    # METHODS.md schedules: SVD from scratch with KL warm-up; SBP / BB fine-tune with a larger lr on noise / gates
    "svd": Method("svd", "weights", prior=_log_uniform, weight_keep=_log_alpha_keep, threshold=3.0,
                  training={"lr_schedule": "linear", "kl_warmup": True}),
    "sbp": Method("sbp", "units", unit=SBPNoise, training={"lr_schedule": "linear", "lr_latent": 1e-2}),
    "bb": Method("bb", "units", unit=BBGate, norm_options={"init_keep": BN_INIT_KEEP}, training=_GATE_TRAINING),
    "dbb": Method("dbb", "units", unit=DBBGate, shared_unit=BBGate, norm_options={"init_keep": BN_INIT_KEEP},
                  training=_GATE_TRAINING, starts_from=("bb",), freezes_source=True),
}
#: the training defaults of ``dense`` (no method attached), as :attr:`Method.training`
DENSE_TRAINING = {"lr_schedule": "linear"}
TRAINING_KEYS = ("lr_schedule", "lr_latent", "weight_decay", "kl_warmup")


def training_defaults(method: str) -> dict:
    """The training defaults of ``method`` (``dense`` or a registered method; :attr:`Method.training`).

    :raises InvalidInputError: an unknown method."""
    if method == "dense":
        return dict(DENSE_TRAINING)
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; expected one of dense, {', '.join(METHODS)}")
    return dict(METHODS[method].training)


def register_method(method: Method) -> None:
    """Make ``sparsify(net, method.name, ...)`` attach ``method``.

    :raises ValueError: a method without the fields its kind needs.
    """
    if method.kind == "weights" and (method.prior is None or method.weight_keep is None or method.threshold is None):
        raise ValueError(f"method {method.name!r}: kind 'weights' needs prior, weight_keep and threshold")
    if method.kind == "units" and method.unit is None:
        raise ValueError(f"method {method.name!r}: kind 'units' needs unit")
    if method.kind not in ("weights", "units"):
        raise ValueError(f"method {method.name!r}: kind must be 'weights' or 'units', got {method.kind!r}")
    unknown = sorted(set(method.training) - set(TRAINING_KEYS))
    if unknown:
        raise ValueError(f"method {method.name!r}: unknown training default(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(TRAINING_KEYS)}")
    if not isinstance(method.name, str) or not method.name or method.name == "dense" or ":" in method.name:
        raise ValueError(f"method name {method.name!r}: expected a non-empty name other than 'dense', without ':'")
    METHODS[method.name] = method


def matches(selector: Selector | None, name: str, module: nn.Module) -> bool:
    """Whether module ``name`` matches ``selector`` (type, glob, predicate or a list of them; ``None``: no).

    :raises InvalidInputError: a selector of another kind.
    """
    if selector is None:
        return False
    if isinstance(selector, type):
        return isinstance(module, selector)
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    if isinstance(selector, (list, tuple, set, frozenset)):
        return any(matches(s, name, module) for s in selector)
    if callable(selector):
        return bool(selector(name, module))
    raise InvalidInputError(f"selector {selector!r}: expected a module type, a name glob, a predicate "
                            "(name, module) -> bool, or a list of these")


def key_of(path: str) -> str:
    """Module path → the key of its latent container (``layer1.0.conv1`` → ``layer1__0__conv1``)."""
    return path.replace(".", "__")


@dataclass
class Placement:
    """Where a unit latent multiplies: the output (``"out"``) or the input (``"in"``) of module ``module``, or the
    heads' outputs of the ``nn.MultiheadAttention`` ``module`` (``"heads"``: one unit per head);
    ``index``/``root_index``: channel ``index[i]`` of that tensor gets the latent's unit ``root_index[i]``
    (``None``: channel ``k`` gets unit ``k``)."""

    module: str
    where: str
    index: torch.Tensor | None = None
    root_index: torch.Tensor | None = None


@dataclass
class ChannelGroup:
    """A coupled channel group: the pruning root (a conv/linear with its output channels) and the unit latent's key
    (``None``: no latent, e.g. a linear-only group)."""

    root: str
    unit: str | None = None
    #: for a group entering a grouped convolution: ``tie[r]``, the latent of root channel ``r`` (its position inside
    #: its conv group; the channels of one position go together); ``None``: channel ``r`` has latent ``r``
    tie: list[int] | None = None


def _output_layers(net: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The weight layers whose output is the network's output (never pruned on their output side)."""
    outputs: dict[int, torch.Tensor] = {}
    order: list[nn.Module] = []
    def record(m, i, o):
        outputs[id(m)] = o
        order.append(m)

    handles = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, WEIGHT_LAYERS)]
    try:
        with torch.no_grad():
            out = net(example_input)
    finally:
        for h in handles:
            h.remove()
    direct = [m for m in order if outputs.get(id(m)) is out]
    return direct or order[-1:]


def execution_order(net: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """``{module path: position of its first call}`` over the leaf modules (and attention layers) in one forward
    pass."""
    order: dict[str, int] = {}
    names = {id(m): n for n, m in net.named_modules()}
    def record(m, i):
        order.setdefault(names[id(m)], len(order))

    # leaf modules and attention layers (an nn.MultiheadAttention's out_proj is never called)
    handles = [m.register_forward_pre_hook(record) for m in net.modules()
               if not list(m.children()) or isinstance(m, nn.MultiheadAttention) or is_qkv_attention(m)]
    try:
        with torch.no_grad():
            net(example_input)
    finally:
        for h in handles:
            h.remove()
    return order


def dependency_graph(net: nn.Module, example_input: torch.Tensor, customized_pruners: Mapping | None = None):
    """Torch-Pruning's ``DependencyGraph`` of ``net`` traced in eval mode (running statistics untouched).

    :param customized_pruners: the user's Torch-Pruning pruners (``torch_pruning.pruner.function.BasePruningFunc``)
        of their own layer types, ``{layer type: pruner}``.
    :raises UnsupportedModelError: the tracer cannot follow the network.
    """
    import torch_pruning as tp

    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():  # the tracer follows autograd
            # (parameters outside any layer, e.g. a ViT's class token [1, 1, D] and position embedding [1, N, D]:
            # Torch-Pruning prunes them along their last dimension, their channels; nothing for a user to act on)
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return tp.DependencyGraph().build_dependency(net, example_inputs=example_input,
                                                         customized_pruners=dict(customized_pruners or {}) or None)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedModelError(f"the dependency tracer (torch-pruning) cannot follow this network ({first}); "
                                    "sparsify it with method 'svd', or make its forward traceable") from None
    finally:
        net.train(was_training)


def customized_pruners_of(pruners) -> dict:
    """``sparsify``'s ``customized_pruners`` checked: ``{layer type: Torch-Pruning pruner}`` (types only: Torch-Pruning
    1.6 matches its customized layers with ``isinstance``, and the model holds a copy of the user's layers anyway).

    :raises InvalidInputError: not a dict of ``nn.Module`` subclass → ``BasePruningFunc`` instance.
    """
    from torch_pruning.pruner.function import BasePruningFunc

    if pruners is None:
        return {}
    if not isinstance(pruners, Mapping):
        raise InvalidInputError("customized_pruners must be a dict {layer type: Torch-Pruning pruner}, got "
                                f"{type(pruners).__name__}")
    for key, pruner in pruners.items():
        if not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise InvalidInputError(f"customized_pruners key {key!r} is no layer type; expected an nn.Module subclass "
                                    "(the class of your layer)")
        if not isinstance(pruner, BasePruningFunc):
            raise InvalidInputError(f"customized_pruners[{key.__name__}] must be a Torch-Pruning pruner (a "
                                    f"torch_pruning.pruner.function.BasePruningFunc instance), got "
                                    f"{type(pruner).__name__}")
    return dict(pruners)


#: How often Torch-Pruning's tracer may follow one dependency of the graph while it closes one channel group. On
#: torchvision's ResNet-50, DenseNet-121, MobileNet-v2, EfficientNet-b0, ConvNeXt-tiny and ViT and on transformers'
#: ViT and BERT it follows each at most twice (a ViT's attention); a group that needs more than 16 has run away —
#: index mappings through reshapes and permutations that never close, as a Llama decoder's rotary position embeddings,
#: where the tracer grows one group by thousands of items a second without end — and is left whole.
TRACER_VISITS_PER_DEPENDENCY = 16


class _TracerRanAway(Exception):
    pass


def channel_groups(net: nn.Module, dg, output_layers: list[nn.Module]) -> list[tuple[str, object | None]]:
    """``[(root_name, group)]``: every coupled channel group rooted at a conv/linear output, as Torch-Pruning's
    ``get_all_groups`` finds them, but within a bound: while it closes one group, the tracer may follow each
    dependency of ``dg`` at most :data:`TRACER_VISITS_PER_DEPENDENCY` times; a group it does not close within that is
    ``None`` (left whole: :func:`sparsify` reports it, ``compact`` leaves it). Groups of the output layers, and those
    rooted at an attention's head projections (they go a whole head at a time), are not traced."""
    names = {m: n for n, m in net.named_modules()}
    heads = {m.get_submodule(path) for m in net.modules() if (layout := head_layout(m)) is not None
             for path, _ in layout.rows}
    ignored = set(output_layers) | set(dg.IGNORED_LAYERS_IN_TRACING)
    visits: dict[int, int] = {}  # dependency → times followed, for the group being closed

    def counted(dep):
        test = dep.is_triggered_by

        def step(handler):
            visits[id(dep)] = visits.get(id(dep), 0) + 1
            if visits[id(dep)] > TRACER_VISITS_PER_DEPENDENCY:
                raise _TracerRanAway
            return test(handler)
        return step

    deps = [d for node in dg.module2node.values() for d in node.dependencies]
    for d in deps:  # instance attributes on this graph's own objects, removed below
        d.is_triggered_by = counted(d)
    found, visited = [], set()
    try:
        for m in list(dg.module2node):
            if not isinstance(m, WEIGHT_LAYERS) or m in ignored or m in visited or m in heads:
                continue
            pruner = dg.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            visits.clear()
            try:
                group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            except _TracerRanAway:
                found.append((names[m], None))
                continue
            outs = {it.dep.target.module for it in group.items if dg.is_out_channel_pruning_fn(it.dep.handler)}
            visited |= outs
            if not outs & ignored:
                found.append((names[m], group))
    finally:
        for d in deps:
            del d.is_triggered_by
    return found


def ran_away(root: str) -> str:
    """The reason a channel group the tracer did not close (see :func:`channel_groups`) is left whole."""
    return (f"channel group of {root!r}: the dependency tracer (torch-pruning) did not close it (it followed one "
            f"dependency more than {TRACER_VISITS_PER_DEPENDENCY} times: reshapes or permutations it cannot map, e.g. "
            "rotary position embeddings)")


class SparseModel(Classifier):
    """The Pyro model of a sparsified network (see the module docstring); made by :func:`sparsify`.

    ``forward(x [B, *input_shape], y [B] or None) -> logits [*sample_shape, B, classes]`` (as
    :class:`pyro_sparse.models.Classifier`, which it extends). Attributes: ``net`` (the copied user network, plain
    ``nn.Module``), ``weights`` (SVD: one :class:`WeightSite` per layer), ``units`` (one unit module per latent),
    ``placements`` (``{unit key: [Placement]}``), ``groups`` (the coupled channel groups), ``method`` (its name),
    ``spec`` (the :class:`Method` object itself: prior, keep rule, training defaults), ``example_input``.
    """

    def __init__(self, net: nn.Module, method: Method, input_shape, num_data: int | None, example_input):
        super().__init__(net, input_shape, num_data)
        self.method = method.name
        self.spec = method
        self.weights = PyroModule[nn.ModuleDict]()
        self.units = PyroModule[nn.ModuleDict]()
        self.weight_layers: dict[str, str] = {}  # WeightSite key -> module path
        self.weight_attrs: dict[str, str] = {}  # WeightSite key -> its parameter's name, where not "weight"
        self.placements: dict[str, list[Placement]] = {}
        self.groups: list[ChannelGroup] = []
        self.skipped: list[dict] = []  # channel groups left dense: {"group": root layer, "reason": ...}
        self.customized_pruners: dict = {}  # the user's Torch-Pruning pruners {layer type: pruner}
        #: the keep rules' thresholds of the ``.eval()`` network and of :func:`pyro_sparse.compact` (None: the
        #: method's default: log α 3 for SVD, SNR 1 for SBP, E[π] 1e-3 for BB/DBB)
        self.thresholds: dict[str, float | None] = {"weight": None, "unit": None}
        self.register_buffer("example_input", example_input.detach().clone(), persistent=False)
        object.__setattr__(self, "_guide_ref", None)

    # --- the guide whose posterior the eval-mode network reads ---------------------------------------------
    def bind_guide(self, guide) -> None:
        """Use ``guide``'s posterior in ``.eval()`` mode (kept by weak reference; MeanFieldGuide calls this)."""
        object.__setattr__(self, "_guide_ref", weakref.ref(guide))

    @property
    def guide(self):
        ref = self.__dict__.get("_guide_ref")
        return None if ref is None else ref()

    def set_thresholds(self, weight: float | None = None, unit: float | None = None) -> None:
        """Set the keep rules' thresholds (``None``: leave as is) that the ``.eval()`` network and
        :func:`pyro_sparse.compact` read: ``weight`` is the log α threshold of latent weights (SVD; weights with
        log α ≥ it are pruned), ``unit`` the SNR (SBP) or E[π] (BB, DBB) threshold of unit latents (units below it
        are pruned).

        :raises InvalidInputError: a threshold for a rule this model does not have (e.g. ``weight`` on an SBP model),
            a non-finite value, or a unit threshold ``<= 0``.
        """
        for kind, value, has in (("weight", weight, bool(self.weight_layers)), ("unit", unit, bool(self.placements))):
            if value is None:
                continue
            if not has:
                other = "unit" if kind == "weight" else "weight"
                raise InvalidInputError(
                    f"a {kind} threshold applies to {'latent weights (svd)' if kind == 'weight' else 'unit latents'}; "
                    f"this {self.method} model has none (its keep rule takes a {other} threshold)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    kind == "unit" and not value > 0):
                bound = " > 0" if kind == "unit" else ""
                raise InvalidInputError(f"the {kind} threshold must be a finite number{bound}, got {value!r}")
            self.thresholds[kind] = float(value)

    def weight_threshold(self) -> float:
        """The log α threshold of the latent weights' keep rule: the one set, else the method's default (3)."""
        value = self.thresholds["weight"]
        return METHODS[self.method].threshold if value is None else value

    def summary(self, guide=None) -> list[dict]:
        """What the keep rules decide, per latent site, from ``guide``'s posterior (default: the bound guide) at the
        thresholds in effect (:meth:`set_thresholds`, else the method's defaults). The values ``.eval()`` and
        :func:`pyro_sparse.compact` read; change what gets pruned with :meth:`set_thresholds`, never by editing the
        guide.

        :returns: one dict per site, in the model's order: ``site`` (Pyro site name), ``layers`` (the module paths it
            acts on), ``statistic`` (``"log_alpha"`` per weight for SVD, ``"SNR"`` per unit for SBP, ``"E[π]"`` per
            unit for BB/DBB), ``values`` (tensor, the weight's shape ``[out, in, ...]`` or ``[K]``), ``threshold``
            (float), ``rule`` (``"prune if >="`` for log α, ``"prune if <"`` for units), ``keep`` (bool tensor like
            ``values``), ``kept`` and ``total`` (ints).
        :raises InvalidInputError: no guide given or bound.
        """
        from .distributions import normal_log_alpha

        guide = guide or self._require_guide()
        rows = []
        method = METHODS[self.method]
        for key, path in self.weight_layers.items():
            site = self.site_name("weights", key, "weight")
            q = guide.posterior(site)
            threshold = self.weight_threshold()
            keep = method.weight_keep(q, threshold)
            rows.append({"site": site, "layers": [path], "statistic": "log_alpha",
                         "values": normal_log_alpha(q).detach(), "threshold": threshold, "rule": "prune if >=",
                         "keep": keep, "kept": int(keep.sum()), "total": keep.numel()})
        for key, places in self.placements.items():
            unit = self.units[key]
            q = self.unit_posterior(key, guide)[unit.latent_site]
            threshold = unit.default_threshold if self.thresholds["unit"] is None else self.thresholds["unit"]
            keep, _ = unit.keep(q, threshold)
            layers = list(dict.fromkeys(p.module for p in places))
            rows.append({"site": self.site_name("units", key, unit.latent_site), "layers": layers,
                         "statistic": unit.statistic_name, "values": unit.statistic(q), "threshold": threshold,
                         "rule": "prune if <", "keep": keep, "kept": int(keep.sum()), "total": keep.numel()})
        return rows

    def weight_param(self, key: str) -> str:
        """The parameter path (``module path.attribute``) of latent weight ``key``: ``fc1.weight``, or an attention's
        packed projections ``attn.in_proj_weight``."""
        return f"{self.weight_layers[key]}.{self.weight_attrs.get(key, 'weight')}"

    def site_name(self, container: str, key: str, attr: str) -> str:
        return f"{container}.{key}.{attr}"

    # --- test-time values ----------------------------------------------------------------------------------
    def test_weights(self, guide=None, threshold: float | None = None) -> dict[str, torch.Tensor]:
        """``{parameter path (module path.weight): θ with pruned weights zeroed}`` (SVD; empty for unit methods)."""
        guide = guide or self._require_guide()
        method = METHODS[self.method]
        threshold = method.threshold if threshold is None else threshold
        out = {}
        for key in self.weight_layers:
            q = guide.posterior(self.site_name("weights", key, "weight"))
            keep = method.weight_keep(q, threshold)
            out[self.weight_param(key)] = torch.where(keep, q.loc, torch.zeros_like(q.loc)).detach()
        return out

    def unit_posterior(self, key: str, guide=None) -> dict:
        """``{attribute: guide distribution}`` of unit latent ``key``."""
        guide = guide or self._require_guide()
        unit = self.units[key]
        return {attr: guide.posterior(self.site_name("units", key, attr)) for attr in unit._pyro_samples}

    def _require_guide(self):
        guide = self.guide
        if guide is None:
            raise InvalidInputError("this SparseModel has no guide bound: build MeanFieldGuide(model) (it binds "
                                    "itself) or call model.bind_guide(guide) before using .eval() mode")
        return guide

    # --- forward -------------------------------------------------------------------------------------------
    def network(self, x: torch.Tensor) -> torch.Tensor:
        # Pyro inference (SVI, Predictive, any trace) always sees the probabilistic model; a plain call in .eval()
        # mode is the deterministic test-time network
        test = not self.training and not any(isinstance(m, TraceMessenger) for m in _PYRO_STACK)
        posterior = {}
        if test:
            overrides = self.test_weights(threshold=self.thresholds["weight"]) if self.weight_layers else {}
            posterior = {key: self.unit_posterior(key) for key in self.placements}
        else:
            overrides = {}
            for key in self.weight_layers:
                site = self.weights[key]
                w = site.weight
                if site.train_clip is not None:
                    w = w.view_as(w) if w.is_leaf and w.requires_grad else w  # never tag a parameter
                    setattr(w, CLIP_TAG, site.train_clip)
                overrides[self.weight_param(key)] = w
        net = self._net()
        handles, heads = self._attach_units(net, test, posterior)
        try:
            with HeadLatents(heads) if heads else contextlib.nullcontext():
                if not overrides:
                    return net(x)
                with LocalOps():
                    return functional_call(net, overrides, (x,), strict=False)
        finally:
            for h in handles:
                h.remove()

    def _attach_units(self, net: nn.Module, test: bool, posterior: dict) -> tuple[list, dict]:
        """Hooks that multiply each unit latent into the layers it acts on (removed after the call), and the head
        multipliers of attention layers (``{id(out_proj.weight): multiplier}``, for :class:`HeadLatents`)."""
        cache: dict[str, torch.Tensor] = {}
        handles = []
        heads = {}
        units = self.units
        compiled = getattr(net, "_compiled_call_impl", None) is not None
        for key, places in self.placements.items():
            unit = units[key]
            for p in places:
                module = net.get_submodule(p.module)

                def apply_units(t, key=key, unit=unit, p=p):
                    m = cache.get(key)
                    if m is None:
                        u = t if p.index is None else t.index_select(1, p.index.to(t.device))
                        m = unit.test_multiplier(u, posterior[key], self.thresholds["unit"]) if test \
                            else unit.multiplier(u)
                        cache[key] = m
                    if p.index is not None:
                        lead = m.shape[:-1]
                        scale = torch.ones(*lead, t.shape[1], dtype=m.dtype, device=m.device)
                        m = scale.index_copy(-1, p.index.to(m.device), m.index_select(-1, p.root_index.to(m.device)))
                    return t * _broadcast_units(m, t)

                def apply(t, p=p, apply_units=apply_units):
                    if p.where == "in" and t.dim() > 2:  # a dense layer's features are its input's last dim
                        return apply_units(t.movedim(-1, 1)).movedim(1, -1)
                    return apply_units(t)

                if p.where == "heads" and isinstance(module, nn.MultiheadAttention):  # heads' outputs [B, H, T, d]
                    heads[id(module.out_proj.weight)] = apply_units
                    continue
                if p.where == "heads":  # a qkv attention: the heads' outputs as its projection's input features
                    h = head_count(module)
                    apply = (lambda t, h=h, apply_units=apply_units:  # noqa: E731
                             features_of_heads(apply_units(heads_of_features(t, h))))
                    module = head_projection(module)[1]
                if compiled:  # a compiled network runs the hooks eagerly: the graph breaks at each draw (Pyro's
                    apply = torch.compiler.disable(apply)  # handlers are untraceable), but is never recompiled
                if p.where == "out":  # prepend: before any hook of the user's (they see what the next layer sees)
                    handles.append(module.register_forward_hook(lambda mod, i, o, apply=apply: apply(o),
                                                                prepend=True))
                else:
                    handles.append(module.register_forward_pre_hook(
                        lambda mod, i, apply=apply: (apply(i[0]), *i[1:])))
        return handles, heads


def sparsify(net: nn.Module, method: str, example_input: torch.Tensor, *, include: Selector | None = None,
             exclude: Selector | None = None, num_data: int | None = None, strict: bool = False,
             **options) -> SparseModel:
    """Attach ``method`` to a deep copy of ``net`` and return the Pyro model (see the module docstring).

    :param net: any ``nn.Module`` mapping ``[B, *input_shape]`` to logits ``[B, classes]``; it is not changed.
    :param method: a key of :data:`METHODS` (``svd``, ``sbp``, ``bb``, ``dbb``, or one added by
        :func:`register_method`).
    :param example_input: one batch ``[B, *input_shape]`` (``B >= 1``) used to trace the network once (channel
        groups, execution order); its shape fixes ``input_shape``.
    :param include, exclude: selectors (see the module docstring); ``exclude`` wins.
    :param num_data: N, the training-set size (the likelihood is scaled by N/B; the training engine sets it).
    :param strict: unit methods: refuse the network when a channel group cannot be pruned exactly (it passes through a
        layer whose channels cannot be removed, e.g. a GroupNorm or LayerNorm over them). Default ``False``: such a
        group gets no latent (it stays dense), is listed in ``model.skipped`` (``{"group", "reason"}``), and one
        warning names them all (docs/design.md, contract 11).
    :param options: ``threshold``: the keep rule's threshold of every method, read by the ``.eval()`` network and
        by :func:`pyro_sparse.compact` (log α for SVD, default 3; SNR for SBP, default 1; E[π] for BB/DBB, default
        1e-3; :meth:`SparseModel.set_thresholds`); ``customized_pruners``: Torch-Pruning pruners of your own layer
        types, ``{layer type: torch_pruning.pruner.function.BasePruningFunc}``, passed to its
        dependency graph here and in :func:`pyro_sparse.compact` (give them to :func:`pyro_sparse.load_compact`
        too); without one, a channel group that passes through a layer of yours with its own parameters stays dense
        and is listed in ``model.skipped``; the rest go to the unit modules that take them
        (``temperature``, ``alpha_over_k`` for BB/DBB; ``a``/``b`` for SBP; ``rho2``, ``eps``, ``momentum`` for DBB).
        SVD takes no other option.
    :raises InvalidInputError: unknown method or option (naming the valid ones), bad selector, nothing selected,
        ``example_input`` not a finite float batch whose forward pass gives logits ``[B, classes]`` (e.g. an
        unbatched example), a bad ``num_data`` or threshold.
    :raises UnsupportedModelError: with ``strict=True``, a channel group passes through a layer that cannot be pruned
        exactly (the message names it and the way out: ``exclude`` its producer); the tracer cannot follow the
        network (unit methods).
    """
    _check_sparsify_args(method, net, example_input, num_data)
    spec = METHODS[method]
    threshold = options.pop("threshold", None)
    pruners = customized_pruners_of(options.pop("customized_pruners", None))
    options = _unit_options(spec, options)
    net = copy.deepcopy(net)
    example_input = example_input.detach().to(next(iter(net.parameters()), example_input).device)
    _check_batched(net, example_input)
    model = SparseModel(net, spec, tuple(example_input.shape[1:]), num_data, example_input)
    model.customized_pruners = pruners
    _check_selector(include, "include")
    _check_selector(exclude, "exclude")
    chosen = {name: m for name, m in net.named_modules()
              if isinstance(m, spec.layer_types) and (include is None or matches(include, name, m))
              and not matches(exclude, name, m)}
    if not chosen:
        raise InvalidInputError(f"sparsify({method!r}): no layer selected (supported types: "
                                f"{', '.join(t.__name__ for t in spec.layer_types)}); check include/exclude")
    if spec.kind == "weights":
        _attach_weight_latents(model, net, spec, chosen, include, exclude)
        model.set_thresholds(weight=threshold)
        return model
    _attach_unit_latents(model, net, spec, chosen, example_input, options, bool(strict))
    model.set_thresholds(unit=threshold)
    return model


def _check_sparsify_args(method, net, example_input, num_data) -> None:
    """:func:`sparsify`'s arguments by type and value. :raises InvalidInputError: one line naming the argument."""
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(net, nn.Module):
        raise InvalidInputError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not torch.is_tensor(example_input) or example_input.dim() < 2 or example_input.shape[0] < 1:
        raise InvalidInputError("example_input must be a batch tensor [B, *input_shape] with B >= 1, got "
                                f"{list(example_input.shape) if torch.is_tensor(example_input) else example_input!r}")
    if not example_input.is_floating_point() or example_input.device.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"example_input must be a float tensor on cpu or cuda (a batch of real inputs), got "
                                f"{example_input.dtype} on {example_input.device}")
    if not bool(torch.isfinite(example_input).all()):
        raise InvalidInputError("example_input holds non-finite values; expected a batch of real inputs")
    if num_data is not None and (isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1):
        raise InvalidInputError(f"num_data must be the number of training examples (a positive integer), got "
                                f"{num_data!r}")


def _attach_weight_latents(model: SparseModel, net: nn.Module, spec: Method, chosen: dict[str, nn.Module],
                           include, exclude) -> None:
    """A latent weight (``spec.prior``, :class:`~pyro_sparse.nn.svd.WeightSite`) for each chosen layer's ``weight``
    and each selected ``nn.MultiheadAttention``'s packed query/key/value ``in_proj_weight`` (its output projection
    is an ``nn.Linear``, chosen as such); the point estimate stays as a buffer, for :func:`compact`."""
    attention = {f"{name}.in_proj": m for name, m in net.named_modules()
                 if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim
                 and (include is None or matches(include, name, m)) and not matches(exclude, name, m)}
    for name, m in [*chosen.items(), *attention.items()]:
        key, attr = key_of(name), "weight" if name in chosen else "in_proj_weight"
        model.weight_layers[key] = name if name in chosen else name.rpartition(".")[0]
        if attr != "weight":
            model.weight_attrs[key] = attr
        model.weights[key] = WeightSite(getattr(m, attr), spec.prior)
        weight = getattr(m, attr).detach()
        delattr(m, attr)  # the latent θ replaces the point estimate; the tensor stays, as a buffer
        m.register_buffer(attr, weight)


def _unit_options(spec: Method, options: dict) -> dict:
    """``options`` checked against what the method's unit modules take (``threshold`` is taken out before).

    :raises InvalidInputError: an option the method does not use, naming the valid ones."""
    valid: list[str] = []
    for factory in (spec.unit, spec.shared_unit) if spec.kind == "units" else ():
        if factory is not None:
            valid += [p for p in inspect.signature(factory).parameters if p != "num_units" and p not in valid]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InvalidInputError(f"sparsify({spec.name!r}): unknown option(s) {', '.join(map(repr, unknown))}; valid: "
                                f"{', '.join(['threshold', *valid])}")
    return options


def _check_selector(selector, what: str) -> None:
    """:raises InvalidInputError: ``selector`` (or an item of it) is not a type, glob, predicate or list of these."""
    items = selector if isinstance(selector, (list, tuple, set, frozenset)) else [selector]
    for item in items:
        if item is not None and not isinstance(item, (type, str)) and not callable(item):
            raise InvalidInputError(f"{what} selector {item!r}: expected a module type, a name glob, a predicate "
                                    "(name, module) -> bool, or a list of these")


def _check_batched(net: nn.Module, example_input: torch.Tensor) -> None:
    """One forward pass of ``example_input``: it must give logits ``[B, classes]`` for its ``B`` examples.

    :raises InvalidInputError: the pass fails, or gives another shape (e.g. an unbatched example that a conv layer
        took for a batch of one)."""
    was_training = net.training
    net.eval()
    b = example_input.shape[0]
    try:
        with torch.no_grad():
            out = net(example_input)
    except Exception as e:
        raise InvalidInputError(f"net(example_input) failed on inputs {list(example_input.shape)} ({one_line(e)}); "
                                "example_input must be a batch [B, *input_shape] (add the batch dim: "
                                "x.unsqueeze(0))") from None
    finally:
        net.train(was_training)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != b:
        got = list(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise InvalidInputError(f"net(example_input) gave {got} for inputs {list(example_input.shape)}; expected "
                                f"logits [{b}, classes]: example_input must be a batch [B, *input_shape] (add the "
                                "batch dim: x.unsqueeze(0))")


def _attach_unit_latents(model: SparseModel, net: nn.Module, spec: Method, chosen: dict, example_input, options,
                         strict: bool) -> None:
    """A unit method's latents: channel groups and dense-layer inputs, where pruning is exact; the rest is reported
    in ``model.skipped`` (or refused with ``strict``)."""
    if any(isinstance(m, NORM_LAYERS) for m in net.modules()):
        options = {**spec.norm_options, **options}
    heads = []  # (attention, K): one latent per head; the output projection's inputs get no unit of their own
    for name, attention in _attention_projections(net, chosen).items():  # read as .weight by the attention (torch's)
        del chosen[name]  # or carrying the heads (qkv attentions): no unit on their inputs
        m = net.get_submodule(attention)
        problem = head_pruning_problem(m) if isinstance(m, nn.MultiheadAttention) else qkv_head_problem(m)
        if problem is None:
            heads.append((attention, head_count(m)))
            continue
        reason = f"the heads of the {type(m).__name__} {attention!r} get no latent: {problem}"
        if strict:
            raise UnsupportedModelError(f"{reason}; exclude its output projection (exclude=[{name!r}])")
        model.skipped.append({"group": name, "reason": reason})
    for name, m in net.named_modules():  # heads that cannot go: the projection's input features are units instead
        layout = head_layout(m)
        problem = qkv_head_problem(m) if layout is not None and f"{name}.{layout.proj}" in chosen else None
        if problem:
            model.skipped.append({"group": name, "reason": f"the heads of the {type(m).__name__} {name!r} get no "
                                  f"latent: {problem}; its projection's input features get one each"})
    _place_units(model, net, spec, chosen, example_input, options, strict=strict, heads=heads)
    if model.skipped:
        groups = ", ".join(repr(s["group"]) for s in model.skipped)
        warnings.warn(f"sparsify({spec.name!r}): {len(model.skipped)} channel group(s) left dense (no latent), their "
                      f"channels cannot be removed exactly: {groups}; model.skipped says why, strict=True refuses "
                      "instead", stacklevel=2)


def _attention_projections(net: nn.Module, chosen: dict) -> dict[str, str]:
    """``{layer: its attention}`` for the layers of ``chosen`` (names) that take an attention's heads' outputs: an
    ``nn.MultiheadAttention``'s ``out_proj`` (the attention uses its weight inside its own functional call, so neither
    a hook nor a ``Select`` in front of it would be seen) and a qkv attention's output projection (timm's ``proj``,
    Hugging Face's ``output.dense``: its inputs are the heads; :func:`sparsify` puts the head latents there,
    :func:`pyro_sparse.compact` no ``Select``)."""
    inside = {f"{name}.{child}": name for name, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)
              for child, _ in m.named_modules() if child}
    # (a qkv attention whose heads cannot go: its projection's input features are units, as any dense layer's)
    for name, m in net.named_modules():
        layout = head_layout(m)
        if layout is not None and not qkv_head_problem(m):
            inside[f"{name}.{layout.proj}" if name else layout.proj] = name
    return {name: inside[name] for name in chosen if name in inside}


def group_tie(group, root: str, k: int, names: dict, dg) -> tuple[list[int] | None, str | None]:
    """How the ``k`` channels of a channel group that enters a grouped convolution (``layers.is_grouped``) go
    together: ``(tie, None)`` with ``tie[r]`` the position of root channel ``r`` inside its conv group
    (``layers.entering_positions``: one latent per position); ``(None, None)`` for a group that enters none;
    ``(None, reason)`` for one that cannot be pruned exactly (it meets more than one grouped convolution, or only part
    of it enters one). A group produced by a grouped convolution needs no tie: its groups lose equal counts
    (``layers.equal_per_group``, in ``compact``)."""
    grouped = [(it, is_out(it.dep.handler, dg)) for it in group.items
               if it.dep.target.module in names and is_grouped(it.dep.target.module)]
    entering = [it for it, out in grouped if not out]
    if not entering and len(grouped) <= 1:
        return None, None
    if len(grouped) > 1:
        both = " and ".join(repr(names[it.dep.target.module]) for it, _ in grouped[:2])
        return None, (f"channel group of {root!r}: its channels meet two grouped convolutions ({both}), whose "
                      f"groups would each constrain them; exclude {root!r} (exclude=[{root!r}])")
    it = entering[0]
    m = it.dep.target.module
    roots = list(map(int, it.root_idxs))
    if sorted(roots) != list(range(k)) or len(roots) != m.in_channels:
        return None, (f"channel group of {root!r}: only part of its channels enter the grouped convolution "
                      f"{names[m]!r} (groups={m.groups}), whose input channels go only at the same positions in "
                      f"every group; exclude {root!r} (exclude=[{root!r}])")
    tie = [0] * k
    for r, j in zip(roots, entering_positions(m, list(map(int, it.idxs))), strict=True):
        tie[r] = j
    return tie, None


def _group_places(group, root: str, k: int, names: dict, dg) -> tuple[list[Placement], str | None, list | None]:
    """Where a channel group's unit latent multiplies (after each normalisation layer of the group, else after the
    producing layer), or ``([], reason, None)`` when a layer of the group cannot be pruned exactly; the third item is
    the group's :func:`group_tie` (``None``: one latent per channel)."""
    norms = {it.dep.target.module for it in group.items
             if is_out(it.dep.handler, dg) and isinstance(it.dep.target.module, NORM_LAYERS)}
    tie, problem = group_tie(group, root, k, names, dg)
    if problem is not None:
        return [], problem, None
    foreign = _foreign_layer(group, names)
    if foreign is not None:
        return [], (f"channel group of {root!r}: its channels pass through {names[foreign]!r} "
                    f"({type(foreign).__name__}), a layer of yours with its own parameters that Torch-Pruning does not "
                    f"know; pass sparsify(..., customized_pruners={{{type(foreign).__name__}: pruner}}) or exclude "
                    f"{root!r} (exclude=[{root!r}])"), None
    places = []
    for it in group.items:
        m = it.dep.target.module
        if m not in names or not is_out(it.dep.handler, dg):
            continue
        if isinstance(m, NORM_LAYERS):
            if not m.affine:
                return [], (f"channel group of {root!r}: {names[m]!r} is a {type(m).__name__} without affine "
                            f"parameters, into which the unit multipliers cannot be folded; exclude {root!r}"), None
        elif isinstance(m, WEIGHT_LAYERS):
            followers = {n.module for n in dg.module2node[m].outputs}
            if followers & norms:
                continue  # the multiplier acts after its normalisation layer
        elif list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
            return [], (f"channel group of {root!r}: its channels pass through {names[m]!r} ({type(m).__name__}), "
                        f"which pyro-sparse cannot prune exactly; exclude {root!r} (exclude=[{root!r}])"), None
        else:
            continue
        idx, ridx = list(map(int, it.idxs)), list(map(int, it.root_idxs))
        if tie is not None:
            ridx = [tie[r] for r in ridx]
        size = channels(m, "out", dg)
        identity = tie is None and size == k and idx == list(range(k)) and ridx == list(range(k))
        places.append(Placement(names[m], "out", None if identity else torch.tensor(idx),
                                None if identity else torch.tensor(ridx)))
    return places, None, tie


def _foreign_layer(group, names: dict) -> nn.Module | None:
    """The first layer without sublayers whose own parameters of two or more dimensions the tracer met only as loose
    tensors in ``group`` (a user's layer calling ``F.conv2d(x, self.weight)``, of a type no Torch-Pruning pruner
    covers): Torch-Pruning guesses which dimension holds the channels, so the group cannot be pruned safely. A vector
    (a per-channel scale) has one dimension to prune, and free parameters of a container (a ViT's class token and
    position embedding) do not count."""
    loose = {id(it.dep.target.module) for it in group.items
             if isinstance(it.dep.target.module, nn.Parameter) and it.dep.target.module.dim() >= 2}
    if not loose:
        return None
    for m in names:
        if isinstance(m, nn.Module) and not any(True for _ in m.children()) and any(
                id(p) in loose for p in m.parameters(recurse=False)):
            return m
    return None


def _place_units(model: SparseModel, net: nn.Module, spec: Method, chosen: dict, example_input, options,
                 strict: bool = True, heads: Sequence[tuple[str, int]] = ()) -> None:
    dg = dependency_graph(net, example_input, model.customized_pruners)
    outputs = _output_layers(net, example_input)
    order = execution_order(net, example_input)
    names = {m: n for n, m in net.named_modules()}
    units: list[tuple[int, str, int, list[Placement]]] = []  # (first call, key, K, placements)
    for root, group in channel_groups(net, dg, outputs):
        if group is None:
            if strict:
                raise UnsupportedModelError(f"{ran_away(root)}; exclude {root!r} (exclude=[{root!r}])")
            model.skipped.append({"group": root, "reason": ran_away(root)})
            continue
        k = len(group.items[0].idxs)
        info = ChannelGroup(root)
        model.groups.append(info)
        producers = [it for it in group.items if is_out(it.dep.handler, dg) and it.dep.target.module in names
                     and isinstance(it.dep.target.module, PRODUCER_LAYERS)]
        if not producers or not all(names[it.dep.target.module] in chosen for it in producers):
            continue
        places, problem, tie = _group_places(group, root, k, names, dg)
        if problem is not None:
            if strict:
                raise UnsupportedModelError(problem)
            model.skipped.append({"group": root, "reason": problem})
            continue
        # named after the producer that runs first (the stem of a residual stream, not its last block)
        first_producer = min((names[it.dep.target.module] for it in producers), key=lambda n: order.get(n, math.inf))
        key = f"{key_of(first_producer)}_units"
        info.unit, info.tie = key, tie
        first = min(order.get(p.module, math.inf) for p in places)
        units.append((first, key, k if tie is None else max(tie) + 1, places))
    taken = {u[1] for u in units}
    for name, m in chosen.items():
        if isinstance(m, nn.Linear):
            key = f"{key_of(name)}_units" if f"{key_of(name)}_units" not in taken else f"{key_of(name)}_in_units"
            units.append((order.get(name, math.inf) - 0.5, key, m.in_features, [Placement(name, "in")]))
    for name, k in heads:
        units.append((order.get(name, math.inf), f"{key_of(name)}_heads", k, [Placement(name, "heads")]))
    if not units:
        raise InvalidInputError(f"sparsify({spec.name!r}): no unit position among the selected layers "
                                "(conv output channels or dense-layer inputs); check include/exclude")
    for _, key, k, places in sorted(units, key=lambda u: u[0]):
        shared = len(places) > 1 or any(p.index is not None for p in places)
        factory = spec.shared_unit if shared and spec.shared_unit is not None else spec.unit
        takes = inspect.signature(factory).parameters
        try:
            unit = factory(k, **{name: v for name, v in options.items() if name in takes})
        except TypeError as e:
            raise InvalidInputError(f"sparsify({spec.name!r}): bad option ({e})") from None
        model.units[key] = unit
        model.placements[key] = places
