"""Local (per-example) noise: the one place where pyro-sparse turns global posterior samples into per-example draws.

DESIGN.md contract 3. Inside :class:`LocalReparameterizationMessenger` (applied by the guide), every latent value
the guide produces carries its guide distribution. The model's layers then call :func:`linear`, :func:`conv2d` or
:func:`local_sample`, which, for a tagged value, draw the noise per example instead of sharing one global sample:

* Gaussian weights (sparse VD): the local reparameterisation trick (Kingma et al. 2015; Molchanov et al. 2017,
  Eq. 17): the pre-activation is ``b ~ N(x θᵀ, x² (σ²)ᵀ)`` per example; no weight matrix is ever sampled (the
  value handed to the model is the posterior mean, tagged).
* Unit noise and gates (SBP, BB): ``θ`` or ``π`` drawn independently for each example, shape ``[B, K]``.

Both are unbiased estimators of the same ELBO with lower variance. Outside the messenger (or for untagged values)
the helpers fall back to plain ``F.linear`` / ``F.conv2d`` / the global value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import Independent, Normal
from pyro.poutine.messenger import Messenger

_TAG = "_pyro_sparse_local_fn"


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
    """Tag every latent sample with its guide distribution; Gaussian sites hand out their mean, not a sample.

    Use it around a guide (``MeanFieldGuide`` does so by default) or around a whole ``svi.step``.
    """

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        if isinstance(base_distribution(msg["fn"]), Normal):
            # the model consumes (loc, scale) through the local reparameterisation; a view gives a fresh tensor
            # object to tag without touching the parameter itself
            msg["value"] = msg["fn"].mean.expand(msg["fn"].shape())

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
    from ..distributions import log_alpha

    pruned = log_alpha(q.loc, q.scale, log_variance=getattr(q, "log_variance", None)).detach() >= clip_threshold
    return q.loc.masked_fill(pruned, 0.0)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           clip_threshold: float | None = None) -> torch.Tensor:
    """``F.linear`` with the local reparameterisation trick for a tagged Gaussian ``weight`` ``[out, in]``.

    :param x: ``[B, in]``. :returns: ``[B, out]``.
    :param clip_threshold: if given, weights with ``log α >= clip_threshold`` drop out of the mean (see
        :func:`_mean_weight`); their variance stays.
    """
    q = local_distribution(weight)
    if not isinstance(q, Normal):
        return F.linear(x, weight, bias)
    mean = F.linear(x, _mean_weight(q, clip_threshold), bias)
    var = F.linear(x * x, _variance(q))
    return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           clip_threshold: float | None = None, **kwargs) -> torch.Tensor:
    """``F.conv2d`` with the local reparameterisation trick (mean ``conv(x, θ)``, variance ``conv(x², σ²)``);
    ``clip_threshold`` as in :func:`linear`."""
    q = local_distribution(weight)
    if not isinstance(q, Normal):
        return F.conv2d(x, weight, bias, **kwargs)
    mean = F.conv2d(x, _mean_weight(q, clip_threshold), bias, **kwargs)
    var = F.conv2d(x * x, _variance(q), None, **kwargs)
    return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)


def local_sample(value: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-example draws ``[B, *value.shape]`` from the tagged guide distribution of ``value``, else ``value``."""
    q = local_distribution(value)
    if q is None:
        return value
    return q.rsample((batch_size,)) if q.has_rsample else q.sample((batch_size,))
