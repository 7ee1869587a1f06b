"""Sparse VD multiclass logistic regression on NOISE-DIGITS (Molchanov et al. 2017, Table 2), several seeds.

    python benchmarks/noise_digits.py [--seeds 3] [--epochs 100] [--out runs/noise_digits]

Each seed runs exactly ``pyro-sparse train --method svd --arch logreg --dataset noise-digits --epochs E --seed S``
and reads the trained guide back to split the removed weights into pixel and noise features.
Writes ``benchmarks/noise_digits.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import torch

from pyro_sparse.cli import main as cli
from pyro_sparse.distributions import log_alpha
from pyro_sparse.infer import load_checkpoint


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=3.0)
    ap.add_argument("--out", default="runs/noise_digits")
    a = ap.parse_args()
    rows = []
    for seed in range(a.seeds):
        run = Path(a.out) / f"seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = ["train", "--method", "svd", "--arch", "logreg", "--dataset", "noise-digits", "--epochs",
               str(a.epochs), "--seed", str(seed), "--weight-threshold", str(a.threshold), "--out", str(run),
               "--quiet", "--no-latency"]
        cli(cmd)
        metrics = json.loads((run / "metrics.json").read_text())
        g = load_checkpoint(run)["guide"]
        site = "sites.weights__fc1__weight"
        loc, log_s2 = g[f"{site}.loc_unconstrained"], g[f"{site}.log_sigma2_unconstrained"]
        removed = log_alpha(loc, torch.exp(0.5 * log_s2), log_variance=log_s2) >= a.threshold
        rows.append({
            "seed": seed,
            "command": "pyro-sparse " + " ".join(cmd),
            "accuracy": 1 - metrics["test_error"] / 100,
            "removed": float(removed.float().mean()),
            "removed_pixel_features": float(removed[:, :64].float().mean()),
            "removed_noise_features": float(removed[:, 64:].float().mean()),
            "train_seconds": metrics["train_seconds"],
        })
        print(json.dumps(rows[-1]))
    summary = {k: statistics.median(r[k] for r in rows) for k in ("accuracy", "removed", "removed_pixel_features",
                                                                   "removed_noise_features")}
    out = {"epochs": a.epochs, "threshold": a.threshold, "median": summary, "runs": rows}
    Path(__file__).with_name("noise_digits.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
