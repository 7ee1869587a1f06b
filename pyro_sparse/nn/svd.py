"""Sparse variational dropout layers: weights with the improper log-uniform prior (Molchanov et al. 2017)."""

from __future__ import annotations

import math

import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn

from ..distributions import LogUniform, log_alpha
from ..poutine import local as local_ops


def _kaiming(shape, fan_in: int) -> torch.Tensor:
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    return w


class _SVDMixin:
    """Shared pruning rule of the SVD layers."""

    #: site attribute holding the latent weight
    latent_sites = ("weight",)
    #: if set, weights with ``log α >= train_clip`` leave the training-time mean too (reference code's train_clip)
    train_clip: float | None = None

    def weight_mask(self, q, threshold: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-time weights from the Gaussian posterior ``q = N(θ, σ²)`` (batch shape = weight shape).

        Returns ``(mean_weight, keep)``: θ with every weight whose ``log α = log σ² − log θ² >= threshold`` zeroed,
        and the boolean keep mask. Molchanov et al. 2017, Sec. 4.3 (threshold 3).
        """
        keep = log_alpha(q.loc, q.scale) < threshold
        return torch.where(keep, q.loc, torch.zeros_like(q.loc)).detach(), keep


def set_train_clip(module: torch.nn.Module, threshold: float | None) -> int:
    """Set :attr:`SVDLinear.train_clip` / :attr:`SVDConv2d.train_clip` of every SVD layer in ``module``.

    :param threshold: log α above which weights leave the training-time mean; ``None`` switches clipping off.
    :returns: the number of SVD layers changed (0 for a network without SVD layers).
    """
    layers = [m for m in module.modules() if isinstance(m, _SVDMixin)]
    for m in layers:
        m.train_clip = threshold
    return len(layers)


class SVDLinear(PyroModule, _SVDMixin):
    """Linear layer ``y = x Wᵀ + b`` whose weight ``W [out, in]`` has the LogUniform prior; ``b`` is a point estimate.

    In training the pre-activation is sampled with the local reparameterisation trick
    (:func:`pyro_sparse.poutine.linear`). ``weight_init`` (not saved) seeds the guide's θ. ``train_clip`` (a log α
    threshold, default ``None``: off) also drops the pruned weights from the training-time mean.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = PyroSample(LogUniform().expand([out_features, in_features]).to_event(2))
        self.register_buffer("weight_init", _kaiming((out_features, in_features), in_features), persistent=False)
        bound = 1 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_ops.linear(x, self.weight, self.bias, clip_threshold=self.train_clip)


class SVDConv2d(PyroModule, _SVDMixin):
    """2-D convolution whose kernel ``[out, in, k, k]`` has the LogUniform prior; bias is a point estimate."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), (stride, stride), (padding, padding)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = PyroSample(LogUniform().expand(list(shape)).to_event(4))
        self.register_buffer("weight_init", _kaiming(shape, in_channels * kernel_size**2), persistent=False)
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_ops.conv2d(x, self.weight, self.bias, clip_threshold=self.train_clip, stride=self.stride,
                                padding=self.padding)
