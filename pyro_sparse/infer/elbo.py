"""The ELBO of pyro-sparse: Pyro's mean-field ELBO, strict about analytic KL, with a KL warm-up weight.

``Σ_batch (N/B)·log p(y|x) − β_t · Σ_sites KL(q ‖ p)`` (METHODS.md, top). The N/B scaling comes from the model's
data plate; β_t (``kl_weight``) multiplies the guide side's analytic KL, exactly as a ``poutine.scale`` on the guide
would in ``TraceMeanField_ELBO``.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import prune_subsample_sites


class MissingAnalyticKLError(NotImplementedError):
    """A latent site's (guide, prior) pair has no registered KL: the ELBO would silently use Monte Carlo."""


class SparseELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` that (1) raises :class:`MissingAnalyticKLError`, naming the site, instead of falling
    back to a Monte-Carlo KL, (2) scales every KL by ``kl_weight`` (KL warm-up β_t ∈ [0, 1]), and (3) keeps the last
    step's ``nll`` and ``kl`` (detached 0-d tensors on the loss's device, nats per the whole data set: NLL scaled by
    N/B, unweighted KL), so that a training step reads nothing back to the host.

    :meth:`differentiable_loss` returns the loss tensor without Pyro's NaN/inf warning or any ``item()`` (no
    host-device synchronisation); the training engine checks finiteness when it reads its accumulated totals.
    With ``kl_weight = 1`` its loss equals ``TraceMeanField_ELBO``'s for the same traces.
    """

    def __init__(self, kl_weight: float = 1.0, **kwargs):
        kwargs.setdefault("max_plate_nesting", 1)
        super().__init__(**kwargs)
        self.kl_weight = kl_weight
        self.nll = torch.tensor(float("nan"))
        self.kl = torch.tensor(float("nan"))
        self.last_return = None

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``−ELBO`` estimate (0-d tensor with gradients), averaged over ``num_particles``; no host read."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._surrogate(model_trace, guide_trace) / self.num_particles
        return loss

    def _get_trace(self, model, guide, args, kwargs):
        """Guide trace, then the model replayed against it; log-probs only where the loss uses them.

        Every latent site has an analytic KL, so neither the guide's score parts nor the prior's log-density are
        needed (``TraceMeanField_ELBO`` computes both and throws them away).
        """
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs
        )
        self.last_return = model_trace.nodes["_RETURN"]["value"] if "_RETURN" in model_trace.nodes else None
        guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
        for site in model_trace.nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                log_p = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
                site["log_prob_sum"] = log_p.sum()
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """Pyro's particle API (``loss``, ``loss_and_grads``, ``SVI``): ``(float loss, surrogate tensor)``."""
        surrogate = self._surrogate(model_trace, guide_trace)
        return float(surrogate.detach()), surrogate

    def _surrogate(self, model_trace, guide_trace) -> torch.Tensor:
        nll = 0.0
        kl = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                nll = nll - model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes.get(name)
            if guide_site is None:
                raise ValueError(f"latent site {name!r} of the model has no counterpart in the guide")
            try:
                kl_qp = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                raise MissingAnalyticKLError(
                    f"site {name!r}: no analytic KL registered for guide {_describe(guide_site['fn'])} "
                    f"and prior {_describe(model_site['fn'])}; register one with "
                    "torch.distributions.kl.register_kl (pyro_sparse.distributions.kl) or fix the guide"
                ) from None
            kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
            kl = kl + (kl_qp.sum() if torch.is_tensor(kl_qp) else kl_qp)
        surrogate = torch.as_tensor(nll + self.kl_weight * kl)
        self.nll = torch.as_tensor(nll).detach()
        self.kl = torch.as_tensor(kl, device=self.nll.device).detach()
        return surrogate


def _describe(fn) -> str:
    parts = []
    while hasattr(fn, "base_dist"):
        parts.append(type(fn).__name__)
        fn = fn.base_dist
    parts.append(type(fn).__name__)
    return "(".join(parts) + ")" * (len(parts) - 1)
