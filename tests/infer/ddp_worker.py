"""A user's training script under ``torchrun``: every process calls :func:`pyro_sparse.infer.fit` with the same
arguments (tests/infer/test_ddp.py launches it).

    torchrun --standalone --nproc-per-node 2 tests/infer/ddp_worker.py METHOD RUN_DIR EPOCHS [STOP_AFTER] [--resume]

``STOP_AFTER``: rank 0's callback raises after that epoch (a killed run; torchrun then stops the other process).
Rank 0 writes the final state dicts to ``RUN_DIR/state.pt``.
"""

import sys

import pyro
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.data import load_dataset, subset
from pyro_sparse.infer import TrainConfig, fit


def main(method: str, run_dir: str, epochs: int, stop_after: int = 0, resume: bool = False) -> None:
    data = subset(load_dataset("digits"), 400, 200)
    pyro.set_rng_seed(0)
    model = build_model("lenet300", method, data.input_shape, 10, mean=data.mean, std=data.std)
    guide = MeanFieldGuide(model)
    cfg = TrainConfig(epochs=epochs, batch_size=50, lr=1e-2, measure_latency=False)

    def stop(record):
        if record["epoch"] == stop_after:
            raise KeyboardInterrupt

    fit(model, guide, data, cfg, run_dir, resume=resume, progress=False, callback=stop if stop_after else None)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        torch.save({"model": model.state_dict(), "guide": guide.state_dict()}, f"{run_dir}/state.pt")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--resume"]
    main(args[0], args[1], int(args[2]), int(args[3]) if len(args) > 3 else 0, "--resume" in sys.argv)
