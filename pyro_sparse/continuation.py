"""The next training stage of a trained model, in Python (issue 27, item 5): what ``pyro-sparse train --init-from``
does for the command line — a dense network sparsified with its trained weights, a method continued, and DBB
started from a trained BB model with BB's q(π) frozen (Lee et al. 2018, Sec. 4: the two-stage training of DBB).

    bb, bb_guide = sparsify(net, "bb", x), ...            # trained with fit(...)
    dbb, dbb_guide = continue_as(bb, bb_guide, "dbb")     # BB's weights, BB's q(π) loaded and frozen
    fit(dbb, dbb_guide, data, TrainConfig.for_method("dbb", epochs=200))
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .compact import check_guide
from .errors import InvalidInputError
from .infer.callbacks import example_input
from .model import Classifier
from .sparsify import METHODS, SparseModel, sparsify


def load_source_guide(guide: nn.Module, state: dict[str, torch.Tensor], freeze: bool) -> list[str]:
    """Copy into ``guide`` the parameters of a source run's guide ``state`` that it has under the same name and
    shape, and with ``freeze`` stop their gradients (``requires_grad=False``: the engine's optimizer leaves them
    out); returns the names copied. The one rule behind ``continue_as`` and ``pyro-sparse train --init-from``."""
    own = guide.state_dict()
    shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    guide.load_state_dict(shared, strict=False)
    if freeze:
        for name, p in guide.named_parameters():
            if name in shared:
                p.requires_grad_(False)
    return sorted(shared)


def continue_as(model: nn.Module, guide: nn.Module | None, method: str, **options) -> tuple[SparseModel, nn.Module]:
    """``(model, guide)`` of ``method`` continuing the trained ``model`` (and its ``guide``).

    * from a dense :class:`~pyro_sparse.model.Classifier` (``guide=None``): ``method`` attached to its network with
      the trained weights kept (what :func:`~pyro_sparse.sparsify` of a trained network does; ``options`` go to it);
    * from the same method: copies of ``model`` and ``guide`` (training continues where it stopped);
    * from a method that ``method`` starts from (:attr:`pyro_sparse.Method.starts_from`; DBB from BB): ``method``
      attached to the trained network, the source's point estimates and the guide parameters of the sites both
      models have (same name and shape) copied, and with :attr:`~pyro_sparse.Method.freezes_source` frozen (DBB
      keeps BB's q(π) and trains its own β, γ and the weights).

    The source is not changed. :param options: :func:`~pyro_sparse.sparsify` options for the new model (e.g. the
    ``include`` / ``exclude`` the source was made with: the sites must match for the guide to carry over).
    :raises InvalidInputError: an unknown method, a source ``method`` does not continue, a guide that is not the
        model's, or (from another method) no guide parameter that fits the new model.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if not isinstance(model, Classifier):
        raise InvalidInputError(f"continue_as expects a trained pyro_sparse model (Classifier or sparsify's model), "
                                f"got {type(model).__name__}")
    source = model.method if isinstance(model, SparseModel) else "dense"
    allowed = {"dense", method, *spec.starts_from}
    if source not in allowed:
        raise InvalidInputError(f"a {source} model cannot be continued as {method!r}; {method} starts from "
                                f"{' or '.join(sorted(allowed))} models")
    if source != "dense":
        if guide is None:
            raise InvalidInputError(f"continue_as needs the trained guide of the {source} model")
        check_guide(model, guide)
    if source == method:
        if options:
            raise InvalidInputError(f"continuing a {method} model keeps its latents; got options {sorted(options)}")
        new = copy.deepcopy(model)
        new_guide = type(guide)(new)
        new_guide.load_state_dict(guide.state_dict())
        return new, new_guide
    from pyro_sparse.guides import MeanFieldGuide

    new = sparsify(model.net, method, example_input(model), num_data=model.num_data, **options)
    if source == "dense":
        return new, MeanFieldGuide(new)
    own = new.state_dict()
    with torch.no_grad():  # the source's point estimates that the new model has (its gates' own, say)
        for key, value in model.state_dict().items():
            if key in own and own[key].shape == value.shape:
                own[key].copy_(value)
    new_guide = MeanFieldGuide(new)
    if not load_source_guide(new_guide, guide.state_dict(), freeze=spec.freezes_source):
        raise InvalidInputError(f"no guide parameter of the {source} model fits the {method} model; sparsify both "
                                "with the same include/exclude")
    return new, new_guide

