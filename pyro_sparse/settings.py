"""The parameter mode of pyro-sparse's own entry points, chosen inside a scope and restored on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyro
import torch


@contextlib.contextmanager
def module_local_params() -> Iterator[None]:
    """Run the block with ``pyro.settings`` ``module_local_params=True`` and restore the caller's value on exit,
    exceptions included.

    In this mode every ``PyroModule`` keeps its parameters to itself (two models train side by side in one process,
    checkpoints are ``state_dict`` objects) and Pyro's global param store is neither read nor written. The training
    engine (:func:`pyro_sparse.infer.fit`), the CLI and ``reproduce`` run inside it.
    """
    with pyro.settings.context(module_local_params=True):
        yield


def prepare_module_local(*modules: torch.nn.Module) -> None:
    """Let ``PyroModule`` objects built with the global param store run under :func:`module_local_params`.

    Pyro (1.9) gives a ``PyroModule``'s shared call context its local parameter state only when the module is built
    with ``module_local_params=True`` already on; one built before (the default) raises ``AttributeError: '_Context'
    object has no attribute 'param_state'`` when later called in that mode. This gives every such context an empty
    local state, as Pyro would have at construction; modules that have one are left alone.
    """
    for module in modules:
        for m in module.modules():
            ctx = getattr(m, "_pyro_context", None)
            if ctx is not None and not hasattr(ctx, "param_state"):
                ctx.param_state = {"params": {}, "constraints": {}}
