"""Seconds per epoch of SVD LeNet-300-100 (pyro-sparse: Pyro model + guide + SparseELBO) vs a plain-PyTorch
implementation of the same objective (local reparameterisation, same KL approximation, same Adam), timed in the same
process on the same MNIST minibatches, alternating so that machine load hits both alike.

    python benchmarks/svd_speed.py --data-root ../shared/data [--steps 100 --repeats 5]

Prints and writes ``benchmarks/svd_speed.json``: median seconds per step of each, seconds per 600-step epoch
(batch 100), and the ratio pyro-sparse / plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model
from torch import nn

import pyro_sparse  # noqa: F401
from pyro_sparse.data import load_dataset
from pyro_sparse.infer import SparseELBO

K1, K2, K3 = 0.63576, 1.87320, 1.48695


class PlainLinearSVDO(nn.Module):
    """Reference sparse VD linear layer in plain PyTorch (additive parametrisation + LRT)."""

    def __init__(self, i: int, o: int):
        super().__init__()
        self.theta = nn.Parameter(torch.empty(o, i))
        nn.init.kaiming_uniform_(self.theta, a=5**0.5)
        self.log_sigma2 = nn.Parameter(torch.full((o, i), -10.0))
        self.bias = nn.Parameter(torch.zeros(o))

    def forward(self, x):
        mean = F.linear(x, self.theta, self.bias)
        var = F.linear(x * x, self.log_sigma2.exp())
        return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)

    def kl(self):
        la = self.log_sigma2 - torch.log(self.theta**2 + 1e-8)
        return (K1 - K1 * torch.sigmoid(K2 + K3 * la) + 0.5 * F.softplus(-la)).sum()


class PlainNet(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std
        self.layers = nn.ModuleList([PlainLinearSVDO(784, 300), PlainLinearSVDO(300, 100), PlainLinearSVDO(100, 10)])

    def forward(self, x):
        x = (x.flatten(1) - self.mean) / self.std
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < 2:
                x = F.relu(x)
        return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("mnist", a.data_root)
    n = data.x_train.shape[0]
    dev = torch.device(a.device)
    x_all, y_all = data.x_train.to(dev), data.y_train.to(dev)
    model = build_model("lenet300", "svd", data.input_shape, 10, n, data.mean, data.std).to(dev)
    guide = MeanFieldGuide(model).to(dev)
    elbo = SparseELBO(kl_weight=1.0)
    opt_ours = torch.optim.Adam(list(model.parameters()) + list(guide.parameters()), lr=1e-3)
    plain = PlainNet(data.mean, data.std).to(dev)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def step_ours(xb, yb):
        opt_ours.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(model, guide, xb, yb)
        loss.backward()
        opt_ours.step()

    def step_plain(xb, yb):
        opt_plain.zero_grad(set_to_none=True)
        logits = plain(xb)
        loss = n * F.cross_entropy(logits, yb) + sum(m.kl() for m in plain.layers)
        loss.backward()
        opt_plain.step()

    def timed(step):
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        idx = torch.randint(0, n, (a.steps, 100), generator=torch.Generator().manual_seed(1))
        sync()
        t0 = time.perf_counter()
        for i in range(a.steps):
            step(x_all[idx[i]], y_all[idx[i]])
        sync()
        return (time.perf_counter() - t0) / a.steps

    for step in (step_ours, step_plain):  # warm-up
        timed(step)
    ours, ref = [], []
    for _ in range(a.repeats):
        ours.append(timed(step_ours))
        ref.append(timed(step_plain))
    res = {
        "command": f"python benchmarks/svd_speed.py --steps {a.steps} --repeats {a.repeats} --device {a.device}",
        "device": a.device,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step_pyro_sparse": statistics.median(ours),
        "seconds_per_step_plain_pytorch": statistics.median(ref),
        "seconds_per_epoch_pyro_sparse": 600 * statistics.median(ours),
        "seconds_per_epoch_plain_pytorch": 600 * statistics.median(ref),
        "ratio": statistics.median(ours) / statistics.median(ref),
    }
    print(json.dumps(res, indent=1))
    Path(__file__).with_name("svd_speed.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
