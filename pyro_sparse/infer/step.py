"""The research step, apart from the loop that runs it (issue 27, item 4): the objective (−ELBO of a minibatch as a
module), the optimizer over its two parameter groups, and one SVI step that returns a small record of device tensors.

:func:`pyro_sparse.infer.fit` (the loop: devices, DDP, resume, checkpoints, progress, per-epoch compaction) calls
:class:`SVIStep` once per minibatch; a user's own loop can call it the same way::

    objective = Objective(model, guide, SparseELBO())
    step = SVIStep(objective, make_optimizer(model, guide, cfg))
    result = step(x, y)          # result.loss, result.nll, result.logits: tensors on the device
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro import poutine as pyro_poutine
from torch import nn

from ..settings import direct_param_reads
from .config import Hyperparameters
from .elbo import SparseELBO

__all__ = ["Objective", "SVIStep", "StepResult", "make_optimizer"]


def make_optimizer(model, guide, cfg: Hyperparameters) -> torch.optim.Optimizer:
    """Adam with the two parameter groups ``weights`` (model point estimates, with weight decay) and ``latent``
    (guide parameters, plus the model's point-estimated gate parameters that a module lists in its
    ``gate_parameters`` attribute, e.g. DBB's γ; no weight decay); parameters with ``requires_grad=False`` are left
    out (DBB's frozen BB guide)."""
    gate = {id(getattr(m, name)) for m in model.modules() for name in getattr(m, "gate_parameters", ())}
    model_params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in model_params if id(p) not in gate], "lr": cfg.lr, "weight_decay": cfg.weight_decay,
         "name": "weights"},
        {"params": [p for p in model_params if id(p) in gate] + [p for p in guide.parameters() if p.requires_grad],
         "lr": cfg.lr_latent or cfg.lr, "weight_decay": 0.0, "name": "latent"},
    ]
    return torch.optim.Adam([g for g in groups if g["params"]])


class Objective(nn.Module):
    """``−ELBO`` of a minibatch as a module, ``forward(x, y, weight=1.0) -> 0-d loss``, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` can wrap model and guide together (Pyro's ``ELBOModule``,
    with the guide possibly wrapped in :func:`~pyro_sparse.poutine.kl_scale`). ``weight`` multiplies the likelihood
    (a rank's share of an uneven global batch, :func:`pyro_sparse.infer.distributed.shard`). Parameters are read
    inside :func:`~pyro_sparse.settings.direct_param_reads` (with module-local parameters: no placeholder param
    statements)."""

    def __init__(self, model, guide, elbo: SparseELBO, guide_fn=None):
        super().__init__()
        self.model, self.guide, self.elbo = model, guide, elbo
        object.__setattr__(self, "guide_fn", guide_fn or guide)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        model = self.model if weight == 1.0 else pyro_poutine.scale(self.model, weight)
        with direct_param_reads():
            return self.elbo.differentiable_loss(model, self.guide_fn, x, y)


@dataclass(frozen=True)
class StepResult:
    """One step's outcome, left on the device (reading it is the caller's choice: one host sync per read).

    :ivar loss: ``[]`` the minibatch's objective (−ELBO estimate, KL weighted by β and scaled as configured), nats.
    :ivar nll: ``[]`` its negative log-likelihood part, nats (summed over the minibatch, scaled to the data set).
    :ivar logits: ``[B, classes]`` the network's output in this step (the noise draw the gradient used).
    """

    loss: torch.Tensor
    nll: torch.Tensor
    logits: torch.Tensor


class SVIStep:
    """``step(x, y, weight=1.0) -> StepResult``: zero the gradients, the objective's loss, backward, one optimizer
    step (Pyro's ``SVI.step`` on module parameters, without its host read of the loss).

    :param objective: an :class:`Objective` (or one wrapped in ``DistributedDataParallel``).
    :param optimizer: a ``torch.optim.Optimizer`` over the model's and guide's parameters (:func:`make_optimizer`).
    """

    def __init__(self, objective: nn.Module, optimizer: torch.optim.Optimizer):
        self.objective, self.optimizer = objective, optimizer
        self.elbo: SparseELBO = getattr(objective, "module", objective).elbo

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective(x, y, weight)
        loss.backward()
        self.optimizer.step()
        return StepResult(loss.detach(), self.elbo.nll, self.elbo.last_return)
