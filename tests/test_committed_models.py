"""Every compact network committed under benchmarks/models/ reloads from its files (no unpickling, no code named in
them run) and gives, on MNIST's 10,000 test images as ToTensor() makes them, the test error its metrics.json records;
the row's units and FLOPs follow from the network (issue 26, item 3)."""

import json
from pathlib import Path

import pytest
import torch

from pyro_sparse import load_compact
from pyro_sparse.metrics import classification_error, gate_fractions, network_cost

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
ROWS = sorted(d.name for d in MODELS.iterdir() if (d / "compact.json").is_file()) if MODELS.is_dir() else []


@pytest.fixture
def mnist_test(mnist_root):
    from torchvision.datasets import MNIST

    ds = MNIST(str(mnist_root), train=False)
    return ds.data.unsqueeze(1).float() / 255, ds.targets.long()  # exactly ToTensor()'s values


def test_there_are_committed_rows():
    assert len(ROWS) >= 8


@pytest.mark.parametrize("row", ROWS)
def test_committed_row_reproduces_its_test_error(row, mnist_test):
    folder = MODELS / row
    metrics = json.loads((folder / "metrics.json").read_text())
    net = load_compact(folder)
    x, y = mnist_test
    assert classification_error(net, x, y) == pytest.approx(metrics["test_error"], abs=1e-9)
    # DBB: units active per example and FLOPs, averaged over the test set (the paper's counting)
    cost = network_cost(net, torch.zeros(2, 1, 28, 28), gate_fractions(net, x))
    assert [float(u) for u in cost["units"]] == pytest.approx([float(u) for u in metrics["units"]], abs=0.006)
    assert metrics["flops_full"] / cost["flops"] == pytest.approx(metrics["flops_speedup"], rel=1e-4)
