import os
from pathlib import Path

import pyro
import pytest
import torch

import pyro_sparse  # noqa: F401  (registers the KLs; changes no Pyro setting)

REPO = Path(__file__).resolve().parents[1]
#: every test, module-scoped fixtures included, runs with the same number of threads (results in float32 depend on
#: it): pinned here, at collection, whatever OMP_NUM_THREADS says
THREADS = 2
torch.set_num_threads(THREADS)


def pytest_addoption(parser):
    parser.addoption("--allow-missing-data", action="store_true",
                     help="skip (instead of fail) the tests whose data (MNIST under $PYRO_SPARSE_DATA) is missing")


def data_root() -> Path:
    return Path(os.environ.get("PYRO_SPARSE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def mnist_root(request) -> Path:
    """The data root holding ``MNIST/raw``. Missing data fails the test, naming the folder, unless pytest runs
    with ``--allow-missing-data`` (README), which skips it."""
    root = data_root()
    if not (root / "MNIST" / "raw").is_dir():
        message = (f"MNIST not found under {root}/MNIST/raw: set PYRO_SPARSE_DATA to the folder holding MNIST/ "
                   "(the repository's sibling shared/data by default), or pass --allow-missing-data to skip")
        if request.config.getoption("--allow-missing-data"):
            pytest.skip(message)
        pytest.fail(message)
    return root


@pytest.fixture
def cifar_root(request) -> Path:
    """The data root holding the offline CIFAR-10 copy (``CIFAR10/*.npy``); missing data fails the test as for MNIST
    (skips with ``--allow-missing-data``)."""
    root = data_root()
    if not (root / "CIFAR10" / "train_images.npy").is_file():
        message = f"CIFAR-10 not found under {root}/CIFAR10: set PYRO_SPARSE_DATA (see mnist_root)"
        if request.config.getoption("--allow-missing-data"):
            pytest.skip(message)
        pytest.fail(message)
    return root


@pytest.fixture(autouse=True)
def _seed():
    """Fixed seed, and Pyro's global param store emptied: tests in the global-store mode start from a clean store,
    as a script would."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    torch.set_num_threads(THREADS)
    yield


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI on ``argv``, which must fail as bad input: exit status 2 and exactly one line on stderr starting
    ``pyro-sparse: error:``; returns that line."""
    from pyro_sparse.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("pyro-sparse: error: "), err
    return err
