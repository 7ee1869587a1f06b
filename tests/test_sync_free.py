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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
def test_cuda_steady_state_steps_do_not_synchronise(method, monkeypatch):
    """On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` from the second step of each epoch until the epoch's
    totals are read: any host-device synchronisation inside a step raises."""
    from pyro_sparse.models import nets

    from pyro_sparse import sparsify
    from pyro_sparse.infer import distributed
    from pyro_sparse.infer.train import Objective

    steps = {"n": 0}
    forward, all_sum = Objective.forward, distributed.all_sum

    def checked_forward(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] >= 2:  # the first step of an epoch may allocate optimiser state
            torch.cuda.set_sync_debug_mode("error")
        return forward(self, *args, **kwargs)

    def epoch_end(*tensors, world):
        torch.cuda.set_sync_debug_mode("default")
        steps["n"] = 0
        return all_sum(*tensors, world=world)

    monkeypatch.setattr(Objective, "forward", checked_forward)
    monkeypatch.setattr(distributed, "all_sum", epoch_end)
    try:
        for arch, shape in (("lenet5", (1, 28, 28)), ("vgg_like", (3, 32, 32))):
            g = torch.Generator().manual_seed(0)
            data = Dataset("synthetic", torch.rand(200, *shape, generator=g), torch.randint(0, 10, (200,), generator=g),
                           torch.rand(20, *shape, generator=g), torch.randint(0, 10, (20,), generator=g), 10)
            model = sparsify(nets.build(arch, shape, 10, **({"k": 0.25} if arch == "vgg_like" else {})), method,
                             data.x_train[:2])
            guide = MeanFieldGuide(model)
            cfg = TrainConfig(epochs=2, batch_size=50, device="cuda", measure_latency=False,
                              augment="crop-flip" if arch == "vgg_like" else None)
            fit(model, guide, data, cfg, progress=False)
            assert steps["n"] == 0  # the epochs ran and their totals were read
    finally:
        torch.cuda.set_sync_debug_mode("default")
