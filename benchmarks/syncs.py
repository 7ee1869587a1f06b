"""Host reads per training step: tensor-to-Python conversions (``item``, ``float``, ``int``, ``bool``, ``tolist``…),
each a host-device synchronisation when the tensor lives on a GPU.

    python benchmarks/syncs.py [--out benchmarks/syncs.json]

Runs the one training engine (``pyro_sparse.infer.fit``, progress bar off) for one epoch of 4 and of 8 steps (batch
100, synthetic data of the right shape) and counts every conversion; the difference over the 4 extra steps is the
per-step count, so the once-per-epoch reads (metrics, compaction) cancel out. Conversions made inside
``torch.optim`` are counted apart: Adam's step counter lives on the host (``capturable=False``), so reading it is no
device synchronisation. The "before" column of RESULTS.md is this script run against commit 04a4941 (with its
top-level ``models`` / ``guides`` imports).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test tooling, not the library's
from hostreads import count_host_reads  # noqa: E402


def per_step(method: str, arch: str) -> dict[str, float]:
    from pyro_sparse.guides import MeanFieldGuide
    from pyro_sparse.models import build_model

    from pyro_sparse.data import Dataset
    from pyro_sparse.infer import TrainConfig, fit

    shape = (1, 28, 28)
    counts = {}
    for steps in (4, 8):
        g = torch.Generator().manual_seed(0)
        n = 100 * steps
        data = Dataset("synthetic", torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g),
                       torch.rand(50, *shape, generator=g), torch.randint(0, 10, (50,), generator=g), 10)
        pyro.set_rng_seed(0)
        pyro.clear_param_store()
        model = build_model(arch, method, shape, 10, mean=0.1, std=0.3)
        guide = MeanFieldGuide(model)
        cfg = TrainConfig(epochs=1, batch_size=100, lr=1e-3, measure_latency=False)
        counts[steps] = count_host_reads(lambda: fit(model, guide, data, cfg, progress=False))  # noqa: B023
    keys = set(counts[4]) | set(counts[8])
    return {k: (counts[8][k] - counts[4][k]) / 4 for k in sorted(keys)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("syncs.json")))
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = {f"{m} {arch}": per_step(m, arch) for arch in ("lenet500", "lenet5") for m in ("svd", "sbp", "bb", "dbb")}
    res = {"command": "python benchmarks/syncs.py", "per_step": rows}
    print(json.dumps(res, indent=1))
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
