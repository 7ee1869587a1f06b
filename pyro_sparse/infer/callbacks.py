"""What the loop does after each epoch, as callbacks (issue 27, item 4; Lightning's Callback split): measuring the
compact network, the progress line, the run directory's log line and checkpoint, and a user's own.

:func:`pyro_sparse.infer.fit` runs, on the main process, :class:`CompactMetrics`, then :class:`ProgressLine` (with
``progress``), then :class:`RunFiles` (with a ``run_dir``), then the caller's ``callbacks`` in order, each as
``callback.on_epoch_end(state)``; a plain callable ``callback`` is called with the epoch's record last. A callback
that raises stops training after the epoch's checkpoint (e.g. early stopping).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..compact import compact
from ..data import Dataset
from ..metrics import classification_error, extra_test_errors, network_cost
from ..runfiles import CHECKPOINT, LOG, append_line, atomic_torch_save

__all__ = ["Callback", "CompactMetrics", "EpochEnd", "ProgressLine", "RunFiles", "example_input"]


@dataclass
class EpochEnd:
    """The state a callback sees after an epoch's steps.

    :ivar epoch: the epoch just finished, 0-based.
    :ivar record: the epoch's ``log.jsonl`` line so far: ``epoch`` (1-based), ``loss`` and ``nll`` (per example,
        nats), ``kl`` (nats), ``kl_weight``, ``lr``, ``train_error`` (percent, of the noisy training-mode
        predictions); :class:`CompactMetrics` adds the compact network's errors, ``units``, ``nonzero_weights``,
        ``train_seconds`` and ``epoch_seconds``.
        Callbacks may add entries; :class:`RunFiles` writes what is there when it runs.
    :ivar optimizer, scheduler: after the epoch's scheduler step: the learning rates are the next epoch's (so is the
        record's ``lr``).
    :ivar started: ``time.perf_counter()`` at the epoch's start.
    """

    epoch: int
    record: dict
    model: torch.nn.Module
    guide: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: object
    data: Dataset
    train_seconds: float
    started: float


class Callback:
    """Base class: override :meth:`on_epoch_end`."""

    def on_epoch_end(self, state: EpochEnd) -> None:  # pragma: no cover - the base does nothing
        pass


def example_input(model) -> torch.Tensor:
    """The model's example batch (:func:`pyro_sparse.sparsify`), or two zero inputs on its device."""
    x = getattr(model, "example_input", None)
    if x is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = torch.zeros(2, *model.input_shape, device=device)
    return x


class CompactMetrics(Callback):
    """Compact the network with the keep rules' current decisions and measure it (the one metrics function):
    ``test_error`` (percent, the data set's test images), the extra test sets' errors (CIFAR-10: the first 1,000
    official test images), ``val_error`` with a validation split, ``units`` per layer and ``nonzero_weights`` of the
    compact network, and ``epoch_seconds`` (steps + this measurement)."""

    def on_epoch_end(self, state: EpochEnd) -> None:
        data = state.data
        small = compact(state.model, state.guide)  # the keep rules' thresholds: the model's
        cost = network_cost(small, example_input(state.model))
        record = state.record
        record["test_error"] = classification_error(small, data.x_test, data.y_test)
        record.update(extra_test_errors(small, data))
        if data.x_val is not None:
            record["val_error"] = classification_error(small, data.x_val, data.y_val)
        record["units"] = [int(u) for u in cost["units"]]
        record["nonzero_weights"] = sum(nz for _, nz in cost["layers"])
        record["train_seconds"] = state.train_seconds
        record["epoch_seconds"] = time.perf_counter() - state.started


class ProgressLine(Callback):
    """One line per epoch under the progress bar: loss, NLL, KL, errors (percent), units per layer."""

    def on_epoch_end(self, state: EpochEnd) -> None:
        r = state.record
        tqdm.write(
            f"epoch {state.epoch + 1:4d}  loss {r['loss']:.4f}  nll {r['nll']:.4f}  kl {r['kl']:.1f}  "
            f"train err {r['train_error']:.2f}%  "
            + ("" if "val_error" not in r else f"val err {r['val_error']:.2f}%  ")
            + ("" if "test_error" not in r else f"test err {r['test_error']:.2f}%  ")
            + ("" if "units" not in r else f"units {'-'.join(map(str, r['units']))}")
        )


class RunFiles(Callback):
    """The run directory's ``log.jsonl`` line, then an atomic ``checkpoint.pt`` (model, guide, optimizer,
    scheduler, train seconds, the config; a kill between the two drops the line and the epoch is redone on resume).

    :param run_dir: the run directory (the caller holds its :class:`~pyro_sparse.runfiles.RunLock`).
    :param config_sha256: the SHA-256 of the run's ``config.json``, recorded so that a checkpoint is never loaded
        into another run (None: not recorded)."""

    def __init__(self, run_dir: Path, config_sha256: str | None = None):
        self.run_dir, self.config_sha256 = Path(run_dir), config_sha256

    def on_epoch_end(self, state: EpochEnd) -> None:
        append_line(self.run_dir / LOG, state.record)
        atomic_torch_save(
            {"epoch": state.epoch, "model": state.model.state_dict(), "guide": state.guide.state_dict(),
             "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
             "train_seconds": state.train_seconds, "config": json.dumps(asdict(state.cfg)),
             **({"config_sha256": self.config_sha256} if self.config_sha256 else {})},
            self.run_dir / CHECKPOINT,
        )


class _Call(Callback):
    """A plain ``callback(record)`` (``fit``'s ``callback`` argument)."""

    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, state: EpochEnd) -> None:
        self.fn(state.record)
