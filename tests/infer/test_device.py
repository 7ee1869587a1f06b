"""DESIGN contract 7: every method trains, compresses and saves unchanged on each available device.

On a machine without CUDA the ``cuda`` cases are skipped (CI); on a GPU machine they run the same code path as
``pyro-sparse train --device cuda``: two short epochs of the one training loop, the checkpoint, the compact
network.
"""

import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model

from pyro_sparse.compact import load_compact
from pyro_sparse.data import Dataset
from pyro_sparse.infer import TrainConfig, fit
from pyro_sparse.metrics import classification_error

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def _random_mnist_like(n_train=60, n_test=40) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset("random", torch.rand(n_train, 1, 28, 28, generator=g), torch.randint(0, 10, (n_train,), generator=g),
                   torch.rand(n_test, 1, 28, 28, generator=g), torch.randint(0, 10, (n_test,), generator=g), 10)


@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
@pytest.mark.parametrize("device", DEVICES)
def test_train_compress_save_on_device(device, method, tmp_path):
    data = _random_mnist_like()
    torch.manual_seed(0)
    model = build_model("lenet5", method, data.input_shape, 10, mean=data.mean, std=data.std)
    guide = MeanFieldGuide(model)
    cfg = TrainConfig(epochs=2, batch_size=30, device=device, measure_latency=False)
    metrics = fit(model, guide, data, cfg, tmp_path, progress=False)
    # the model and every guide parameter live on the asked-for device after training
    assert {p.device.type for p in model.parameters()} == {device}
    assert {p.device.type for p in guide.parameters()} == {device}
    assert 0.0 <= metrics["test_error"] <= 100.0 and metrics["flops_speedup"] >= 1.0
    # the saved compact network loads on the CPU and gives the error fit reported on the device
    compact = load_compact(tmp_path)
    assert {p.device.type for p in compact.parameters()} == {"cpu"}
    err = classification_error(compact, data.x_test, data.y_test)
    assert err == pytest.approx(metrics["test_error"], abs=100.0 / len(data.y_test) + 1e-9)
    # a checkpoint written on the device resumes on the CPU
    resumed = fit(model.cpu(), guide.cpu(), data, TrainConfig(epochs=3, batch_size=30, measure_latency=False),
                  tmp_path, resume=True, progress=False)
    assert resumed["epochs"] == 3
