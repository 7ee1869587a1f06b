"""Rebuild a run's model and guide from ``RUN_DIR`` (``config.json`` + ``checkpoint.pt``, never unpickling)."""

from __future__ import annotations

from pathlib import Path


def load_run(run_dir: str | Path, device: str = "cpu"):
    """``(model, guide, config)`` of the run in ``run_dir`` with the weights of its last checkpoint.

    :raises RunDirError: ``config.json`` missing, corrupted or of another version.
    :raises CheckpointError: missing or corrupted checkpoint, or one that does not fit the recorded model.
    """
    from pyro_sparse.guides import MeanFieldGuide
    from pyro_sparse.models import build_model

    from .errors import CheckpointError, RunDirError, one_line
    from .runfiles import load_checkpoint, read_config

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    ckpt = load_checkpoint(run_dir)
    try:
        model = build_model(cfg["arch"], cfg["method"], tuple(cfg["input_shape"]), 10, **cfg["net_kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{run_dir / 'config.json'} does not describe a model ({one_line(e)})") from None
    guide = MeanFieldGuide(model)
    try:
        model.load_state_dict(ckpt["model"])
        guide.load_state_dict(ckpt["guide"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint in {run_dir} does not fit its recorded model ({one_line(e)})") from None
    return model.to(device).eval(), guide.to(device).eval(), cfg
