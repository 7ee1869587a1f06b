"""Seconds per training epoch on a GPU, pyro-sparse's engine beside plain PyTorch (issue 16, item 5).

    python benchmarks/gpu_epoch.py [--device cuda --nets lenet500 vgg_like --methods svd sbp bb dbb
                                    --epochs 2 --bf16 --compile --channels-last --examples N]

Synthetic data of the right shape, created on the device: LeNet-500-300 on 60,000 MNIST-sized images (1×28×28,
batch 100), VGG-like at width k = 1 on 45,000 CIFAR-sized images (3×32×32, batch 100, on-device crop-flip
augmentation as in real CIFAR training). pyro-sparse: :func:`pyro_sparse.infer.fit` (the one engine: whole data set
on the device, steps without host reads), the seconds of its last epoch's training (``train_seconds``, compaction and
metrics excluded). Plain PyTorch: ``benchmarks/step_speed.py``'s ``PlainSparse`` (the same objective and estimator,
float32) over the same data, the same batch order cost (an on-device permutation and gather per step), synchronised
at the end of its last epoch. Targets on one H100/H200: LeNet-500-300 BB ≤ 1 s, VGG-like k = 1 ≤ 20 s for every
method (issue 16), VGG-like k = 1 BB ≤ 3 s with bf16 + channels_last + compile (issue 25). Prints JSON rows and
writes ``benchmarks/gpu_epoch.json``.

``--examples N`` trains on N synthetic examples instead (fewer steps per epoch, to fit a short device lease): each
row then gives the measured seconds of its N-example epoch and ``epoch_seconds_*`` extrapolated to the full epoch
(seconds per step × steps of a full epoch; the engine's per-epoch work, one host read of the totals, is in the
measured steps).

On a CPU (``--device cpu --examples 500``) it is a quick check that the script runs, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import nets

from pyro_sparse import sparsify
from pyro_sparse.data import Dataset, augment
from pyro_sparse.infer import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent))
from step_speed import PlainSparse  # noqa: E402  (the same plain-PyTorch reference as the CPU step benchmark)

NETS = {"lenet500": ((1, 28, 28), 60_000, {}, None), "vgg_like": ((3, 32, 32), 45_000, {"k": 1.0}, "crop-flip")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, method: str, a) -> dict:
    device = torch.device(a.device)
    shape, n, kwargs, aug = NETS[arch]
    full = n
    n = a.examples or n
    g = torch.Generator(device=device).manual_seed(0)
    data = Dataset("synthetic", torch.rand(n, *shape, generator=g, device=device),
                   torch.randint(0, 10, (n,), generator=g, device=device),
                   torch.rand(200, *shape, generator=g, device=device).cpu(),  # test data on the CPU, as
                   torch.randint(0, 10, (200,), generator=g, device=device).cpu(), 10)  # load_dataset gives it
    pyro.set_rng_seed(0)
    model = sparsify(nets.build(arch, shape, 10, **kwargs), method, data.x_train[:2].cpu(), num_data=n)
    guide = MeanFieldGuide(model)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, device=a.device, measure_latency=False, augment=aug,
                      bf16=a.bf16, compile=a.compile, channels_last=a.channels_last, progress_every=10**9)
    seconds = []
    fit(model, guide, data, cfg, progress=False, callback=lambda r: seconds.append(r["train_seconds"]))
    ours = seconds[-1] - (seconds[-2] if len(seconds) > 1 else 0.0)

    plain = PlainSparse(nets.build(arch, shape, 10, **kwargs), method).to(device)
    if a.compile:
        plain.compile()
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    for _epoch in range(a.epochs):
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, a.batch_size):
            idx = perm[i:i + a.batch_size]
            xb, yb = data.x_train[idx], data.y_train[idx]
            if aug is not None:
                xb = augment(xb, aug)
            if a.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
                logits = plain(xb)
            loss = n * F.cross_entropy(logits.float(), yb) + plain.kl()
            loss.backward()
            opt.step()
        _sync(device)
        plain_seconds = time.perf_counter() - t0
    steps, full_steps = -(-n // a.batch_size), -(-full // a.batch_size)
    return {"arch": arch, "method": method, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu", "torch": torch.__version__, "examples": n, "batch": a.batch_size, "bf16": a.bf16,
            "compile": a.compile, "channels_last": a.channels_last, "measured_seconds_pyro_sparse": ours,
            "measured_seconds_plain": plain_seconds, "steps": steps,
            "epoch_seconds_pyro_sparse": ours * full_steps / steps,
            "epoch_seconds_plain": plain_seconds * full_steps / steps,
            "full_epoch_examples": full, "ratio": ours / plain_seconds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--methods", nargs="+", default=["svd", "sbp", "bb", "dbb"])
    ap.add_argument("--epochs", type=int, default=2, help="the last one is timed (the first warms up)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--examples", type=int, default=None, help="fewer examples (default: 60,000 / 45,000)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true", 
                    help="torch.compile the network (pyro-sparse's and the plain one)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).with_name("gpu_epoch.json")))
    a = ap.parse_args()
    rows = []
    for arch in a.nets:
        for method in a.methods:
            row = measure(arch, method, a)
            print(json.dumps(row), flush=True)
            rows.append(row)
    command = "python benchmarks/gpu_epoch.py " + " ".join(sys.argv[1:])
    Path(a.out).write_text(json.dumps({"command": command, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
