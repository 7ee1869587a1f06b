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
#: standardised bound beyond which the entropy takes its tail series ``1 − log|hi| − 2/hi² + 7.5/hi⁴`` (error below
#: 1e-7 there; the closed form's gradient cancels catastrophically from a few hundred standard deviations on)
_FAR = 30.0
#: standardised bound beyond which the sampler takes the exponential limit (Φ(hi)·t stays a normal float64 up to 36)
_TAIL = 35.0
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


class _UnitParts(torch.autograd.Function):
    """Everything per unit that a training step of :class:`TruncatedLogNormal` needs, in float64, with analytic
    gradients: one autograd node instead of ~90 small operations forward and as many backward.

    Standardised bounds ``α = (a − μ)/σ``, ``β = (b − μ)/σ``; the interval is taken in the tail that holds it
    (flipped, ``sign = −1``, when ``α > 0``): ``[lo, hi]`` with ``lo = α, hi = β`` or ``lo = −β, hi = −α``.

    - Entropy of log θ: ``H = log σ + ½ log(2πe) + log Z + (lo·A − hi·B)/2`` with ``Z = Φ(hi) − Φ(lo)`` (from
      ``log Φ`` in log space), ``A = φ(lo)/Z``, ``B = φ(hi)/Z``; beyond ``hi < −30`` the tail series
      ``log σ + 1 − log|hi| − 2/hi² + 7.5/hi⁴`` (error < 1e-7). Gradients ``∂h/∂lo = A·(D − (1 + lo²)/2)``,
      ``∂h/∂hi = B·((1 + hi²)/2 − D)``, ``D = (lo·A − hi·B)/2`` (far: the series' derivative).
    - Sampler: ``Φ(lo)``, ``Φ(hi) − Φ(lo)`` (``∂Φ/∂x = φ``) where ``hi >= −35``; beyond, the exponential tail's
      ``hi`` and ``1/|hi|`` (and ``0.5, 0`` for the inversion, which then gives 0; the tail's pair is 0 elsewhere);
      ``sign·σ``.
    - Chain rule: ``∂lo/∂μ = ∂hi/∂μ = −sign/σ``, ``∂lo/∂σ = −lo/σ``, ``∂hi/∂σ = −hi/σ``.
    """

    @staticmethod
    def forward(ctx, loc, scale, a, b):
        # the pair (lo, hi) is one [2, K] tensor wherever both bounds get the same operation
        dtype = loc.dtype
        mu, s = loc.double(), scale.double()
        std = (torch.stack([a, b]).double() - mu) / s  # rows α, β
        flip = std[0] > 0
        lohi = torch.where(flip, -std.flip(0), std)  # rows lo, hi
        lo, hi = lohi.unbind(0)
        far, tail = hi < -_FAR, hi < -_TAIL
        clamped = lo < -1e4  # Φ(lo) is negligible next to Φ(hi) there
        lo_out, lo_off = far | clamped, tail | clamped  # where lo drops out of the entropy / of the sampler
        # stand-ins where the sampler takes the exponential tail (hi < −35: they keep log Φ and its exponential
        # finite; the entropy uses its series there, as from −30 on)
        n = torch.stack([torch.where(lo_off, -1e4, lo), torch.where(tail, -1.0, hi)])
        log_cdf = torch.special.log_ndtr(n)
        log_z = log_cdf[1] + torch.log(-torch.expm1(log_cdf[0] - log_cdf[1]))
        log_pdf = -0.5 * n * n - _LOG_SQRT_2PI
        ab = torch.exp(log_pdf - log_z)  # rows A = φ(lo)/Z, B = φ(hi)/Z
        n_ab = n * ab
        D = 0.5 * (n_ab[0] - n_ab[1])
        hi_far = torch.where(far, hi, -_FAR)  # a stand-in where not far
        inv2 = 1.0 / (hi_far * hi_far)
        h_far = 1.0 - torch.log(-hi_far) - inv2 * (2.0 - 7.5 * inv2)
        h = torch.where(far, h_far, 0.5 * math.log(2 * math.pi * math.e) + log_z + D)
        entropy = torch.log(s) + h
        cdf = torch.exp(log_cdf)
        # tail units invert Φ(0.5 + u·0) = 0 and take x from (tail_hi, inv_rate), which are 0 on every other unit:
        # one formula for all units, x = Φ⁻¹(p_lo + u·p_width) + hi_t + log(u)·inv_rate (_Draw), without a select
        p_lo = torch.where(tail, 0.5, cdf[0])
        p_width = torch.where(tail, 0.5, cdf[1]) - p_lo
        tail_hi = torch.where(tail, hi, 0.0)
        inv_rate = torch.where(tail, tail_hi.reciprocal().neg_(), 0.0)
        ctx.save_for_backward(s, flip, lohi, n, ab, D, log_pdf, hi_far, far, tail, lo_out, lo_off)
        ctx.dtypes = (loc.dtype, scale.dtype)
        ref = n[1].clamp(max=0.0)  # where φ is largest on [lo, hi]: the inversion's gradient scale (_Draw)
        ctx.mark_non_differentiable(tail, ref)
        return (entropy.to(dtype), p_lo, p_width, tail_hi.to(dtype), inv_rate.to(dtype),
                torch.where(flip, -s, s).to(dtype), tail, ref)

    @staticmethod
    def backward(ctx, g_entropy, g_p_lo, g_p_width, g_tail_hi, g_inv_rate, g_signed_scale, _, __):
        s, flip, lohi, n, ab, D, log_pdf, hi_far, far, tail, lo_out, lo_off = ctx.saved_tensors
        lo, hi = lohi.unbind(0)
        g_h = g_entropy.double()
        # entropy: rows A·(D − (1 + lo²)/2) and −B·(D − (1 + hi²)/2); far: the series' derivative in 1/hi
        core = ab * (D - 0.5 * (1 + n * n))
        inv = 1.0 / hi_far
        inv2 = inv * inv
        series = inv * (inv2 * (4.0 - 30.0 * inv2) - 1.0)
        g_lo = torch.where(lo_out, 0.0, g_h * core[0])
        g_hi = g_h * torch.where(far, series, -core[1])
        # sampler: Φ(lo), Φ(hi) − Φ(lo) where not in the exponential tail; hi and −1/hi there
        g_pw = g_p_width.double()
        pdf = torch.exp(log_pdf)
        g_lo = g_lo + torch.where(lo_off, 0.0, (g_p_lo.double() - g_pw) * pdf[0])
        g_hi = g_hi + torch.where(tail, g_tail_hi.double() + g_inv_rate.double() / (hi * hi), g_pw * pdf[1])
        g_sum = g_lo + g_hi
        g_mu = torch.where(flip, g_sum, -g_sum) / s  # ∂lo/∂μ = ∂hi/∂μ = −sign/σ
        g_ss = g_signed_scale.double()
        g_s = (g_h - lo * g_lo - hi * g_hi) / s + torch.where(flip, -g_ss, g_ss)
        return g_mu.to(ctx.dtypes[0]), g_s.to(ctx.dtypes[1]), None, None


class _Draw(torch.autograd.Function):
    """Per-example draws ``θ = exp(clamp(μ + sign·σ·x, a, b))`` of one step as one autograd node: the inverse CDF
    ``x = Φ⁻¹(p_lo + u·p_width)`` (the inversion in float64, ``x`` in the dtype of ``u``) or, where the unit's interval
    lies beyond 35 sd (``tail``), the exponential limit ``x = hi + log(u)·inv_rate``. One formula serves both,
    ``x = Φ⁻¹(p_lo + u·p_width) + hi_t + log(u)·inv_rate``: :class:`_UnitParts` gives tail units ``p_lo = 0.5,
    p_width = 0`` (``Φ⁻¹(0.5) = 0``) and every other unit ``hi_t = inv_rate = 0``.

    Backward in the dtype of ``u``, analytic: ``∂θ/∂log θ = θ``; the clamp only catches rounding at the bounds and
    passes the gradient through; ``∂x/∂p_lo = 1/φ(x)`` and ``∂x/∂p_width = u/φ(x)`` overflow float32 in the tails,
    so they are summed over the draws as ``e^{(x² − c²)/2}`` (bounded: ``c = min(hi, 0)`` is where φ is largest on the
    interval and ``u >= 2⁻²⁵`` keeps x within ~6 sd of it) and scaled per unit by ``√(2π)·e^{c²/2}`` in float64;
    tail units: ``∂x/∂hi = 1``, ``∂x/∂inv_rate = log u``.
    Shapes: ``u``, ``θ``: ``[*sample, *batch]``; every other argument ``[*batch]``.
    """

    @staticmethod
    def forward(ctx, u, p_lo, p_width, ref, tail, tail_hi, inv_rate, loc, signed_scale, a, b):
        # x without hi: Φ⁻¹(p_lo + u·p_width) + log(u)·inv_rate (each term 0 where the other applies); hi enters
        # per unit through the offset μ + sign·σ·hi
        x = torch.special.ndtri(torch.addcmul(p_lo, u.to(p_lo.dtype), p_width)).to(u.dtype)
        log_u = torch.log(u)
        x = x.addcmul_(log_u, inv_rate)
        theta = torch.addcmul(torch.addcmul(loc, signed_scale, tail_hi), signed_scale, x).clamp_(a, b).exp_()
        ctx.save_for_backward(u, log_u, x, theta, ref, tail, tail_hi, signed_scale)
        return theta

    @staticmethod
    def backward(ctx, g):
        u, log_u, x, theta, ref, tail, tail_hi, signed_scale = ctx.saved_tensors
        shape = ref.shape
        g_log = g * theta
        g_loc = g_log.sum_to_size(shape)
        g_signed_scale = torch.addcmul((g_log * x).sum_to_size(shape), g_loc, tail_hi)
        # e^{(x² − c²)/2} = e^{d·(c + d/2)}, d = x − c (no cancellation), times ∂θ/∂x / (sign·σ), in place; sign·σ
        # and √(2π)·e^{c²/2} multiply the per-unit sums. Tail units (c = −1, |x| <= ~0.5 there) are masked below
        c = ref.to(x.dtype)
        d = x - c
        gw = torch.add(c, d, alpha=0.5).mul_(d).exp_().mul_(g_log)
        # ref is finite and bounded off the tail
        unit_scale = math.sqrt(2 * math.pi) * torch.exp(0.5 * ref * ref) * signed_scale.to(ref.dtype)
        g_lo = torch.where(tail, 0.0, gw.sum_to_size(shape).to(ref.dtype) * unit_scale)
        g_width = torch.where(tail, 0.0, gw.mul_(u).sum_to_size(shape).to(ref.dtype) * unit_scale)
        g_hi = torch.where(tail, g_loc * signed_scale, 0.0)
        g_inv_rate = torch.where(tail, (g_log * log_u).sum_to_size(shape) * signed_scale, 0.0)
        return None, g_lo, g_width, None, None, g_hi, g_inv_rate, g_loc, g_signed_scale, None, None


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

    Not a subclass of ``Normal`` on purpose: it must not inherit Normal's KL registrations (docs/design.md, contract 3).

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

    # -- per-instance caches, valid while the parameters are unchanged (an optimiser updates them in place) -----
    def _cached(self, name: str):
        """The cache entry ``name``, after dropping every entry computed from older parameter values."""
        version = (self.loc._version, self.scale._version)
        if self.__dict__.get("_cache_version") != version:
            for key in ("_std_cache", "_unit_cache"):
                self.__dict__.pop(key, None)
            self.__dict__["_cache_version"] = version
        return self.__dict__.get(name)

    def _std(self):
        """Standardised bounds ``(μ, σ, α, β)`` in float64, for the density and the moments (cached)."""
        cached = self._cached("_std_cache")
        if cached is None:
            loc, scale = self.loc.double(), self.scale.double()
            alpha = (self.a.double() - loc) / scale
            beta = (self.b.double() - loc) / scale
            cached = self.__dict__["_std_cache"] = (loc, scale, alpha, beta)
        return cached

    def _unit_parts(self):
        """Per-unit parts of one training step (cached while the parameters are unchanged): the entropy (dtype of
        ``loc``), and for :meth:`rsample` ``Φ(lo)``, ``Φ(hi) − Φ(lo)`` (float64), ``hi`` and ``1/|hi|`` of the
        exponential tail, ``sign·σ`` (dtype of ``loc``), the tail mask and the gradient scale of the inversion. One
        fused :class:`_UnitParts` call, or a share of one (:meth:`prepare_together`)."""
        cached = self._cached("_unit_cache")
        if cached is None:
            cached = self.__dict__["_unit_cache"] = _UnitParts.apply(self.loc, self.scale, self.a, self.b)
        return cached

    @staticmethod
    def prepare_together(dists: list[TruncatedLogNormal]) -> None:
        """Compute the per-unit parts of all ``dists`` (those of one dtype and device together) in one
        :class:`_UnitParts` call and cache each one's share: one autograd node per step instead of one per site
        (``MeanFieldGuide`` calls it for its SBP sites; values and gradients are those of separate calls)."""
        groups: dict[tuple, list[TruncatedLogNormal]] = {}
        for d in dists:
            if d._cached("_unit_cache") is None:
                groups.setdefault((d.loc.dtype, d.loc.device), []).append(d)
        for group in groups.values():
            if len(group) < 2:
                continue
            sizes = [d.loc.numel() for d in group]
            flat = [torch.cat([getattr(d, k).reshape(-1) for d in group]) for k in ("loc", "scale", "a", "b")]
            parts = [p.split(sizes) for p in _UnitParts.apply(*flat)]
            for i, d in enumerate(group):
                shape = d.loc.shape
                d.__dict__["_unit_cache"] = tuple(p[i] if p[i].shape == shape else p[i].view(shape) for p in parts)

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
        _, p_lo, p_width, hi, inv_rate, signed_scale, tail, ref = self._unit_parts()
        dtype = self.loc.dtype
        u = torch.rand(shape, dtype=dtype, device=p_lo.device).clamp_(_U_MIN, 1.0)
        # x in [lo, hi] is log θ in [a, b]: one clamp, after the affine map, keeps rounding inside the bounds
        return _Draw.apply(u, p_lo, p_width, ref, tail, hi, inv_rate, self.loc, signed_scale, self.a, self.b)

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

        ``H = log σ + ½ log(2πe) + log Z + (α φ(α) − β φ(β)) / (2Z)``; when the interval lies more than 30
        standard deviations into a tail, its series ``log σ + 1 − log|β| − 2/β² + 7.5/β⁴`` (error below 1e-7).
        Computed with its analytic gradient by :class:`_UnitParts`.
        """
        return self._unit_parts()[0]
