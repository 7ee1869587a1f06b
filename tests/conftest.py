import os
from pathlib import Path

import pyro
import pytest
import torch

import pyro_sparse  # noqa: F401  (registers KLs, module-local params)

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("PYRO_SPARSE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def mnist_root() -> Path:
    root = data_root()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {root} (set PYRO_SPARSE_DATA)")
    return root


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    torch.set_num_threads(2)
    yield
