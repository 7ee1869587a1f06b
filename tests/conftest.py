import os
from pathlib import Path

import pyro
import pytest
import torch

import pyro_sparse  # noqa: F401  (registers the KLs; changes no Pyro setting)

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
    """Fixed seed, and Pyro's global param store emptied: tests in the global-store mode start from a clean store,
    as a script would."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    torch.set_num_threads(2)
    yield
