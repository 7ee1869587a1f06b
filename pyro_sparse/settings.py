"""The parameter mode of pyro-sparse's own entry points, chosen inside a scope and restored on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import pyro
import torch
from torch.distributions import transform_to

_DIRECT_READS: ContextVar[bool] = ContextVar("pyro_sparse_direct_param_reads", default=False)
_SWITCHES: ContextVar[tuple] = ContextVar("pyro_sparse_training_switches", default=())  # ((name, value), ...)


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


@contextlib.contextmanager
def direct_param_reads() -> Iterator[None]:
    """Within the block, and only where module-local parameters are on, :func:`param_value` and the models' network
    read parameters without Pyro's param statements.

    With ``module_local_params=True`` a ``PyroModule`` attribute read still emits a param statement (a ``pyro.module``
    statement, one per parameter, for a plain ``nn.Module`` attribute) that carries no value — Pyro's "fake param
    statement to ensure any handlers of pyro.param are applied" — at a few tens of microseconds each. The training
    engine's step (:class:`pyro_sparse.infer.train.Objective`) reads inside this block: its handlers (trace, replay,
    scale, the local reparameterisation) ignore parameters. Everywhere else (``SVI``, ``Predictive``, the global
    param store, where the statements carry the values) every read stays a statement.
    """
    token = _DIRECT_READS.set(bool(pyro.settings.get("module_local_params")))
    try:
        yield
    finally:
        _DIRECT_READS.reset(token)


def direct_reads() -> bool:
    """Whether the caller is inside :func:`direct_param_reads` with module-local parameters on."""
    return _DIRECT_READS.get()


@contextlib.contextmanager
def training_switches(*, autocast_dtype: torch.dtype | None = None, global_draws: bool | None = None
                      ) -> Iterator[None]:
    """The training engine's switches for the block, read by the models and guides in it instead of attributes set on
    the user's objects (issue 27): ``autocast_dtype`` — the network's forward pass in training mode under
    ``torch.autocast`` with this dtype (:class:`pyro_sparse.model.Classifier`); ``global_draws`` — whether a guide
    also draws every latent globally (``False`` for a model that draws every latent per example:
    :class:`pyro_sparse.guides.MeanFieldGuide`). ``None`` leaves the object's own setting; nested blocks override."""
    token = _SWITCHES.set((*_SWITCHES.get(), ("autocast_dtype", autocast_dtype), ("global_draws", global_draws)))
    try:
        yield
    finally:
        _SWITCHES.reset(token)


def flushing_denormals() -> bool:
    """Whether this thread's CPU float ops flush subnormal numbers to zero (``torch.set_flush_denormal``, which torch
    can set but not read: probed with one subnormal float32 multiplication)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0)[0] == 0)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Inside the block, CPU float ops treat subnormal numbers (``|x| < 1.18e-38`` in float32) as zero (x86 FTZ/DAZ,
    ``torch.set_flush_denormal(True)``); the caller's mode is restored on exit. The training engine runs in it
    (:class:`pyro_sparse.infer.EngineSettings` ``flush_denormal``): the pruned units of a BB network drive Adam's
    second moments and their weights into the subnormal range, which the CPU computes on 10-100x slower (a
    LeNet-500-300 BB epoch: 47-131 s instead of ~7 s)."""
    was = flushing_denormals()
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported and not was:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Inside the block, CUDA float32 convolutions and matrix products round as IEEE float32, not TF32 (cuDNN's
    convolutions default to TF32 on Ampere and later: ~1e-3 relative error per product, enough for two networks
    that compute the same function with differently shaped kernels to differ by 1e-4 in their logits). The caller's
    settings are restored on exit; CPU arithmetic is unaffected. :func:`pyro_sparse.compact` runs its self-check in
    it, so that the check sees the compaction and not the rounding."""
    backends = [b for b in (torch.backends.cudnn.conv, torch.backends.cuda.matmul) if hasattr(b, "fp32_precision")]
    was = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, w in zip(backends, was, strict=True):
            b.fp32_precision = w


def switch(name: str, own):
    """The value of training switch ``name`` inside :func:`training_switches` where it is set, else ``own`` (the
    object's own attribute)."""
    value = dict(_SWITCHES.get()).get(name)  # (the innermost block's entries come last and win)
    return own if value is None else value


def param_value(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The value of the parameter ``module.<name>`` — a ``PyroParam`` (its constrained value) or a plain
    ``nn.Parameter`` of a ``PyroModule``: ``getattr(module, name)``, or inside :func:`direct_param_reads` the same
    value without the param statement.

    :raises KeyError: (direct reads) ``name`` is no parameter of ``module``.
    """
    if not _DIRECT_READS.get():
        return getattr(module, name)
    pyro_params = getattr(module, "_pyro_params", {})
    if name in pyro_params:
        constraint, _ = pyro_params[name]
        return transform_to(constraint)(module._parameters[f"{name}_unconstrained"])
    return module._parameters[name]
