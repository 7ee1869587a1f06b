"""Per-layer KL scale: ``kl_scale(guide, {"conv1": 40.0})`` multiplies the KL of that layer's latent sites.

In a mean-field ELBO with analytic KL (:class:`~pyro_sparse.infer.SparseELBO`, Pyro's ``TraceMeanField_ELBO``) a
guide site's ``scale`` multiplies its ``KL(q ‖ p)``, so scaling the guide's sites of one layer by ``s`` turns the
objective into ``E_q[log p(D | ·)] − Σ_layers s_l · KL_l``. With every ``s_l = 1`` this is the ELBO; ``s_l > 1``
is a tempered objective (equivalently the prior ``p^{s_l}`` up to its normaliser) that prunes layer ``l`` harder.

Source: the beta-Bernoulli dropout authors' code (``ICLR2020anonymous/bbdrop``, configs
``lenet_caffe_mnist_{bbdropout,sbp}_scale.py``) scales the KL of LeNet-5's conv1 gates by 40 and conv2's by 16;
the paper does not mention it. It is off unless asked for.

Layer names: a key matches a latent site whose dotted name has the key, or ``<key>_units`` (the unit module after
layer ``<key>``), as one component: ``conv1`` matches ``units.conv1_units.theta`` and ``units.conv1_units.pi``;
dots in a key stand for ``__`` (``layer1.0.conv1`` matches ``units.layer1__0__conv1_units.pi``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from pyro.poutine.messenger import Messenger


def _matches(key: str, site: str) -> bool:
    parts = site.split(".")
    key = key.replace(".", "__")  # a dotted layer path (``layer1.0.conv1``) as :func:`pyro_sparse.sparsify` keys it
    return key in parts or f"{key}_units" in parts


def check_kl_scale(scales: Mapping[str, float]) -> None:
    """:raises ValueError: a scale in ``scales`` that is not a positive finite number."""
    for key, s in scales.items():
        if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
            raise ValueError(f"KL scale of layer {key!r} must be a positive number, got {s!r}")


def resolve_kl_scale(site_names: Iterable[str], scales: Mapping[str, float]) -> dict[str, float]:
    """``{site name: scale}`` for the latent sites that the layer keys of ``scales`` match.

    :raises ValueError: a scale that is not a positive finite number, or a key that matches no site (the message
        lists the sites).
    """
    check_kl_scale(scales)
    names = list(site_names)
    out: dict[str, float] = {}
    for key, s in scales.items():
        hits = [n for n in names if _matches(key, n)]
        if not hits:
            raise ValueError(f"KL scale: layer {key!r} has no latent site; latent sites: {', '.join(names) or 'none'}")
        for n in hits:
            out[n] = out.get(n, 1.0) * float(s)
    return out


class KLScaleMessenger(Messenger):
    """Multiply the ``scale`` of the latent sample sites of the layers in ``scales`` (see the module docstring).

    Apply it to the guide: the mean-field ELBO scales each KL by the guide site's scale.
    """

    def __init__(self, scales: Mapping[str, float]):
        super().__init__()
        self.scales = dict(scales)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        for key, s in self.scales.items():
            if _matches(key, msg["name"]):
                msg["scale"] = msg["scale"] * s


def kl_scale(fn=None, scales: Mapping[str, float] | None = None):
    """Effect handler: ``kl_scale(guide, {"conv1": 40})`` or ``with kl_scale(scales={...}): ...``."""
    msngr = KLScaleMessenger(scales or {})
    return msngr(fn) if fn is not None else msngr
