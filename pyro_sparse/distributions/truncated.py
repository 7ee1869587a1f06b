"""Truncated log-uniform prior and truncated log-normal guide for structured Bayesian pruning.

Source: Neklyudov, Molchanov, Ashukha, Vetrov, "Structured Bayesian Pruning via Log-Normal Multiplicative Noise",
NeurIPS 2017 (arXiv 1705.07283), Sec. 4. Both are distributions of a positive noise variable θ whose logarithm is
uniform (prior) or normal (guide) on ``[a, b]``.

All special functions are evaluated in float64 and in log space (``torch.special.log_ndtr``), so moments, samples
and the KL stay finite for ``loc ∈ [-25, 5]`` and ``log scale ∈ [-20, 5]``.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
#: standardised bound beyond which the entropy takes the exponential limit
_FAR = 1e3
#: standardised bound beyond which the sampler takes the exponential limit (Φ(hi)·t stays a normal float64 up to 36)
_TAIL = 35.0
_NDTR_M1 = 0.15865525393145707  # Φ(−1): a harmless stand-in
#: smallest uniform draw (float32 draws are multiples of 2⁻²⁴ and may be 0)
_U_MIN = 2.0**-25


def _log1mexp(t: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(t)) for t <= 0, accurate over the whole range."""
    t = t.clamp(max=-1e-300)
    near = t > -math.log(2.0)
    # each branch sees only inputs it is valid for, so the branch not taken cannot leak inf/NaN gradients
    t_near, t_far = torch.where(near, t, -1.0), torch.where(near, -1.0, t)
    return torch.where(near, torch.log(-torch.expm1(t_near)), torch.log1p(-torch.exp(t_far)))


def _g(t: torch.Tensor) -> torch.Tensor:
    """``log Φ(t) + t²/2 = log(erfcx(−t/√2)/2)`` for t <= 0: the well-scaled part of the lower-tail log CDF."""
    return torch.log(0.5 * torch.special.erfcx(-t.clamp(max=0.0) / math.sqrt(2.0)))


def _log_ndtr_diff_parts(x: torch.Tensor, y: torch.Tensor):
    """Split ``log(Φ(y) − Φ(x))`` (x <= y) into ``(region, quad, rest)`` with ``log(...) = quad + rest``.

    ``region`` is -1 when both bounds are <= 0 (``quad = −y²/2``), +1 when both are >= 0 (``quad = −x²/2``, by
    the symmetry ``Φ(y) − Φ(x) = Φ(−x) − Φ(−y)``) and 0 when they straddle zero (``quad = 0``). ``rest`` is of
    moderate size in every case, so the huge quadratic parts can be cancelled analytically by the caller.
    """
    lower, upper = y <= 0, x >= 0
    mid = ~(lower | upper)
    # safe stand-ins outside each branch's domain (the "double where" that keeps gradients finite)
    xl, yl = torch.where(lower, x, -2.0), torch.where(lower, y, -1.0)
    xu, yu = torch.where(upper, x, 1.0), torch.where(upper, y, 2.0)
    xm, ym = torch.where(mid, x, -1.0), torch.where(mid, y, 1.0)
    dl = (xl - yl) * (xl + yl) / 2  # (x² − y²)/2 without cancellation
    du = (xu - yu) * (xu + yu) / 2
    rest_low = _g(yl) + _log1mexp(_g(xl) - _g(yl) - dl)
    rest_up = _g(-xu) + _log1mexp(_g(-yu) - _g(-xu) + du)
    rest_mid = torch.log1p(-(torch.special.ndtr(xm) + torch.special.ndtr(-ym)))
    region = torch.where(lower, -1, torch.where(upper, 1, 0))
    quad = torch.where(lower, -0.5 * y * y, torch.where(upper, -0.5 * x * x, torch.zeros_like(x)))
    rest = torch.where(lower, rest_low, torch.where(upper, rest_up, rest_mid))
    return region, quad, rest


def log_ndtr_diff(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log(Φ(y) − Φ(x))`` for ``x <= y``, stable in both tails (float64 recommended)."""
    _, quad, rest = _log_ndtr_diff_parts(x, y)
    return quad + rest


def _std_normal_log_pdf(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x * x - _LOG_SQRT_2PI


class TruncatedLogUniform(TorchDistribution):
    """Prior on a positive noise variable θ with ``log θ ~ Uniform(a, b)`` (SBP, METHODS.md §2; a=-20, b=0).

    :param a: lower bound of log θ (tensor or float).
    :param b: upper bound of log θ, ``b > a``.
    """

    arg_constraints = {"a": constraints.real, "b": constraints.real}
    support = constraints.positive
    has_rsample = True

    def __init__(self, a=-20.0, b=0.0, validate_args: bool | None = None):
        self.a, self.b = broadcast_all(a, b)
        if validate_args is not False and bool((self.b <= self.a).any()):
            raise ValueError(f"TruncatedLogUniform needs b > a, got a={a}, b={b}")
        super().__init__(self.a.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> TruncatedLogUniform:
        new = self._get_checked_instance(TruncatedLogUniform, _instance)
        batch_shape = torch.Size(batch_shape)
        new.a = self.a.expand(batch_shape)
        new.b = self.b.expand(batch_shape)
        super(TruncatedLogUniform, new).__init__(batch_shape, torch.Size(), validate_args=False)
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.a.dtype, device=self.a.device)
        return torch.exp(self.a + u * (self.b - self.a))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_v = value.log()
        lp = -log_v - torch.log(self.b - self.a)
        inside = (log_v >= self.a) & (log_v <= self.b)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    @property
    def mean(self) -> torch.Tensor:
        return (self.b.exp() - self.a.exp()) / (self.b - self.a)

    @property
    def variance(self) -> torch.Tensor:
        m2 = (torch.exp(2 * self.b) - torch.exp(2 * self.a)) / (2 * (self.b - self.a))
        return m2 - self.mean**2


class TruncatedLogNormal(TorchDistribution):
    """Guide on a positive noise variable θ with ``log θ ~ N(loc, scale²)`` truncated to ``[a, b]``.

    Not a subclass of ``Normal`` on purpose: it must not inherit Normal's KL registrations (DESIGN.md contract 2).

    Moments (METHODS.md §2), computed in log space:
    ``E θ = exp(μ + σ²/2)·[Φ(β−σ) − Φ(α−σ)]/Z``, ``E θ² = exp(2μ + 2σ²)·[Φ(β−2σ) − Φ(α−2σ)]/Z``,
    with ``α = (a−μ)/σ``, ``β = (b−μ)/σ``, ``Z = Φ(β) − Φ(α)``.

    :param loc: μ, any shape.
    :param scale: σ > 0, broadcastable with ``loc``.
    :param a: lower truncation of log θ.
    :param b: upper truncation of log θ.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, loc, scale, a=-20.0, b=0.0, validate_args: bool | None = None):
        self.loc, self.scale, self.a, self.b = broadcast_all(loc, scale, a, b)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> TruncatedLogNormal:
        new = self._get_checked_instance(TruncatedLogNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "scale", "a", "b"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(TruncatedLogNormal, new).__init__(batch_shape, torch.Size(), validate_args=False)
        return new

    # -- standardised bounds, in float64 (computed once per instance: the guide's draw, the model's per-example
    #    draws and the KL of one training step share them) ----------------------------------------------------
    def _std(self):
        # the per-unit caches hold while the parameters are unchanged (an optimiser updates them in place)
        version = (self.loc._version, self.scale._version)
        if self.__dict__.get("_cache_version") != version:
            for name in ("_std_cache", "_tail_cache", "_sampler_cache"):
                self.__dict__.pop(name, None)
            self.__dict__["_cache_version"] = version
        cached = self.__dict__.get("_std_cache")
        if cached is None:
            loc, scale = self.loc.double(), self.scale.double()
            alpha = (self.a.double() - loc) / scale
            beta = (self.b.double() - loc) / scale
            cached = self.__dict__["_std_cache"] = (loc, scale, alpha, beta)
        return cached

    @property
    def log_normalizer(self) -> torch.Tensor:
        """log Z = log(Φ(β) − Φ(α)), float64."""
        _, _, alpha, beta = self._std()
        return log_ndtr_diff(alpha, beta)

    def _tail_parts(self):
        """Per-unit parts shared by :meth:`rsample` and :meth:`entropy` (float64, batch shape; cached): the
        interval ``[lo, hi]`` of the standardised variable in the tail that holds it (``sign`` −1 where it was
        flipped from the upper tail), ``log Φ(hi)`` and ``log r = log(Φ(lo)/Φ(hi))``, both exact for
        ``hi >= −1e3`` (beyond, stand-ins: the exponential limit is used there)."""
        _, _, alpha, beta = self._std()  # first: drops stale caches
        cached = self.__dict__.get("_tail_cache")
        if cached is None:
            flip = alpha > 0  # interval in the upper tail: work with -x, whose interval is in the lower tail
            lo = torch.where(flip, -beta, alpha)
            hi = torch.where(flip, -alpha, beta)
            far = hi < -_FAR
            # safe stand-ins where far (the "double where" that keeps gradients finite); Φ(lo) is negligible next
            # to Φ(hi) once lo < -1e4 (the clamp keeps log_ndtr's gradient finite)
            lo_n, hi_n = torch.where(far, -2.0, lo).clamp(min=-1e4), torch.where(far, -1.0, hi)
            l_hi = torch.special.log_ndtr(hi_n)
            log_ratio = torch.special.log_ndtr(lo_n) - l_hi
            sign = torch.where(flip, -1.0, 1.0).to(lo.dtype)
            cached = self.__dict__["_tail_cache"] = (lo, hi, lo_n, hi_n, sign, l_hi, log_ratio, far)
        return cached

    def _sampler_parts(self):
        """Per-unit parts of :meth:`rsample` (cached): ``Φ(lo)`` and ``Φ(hi) − Φ(lo)`` in float64 (stand-ins
        where ``hi < −35``), the exponential tail's mask, ``hi`` and ``1/|hi|``, and ``sign·σ`` in the parameters'
        dtype."""
        _, hi, _, _, sign, l_hi, log_ratio, _ = self._tail_parts()  # first: drops stale caches
        cached = self.__dict__.get("_sampler_cache")
        if cached is None:
            tail = hi < -_TAIL
            p_hi = torch.where(tail, _NDTR_M1, l_hi.exp())
            p_lo = torch.where(tail, 0.0, p_hi * log_ratio.exp())
            dtype = self.loc.dtype
            inv_rate = 1.0 / torch.where(tail, -hi, _TAIL)
            cached = self.__dict__["_sampler_cache"] = (
                p_lo, p_hi - p_lo, tail, *(t.to(dtype) for t in (hi, inv_rate, sign * self.scale.double())))
        return cached

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Inverse-CDF sample ``log θ = μ + σ·Φ⁻¹(Φ(α) + u·Z)``, clipped to ``[a, b]`` (METHODS.md §2).

        The CDF is inverted in whichever tail holds the interval ``[lo, hi]`` (flipped to the lower tail), so that
        ``Φ(lo)`` and ``Φ(hi)`` — computed per unit in log space — are normal float64 numbers down to
        ``hi = −35`` and ``x = Φ⁻¹(Φ(lo) + u·(Φ(hi) − Φ(lo)))`` is exact there: intervals many standard
        deviations away from μ give samples at the near bound instead of NaN. Beyond 35 standard deviations the
        truncated normal is an exponential off the near bound, ``x = hi + log(u)/|hi|`` (error O(1/hi²) of its
        width). Only the inversion (``ndtri``, which costs the same in both) runs in float64 per draw; ``u``, the
        affine map to log θ and the exponential run in the parameters' dtype.
        """
        shape = self._extended_shape(sample_shape)
        p_lo, p_width, tail, hi, inv_rate, signed_scale = self._sampler_parts()
        dtype = self.loc.dtype
        u = torch.rand(shape, dtype=dtype, device=p_lo.device).clamp_(_U_MIN, 1.0)
        x = torch.special.ndtri(torch.addcmul(p_lo, u.to(p_lo.dtype), p_width)).to(dtype)
        x = torch.where(tail, torch.addcmul(hi, torch.log(u), inv_rate), x)
        # x in [lo, hi] is log θ in [a, b]: one clamp, after the affine map, keeps rounding inside the bounds
        return torch.clamp(torch.addcmul(self.loc, signed_scale, x), self.a, self.b).exp()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        loc, scale, alpha, beta = self._std()
        log_v = value.double().log()
        z = (log_v - loc) / scale
        lp = _std_normal_log_pdf(z) - scale.log() - log_ndtr_diff(alpha, beta) - log_v
        inside = (log_v >= self.a.double()) & (log_v <= self.b.double())
        return torch.where(inside, lp, torch.full_like(lp, -math.inf)).to(self.loc.dtype)

    def _log_moment(self, k: int) -> torch.Tensor:
        """log E θ^k, float64.

        ``k μ + k²σ²/2 + log(Φ(β−kσ) − Φ(α−kσ)) − log Z``; when both intervals lie in the same tail the
        quadratic parts cancel exactly to ``k·b`` (lower tail) or ``k·a`` (upper tail), which keeps the result
        exact for intervals up to ~1e9 standard deviations away from μ.
        """
        loc, scale, alpha, beta = self._std()
        ks = k * scale
        reg_s, quad_s, rest_s = _log_ndtr_diff_parts(alpha - ks, beta - ks)
        reg_0, quad_0, rest_0 = _log_ndtr_diff_parts(alpha, beta)
        same = reg_s == reg_0
        quad = torch.where(
            same & (reg_0 == -1),
            k * self.b.double(),
            torch.where(same & (reg_0 == 1), k * self.a.double(), k * loc + 0.5 * ks * ks + quad_s - quad_0),
        )
        return quad + rest_s - rest_0

    @property
    def mean(self) -> torch.Tensor:
        log_m = torch.minimum(torch.maximum(self._log_moment(1), self.a.double()), self.b.double())
        return log_m.exp().to(self.loc.dtype)

    def _log_cv2(self) -> torch.Tensor:
        """log of the squared coefficient of variation, log(Var θ / (E θ)²) = log expm1(log E θ² − 2 log E θ)."""
        d = (self._log_moment(2) - 2 * self._log_moment(1)).clamp(min=1e-30)
        return torch.log(torch.expm1(d))

    @property
    def variance(self) -> torch.Tensor:
        log_m = torch.minimum(torch.maximum(self._log_moment(1), self.a.double()), self.b.double())
        return torch.exp(2 * log_m + self._log_cv2()).to(self.loc.dtype)

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ``E θ / sqrt(Var θ)`` (dimensionless, batch shape); units with SNR < 1 are pruned."""
        return torch.exp(-0.5 * self._log_cv2()).to(self.loc.dtype)

    def entropy(self) -> torch.Tensor:
        """Differential entropy of log θ (the truncated normal), float of ``loc``'s dtype.

        ``H = log σ + ½ log(2πe) + log Z + (α φ(α) − β φ(β)) / (2Z)``; when the interval lies more than 1e3
        standard deviations into a tail, the exponential limit ``log σ + 1 − log|β|`` is used (error O(1/β²)).
        """
        _, scale, _, _ = self._std()
        _, hi, lo_n, hi_n, _, l_hi, log_ratio, far = self._tail_parts()
        # log(Φ(hi) − Φ(lo)) = log Φ(hi) + log(1 − r); expm1 keeps 1 − r exact for a narrow interval (r → 1)
        log_z = l_hi + torch.log(-torch.expm1(log_ratio))
        t_lo = lo_n * torch.exp(_std_normal_log_pdf(lo_n) - log_z)
        t_hi = hi_n * torch.exp(_std_normal_log_pdf(hi_n) - log_z)
        h_std = 0.5 * math.log(2 * math.pi * math.e) + log_z + 0.5 * (t_lo - t_hi)
        h_far = 1.0 - torch.log(torch.where(far, -hi, _FAR))
        h_std = torch.where(far, h_far, h_std)
        return (scale.log() + h_std).to(self.loc.dtype)
