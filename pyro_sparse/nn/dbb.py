"""Dependent beta-Bernoulli dropout (DBB, Lee et al. 2018, Sec. 3.3, Eq. 20–24).

The keep probability of unit k depends on the input: ``π_k(x) = π_k · clamp(γ_k (h_k − μ_k)/s_k + β_k, ε, 1 − ε)``,
with ``h`` the unit's value (global-average-pooled for conv channels), ``μ, s`` running statistics of ``h``, ``γ`` a
point estimate and ``β ~ N(0, ρ²)`` a latent with a Gaussian guide (ρ² = 5). As in the authors' code, ``h`` enters
the gate through a stop-gradient and γ trains with the gate learning rate (``gate_parameters``). ``π ~ Beta(α/K, 1)``
as in BB; in the two-stage protocol its guide comes frozen from a BB run (``--method dbb --init-from BB_RUN``).

At test time (Eq. 24) the gate is ``E[π_k] · clamp(γ_k (h_k − μ_k)/s_k + E[β_k], ε, 1 − ε)``, zeroed where it falls
below the pruning threshold, so the active units differ per example (:class:`DynamicGate`).
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Normal
from pyro.nn import PyroSample
from torch import nn

from ..settings import param_value
from .units import BBGate, _broadcast_units


def _summary(x: torch.Tensor) -> torch.Tensor:
    """``[B, K, *spatial] → [B, K]`` (global average pooling for conv feature maps)."""
    return x if x.dim() == 2 else x.flatten(2).mean(-1)


class DBBGate(BBGate):
    """Input-dependent beta-Bernoulli gate on ``num_units`` units (dim 1 of the input).

    :param rho2: prior variance of β (default 5).
    :param eps: clamp tolerance ε of the input-dependent factor.
    :param momentum: update rate of the running mean / std of ``h`` (training only).
    """

    #: point estimates trained with the gate learning rate (``lr_latent``), without weight decay: γ sets how sharply
    #: the keep probability follows the input (the reference code trains it with the other dropout variables)
    gate_parameters = ("gamma",)

    def __init__(self, num_units: int, alpha_over_k: float = 1e-4, temperature: float = 0.1, rho2: float = 5.0,
                 eps: float = 1e-6, momentum: float = 0.1, init_keep: float | None = None,
                 noise: str = "per-example"):
        super().__init__(num_units, alpha_over_k, temperature, init_keep, noise)
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(num_units))
        self.register_buffer("rho", torch.tensor(math.sqrt(rho2)))
        self.register_buffer("running_mean", torch.zeros(num_units))
        self.register_buffer("running_std", torch.ones(num_units))
        self.register_buffer("num_batches", torch.tensor(0))
        self.register_buffer("beta_init", torch.ones(num_units), persistent=False)  # gates open at the start
        self.beta = PyroSample(lambda self: self.cached_prior("beta", self.beta_prior, self.rho))

    def beta_prior(self):
        """``N(0, ρ²)`` per unit, event shape ``[K]``."""
        return Normal(torch.zeros_like(self.rho).expand(self.num_units), self.rho.expand(self.num_units),
                      validate_args=False).to_event(1)

    def factor(self, h: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``clamp(γ (h − μ)/s + β, ε, 1 − ε)``, shape ``[B, K]``."""
        z = torch.addcmul(beta, h - self.running_mean, param_value(self, "gamma") / self.running_std)  # γ (h − μ)/s + β
        return z.clamp(self.eps, 1 - self.eps)

    def multiplier(self, x: torch.Tensor) -> torch.Tensor:
        # the gate reads its input without steering it (as the reference code does), in its statistics' dtype (float32
        # under bf16 autocast, whose convolutions give bfloat16 maps)
        h = _summary(x).detach().to(self.running_mean.dtype)
        if self.training:
            with torch.no_grad():  # the first batch sets the statistics, later ones move them (no host read)
                m, s = h.mean(0), h.std(0).clamp_min(1e-5) if h.shape[0] > 1 else torch.ones_like(h[0])
                weight = torch.where(self.num_batches == 0, 1.0, self.momentum).to(m.dtype)
                self.running_mean.lerp_(m, weight)
                self.running_std.lerp_(s, weight)
                self.num_batches.add_(1)  # in place: no module attribute is set
        pi = self.draw(self.pi, x.shape[0])
        beta = self.draw(self.beta, x.shape[0])
        return self.gate(pi * self.factor(h, beta))

    input_dependent = True

    def compact_gate(self, posterior: dict, index: torch.Tensor, threshold: float | None,
                     features_last: bool = False) -> DynamicGate:
        """Eq. 24 as a :class:`DynamicGate` on the kept channels ``index``: ``E[π]`` (0 on pruned units), γ, the
        running statistics and ``E[β]``."""
        threshold = self.default_threshold if threshold is None else threshold
        gate = DynamicGate(int(index.numel()), self.eps, threshold, features_last=features_last)
        keep, _ = self.keep(posterior["pi"], threshold)
        mean = posterior["pi"].mean
        cpu = index.cpu()
        with torch.no_grad():
            gate.scale.copy_(torch.where(keep, mean, torch.zeros_like(mean)).detach().cpu()[cpu])
            gate.gamma.copy_(self.gamma.detach().cpu()[cpu])
            gate.mean.copy_(self.running_mean.cpu()[cpu])
            gate.std.copy_(self.running_std.cpu()[cpu])
            gate.beta.copy_(posterior["beta"].mean.detach().cpu()[cpu])
        return gate

    def test_multiplier(self, x: torch.Tensor, posterior: dict, threshold: float | None = None) -> torch.Tensor:
        """Eq. 24: ``E[π]·clamp(γ (h − μ)/s + E[β], ε, 1 − ε)`` per example ``[B, K]``, zeroed below the threshold."""
        threshold = self.default_threshold if threshold is None else threshold
        g = posterior["pi"].mean.detach() * self.factor(_summary(x), posterior["beta"].mean.detach())
        return torch.where(g >= threshold, g, torch.zeros_like(g))


class DynamicGate(nn.Module):
    """Test-time DBB gate of a compact network: ``x · g(h)``, ``g = scale · clamp(γ (h − μ)/s + β, ε, 1 − ε)``
    with ``g`` zeroed below ``threshold`` (Lee et al. 2018, Eq. 24). ``h`` is ``x`` for ``[B, K]`` inputs, its
    spatial mean for ``[B, K, *spatial]``. ``features_last``: the units are the last dim of the input (a dense
    layer's input features, e.g. ``[B, T, F]`` tokens), else dim 1.

    The stored buffers are the paper's quantities (``scale`` = E[π], ``gamma``, ``mean``, ``std``, ``beta``; shape
    ``[K]``); the forward pass computes ``γ (h − μ)/s + β`` as the training model does (``γ/s`` computed once and
    reused until a buffer changes): a subtraction and a fused multiply-add, then in place a clamp, a scale and a
    threshold, and the product with ``x`` — six passes over ``[B, K]`` (issue 29: the gates had cost more
    than the matmuls they gate).
    ``last_active`` is the per-example count of active units of the last call (``[B]``), for reports of active
    units and FLOPs as test-set averages."""

    def __init__(self, num_units: int, eps: float = 1e-6, threshold: float = 1e-3, features_last: bool = False):
        super().__init__()
        self.num_units, self.eps, self.threshold = num_units, eps, threshold
        self.features_last = features_last
        for name in ("scale", "gamma", "mean", "std", "beta"):
            self.register_buffer(name, torch.zeros(num_units))
        self._last_gate: torch.Tensor | None = None
        self._slope_cache: tuple | None = None
        self._below: tuple[float, float] | None = None

    @property
    def last_active(self) -> torch.Tensor | None:
        return None if self._last_gate is None else (self._last_gate > 0).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.features_last and x.dim() > 2:
            return self._gate(x.movedim(-1, 1)).movedim(1, -1)
        return self._gate(x)

    def _slope(self) -> torch.Tensor:
        """``γ/s``, recomputed when a buffer was replaced or written in place."""
        bufs = (self.gamma, self.std)
        if torch.compiler.is_compiling() or any(b.is_inference() for b in bufs):
            # a traced graph computes it (no Python-side cache in a graph); inference tensors (buffers made under
            # torch.inference_mode) keep no version counter that would tell of an in-place change
            return self.gamma / self.std
        key = tuple((b.data_ptr(), b._version) for b in bufs)
        if self._slope_cache is None or self._slope_cache[0] != key:
            with torch.no_grad():
                self._slope_cache = key, self.gamma / self.std
        return self._slope_cache[1]

    def _threshold_below(self) -> float:
        """F.threshold keeps g > t: the largest float32 below ``threshold`` keeps g ≥ threshold, the papers' rule."""
        if self._below is None or self._below[0] != self.threshold:
            t = torch.tensor(self.threshold, dtype=torch.float32)
            self._below = self.threshold, float(torch.nextafter(t, torch.tensor(-math.inf)))
        return self._below[1]

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        # γ (h − μ)/s + β in the training model's own arithmetic (DBBGate.factor): the affine form h·γ/s + (β − γμ/s)
        # cancels catastrophically where s is tiny (a pixel constant over the training batches: s = 1e-5), which
        # moved gates by ~5e-4 and failed compact's self-check
        g = torch.addcmul(self.beta, _summary(x) - self.mean, self._slope()).clamp_(self.eps, 1 - self.eps)
        g = g.mul_(self.scale)
        g = nn.functional.threshold(g, self._threshold_below(), 0.0, inplace=True)
        if not torch.compiler.is_compiling():  # a record for reports, not part of an exported or compiled graph
            self._last_gate = g.detach()
        return x * _broadcast_units(g, x)
