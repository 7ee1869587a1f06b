"""Inference: the ELBO, the research step (:mod:`.step`), the run's settings (:mod:`.config`) and the one training
loop (:mod:`.train`) with its per-epoch callbacks (:mod:`.callbacks`)."""

from .elbo import MissingAnalyticKLError, SparseELBO

__all__ = ["MissingAnalyticKLError", "SparseELBO"]
from .callbacks import Callback, EpochEnd  # noqa: E402
from .config import EngineSettings, Hyperparameters, TrainConfig  # noqa: E402
from .step import Objective, StepResult, SVIStep, make_optimizer  # noqa: E402
from .train import CheckpointError, fit, load_checkpoint  # noqa: E402

__all__ += ["Callback", "CheckpointError", "EngineSettings", "EpochEnd", "Hyperparameters", "Objective", "SVIStep",
            "StepResult", "TrainConfig", "fit", "load_checkpoint", "make_optimizer"]
