"""Guides: for every latent site of a pyro-sparse model, the variational family that matches its prior.

docs/design.md, contract 2. ``MeanFieldGuide(model)`` finds the latent sites the model declares with ``PyroSample`` and
creates, per site, the family registered for its prior type:

==========================  ==========================  =====================
prior                       guide family                 method
==========================  ==========================  =====================
``LogUniform``              ``GaussianWeights``           SVD (``guides.svd``)
``TruncatedLogUniform``     ``TruncatedLogNormalUnits``   SBP (``guides.sbp``)
``Beta``                    ``KumaraswamyUnits``          BB  (``guides.bb``)
``Normal``                  ``NormalFamily``              DBB (``guides.normal``)
==========================  ==========================  =====================

Every pair has a registered analytic KL, so ``SVI(model, guide, optim, TraceMeanField_ELBO())`` never falls back to
Monte Carlo. New families are added with :func:`register_family`.

Every family's variational parameters are ``PyroParam`` objects, so a guide works in both of Pyro's parameter modes:
with the global param store (``SVI`` + ``pyro.optim``; ``pyro.get_param_store().save()/load()`` round-trips it, the
names being the guide's module paths, e.g. ``sites.net__fc1__weight.loc``) and with ``module_local_params=True``
(an ELBO module + a torch optimizer; ``state_dict`` keys end in ``_unconstrained``).
"""

from __future__ import annotations

import pyro
import torch
from pyro.distributions import Beta, Normal
from pyro.nn import PyroModule
from torch import nn

from pyro_sparse.distributions import LogUniform, TruncatedLogUniform
from pyro_sparse.poutine import LocalReparameterizationMessenger
from pyro_sparse.poutine.local import base_distribution
from pyro_sparse.settings import switch

from .bb import KumaraswamyUnits
from .normal import NormalFamily
from .sbp import TruncatedLogNormalUnits
from .svd import GaussianWeights

FAMILIES: dict[type, type] = {
    LogUniform: GaussianWeights,
    TruncatedLogUniform: TruncatedLogNormalUnits,
    Beta: KumaraswamyUnits,
    Normal: NormalFamily,
}


def register_family(prior_type: type, family: type) -> None:
    """Use ``family`` (an ``nn.Module`` with ``from_site(prior, init, shape)`` and ``distribution()``) for
    every latent site whose prior is an instance of ``prior_type``. A family that reads its parameters with
    :func:`pyro_sparse.settings.param_value` saves the training engine a placeholder param statement per read."""
    FAMILIES[prior_type] = family


def latent_sites(model: nn.Module):
    """Yield ``(site_name, module, attribute, prior)`` for every ``PyroSample`` in ``model``, in module order."""
    for path, module in model.named_modules():
        if not isinstance(module, PyroModule):
            continue
        for attr, prior in module._pyro_samples.items():
            if not isinstance(prior, torch.distributions.Distribution):
                prior = prior(module)
            name = module.__dict__["_pyro_name"] or path  # PyroModule names sites by their module path
            yield (f"{name}.{attr}" if name else attr), module, attr, prior


def _prepare_together(qs: list) -> None:
    """Let each distribution type that defines ``prepare_together(dists)`` compute what a step needs for all its
    sites at once (e.g. :meth:`~pyro_sparse.distributions.TruncatedLogNormal.prepare_together`: one autograd node
    for every SBP site's per-unit parts instead of one per site)."""
    by_type: dict[type, list] = {}
    for q in qs:
        if hasattr(type(q), "prepare_together"):
            by_type.setdefault(type(q), []).append(q)
    for kind, group in by_type.items():
        kind.prepare_together(group)


def _key(name: str) -> str:
    return name.replace(".", "__")


class MeanFieldGuide(PyroModule):
    """Mean-field guide with one matching family per latent site of ``model``.

    :param model: a pyro-sparse model (any ``PyroModule`` whose latents are declared with ``PyroSample``).
    :param local: sample inside :class:`~pyro_sparse.poutine.LocalReparameterizationMessenger` (default), so the
        model draws per-example noise (local reparameterisation for weights). ``False`` gives global samples.
    :raises TypeError: a site's prior has no registered family.

    A model without latent sites (a dense baseline) gets an empty guide: the ELBO is then the log-likelihood.

    Family parameters are initialised from ``<attr>_init`` buffers of the model's modules where present (e.g.
    SVD θ from a pretrained dense weight).
    """

    #: ``False``: no global draws for a model that draws every latent per example (the training engine switches them
    #: off inside its steps through :func:`pyro_sparse.settings.training_switches`, without setting this attribute);
    #: see :class:`~pyro_sparse.poutine.LocalReparameterizationMessenger` ``draw``
    global_draws = True

    def __init__(self, model: nn.Module, local: bool = True):
        super().__init__()
        self.local = local
        self.sites = PyroModule[nn.ModuleDict]()
        self._names: list[str] = []
        for name, module, attr, prior in latent_sites(model):
            base = base_distribution(prior)
            family = next((f for t, f in FAMILIES.items() if isinstance(base, t)), None)
            if family is None:
                raise TypeError(
                    f"site {name!r}: no guide family registered for prior {type(base).__name__}; "
                    f"known priors: {[t.__name__ for t in FAMILIES]}"
                )
            init = getattr(module, f"{attr}_init", None)
            self.sites[_key(name)] = family.from_site(base, init, prior.shape())
            self._names.append(name)
        if hasattr(model, "bind_guide"):  # a SparseModel reads this guide's posterior in .eval() mode
            model.bind_guide(self)

    @property
    def site_names(self) -> list[str]:
        return list(self._names)

    def posterior(self, name: str):
        """The guide distribution of site ``name`` (no ``Independent`` wrapper; batch shape = the site's shape).

        Read inside the guide's Pyro context, so with the global param store it sees the stored values (e.g. right
        after ``pyro.get_param_store().load(...)``). :raises KeyError: no such site.
        """
        if _key(name) not in self.sites:
            raise KeyError(f"no latent site {name!r}; sites: {self._names}")
        return self._posteriors([name])[0]

    def _posteriors(self, names: list[str]) -> list:
        """The guide distributions of ``names``, every site's parameters read in one Pyro context."""
        with self._pyro_context:
            sites = self.sites
            return [sites[_key(name)].distribution() for name in names]

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        msngr = LocalReparameterizationMessenger(draw=switch("global_draws", self.global_draws)) if self.local else None
        if msngr is not None:
            msngr.__enter__()
        try:
            qs = self._posteriors(self._names)
            _prepare_together(qs)
            out = {}
            for name, q in zip(self._names, qs, strict=True):
                out[name] = pyro.sample(name, q.to_event(q.batch_shape.__len__()))
            return out
        finally:
            if msngr is not None:
                msngr.__exit__(None, None, None)


__all__ = ["FAMILIES", "MeanFieldGuide", "latent_sites", "register_family"]
