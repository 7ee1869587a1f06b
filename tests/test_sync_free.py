"""A steady-state training step reads nothing back to the host (issue 16, item 2, the CPU check).

The one training engine runs one epoch of 2 and of 4 steps; every tensor-to-Python conversion is counted
(:func:`pyro_sparse.infer.hostreads.count_host_reads`). Per-epoch reads (metrics, compaction) are the same in both,
so any difference is a read inside a step. Adam's host-side step counter (inside ``torch.optim``) is no device
synchronisation and is counted apart.
"""

import pyro
import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.data import Dataset
from pyro_sparse.infer import TrainConfig, fit
from pyro_sparse.infer.hostreads import OPTIMIZER, count_host_reads


def _epoch(method, arch, shape, steps, **cfg):
    g = torch.Generator().manual_seed(0)
    n = 20 * steps
    data = Dataset("synthetic", torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g),
                   torch.rand(10, *shape, generator=g), torch.randint(0, 10, (10,), generator=g), 10)
    pyro.set_rng_seed(0)
    model = build_model(arch, method, shape, 10)
    guide = MeanFieldGuide(model)
    config = TrainConfig(epochs=1, batch_size=20, measure_latency=False, **cfg)
    return count_host_reads(lambda: fit(model, guide, data, config, progress=False))


@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
@pytest.mark.parametrize("arch, shape", [("lenet5", (1, 28, 28)), ("logreg", (64,))], ids=["lenet5", "logreg"])
def test_training_steps_read_nothing_back(method, arch, shape):
    short, long = _epoch(method, arch, shape, 2), _epoch(method, arch, shape, 4)
    assert long["other"] == short["other"], (short, long)  # zero per step
    assert long[OPTIMIZER] > short[OPTIMIZER]  # the counter does see every step's conversions


def test_kl_scale_and_clipping_keep_steps_free():
    kw = {"kl_scale": {"fc1": 2.0}}
    assert _epoch("sbp", "logreg", (64,), 2, **kw)["other"] == _epoch("sbp", "logreg", (64,), 4, **kw)["other"]
    kw = {"train_clip_from": 0}
    assert _epoch("svd", "logreg", (64,), 2, **kw)["other"] == _epoch("svd", "logreg", (64,), 4, **kw)["other"]
