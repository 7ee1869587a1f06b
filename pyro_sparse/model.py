"""The Pyro model of a classifier: a network + a categorical likelihood over a data plate (:class:`Classifier`).

The core model every method builds on (:class:`pyro_sparse.SparseModel` is a ``Classifier`` with latents); the model
zoo (:mod:`pyro_sparse.models`) holds only plain architectures and :func:`~pyro_sparse.models.build_model`.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import get_plates
from torch import nn

from .settings import direct_reads, switch


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
    dtype (the training engine switches ``torch.bfloat16`` on for ``TrainConfig(bf16=True)`` inside its steps, through
    :func:`pyro_sparse.settings.training_switches`, without setting this attribute); the logits
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
        dtype = switch("autocast_dtype", self.autocast_dtype)
        if dtype is None or not self.training:
            logits = self.network(x)
        else:  # the network's convolutions and matrix products in low precision; the likelihood in float32
            with torch.autocast(x.device.type, dtype=dtype):
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
