"""``build_model``, the registry entry point: a plain network of :mod:`pyro_sparse.models.nets` (or the user's own,
by ``package.module:factory``) with a method attached by :func:`pyro_sparse.sparsify` (``dense``: none, the
point-estimate baseline), as a :class:`pyro_sparse.model.Classifier`. One path for every method and network: no
per-method copy of an architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pyro_sparse.model import Classifier, sample_shape
from pyro_sparse.nn import set_train_clip
from pyro_sparse.sparsify import METHODS as SPARSIFY_METHODS
from pyro_sparse.sparsify import sparsify

from . import nets

ARCHS = tuple(nets.NETS)
__all__ = ["ARCHS", "Classifier", "build_model", "load_pretrained", "method_names", "sample_shape"]


def method_names() -> tuple[str, ...]:
    """``dense`` and every method :func:`pyro_sparse.sparsify` knows now (the built-in ones and those added by
    :func:`pyro_sparse.register_method`): what ``build_model``, ``pyro-sparse train --method`` and ``reproduce``
    accept."""
    return ("dense", *SPARSIFY_METHODS)


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
    if method not in method_names():
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(method_names())}")
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
    for key in getattr(model, "weight_layers", {}):  # SVD: the guide's θ starts at the loaded weight
        with torch.no_grad():
            module, _, attr = model.weight_param(key).rpartition(".")
            model.weights[key].weight_init.copy_(getattr(model.net.get_submodule(module), attr))
    return used
