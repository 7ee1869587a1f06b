"""Rebuild a run's model and guide from ``RUN_DIR`` (``config.json`` + ``checkpoint.pt``): data only, never
unpickling, never importing what the files name unless the caller opts in (:mod:`pyro_sparse.trust`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .errors import CheckpointError, RunDirError, one_line
from .runfiles import CONFIG, load_checkpoint, read_config
from .sparsify import METHODS
from .trust import recorded_method, recorded_network

#: the sparsify options that ``pyro-sparse train`` records in ``config.json`` (``net_kwargs``)
RECORDED_OPTIONS = ("temperature", "noise", "include", "exclude")


def load_run(run_dir: str | Path, device: str = "cpu", *, factory: Callable[[], nn.Module] | None = None,
             method=None, trust_code: bool = False):
    """``(model, guide, config)`` of the run in ``run_dir`` with the weights of its last checkpoint.

    :param factory: builds the user's own architecture that ``config.json`` names (``package.module:factory``).
    :param method: the :class:`pyro_sparse.Method` of a run made with ``--method package.module:Name`` (its
        ``method_source``), unless that method is registered already.
    :param trust_code: import the factory (and method) that ``config.json`` names instead (only for files you
        trust).
    :raises RunDirError: ``config.json`` missing, corrupted, of another version, or not describing a model.
    :raises UntrustedCodeError: a user's architecture without ``factory`` or ``trust_code``.
    :raises CheckpointError: missing or corrupted checkpoint, one of another run, or one that does not fit the
        recorded model.
    """
    from pyro_sparse.guides import MeanFieldGuide
    from pyro_sparse.models import build_model

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    ckpt = load_checkpoint(run_dir)
    source = run_dir / CONFIG
    options = cfg.get("net_kwargs", {})
    if not isinstance(options, dict) or not set(options) <= set(RECORDED_OPTIONS):
        raise RunDirError(f"{source}: 'net_kwargs' must hold only {', '.join(RECORDED_OPTIONS)}; the file is damaged")
    for key in ("include", "exclude"):  # layer-name globs, never anything callable
        if key in options and not (isinstance(options[key], list) and all(isinstance(g, str) for g in options[key])):
            raise RunDirError(f"{source}: 'net_kwargs.{key}' must be a list of layer-name globs; the file is damaged")
    if "method_source" in cfg and (method is not None or cfg["method"] not in METHODS):
        spec = recorded_method(cfg["method_source"], str(source), method, trust_code)
        if spec.name != cfg["method"]:
            raise RunDirError(f"{source} records the method {cfg['method']!r}; {cfg['method_source']} is named "
                              f"{spec.name!r}")
    arch = cfg["arch"]
    builder = recorded_network({"name": arch, "kwargs": {}}, str(source), factory, trust_code) if ":" in arch else None
    try:
        model = build_model(arch, cfg["method"], tuple(cfg["input_shape"]), 10, factory=builder,
                            arch_options=cfg.get("arch_options") or None, **options)
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{source} does not describe a model ({one_line(e)})") from None
    guide = MeanFieldGuide(model)
    try:
        model.load_state_dict(ckpt["model"])
        guide.load_state_dict(ckpt["guide"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit its recorded model ({one_line(e)})") from None
    return model.to(device).eval(), guide.to(device).eval(), cfg
