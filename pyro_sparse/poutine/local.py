"""Local (per-example) noise: the one place where pyro-sparse turns global posterior samples into per-example draws.

docs/design.md, contract 5. Inside :class:`LocalReparameterizationMessenger` (applied by the guide), every latent value
the guide draws carries its guide distribution as a tag. The value itself is an honest draw from q, so a guide trace
records what q gives. The model's layers then call :func:`linear`, :func:`conv2d` or :func:`local_sample`, which,
for a tagged value, use the distribution to draw the noise per example instead of sharing the one global draw:

* Gaussian weights (sparse VD): the local reparameterisation trick (Kingma et al. 2015; Molchanov et al. 2017,
  Eq. 17): the pre-activation is ``b ~ N(x θᵀ, x² (σ²)ᵀ)`` per example; the global weight draw is not used.
* Unit noise and gates (SBP, BB): ``θ`` or ``π`` drawn independently for each example, shape ``[B, K]``.

Both are unbiased estimators of the same ELBO with lower variance. Outside the messenger (or for untagged values,
e.g. in ``Predictive``) the helpers use the value as it is: a global weight or unit sample.

**Sample dimensions.** Under vectorised particles (``num_particles=k, vectorize_particles=True``) or
``Predictive(..., parallel=True)``, latent values carry leading sample dims ``[*lead, *site_shape]`` with
``S = prod(lead)``. The model (:class:`pyro_sparse.models.Classifier`) then lays its batch out as ``S`` consecutive
blocks of ``B`` examples (``[S·B, ...]``), and these helpers apply sample ``s`` to block ``s``; the network's other
layers (ReLU, pooling, flatten) see an ordinary batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import Independent, Normal
from pyro.poutine.messenger import Messenger
from torch.overrides import TorchFunctionMode

_TAG = "_pyro_sparse_local_fn"
#: attribute of a latent weight value: the log α threshold of the training-time clipping (``train_clip``), if any
CLIP_TAG = "_pyro_sparse_clip"


def base_distribution(fn):
    """``fn`` with every ``Independent`` wrapper removed."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def local_distribution(value: torch.Tensor):
    """The guide distribution (``Independent`` unwrapped) tagged on ``value``, or ``None``."""
    fn = getattr(value, _TAG, None)
    return None if fn is None else base_distribution(fn)


class LocalReparameterizationMessenger(Messenger):
    """Tag every latent sample with its guide distribution (the sampled value stays an honest draw from it).

    Use it around a guide (``MeanFieldGuide`` does so by default) or around a whole ``svi.step``.

    :param draw: ``False`` skips the global draw that a model consuming every latent site per example (through
        :func:`local_sample` and :class:`LocalOps`, as :func:`pyro_sparse.sparsify` models do) would throw away: the
        site's value is then a NaN placeholder of the site's shape carrying the tag, so that a value read directly
        shows up as a NaN loss instead of silently. The training engine uses it inside its steps (the ELBO with
        analytic KL reads no guide value); traces for users (``SVI``, ``Predictive``) keep honest draws.
    """

    def __init__(self, draw: bool = True):
        super().__init__()
        self.draw = draw

    def _pyro_sample(self, msg):
        if self.draw or msg["is_observed"] or msg["value"] is not None:
            return
        fn = msg["fn"]
        base = base_distribution(fn)
        like = next(v for k in base.arg_constraints if torch.is_tensor(v := getattr(base, k, None)))
        msg["value"] = torch.full((), math.nan, dtype=like.dtype, device=like.device).expand(fn.shape())
        msg["done"] = True

    def _pyro_post_sample(self, msg):
        if msg["is_observed"] or not torch.is_tensor(msg["value"]):
            return
        value = msg["value"]
        if value.is_leaf and value.requires_grad:  # never tag a parameter
            value = msg["value"] = value.view_as(value)
        setattr(value, _TAG, msg["fn"])


def local_reparameterization(fn=None):
    """Effect handler: ``local_reparameterization(guide)`` or ``with local_reparameterization(): ...``."""
    msngr = LocalReparameterizationMessenger()
    return msngr(fn) if fn is not None else msngr


def _variance(q: Normal) -> torch.Tensor:
    log_var = getattr(q, "log_variance", None)
    return q.scale * q.scale if log_var is None else log_var.exp()


def _mean_weight(q: Normal, clip_threshold: float | None) -> torch.Tensor:
    """θ, with the weights already pruned (``log α >= clip_threshold``) zeroed if a threshold is given.

    The zeroed entries get no gradient through the mean (they still add their variance): the SVD reference code's
    ``train_clip`` (Molchanov et al. 2017), which makes the training-time mean network the pruned test-time network.
    """
    if clip_threshold is None:
        return q.loc
    from ..distributions import normal_log_alpha

    pruned = normal_log_alpha(q).detach() >= clip_threshold
    return q.loc.masked_fill(pruned, 0.0)


def _blocks(x: torch.Tensor, lead: torch.Size) -> int:
    """Number of examples per sample block of ``x`` (``[S·B, ...]``, ``S = prod(lead)``).

    :raises ValueError: the batch does not split into ``S`` equal blocks.
    """
    s = math.prod(lead)
    if x.shape[0] % s:
        raise ValueError(f"a batch of {x.shape[0]} examples does not split into {s} sample blocks {list(lead)}")
    return x.shape[0] // s


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` for ``w [*lead, out, in]``: sample ``s`` of ``w`` applies to block ``s`` of ``x [S·B, in]``."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    lead, (o, i) = w.shape[:-2], w.shape[-2:]
    s = math.prod(lead)
    out = torch.matmul(x.reshape(s, _blocks(x, lead), i), w.reshape(s, o, i).transpose(-1, -2))
    return (out if b is None else out + b).reshape(-1, o)


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, groups: int = 1, nd: int = 2,
          **kwargs) -> torch.Tensor:
    """``F.conv{nd}d`` for ``w [*lead, out, in/groups, *kernel]`` on ``x [S·B, in, *spatial]`` (one grouped
    convolution: the ``S`` samples become ``S`` groups)."""
    conv = F.conv1d if nd == 1 else F.conv2d
    if w.dim() == nd + 2:
        return conv(x, w, b, groups=groups, **kwargs)
    lead, (o, *k) = w.shape[:-(nd + 2)], w.shape[-(nd + 2):]
    s, n = math.prod(lead), _blocks(x, lead)
    xs = x.reshape(s, n, *x.shape[1:]).transpose(0, 1).reshape(n, s * x.shape[1], *x.shape[2:])
    out = conv(xs, w.reshape(s * o, *k), None if b is None else b.repeat(s), groups=s * groups, **kwargs)
    return out.reshape(n, s, o, *out.shape[2:]).transpose(0, 1).reshape(s * n, o, *out.shape[2:])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           clip_threshold: float | None = None) -> torch.Tensor:
    """``F.linear`` with the local reparameterisation trick for a tagged Gaussian ``weight`` ``[out, in]``.

    :param x: ``[B, in]``, or ``[S·B, in]`` when ``weight`` carries sample dims ``[*lead, out, in]`` (see the
        module docstring). :returns: ``[B, out]`` (``[S·B, out]``).
    :param clip_threshold: if given, weights with ``log α >= clip_threshold`` drop out of the mean (see
        :func:`_mean_weight`); their variance stays.
    :raises ValueError: ``x``'s batch does not split into the weight's sample blocks.
    """
    q = local_distribution(weight)
    if not isinstance(q, Normal):
        return _linear(x, weight, bias)
    mean = _linear(x, _mean_weight(q, clip_threshold), bias)
    var = _linear(x * x, _variance(q), None)
    return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         clip_threshold: float | None = None, nd: int = 2, **kwargs) -> torch.Tensor:
    """``F.conv1d`` (``nd=1``) / ``F.conv2d`` (``nd=2``) with the local reparameterisation trick (mean
    ``conv(x, θ)``, variance ``conv(x², σ²)``; stride, padding, dilation, groups as in ``F.conv2d``);
    ``clip_threshold`` and sample dims as in :func:`linear`."""
    q = local_distribution(weight)
    if not isinstance(q, Normal):
        return _conv(x, weight, bias, nd=nd, **kwargs)
    mean = _conv(x, _mean_weight(q, clip_threshold), bias, nd=nd, **kwargs)
    var = _conv(x * x, _variance(q), None, nd=nd, **kwargs)
    return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           clip_threshold: float | None = None, **kwargs) -> torch.Tensor:
    """:func:`conv` with ``nd=2``."""
    return conv(x, weight, bias, clip_threshold, 2, **kwargs)


def _conv_args(args, kwargs) -> dict:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    out = dict(zip(names, args, strict=False))
    out.update(kwargs)
    return out


class LocalOps(TorchFunctionMode):
    """Intercept ``F.linear``, ``F.conv1d`` and ``F.conv2d`` (however the user's layers call them) where the weight
    is a latent value: a tagged Gaussian weight gets the local reparameterisation trick (:func:`linear`,
    :func:`conv`), a weight with sample dims the batched op; every other call runs unchanged. This is how a
    user's own ``nn.Linear`` / ``nn.Conv2d`` (any stride, padding, dilation, groups, bias) trains with sparse VD
    without a layer class of ours (docs/design.md, contract 5; TyXe intercepts the same ops).
    :class:`pyro_sparse.SparseModel` runs its network inside it.
    """

    _OPS = {F.linear: 0, F.conv1d: 1, F.conv2d: 2}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:  # nn.MultiheadAttention reads its weights inside this call
            from ..nn.attention import _bind_mha_args, attention_call, packed_call

            a = _bind_mha_args(args, kwargs)
            latent = [w for w in (a["in_proj_weight"], a["out_proj_weight"]) if torch.is_tensor(w) and hasattr(w, _TAG)]
            if latent and all(w.dim() == 2 for w in latent) and packed_call(a):
                with self:  # its projections as F.linear calls this mode sees (the latent one: local reparam.)
                    return attention_call(a)
        nd = self._OPS.get(func)
        if nd is not None:
            a = _conv_args(args, kwargs)
            w = a.get("weight")
            if torch.is_tensor(w) and (hasattr(w, _TAG) or w.dim() > (2 if nd == 0 else nd + 2)):
                clip = getattr(w, CLIP_TAG, None)
                if nd == 0:
                    return linear(a["input"], w, a.get("bias"), clip)
                rest = {k: a[k] for k in ("stride", "padding", "dilation", "groups") if k in a}
                return conv(a["input"], w, a.get("bias"), clip, nd=nd, **rest)
        return func(*args, **kwargs)


def local_sample(value: torch.Tensor, batch_size: int, site_dim: int = 1, per_batch: bool = False) -> torch.Tensor:
    """Per-example draws from the tagged guide distribution of ``value``, else ``value`` itself.

    :param value: a latent value ``[*site_shape]`` (``site_dim`` dims, e.g. ``[K]`` units), or ``[*lead,
        *site_shape]`` under vectorised particles / parallel ``Predictive``.
    :param batch_size: the batch the draws are for: ``B``, or ``S·B`` with ``S = prod(lead)``.
    :param per_batch: one draw per minibatch (per sample block), shared by its examples — the authors' estimator
        (their SBP and BB code draw θ / π once per minibatch): unbiased like the per-example one, with more variance
        and fewer random numbers.
    :returns: tagged: ``[batch_size, *site_shape]``, one draw per example (block ``s`` from sample ``s``'s
        distribution; with ``per_batch`` one draw per block, expanded over it); untagged: ``value`` (no lead dims)
        or its sample ``s`` repeated over block ``s`` (``[batch_size, *site_shape]``).
    :raises ValueError: ``batch_size`` does not split into ``S`` blocks.
    """
    lead, site = value.shape[: value.dim() - site_dim], value.shape[value.dim() - site_dim:]
    q = local_distribution(value)
    if q is None and not lead:
        return value
    s = math.prod(lead)
    if batch_size % s:
        raise ValueError(f"a batch of {batch_size} examples does not split into {s} sample blocks {list(lead)}")
    n = batch_size // s
    if q is None:
        return value.reshape(s, 1, *site).expand(s, n, *site).reshape(batch_size, *site)
    k = 1 if per_batch else n
    draws = q.rsample((k,)) if q.has_rsample else q.sample((k,))  # [k, *lead, *site]
    if per_batch:
        draws = draws.expand(n, *draws.shape[1:])
    if not lead:
        return draws
    return draws.reshape(n, s, *site).transpose(0, 1).reshape(batch_size, *site)
