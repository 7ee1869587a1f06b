"""Architectures of the papers (METHODS.md §4) as Pyro models: a network + a categorical likelihood over a data plate.

Every architecture is buildable for every method from the same layer names, so a dense run's ``state_dict``
initialises a sparse run (``--init-from``):

* ``dense``: plain ``PyroModule[nn.Linear/Conv2d]`` (point estimates; pretraining and baselines);
* ``svd``: every weight layer is an :class:`~pyro_sparse.nn.SVDLinear` / :class:`~pyro_sparse.nn.SVDConv2d`;
* ``sbp`` / ``bb`` / ``dbb``: dense weights plus a unit module (noise or gate) on the inputs of every dense layer
  and on the output channels of every conv layer (METHODS.md §2, §3 placement).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_sparse.nn import BBGate, DBBGate, SBPNoise, Standardize, SVDConv2d, SVDLinear, set_train_clip

ARCHS = ("logreg", "lenet300", "lenet500", "lenet5")
METHODS = ("dense", "svd", "sbp", "bb", "dbb")
_MLP_HIDDEN = {"logreg": [], "lenet300": [300, 100], "lenet500": [500, 300]}

#: unit-module constructors per method (extend with :func:`register_unit`)
UNIT_MODULES: dict[str, Callable[..., nn.Module]] = {"sbp": SBPNoise, "bb": BBGate, "dbb": DBBGate}


def register_unit(method: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``method`` place ``factory(num_units)`` at every unit position of every architecture."""
    UNIT_MODULES[method] = factory


def _linear(method: str, i: int, o: int) -> nn.Module:
    return SVDLinear(i, o) if method == "svd" else PyroModule[nn.Linear](i, o)


def _conv(method: str, ci: int, co: int, k: int) -> nn.Module:
    return SVDConv2d(ci, co, k) if method == "svd" else PyroModule[nn.Conv2d](ci, co, k)


def build_net(arch: str, method: str, input_shape: tuple[int, ...], num_classes: int,
              mean: float = 0.0, std: float = 1.0, train_clip: float | None = None, **unit_kwargs) -> PyroModule:
    """The network ``[B, *input_shape] -> logits [B, num_classes]`` as a ``PyroModule[nn.Sequential]``.

    :param input_shape: one example's shape, ``(1, 28, 28)`` for MNIST or ``(64,)`` for digits.
    :param mean, std: input standardisation (scalars, stored as buffers in the network).
    :param train_clip: SVD only: log α threshold above which weights also leave the training-time mean
        (:attr:`pyro_sparse.nn.SVDLinear.train_clip`); ``None`` (default) keeps every mean.
    :param unit_kwargs: passed to every unit module (e.g. ``temperature`` for BB/DBB).
    :raises ValueError: unknown arch or method, or an input shape the arch cannot take.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    unit = UNIT_MODULES.get(method)
    layers: OrderedDict[str, nn.Module] = OrderedDict()

    def add_unit(name: str, k: int):
        if unit is not None:
            layers[f"{name}_units"] = unit(k, **unit_kwargs)

    if arch == "lenet5":
        if tuple(input_shape) != (1, 28, 28):
            raise ValueError(f"arch lenet5 expects 28x28 images [1, 28, 28], got examples of shape {list(input_shape)}")
        layers["standardize"] = Standardize(mean, std)
        layers["conv1"] = _conv(method, 1, 20, 5)
        add_unit("conv1", 20)
        layers["relu1"] = nn.ReLU()
        layers["pool1"] = nn.MaxPool2d(2)
        layers["conv2"] = _conv(method, 20, 50, 5)
        add_unit("conv2", 50)
        layers["relu2"] = nn.ReLU()
        layers["pool2"] = nn.MaxPool2d(2)
        layers["flatten"] = nn.Flatten()
        sizes = [800, 500, num_classes]
    else:
        in_features = int(torch.Size(input_shape).numel())
        layers["flatten"] = nn.Flatten()
        layers["standardize"] = Standardize(mean, std)
        sizes = [in_features, *_MLP_HIDDEN[arch], num_classes]
    for i in range(len(sizes) - 1):
        name = f"fc{i + 1}"
        add_unit(name, sizes[i])
        layers[name] = _linear(method, sizes[i], sizes[i + 1])
        if i < len(sizes) - 2:
            layers[f"relu_{name}"] = nn.ReLU()
    net = PyroModule[nn.Sequential](layers)
    set_train_clip(net, train_clip)
    return net


def sample_shape() -> tuple[int, ...]:
    """Sizes of the enclosing plates outside the data plate (dims ≤ −2), e.g. ``(k,)`` inside Pyro's vectorised
    particles or ``(num_samples,)`` inside ``Predictive(parallel=True)``; ``()`` when there are none."""
    frames = [f for f in get_plates() if f.dim is not None and f.dim <= -2]
    shape = [1] * max((-f.dim - 1 for f in frames), default=0)
    for f in frames:
        shape[len(shape) + f.dim + 1] = f.size
    return tuple(shape)


class Classifier(PyroModule):
    """Pyro model ``p(y | x) = Categorical(logits = net(x))`` over a data plate of size ``num_data`` (dim −1).

    :param net: the network (see :func:`build_net`).
    :param input_shape: one example's shape; inputs are checked against it.
    :param num_data: N, the training-set size; the minibatch log-likelihood is scaled by N/B.

    ``forward(x [B, *input_shape], y [B] or None) -> logits [*sample_shape, B, classes]``. Inside plates outside the
    data plate (vectorised particles, ``Predictive(parallel=True)``; :func:`sample_shape`), the latent values carry
    those sample dims; the network then runs once on ``S = prod(sample_shape)`` copies of the batch, sample ``s`` on
    copy ``s`` (:mod:`pyro_sparse.poutine.local`), and ``y`` is observed under every sample.
    :raises ValueError: inputs of another shape than ``input_shape``.
    """

    def __init__(self, net: nn.Module, input_shape: tuple[int, ...], num_data: int | None = None):
        super().__init__()
        self.net = net
        self.input_shape = tuple(input_shape)
        self.num_data = num_data

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"model expects inputs [B, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        batch = x.shape[0]
        samples = sample_shape()
        if samples:  # S copies of the batch, one per sample of the latents
            x = x.expand(math.prod(samples), *x.shape).reshape(-1, *x.shape[1:])
        logits = self.network(x)
        if samples:
            logits = logits.reshape(*samples, batch, logits.shape[-1])
        with pyro.plate("data", size=self.num_data or batch, subsample=torch.arange(batch, device=x.device), dim=-1):
            # no argument validation: non-finite logits (a diverging run) give a non-finite loss, which the training
            # engine reports as divergence, instead of an error from inside the distribution
            pyro.sample("obs", dist.Categorical(logits=logits, validate_args=False), obs=y)
        return logits


    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the network on ``x [B (or S·B), *input_shape]``; subclasses change how the net runs
        (:class:`pyro_sparse.SparseModel` attaches its latents here)."""
        return self.net(x)


def build_model(arch: str, method: str, input_shape: tuple[int, ...], num_classes: int, num_data: int | None = None,
                mean: float = 0.0, std: float = 1.0, **net_kwargs) -> Classifier:
    """Build the Pyro model of ``arch`` for ``method`` (see the module docstring; ``net_kwargs``: :func:`build_net`)."""
    net = build_net(arch, method, input_shape, num_classes, mean, std, **net_kwargs)
    return Classifier(net, input_shape, num_data)


def load_pretrained(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Initialise ``model`` from a (dense) run's ``state_dict``; returns the keys used.

    Tensors whose name exists in ``model`` are copied; a dense ``<layer>.weight`` initialises an SVD layer's
    ``weight_init`` (the guide's θ init). Names matching nothing are ignored, shape mismatches raise ValueError.
    """
    own = model.state_dict(keep_vars=True)
    used = []
    for key, value in state_dict.items():
        target = own.get(key)
        if target is None:
            module_name, _, attr = key.rpartition(".")
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                continue
            target = getattr(module, f"{attr}_init", None)
            if not torch.is_tensor(target):
                continue
        if target.shape != value.shape:
            raise ValueError(f"pretrained {key!r} has shape {list(value.shape)}, model expects {list(target.shape)}")
        with torch.no_grad():
            target.copy_(value)
        used.append(key)
    return used
