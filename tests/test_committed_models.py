"""Every compact network committed under benchmarks/models/ reloads from its files (no unpickling, no code named in
them run) and gives, on its data set's test images as ToTensor() makes them, the test error its metrics.json records
(MNIST: the 10,000 test images; CIFAR-10: the 5,000 held-out training images and the first 1,000 official test
images); the row's units and FLOPs follow from the network (issues 25 and 26)."""

import json
from pathlib import Path

import pytest
import torch

from pyro_sparse import load_compact
from pyro_sparse.data import load_dataset
from pyro_sparse.metrics import classification_error, extra_test_errors, gate_fractions, network_cost

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
ROWS = sorted(d.name for d in MODELS.iterdir() if (d / "compact.json").is_file()) if MODELS.is_dir() else []


def test_there_are_committed_rows():
    assert sum(r.startswith("lenet500_") for r in ROWS) >= 8 and any(r.startswith("vgg_like_") for r in ROWS)


@pytest.mark.parametrize("row", ROWS)
def test_committed_row_reproduces_its_test_error(row, request):
    folder = MODELS / row
    metrics = json.loads((folder / "metrics.json").read_text())
    dataset = json.loads((folder / "config.json").read_text())["dataset"]
    root = request.getfixturevalue("mnist_root" if dataset == "mnist" else "cifar_root")
    data = load_dataset(dataset, root)
    net = load_compact(folder)
    x, y = data.x_test, data.y_test  # exactly ToTensor()'s values
    assert classification_error(net, x, y) == pytest.approx(metrics["test_error"], abs=1e-9)
    for key, err in extra_test_errors(net, data).items():  # CIFAR-10: the 1,000 official test images
        assert err == pytest.approx(metrics[key], abs=1e-9)
    # DBB: units active per example and FLOPs, averaged over the test set (the paper's counting)
    cost = network_cost(net, torch.zeros(2, *data.input_shape), gate_fractions(net, x))
    assert [float(u) for u in cost["units"]] == pytest.approx([float(u) for u in metrics["units"]], abs=0.006)
    assert metrics["flops_full"] / cost["flops"] == pytest.approx(metrics["flops_speedup"], rel=1e-4)


def test_results_headline_is_the_committed_rows():
    """The headline table of RESULTS.md is what ``benchmarks/headline.py`` makes of the committed rows (no number
    typed in by hand, none left behind when a row changes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("headline", MODELS.parent / "headline.py")
    headline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headline)
    doc = (MODELS.parent / "RESULTS.md").read_text()
    block = doc[doc.index(headline.BEGIN) + len(headline.BEGIN):doc.index(headline.END)].strip()
    assert block == headline.table()
    for folders, *_ in headline.ROWS.values():
        assert all(f in ROWS for f in folders if (MODELS / f).exists())
