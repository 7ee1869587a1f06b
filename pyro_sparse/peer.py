"""The plain-PyTorch peer of our sparse VD: the PyPI package ``pytorch-ard`` (``torch_ard``: LinearARD, Conv2dARD),
trained on the same data, architecture and epoch budget, for ``pyro-sparse reproduce`` to put beside our SVD row.

The peer's own layers and KL are used unchanged; the loop is the minimal one its README describes (Adam,
``N · cross-entropy + β · Σ KL``, our KL warm-up and learning-rate schedule so that the budgets match).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .infer import TrainConfig
from .metrics import classification_error
from .nn import Standardize


def _net(arch: str, data: Dataset) -> nn.Module:
    from torch_ard import Conv2dARD, LinearARD

    if arch == "lenet5":
        return nn.Sequential(Standardize(data.mean, data.std), Conv2dARD(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                             Conv2dARD(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), LinearARD(800, 500),
                             nn.ReLU(), LinearARD(500, 10))
    hidden = {"lenet300": [300, 100], "lenet500": [500, 300]}[arch]
    sizes = [int(torch.Size(data.input_shape).numel()), *hidden, 10]
    layers: list[nn.Module] = [nn.Flatten(), Standardize(data.mean, data.std)]
    for i in range(len(sizes) - 1):
        layers.append(LinearARD(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_ard_peer(arch: str, data: Dataset, cfg: TrainConfig) -> dict:
    """Train the ``pytorch-ard`` network; returns test_error (%), compression, seconds_per_epoch.

    :raises ImportError: ``pytorch-ard`` is not installed (``pip install pytorch-ard``).
    """
    from torch_ard import get_ard_reg, get_dropped_params_ratio

    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    net = _net(arch, data).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    x, y = data.x_train.to(device), data.y_train.to(device)
    n = x.shape[0]
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch)).to(device)
        beta = cfg.kl_weight(epoch)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = n * F.cross_entropy(net(x[idx]), y[idx]) + beta * get_ard_reg(net)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    net.eval()
    dropped = float(get_dropped_params_ratio(net))
    return {"method": "pytorch-ard (peer)", "epochs": cfg.epochs, "test_error": classification_error(net, data.x_test,
            data.y_test), "compression": 1.0 / max(1e-12, 1.0 - dropped), "train_seconds": seconds,
            "seconds_per_epoch": seconds / cfg.epochs}
