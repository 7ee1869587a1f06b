"""What flushing subnormal floats saves on the CPU, and that it changes nothing (issue 26's BB seeds; RESULTS.md,
"Subnormal floats").

    python benchmarks/subnormal.py [--data-root ../shared/data --images 10000 --epochs 3 --threads 1]

BB LeNet-500-300 as the paper-budget recipe trains it (gate lr 0.1, linear decay, π once per minibatch), from a
dense net trained one epoch on the same images, ``--epochs`` epochs with ``EngineSettings(flush_denormal=False)``
and then ``True`` in this process, one thread; prints and writes ``benchmarks/subnormal.json``: the step seconds per
epoch of each, their ratio (off / on), and whether every epoch's log record (loss, NLL, KL, errors, units) is equal.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model, load_pretrained

from pyro_sparse.data import load_dataset, split_validation, subset
from pyro_sparse.infer import TrainConfig, fit

HERE = Path(__file__).resolve().parent
KEYS = ("loss", "nll", "kl", "train_error", "test_error", "val_error", "units", "nonzero_weights")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "subnormal.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = split_validation(subset(load_dataset("mnist", a.data_root), a.images, 10000), 1000)
    args = (data.input_shape, data.num_classes, data.x_train.shape[0], data.mean, data.std)
    torch.manual_seed(0)
    dense = build_model("lenet500", "dense", *args)
    fit(dense, MeanFieldGuide(dense), data, TrainConfig(epochs=1, measure_latency=False), progress=False)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for flush in (False, True):
            torch.manual_seed(0)
            model = build_model("lenet500", "bb", *args, noise="per-batch")
            load_pretrained(model, copy.deepcopy(dense.state_dict()))
            cfg = TrainConfig.for_method("bb", epochs=a.epochs, lr_latent=0.1, lr_schedule="linear",
                                         measure_latency=False, flush_denormal=flush)
            run = Path(tmp) / f"flush_{flush}"
            fit(model, MeanFieldGuide(model), data, cfg, run_dir=run, progress=False)
            log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            steps = [r["train_seconds"] - (log[i - 1]["train_seconds"] if i else 0.0) for i, r in enumerate(log)]
            runs[flush] = {"step_seconds_per_epoch": steps, "records": [{k: r.get(k) for k in KEYS} for r in log]}
    off, on = runs[False], runs[True]
    result = {
        "command": "python benchmarks/subnormal.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                  vars(a).items() if k not in ("out", "data_root")),
        "images": a.images, "epochs": a.epochs, "threads": a.threads,
        "flush_off_seconds": off["step_seconds_per_epoch"], "flush_on_seconds": on["step_seconds_per_epoch"],
        "ratio_off_over_on": sum(off["step_seconds_per_epoch"]) / sum(on["step_seconds_per_epoch"]),
        "every_epoch_equal": off["records"] == on["records"],
    }
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
