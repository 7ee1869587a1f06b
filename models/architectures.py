"""The Pyro model of a classifier: a network + a categorical likelihood over a data plate (``Classifier``), and
``build_model``, the registry entry point: a plain network of :mod:`pyro_sparse.models.nets` (or the user's own, by
``package.module:factory``) with a method attached by :func:`pyro_sparse.sparsify` (``dense``: none, the
point-estimate baseline). One path for every method and network: no per-method copy of an architecture.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_sparse.settings import direct_reads

from . import nets

ARCHS = tuple(nets.NETS)
METHODS = ("dense", "svd", "sbp", "bb", "dbb")


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

    :param net: the network (any ``nn.Module``; :mod:`pyro_sparse.models.nets` has the papers').
    :param input_shape: one example's shape; inputs are checked against it.
    :param num_data: N, the training-set size; the minibatch log-likelihood is scaled by N/B.

    ``forward(x [B, *input_shape], y [B] or None) -> logits [*sample_shape, B, classes]``. Inside plates outside the
    data plate (vectorised particles, ``Predictive(parallel=True)``; :func:`sample_shape`), the latent values carry
    those sample dims; the network then runs once on ``S = prod(sample_shape)`` copies of the batch, sample ``s`` on
    copy ``s`` (:mod:`pyro_sparse.poutine.local`), and ``y`` is observed under every sample.
    :raises ValueError: inputs of another shape than ``input_shape``.

    ``autocast_dtype`` (default None): in training mode, run :meth:`network` under ``torch.autocast`` with this
    dtype (the training engine sets ``torch.bfloat16`` for ``TrainConfig(bf16=True)`` while it trains); the logits
    come back float32. Evaluation mode (``.eval()``, compaction) always runs in full precision.
    """

    autocast_dtype: torch.dtype | None = None

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
        if self.autocast_dtype is None or not self.training:
            logits = self.network(x)
        else:  # the network's convolutions and matrix products in low precision; the likelihood in float32
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                logits = self.network(x)
            logits = logits.float()
        if samples:
            logits = logits.reshape(*samples, batch, logits.shape[-1])
        if self.num_data is None and y is not None and not self.__dict__.get("_warned_num_data"):
            object.__setattr__(self, "_warned_num_data", True)  # once per model
            warnings.warn(f"{type(self).__name__}.num_data is not set: the minibatch log-likelihood is not scaled by "
                          "N/B, so the KL weighs as if the data set were one batch; set model.num_data = N (the "
                          "number of training examples; fit and sparsify(num_data=N) set it)", stacklevel=2)
        with pyro.plate("data", size=self.num_data or batch, subsample=torch.arange(batch, device=x.device), dim=-1):
            # no argument validation: non-finite logits (a diverging run) give a non-finite loss, which the training
            # engine reports as divergence, instead of an error from inside the distribution
            pyro.sample("obs", dist.Categorical(logits=logits, validate_args=False), obs=y)
        return logits


    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the network on ``x [B (or S·B), *input_shape]``; subclasses change how the net runs
        (:class:`pyro_sparse.SparseModel` attaches its latents here)."""
        return self._net()(x)

    def _net(self) -> nn.Module:
        """``self.net``, read once per call: each read of a plain ``nn.Module`` attribute of a ``PyroModule`` emits a
        param statement per parameter (Pyro's module statement); none inside the training engine's step
        (:func:`pyro_sparse.settings.direct_param_reads`)."""
        return self._modules["net"] if direct_reads() else self.net


def build_model(arch: str, method: str, input_shape: tuple[int, ...], num_classes: int, num_data: int | None = None,
                mean: float = 0.0, std: float = 1.0, train_clip: float | None = None,
                factory: Callable[[], nn.Module] | None = None, arch_options: dict | None = None,
                **options) -> Classifier:
    """The Pyro model of network ``arch`` with ``method`` attached.

    :param arch: a name of :data:`pyro_sparse.models.nets.NETS`, or ``package.module:factory`` for a user's own
        network, which ``factory`` then builds (nothing is imported here; the CLI imports ``--arch`` itself).
    :param method: ``dense`` (a :class:`Classifier` without latents) or a method of :func:`pyro_sparse.sparsify`.
    :param mean, std: input standardisation inside the network (the networks of ``nets``).
    :param train_clip: SVD only: see :func:`pyro_sparse.nn.set_train_clip`.
    :param factory: the zero-argument callable building the user's network named ``arch``.
    :param arch_options: options of a built-in ``arch`` (``{"k": 0.25}`` for ``vgg_like``, ``{"dropout": "conv"}``
        for ``conv3fc3``), checked by :func:`pyro_sparse.models.nets.check_options`.
    :param options: options passed to :func:`pyro_sparse.sparsify` (e.g. ``temperature``, ``include``).
    :raises ValueError: unknown arch or method, a user's arch without its factory, or an input shape the arch cannot
        take.
    """
    from pyro_sparse.nn import set_train_clip
    from pyro_sparse.sparsify import sparsify

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if ":" in arch:
        if factory is None:
            raise ValueError(f"arch {arch!r} is a user's factory: pass factory=<that callable> (the command line "
                             "imports it from --arch)")
        if arch_options:
            raise ValueError(f"arch_options set options of our architectures; {arch!r} is built by your factory")
        net = nets.user_network(arch, factory)
    elif factory is not None:
        raise ValueError(f"factory= builds a user's arch package.module:factory; arch {arch!r} is built in")
    else:
        net = nets.build(arch, input_shape, num_classes, mean, std, **(arch_options or {}))
    if method == "dense":
        return Classifier(net, input_shape, num_data)
    model = sparsify(net, method, torch.zeros(2, *input_shape), num_data=num_data, **options)
    set_train_clip(model, train_clip)
    return model


def load_pretrained(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Initialise ``model`` from a (dense) run's ``state_dict``; returns the keys used.

    Tensors whose name exists in ``model`` are copied (a dense ``net.<layer>.weight`` also becomes an SVD layer's
    initial θ). Names matching nothing are ignored; shape mismatches raise ValueError.
    """
    own = model.state_dict(keep_vars=True)
    used = []
    for key, value in state_dict.items():
        target = own.get(key)
        if target is None:
            continue
        if target.shape != value.shape:
            raise ValueError(f"pretrained {key!r} has shape {list(value.shape)}, model expects {list(target.shape)}")
        with torch.no_grad():
            target.copy_(value)
        used.append(key)
    for key, path in getattr(model, "weight_layers", {}).items():  # SVD: the guide's θ starts at the loaded weight
        with torch.no_grad():
            model.weights[key].weight_init.copy_(model.net.get_submodule(path).weight)
    return used
