"""Unit-wise sparsifying modules: multiplicative noise (SBP) and gates (BB) on neurons or conv channels.

A unit module multiplies feature ``k`` (dim 1 of its input: a neuron of a dense layer's input, or a conv output
channel) by a positive latent ``θ_k`` (SBP) or a relaxed Bernoulli gate ``z_k`` with keep probability ``π_k`` (BB).
The latent has a prior declared with ``PyroSample``; per-example draws come from
:func:`pyro_sparse.poutine.local_sample`. At test time :func:`pyro_sparse.compact` folds
its posterior summary (``keep`` mask and multiplier) into the layer it acts on and removes the pruned units.
"""

from __future__ import annotations

import math

import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn

from ..distributions import Beta1, TruncatedLogUniform
from ..poutine import local_sample


def _broadcast_units(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape ``[K]`` or ``[B, K]`` → broadcastable against ``x [B, K, *spatial]``."""
    extra = [1] * (x.dim() - 2)
    return v.view(*v.shape, *extra) if v.dim() == 2 else v.view(v.shape[0], *extra)


class UnitModule(PyroModule):
    """Base class: ``num_units`` features along dim 1, one latent per unit in the site named by ``latent_site``."""

    latent_site = ""
    #: how the latents are drawn in training: ``"per-example"`` (default: an independent draw for every example, the
    #: lower-variance estimator) or ``"per-batch"`` (one draw per minibatch shared by its examples, as the authors'
    #: SBP and BB code does; BB's relaxed Bernoulli gates stay per example)
    NOISE = ("per-example", "per-batch")

    def __init__(self, num_units: int, noise: str = "per-example"):
        super().__init__()
        if noise not in self.NOISE:
            raise ValueError(f"noise must be one of {', '.join(self.NOISE)}, got {noise!r}")
        self.num_units = num_units
        self.noise = noise

    def draw(self, value: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Training-time draws ``[batch_size, K]`` of the latent ``value`` (:func:`~pyro_sparse.poutine.local_sample`,
        per example or per minibatch as :attr:`noise` says)."""
        return local_sample(value, batch_size, per_batch=self.noise == "per-batch")

    def cached_prior(self, name: str, make, *sources: torch.Tensor):
        """The prior ``make()`` of latent ``name``, built once and reused while its ``sources`` (the buffers it is
        built from) are the same tensors with the same contents (a device move, ``load_state_dict`` or dtype
        change rebuilds it): a ``PyroSample`` prior is otherwise rebuilt at every step (torch's ``Beta`` stacks
        its concentrations into a ``Dirichlet`` each time)."""
        cache = self.__dict__.setdefault("_prior_cache", {})
        key = tuple((t, t._version) for t in sources)
        hit = cache.get(name)
        if hit is not None and all(a is b and va == vb for (a, va), (b, vb) in zip(hit[0], key, strict=True)):
            return hit[1]
        prior = make()
        cache[name] = (key, prior)
        return prior

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_prior_cache", None)  # deep copies and pickles rebuild their priors from their own buffers
        return state

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_units:
            raise ValueError(
                f"{type(self).__name__} expects inputs [B, {self.num_units}, ...], got {list(x.shape)}"
            )

    #: the name of the posterior summary the keep rule thresholds (:meth:`statistic`)
    statistic_name = "summary"
    #: whether the test-time multiplier depends on the input (DBB): :func:`pyro_sparse.compact` then folds only the
    #: keep mask into the network and keeps the module that :meth:`compact_gate` returns beside the layer
    input_dependent = False

    def compact_gate(self, posterior: dict, index: torch.Tensor, threshold: float | None,
                     features_last: bool = False) -> nn.Module:
        """The test-time gate a compact network keeps for an :attr:`input_dependent` unit, restricted to the kept
        channels ``index`` (``posterior``: ``{attribute: guide distribution}``); ``features_last``: it gates a dense
        layer's input features (the input's last dim)."""
        raise NotImplementedError(f"{type(self).__name__} is not input-dependent: compact folds it into the layer")

    def keep(self, q, threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior summary → ``(keep [K] bool, multiplier [K])`` from the guide distribution ``q`` (batch [K])."""
        raise NotImplementedError

    def statistic(self, q) -> torch.Tensor:
        """The posterior summary ``[K]`` that :meth:`keep` compares with the threshold (units at or above it stay)."""
        raise NotImplementedError

    def multiplier(self, x: torch.Tensor) -> torch.Tensor:
        """The training-time multiplier of the units of ``x [B, K, ...]``: ``[B, K]`` (per-example draws) or ``[K]``
        (one global value). ``forward(x) = x · multiplier(x)``."""
        raise NotImplementedError

    def test_multiplier(self, x: torch.Tensor, posterior: dict, threshold: float | None = None) -> torch.Tensor:
        """The deterministic test-time multiplier ``[K]`` (or ``[B, K]`` for input-dependent gates): the posterior
        summary on kept units, 0 on pruned ones. ``posterior``: ``{attribute: guide distribution}``."""
        keep, mult = self.keep(posterior[self.latent_site], threshold)
        return torch.where(keep, mult, torch.zeros_like(mult))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x * _broadcast_units(self.multiplier(x), x)


class SBPNoise(UnitModule):
    """Multiplicative log-normal noise ``x_k · θ_k`` with prior ``log θ_k ~ Uniform(a, b)`` (Neklyudov et al. 2017).

    Pruning: units with ``SNR = E θ / sqrt(Var θ) < threshold`` (default 1) are removed; kept units are
    multiplied by ``E θ`` at test time (METHODS.md §2).

    :param noise: ``"per-example"`` (default) or ``"per-batch"`` draws of θ (:attr:`UnitModule.noise`).
    """

    latent_site = "theta"
    default_threshold = 1.0
    statistic_name = "SNR"

    def __init__(self, num_units: int, a: float = -20.0, b: float = 0.0, noise: str = "per-example"):
        super().__init__(num_units, noise)
        if not float(a) < float(b):
            raise ValueError(f"SBPNoise needs a < b (log θ bounds), got a={a}, b={b}")
        self.register_buffer("a", torch.tensor(float(a)))
        self.register_buffer("b", torch.tensor(float(b)))
        # checked above once; validate_args=False keeps the per-step prior free of host reads
        self.theta = PyroSample(lambda self: self.cached_prior("theta", self.theta_prior, self.a, self.b))

    def theta_prior(self):
        """``TruncatedLogUniform(a, b)`` per unit, event shape ``[K]``."""
        return TruncatedLogUniform(self.a, self.b, validate_args=False).expand([self.num_units]).to_event(1)

    def multiplier(self, x: torch.Tensor) -> torch.Tensor:
        return self.draw(self.theta, x.shape[0])

    def keep(self, q, threshold: float | None = None):
        threshold = self.default_threshold if threshold is None else threshold
        return q.snr() >= threshold, q.mean.detach()

    def statistic(self, q) -> torch.Tensor:
        """SNR of θ: ``E θ / sqrt(Var θ)`` per unit (Neklyudov et al. 2017, Sec. 4.2)."""
        return q.snr().detach()


def _kumaraswamy_mean(a_uc: float, b_uc: float = 0.5413) -> float:
    """E[π] of Kumaraswamy(softplus(a_uc), softplus(b_uc)): b·B(1 + 1/a, b)."""
    a, b = math.log1p(math.exp(a_uc)), math.log1p(math.exp(b_uc))
    return b * math.exp(math.lgamma(1 + 1 / a) + math.lgamma(b) - math.lgamma(1 + 1 / a + b))


#: initial E[π] of the gates of a network with BatchNorm: the beta-Bernoulli authors' VGG-CIFAR config
#: (``a_uc_init = 2.0``; their LeNet configs use −1, E[π] ≈ 0.24, under which a BatchNorm network learns nothing:
#: three quarters of every channel's examples are dropped from the first step on)
BN_INIT_KEEP = _kumaraswamy_mean(2.0)


class BBGate(UnitModule):
    """Beta-Bernoulli dropout gate (Lee et al. 2018): ``π_k ~ Beta(α/K, 1)``
    (:class:`~pyro_sparse.distributions.Beta1`), ``z_nk ~ Bernoulli(π_k)``.

    ``z`` is drawn per example from a relaxed Bernoulli (concrete) of temperature ``temperature`` and carries no KL
    (q(z|π) = p(z|π)); only π is a latent site. Pruning: units with ``E[π] < threshold`` (default 1e-3) are
    removed; kept units are multiplied by ``E[π]`` (METHODS.md §3).

    :param alpha_over_k: the prior's first concentration α/K (default 1e-4).
    :param noise: ``"per-example"`` (default) or ``"per-batch"`` draws of π (:attr:`UnitModule.noise`).
    :param init_keep: the guide's initial E[π] in (0, 1) (buffer ``pi_init``, read by the Kumaraswamy family);
        ``None``: the family's default, the authors' LeNet init a_uc = −1 (E[π] ≈ 0.24). :func:`pyro_sparse.sparsify`
        passes the authors' VGG init (a_uc = 2, E[π] ≈ 0.68: :data:`BN_INIT_KEEP`) for networks with BatchNorm.
    """

    latent_site = "pi"
    default_threshold = 1e-3
    statistic_name = "E[π]"

    def __init__(self, num_units: int, alpha_over_k: float = 1e-4, temperature: float = 0.1,
                 init_keep: float | None = None, noise: str = "per-example"):
        super().__init__(num_units, noise)
        if init_keep is not None:
            if not 0 < float(init_keep) < 1:
                raise ValueError(f"init_keep must be in (0, 1), got {init_keep}")
            self.register_buffer("pi_init", torch.full((num_units,), float(init_keep)), persistent=False)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.register_buffer("temperature_tensor", torch.tensor(float(temperature)), persistent=False)
        self.register_buffer("alpha_over_k", torch.tensor(float(alpha_over_k)))
        if not float(alpha_over_k) > 0:
            raise ValueError(f"alpha_over_k must be > 0, got {alpha_over_k}")
        self.pi = PyroSample(lambda self: self.cached_prior("pi", self.pi_prior, self.alpha_over_k))

    def pi_prior(self):
        """``Beta(α/K, 1)`` per unit, event shape ``[K]``."""
        return Beta1(self.alpha_over_k, validate_args=False).expand([self.num_units]).to_event(1)

    def gate(self, pi: torch.Tensor) -> torch.Tensor:
        """Relaxed Bernoulli gate with keep probability ``pi`` (any shape): ``RelaxedBernoulli(τ, π).rsample()``
        (Maddison et al. 2017; Jang et al. 2017) written out op for op as torch computes it —
        ``sigmoid((logit π + log u − log(1 − u)) / τ)``, ``u ~ U(0, 1)`` clamped to ``[ε, 1 − ε]`` — without building
        the distribution objects each step and without argument checks that would read π back to the host."""
        eps = torch.finfo(pi.dtype).eps
        floor = max(1e-6, eps)
        pi = pi.clamp(floor, 1 - floor)
        u = torch.rand(pi.shape, dtype=pi.dtype, device=pi.device).clamp(eps, 1 - eps)
        logits = (u.log() - (-u).log1p() + pi.log() - (-pi).log1p()) / self.temperature_tensor.to(pi.dtype)
        return torch.sigmoid(logits).clamp(torch.finfo(pi.dtype).tiny, 1.0 - eps)

    def multiplier(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.draw(self.pi, x.shape[0]))  # z per example, from π per example or per minibatch

    def keep(self, q, threshold: float | None = None):
        threshold = self.default_threshold if threshold is None else threshold
        mean = q.mean.detach()
        return mean >= threshold, mean

    def statistic(self, q) -> torch.Tensor:
        """E[π] under the Kumaraswamy posterior, per unit (Lee et al., Sec. 3.3: prune at E[π] < 1e-3)."""
        return q.mean.detach()


class Standardize(nn.Module):
    """``(x − mean) / std``; scalars, or one value per channel (dim 1 of ``[B, C, H, W]`` images). Lets networks
    take inputs as ``ToTensor()`` gives them."""

    def __init__(self, mean=0.0, std=1.0):
        super().__init__()
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean_t.dim() == 1:
            mean_t, std_t = mean_t.view(1, -1, 1, 1), std_t.view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t.clone())
        self.register_buffer("std", std_t.clone())

    #: True once a compact network's :class:`Select` applies this standardisation to the features it keeps
    #: (:meth:`defer_to`); the module then passes its input through unchanged
    _deferred = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._deferred else self.standardize(x)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) / std``, with one intermediate tensor (the division in place: the same values)."""
        return (x - self.mean).div_(self.std)

    def defer_to(self, select: Select) -> None:
        """Let ``select``, the next feature-reading op after this module, standardise the features it keeps instead
        of this module standardising all of them (the same values: both are elementwise with scalar mean and std).
        A compact MLP reads a fraction of its input pixels; standardising all 784 of MNIST's cost the compact BB
        LeNet-500-300 about a third of its time at batch 1000 (1.80 → 1.13 ms with this, quiet machine; issue 29).
        Only for scalar ``mean``/``std``. Not saved: ``compact`` and ``load_compact`` set it from the network's
        structure (:func:`pyro_sparse.compact.defer_standardize`).

        :raises ValueError: per-channel ``mean``/``std``."""
        if self.mean.dim() or self.std.dim():
            raise ValueError("Standardize.defer_to needs scalar mean and std, got per-channel ones")
        self._deferred = True
        select._after = (self,)  # a plain attribute: not a second registration of the module (state dict unchanged)


class Select(nn.Module):
    """Keep features ``index`` of the last dim (compact networks put it before a dense layer whose unread inputs were
    removed: the input pixels of an MLP, the features of ``[B, T, F]`` tokens); then the standardisation deferred to
    it, if any (:meth:`Standardize.defer_to`)."""

    _after: tuple = ()

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and torch.onnx.is_in_onnx_export():
            # [B, F] for ONNX: gather rows of xᵀ (a view of x); onnxruntime gathers rows (axis 0) ~5x faster than
            # along the last axis. Torch's own gather along the last axis is faster in torch (contiguous result;
            # LeNet-500-300 at batch 32: ~13%) — issue 29
            x = x.t().index_select(0, self.index).t()
        else:
            x = x.index_select(-1, self.index)
        for standardize in self._after:
            x = standardize.standardize(x)
        return x
