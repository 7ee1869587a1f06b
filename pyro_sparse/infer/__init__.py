"""Inference: the ELBO and the one training loop."""

from .elbo import MissingAnalyticKLError, SparseELBO

__all__ = ["MissingAnalyticKLError", "SparseELBO"]
from .train import CheckpointError, TrainConfig, fit, load_checkpoint, make_optimizer  # noqa: E402

__all__ += ["CheckpointError", "TrainConfig", "fit", "load_checkpoint", "make_optimizer"]
