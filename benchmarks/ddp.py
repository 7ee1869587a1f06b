"""Data-parallel scaling on this machine's CPU: the one training engine on 1 process vs 2 gloo processes started
by torchrun (issue 16, item 5).

    python benchmarks/ddp.py [--arch lenet5 --methods sbp bb --examples 6000 --epochs 2 --batch-size 100]

Each configuration trains ``fit`` (global batch ``--batch-size``, the same seed) on ``--examples`` synthetic examples of
the right shape (MNIST 1×28×28 for the LeNets, CIFAR 3×32×32 for VGG-like) and reports the median seconds per epoch
of the epochs after the first: 1 process with 1 torch thread, 1 process with 2 threads, and 2 processes with 1
thread each (``torchrun --standalone --nproc-per-node 2``). Speed-up = 1-process-1-thread seconds / the other's.
Writes ``benchmarks/ddp.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {"lenet300": (1, 28, 28), "lenet500": (1, 28, 28), "lenet5": (1, 28, 28), "vgg_like": (3, 32, 32)}


def worker(a) -> None:
    import pyro
    import torch
    from pyro_sparse.guides import MeanFieldGuide
    from pyro_sparse.models import build_model

    from pyro_sparse.data import Dataset
    from pyro_sparse.infer import TrainConfig, fit

    torch.set_num_threads(a.threads)
    shape = SHAPES[a.arch]
    g = torch.Generator().manual_seed(0)
    data = Dataset("synthetic", torch.rand(a.n, *shape, generator=g), torch.randint(0, 10, (a.n,), generator=g),
                   torch.rand(200, *shape, generator=g), torch.randint(0, 10, (200,), generator=g), 10)
    pyro.set_rng_seed(0)
    kwargs = {"k": 0.25} if a.arch == "vgg_like" else {}
    model = build_model(a.arch, a.method, shape, 10, **kwargs)
    guide = MeanFieldGuide(model)
    seconds = []
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=1e-3, measure_latency=False)
    fit(model, guide, data, cfg, progress=False, callback=lambda r: seconds.append(r["train_seconds"]))
    if int(os.environ.get("RANK", "0")) == 0:
        per_epoch = [b - a for a, b in zip([0.0, *seconds], seconds, strict=False)]
        Path(a.result).write_text(json.dumps(per_epoch))


def run(arch: str, method: str, procs: int, threads: int, a) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "r.json"
        args = [__file__, "--worker", "--arch", arch, "--methods", method, "--threads", str(threads),
                "--examples", str(a.n), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
                "--result", str(result)]
        cmd = [sys.executable, *args] if procs == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        per_epoch = json.loads(result.read_text())
    return statistics.median(per_epoch[1:] or per_epoch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="lenet5", choices=list(SHAPES))
    ap.add_argument("--methods", nargs="+", default=["sbp", "bb"])
    ap.add_argument("--examples", dest="n", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.method = a.methods[0]
        return worker(a)
    rows = []
    for method in a.methods:
        base = run(a.arch, method, 1, 1, a)
        two_threads = run(a.arch, method, 1, 2, a)
        two_procs = run(a.arch, method, 2, 1, a)
        row = {"arch": a.arch, "method": method, "examples": a.n, "batch": a.batch_size,
               "seconds_per_epoch_1proc_1thread": base, "seconds_per_epoch_1proc_2threads": two_threads,
               "seconds_per_epoch_2procs_1thread": two_procs, "speedup_2threads": base / two_threads,
               "speedup_2procs": base / two_procs}
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = (f"python benchmarks/ddp.py --arch {a.arch} --methods {' '.join(a.methods)} --examples {a.n} "
               f"--epochs {a.epochs} --batch-size {a.batch_size}")
    Path(__file__).with_name("ddp.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
