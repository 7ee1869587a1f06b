"""Sparse variational dropout's latent weights (Molchanov et al. 2017): the log-uniform prior on a layer's weight.

:func:`pyro_sparse.sparsify` attaches one :class:`WeightSite` per selected ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` of the user's network; the layer itself stays, and runs with the latent weight inside
:class:`pyro_sparse.poutine.LocalOps` (local reparameterisation trick).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.nn import PyroModule, PyroSample


class WeightSite(PyroModule):
    """The latent weight of one layer: ``weight`` (a ``PyroSample`` with the method's prior, event shape = the
    weight's shape) and ``weight_init`` (the layer's weight when sparsified, not saved: the guide's initial θ).

    :ivar train_clip: if set, weights with ``log α >= train_clip`` also leave the training-time mean (the reference
        code's ``train_clip``; :func:`set_train_clip`); ``None`` (default): off.
    """

    train_clip: float | None = None

    def __init__(self, weight: torch.Tensor, prior: Callable):
        super().__init__()
        self.register_buffer("weight_init", weight.detach().clone(), persistent=False)
        self.weight = PyroSample(prior(weight.shape))


def set_train_clip(module: torch.nn.Module, threshold: float | None) -> int:
    """Set :attr:`WeightSite.train_clip` of every latent weight in ``module``.

    :param threshold: log α above which weights leave the training-time mean; ``None`` switches clipping off.
    :returns: the number of latent weights changed (0 for a model without any).
    """
    sites = [m for m in module.modules() if isinstance(m, WeightSite)]
    for m in sites:
        m.train_clip = threshold
    return len(sites)
