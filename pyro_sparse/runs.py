"""Rebuild a run's model and guide from ``RUN_DIR`` (``config.json`` + ``checkpoint.pt``, never unpickling)."""

from __future__ import annotations

import json
from pathlib import Path

INPUT_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "digits": (64,), "noise-digits": (128,)}


def load_run(run_dir: str | Path, device: str = "cpu"):
    """``(model, guide, config)`` of the run in ``run_dir`` with the weights of its last checkpoint.

    :raises FileNotFoundError: no ``config.json``. :raises CheckpointError: missing or corrupted checkpoint.
    """
    from pyro_sparse.guides import MeanFieldGuide
    from pyro_sparse.models import build_model

    from .infer import load_checkpoint

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no run (config.json missing)")
    cfg = json.loads(cfg_path.read_text())
    ckpt = load_checkpoint(run_dir)
    model = build_model(cfg["arch"], cfg["method"], INPUT_SHAPES[cfg["dataset"]], 10, 
                        **cfg.get("net_kwargs", cfg.get("unit_kwargs", {})))
    guide = MeanFieldGuide(model)
    model.load_state_dict(ckpt["model"])
    guide.load_state_dict(ckpt["guide"])
    return model.to(device).eval(), guide.to(device).eval(), cfg
