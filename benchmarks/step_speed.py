"""Cost of one training step, pyro-sparse vs plain PyTorch, for every method on LeNet-500-300, LeNet-5 and VGG-like
(issue 16, item 1).

    python benchmarks/step_speed.py [--steps 20 --repeats 3 --nets lenet500 lenet5 vgg_like --methods svd sbp bb dbb]

pyro-sparse: the engine's step — ``build_model(arch, method)`` (``sparsify`` on the plain network),
``MeanFieldGuide`` without global draws (as ``fit`` runs it), ``SparseELBO`` through ``infer.train.Objective``,
one Adam over model + guide. Plain PyTorch: the same network (the same ``nets.build`` module) and the same objective
and estimator written directly, float32 — per-example noise (LRT for SVD; per-example θ / π draws for SBP / BB /
DBB), the same analytic KL formulas, the same Adam — with the latent parameters kept beside the layers. That is *our*
estimator written by hand, not the authors' code's: their SBP and BB code draws θ / π once per minibatch (BB's gates z
per example). For the unit methods a second plain reference does exactly that (``plain_per_batch``), beside
pyro-sparse with ``noise="per-batch"`` (``pyro_sparse_per_batch``). All are timed in this process on the same
synthetic batches of the right shape (batch 100; MNIST 1×28×28, CIFAR 3×32×32), one step of each in turn, so that
machine load hits them alike; each number is the median over ``--steps`` × ``--repeats`` steps after ``--steps``
warm-up steps of each.

Prints and writes ``benchmarks/step_speed.json``: seconds per step of each; ``ratio`` = pyro-sparse / plain, both per
example (target ≤ 1.1); for SBP/BB/DBB also ``ratio_per_batch`` (both per minibatch) and ``ratio_vs_per_batch_plain``
(pyro-sparse's default per-example estimator against the authors' per-minibatch one: what the lower variance costs).

Both sides run with subnormal floats flushed to zero (``pyro_sparse.settings.flush_denormals``, as the engine trains
by default): without it, relaxed-Bernoulli masks near 0 make subnormal activations within the warm-up, which the CPU
computes on many times slower, unevenly between the two implementations (LeNet-500-300 BB, ours: 74 ms per step
unflushed, 14 ms flushed, quiet machine, 2026-12-04), so the ratio would measure the subnormals, not the step.

The C allocator is held steady first (glibc: fixed mmap and trim thresholds, as a long training process reaches them):
with glibc's adaptive thresholds a cell's ratio depended on the cells run before it in the same process — LeNet-500-300
SBP measured 0.95–1.00 on its own and 1.07–1.11 after the SVD cell, the difference being page faults of freshly
mapped buffers that hit the two implementations unequally.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model, nets
from torch import nn

import pyro_sparse  # noqa: F401  (registers the KLs)
from pyro_sparse.infer import SparseELBO
from pyro_sparse.infer.train import Objective
from pyro_sparse.settings import flush_denormals, module_local_params

K1, K2, K3 = 0.63576, 1.87320, 1.48695
SHAPES = {"lenet500": (1, 28, 28), "lenet5": (1, 28, 28), "vgg_like": (3, 32, 32), "lenet300": (1, 28, 28)}
NETS = ["lenet500", "lenet5", "vgg_like"]  # the table; --nets lenet300 --methods svd: the earlier SVD target
N = 50_000  # the ELBO's N (only scales the likelihood)


class PlainSparse(nn.Module):
    """A ``nets`` Sequential with one method's latents attached by hand (METHODS.md placement), plain PyTorch."""

    def __init__(self, seq: nn.Sequential, method: str, a: float = -20.0, b: float = 0.0, alpha_over_k: float = 1e-4,
                 temperature: float = 0.1, rho2: float = 5.0, per_batch: bool = False):
        super().__init__()
        self.seq, self.method, self.per_batch = seq, method, per_batch
        self.a, self.b, self.alpha, self.tau, self.rho2 = a, b, alpha_over_k, temperature, rho2
        self.svd = nn.ParameterDict()
        self.unit = nn.ParameterDict()
        layers = list(seq.named_children())
        self.after: dict[str, str] = {}  # layer -> unit key applied to its output
        self.before: dict[str, str] = {}  # layer -> unit key applied to its input
        for i, (name, m) in enumerate(layers):
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                continue
            if method == "svd":
                self.svd[f"{name}_theta"] = nn.Parameter(m.weight.detach().clone())
                self.svd[f"{name}_log_sigma2"] = nn.Parameter(torch.full_like(m.weight, -10.0))
                continue
            if isinstance(m, nn.Conv2d):
                nxt = layers[i + 1][0] if i + 1 < len(layers) and isinstance(layers[i + 1][1], nn.BatchNorm2d) else name
                self.after[nxt] = name
                self._add_units(name, m.out_channels)
            else:
                self.before[name] = name
                self._add_units(name, m.in_features)

    def _add_units(self, key: str, k: int):
        if self.method == "sbp":
            self.unit[f"{key}_mu"] = nn.Parameter(torch.zeros(k))
            self.unit[f"{key}_log_sigma"] = nn.Parameter(torch.full((k,), -5.0))
        else:
            self.unit[f"{key}_a_uc"] = nn.Parameter(torch.full((k,), -1.0))
            self.unit[f"{key}_b_uc"] = nn.Parameter(torch.full((k,), 0.5413))
        if self.method == "dbb":
            self.unit[f"{key}_beta_mu"] = nn.Parameter(torch.ones(k))
            self.unit[f"{key}_beta_log_sigma"] = nn.Parameter(torch.full((k,), -5.0))
            self.unit[f"{key}_gamma"] = nn.Parameter(torch.ones(k))
            self.register_buffer(f"{key}_rmean", torch.zeros(k))
            self.register_buffer(f"{key}_rstd", torch.ones(k))

    # -- per-example multipliers, float32 as in the reference code ---------------------------------------------
    def _sbp(self, key: str, batch: int) -> torch.Tensor:
        mu, sigma = self.unit[f"{key}_mu"], self.unit[f"{key}_log_sigma"].exp()
        alpha, beta = (self.a - mu) / sigma, (self.b - mu) / sigma
        pa, pb = torch.special.ndtr(alpha), torch.special.ndtr(beta)
        u = torch.rand(1 if self.per_batch else batch, mu.shape[0], device=mu.device)
        x = torch.special.ndtri((pa + u * (pb - pa)).clamp(1e-6, 1 - 1e-6))
        return (mu + sigma * x).clamp(self.a, self.b).exp().expand(batch, -1)

    def _bb(self, key: str, batch: int, h: torch.Tensor | None) -> torch.Tensor:
        a, b = F.softplus(self.unit[f"{key}_a_uc"]), F.softplus(self.unit[f"{key}_b_uc"])
        u = torch.rand(1 if self.per_batch else batch, a.shape[0], device=a.device).clamp(1e-6, 1 - 1e-6)
        pi = (1 - u.pow(1 / b)).clamp(1e-6, 1 - 1e-6).pow(1 / a)
        pi = pi.expand(batch, -1)  # the gates z below are drawn per example either way
        if self.method == "dbb":
            beta = self.unit[f"{key}_beta_mu"] + self.unit[f"{key}_beta_log_sigma"].exp() * torch.randn_like(
                u if self.per_batch else pi)
            h = h.detach().float()  # statistics in float32 under bf16 autocast too (as the DBBGate does)
            with torch.no_grad():
                getattr(self, f"{key}_rmean").lerp_(h.mean(0), 0.1)
                getattr(self, f"{key}_rstd").lerp_(h.std(0).clamp_min(1e-5), 0.1)
            z = self.unit[f"{key}_gamma"] * (h - getattr(self, f"{key}_rmean")) / getattr(self, f"{key}_rstd") + beta
            pi = pi * z.clamp(1e-6, 1 - 1e-6)
        pi = pi.clamp(1e-6, 1 - 1e-6)
        v = torch.rand_like(pi).clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid((pi.log() - (-pi).log1p() + v.log() - (-v).log1p()) / self.tau)

    def _mult(self, key: str, x: torch.Tensor) -> torch.Tensor:
        h = x if x.dim() == 2 else x.flatten(2).mean(-1)
        m = self._sbp(key, x.shape[0]) if self.method == "sbp" else self._bb(key, x.shape[0], h)
        return x * m.view(*m.shape, *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, m in self.seq.named_children():
            if name in self.before:
                x = self._mult(self.before[name], x)
            if self.method == "svd" and isinstance(m, (nn.Linear, nn.Conv2d)):
                theta, var = self.svd[f"{name}_theta"], self.svd[f"{name}_log_sigma2"].exp()
                if isinstance(m, nn.Linear):
                    mean, v = F.linear(x, theta, m.bias), F.linear(x * x, var)
                else:
                    mean = F.conv2d(x, theta, m.bias, m.stride, m.padding)
                    v = F.conv2d(x * x, var, None, m.stride, m.padding)
                x = mean + v.clamp_min(1e-16).sqrt() * torch.randn_like(mean)
            else:
                x = m(x)
            if name in self.after:
                x = self._mult(self.after[name], x)
        return x

    def kl(self) -> torch.Tensor:
        total = torch.zeros((), device=next(self.parameters()).device)
        if self.method == "svd":
            for key in self.svd:
                if key.endswith("_theta"):
                    base = key.removesuffix("_theta")
                    la = self.svd[f"{base}_log_sigma2"] - torch.log(self.svd[key] ** 2 + 1e-8)
                    total = total + (K1 - K1 * torch.sigmoid(K2 + K3 * la) + 0.5 * F.softplus(-la)).sum()
            return total
        if self.method == "sbp":
            for key in {k.removesuffix("_mu") for k in self.unit if k.endswith("_mu")}:
                mu, log_sigma = self.unit[f"{key}_mu"], self.unit[f"{key}_log_sigma"]
                sigma = log_sigma.exp()
                alpha, beta = (self.a - mu) / sigma, (self.b - mu) / sigma
                z = (torch.special.ndtr(beta) - torch.special.ndtr(alpha)).clamp_min(1e-12)
                phi_a, phi_b = torch.exp(-0.5 * alpha**2) / math.sqrt(2 * math.pi), \
                    torch.exp(-0.5 * beta**2) / math.sqrt(2 * math.pi)
                kl = (-log_sigma - z.log() - (alpha * phi_a - beta * phi_b) / (2 * z) + math.log(self.b - self.a)
                      - 0.5 * math.log(2 * math.pi * math.e))
                total = total + kl.sum()
            return total
        for key in [k.removesuffix("_a_uc") for k in self.unit if k.endswith("_a_uc")]:
            a, b = F.softplus(self.unit[f"{key}_a_uc"]), F.softplus(self.unit[f"{key}_b_uc"])
            kl = ((1 - self.alpha / a) * (-0.5772156649 - torch.digamma(b) - 1 / b) + torch.log(a * b)
                  - math.log(self.alpha) - (b - 1) / b)
            total = total + kl.sum()
            if self.method == "dbb":
                m, s = self.unit[f"{key}_beta_mu"], self.unit[f"{key}_beta_log_sigma"].exp()
                total = total + (0.5 * (s**2 + m**2) / self.rho2 - 0.5 - s.log() + 0.5 * math.log(self.rho2)).sum()
        return total


def steady_allocator() -> str:
    """Fix glibc's mmap threshold (32 MiB) and trim threshold (128 MiB), which it otherwise adapts to the sizes
    freed so far; returns what was done, for the JSON."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) == 1 and libc.mallopt(-1, 128 << 20) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    return "glibc mallopt: mmap threshold 32 MiB, trim threshold 128 MiB" if ok else "allocator defaults"


def measure(arch: str, method: str, steps: int, repeats: int) -> dict:
    shape = SHAPES[arch]
    kwargs = {"k": 0.25} if arch == "vgg_like" else {}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(100, *shape, generator=g), torch.randint(0, 10, (100,), generator=g)) for _ in range(8)]
    torch.manual_seed(0)
    per_batch = method != "svd"
    with module_local_params(), flush_denormals():  # both sides as the engine trains (subnormals flushed)
        steps_of = {"pyro_sparse": _ours_step(arch, method, shape, kwargs, batches[0][0][:2], "per-example"),
                    "plain": _plain_step(arch, method, shape, kwargs, per_batch=False)}
        if per_batch:
            steps_of["pyro_sparse_per_batch"] = _ours_step(arch, method, shape, kwargs, batches[0][0][:2], "per-batch")
            steps_of["plain_per_batch"] = _plain_step(arch, method, shape, kwargs, per_batch=True)

        def timed(step, i):
            t0 = time.perf_counter()
            step(*batches[i % len(batches)])
            return time.perf_counter() - t0

        for i in range(steps):  # warm-up
            for step in steps_of.values():
                timed(step, i)
        times = {name: [] for name in steps_of}
        for i in range(steps * repeats):  # one step each in turn: a slow phase of the machine hits all alike
            for name, step in steps_of.items():
                times[name].append(timed(step, i))
    med = {name: statistics.median(t) for name, t in times.items()}
    row = {"arch": arch, "method": method, **{f"seconds_per_step_{name}": v for name, v in med.items()},
           "ratio": med["pyro_sparse"] / med["plain"]}
    if per_batch:
        row["ratio_per_batch"] = med["pyro_sparse_per_batch"] / med["plain_per_batch"]
        row["ratio_vs_per_batch_plain"] = med["pyro_sparse"] / med["plain_per_batch"]
    return row


def _ours_step(arch, method, shape, kwargs, example, noise):
    """One engine step of pyro-sparse (``fit``'s objective, Adam over model + guide)."""
    from pyro_sparse import sparsify

    options = {} if method == "svd" else {"noise": noise}
    if arch == "vgg_like":
        model = sparsify(nets.build(arch, shape, 10, **kwargs), method, example, num_data=N, **options)
    else:
        model = build_model(arch, method, shape, 10, num_data=N, **options)
    guide = MeanFieldGuide(model)
    guide.global_draws = False  # as fit() does inside its steps: the model draws every latent per example
    objective = Objective(model, guide, SparseELBO())
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = objective(xb, yb)
        loss.backward()
        opt.step()

    return step


def _plain_step(arch, method, shape, kwargs, per_batch):
    """One step of the plain-PyTorch reference (:class:`PlainSparse`)."""
    plain = PlainSparse(nets.build(arch, shape, 10, **kwargs), method, per_batch=per_batch)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = N * F.cross_entropy(plain(xb), yb) + plain.kl()
        loss.backward()
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nets", nargs="+", default=NETS, choices=list(SHAPES))
    ap.add_argument("--methods", nargs="+", default=["svd", "sbp", "bb", "dbb"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).with_name("step_speed.json")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    allocator = steady_allocator()
    rows = []
    for arch in a.nets:
        for method in a.methods:
            row = measure(arch, method, a.steps, a.repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = {"command": f"python benchmarks/step_speed.py --steps {a.steps} --repeats {a.repeats} --threads {a.threads}"
                      f" --nets {' '.join(a.nets)} --methods {' '.join(a.methods)}",
           "torch_threads": a.threads, "batch": 100, "allocator": allocator, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
