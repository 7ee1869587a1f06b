"""Datasets as in-memory tensors: torchvision's MNIST / Fashion-MNIST classes, scikit-learn's 8×8 digits.

Images come as ``torchvision.transforms.ToTensor()`` gives them: ``[N, 1, 28, 28]`` floats in [0, 1]; digits as
``[N, 64]`` floats in [0, 1] (pixel / 16). Standardisation statistics (scalar mean and std of the training inputs) are
returned with the data and live inside the networks (``Standardize``), so compact networks take raw inputs.

A validation split (:func:`split_validation`, CLI ``--val-size N``) holds out ``N`` training examples, the same ones
for every run and seed, so that settings can be chosen on them and the test set is only reported.

Offline use: pass ``root`` (CLI ``--data-root``; default ``$PYRO_SPARSE_DATA`` or ``./data``); a missing folder raises
:class:`DataNotFoundError` naming the folder and the files expected there.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .errors import DataFormatError, DataNotFoundError, InvalidInputError, one_line

DATASETS = ("digits", "noise-digits", "mnist", "fashion-mnist", "cifar10")
_CIFAR_FILES = ["train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy"]
#: offline CIFAR-10 protocol (shared/data/README.md): train on the first 45,000 training images, test on the last 5,000
CIFAR_OFFLINE_TRAIN = 45_000
_IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
#: fixed split of scikit-learn digits: stratified, 25% test, ``random_state=0`` (1347 train / 450 test)
DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED, NOISE_SEED = 0.25, 0, 0


@dataclass
class Dataset:
    """Train/test tensors (and an optional validation split) plus what a model needs to know about them.

    Shapes: ``x_* [N, ...]`` float inputs, ``y_* [N]`` integer labels; ``x_val``/``y_val`` are ``None`` unless a
    validation split was taken (:func:`split_validation`).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    #: further test sets reported beside the test set, ``{name: (x [M, ...], y [M])}``; each gives a
    #: ``test_error_<name>`` (CIFAR-10 offline: ``official1k``, the 1,000 official test images of the copy)
    extra_tests: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def mean(self) -> float:
        return float(self.x_train.mean())

    @property
    def std(self) -> float:
        return float(self.x_train.std())


def default_root() -> str:
    """``$PYRO_SPARSE_DATA`` if set, else ``./data``: where MNIST and Fashion-MNIST are looked for."""
    return os.environ.get("PYRO_SPARSE_DATA", "./data")


def resolve_root(name: str, root: str | os.PathLike | None) -> str | None:
    """The absolute data folder ``load_dataset(name, root)`` reads (``None`` for the built-in digits sets): recorded
    in ``config.json`` so that ``evaluate`` and ``--resume`` find the same data without the environment variable."""
    if name in ("digits", "noise-digits"):
        return None
    return str(Path(root or default_root()).resolve())


def _digits(noise: bool) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    if noise:  # 64 Gaussian features with the pixels' mean and variance (Molchanov et al. 2017, Sec. 6.1)
        g = torch.Generator().manual_seed(NOISE_SEED)
        mu, sd = x_tr.mean(), x_tr.std()
        x_tr = torch.cat([x_tr, mu + sd * torch.randn(x_tr.shape, generator=g)], 1)
        x_te = torch.cat([x_te, mu + sd * torch.randn(x_te.shape, generator=g)], 1)
    name = "noise-digits" if noise else "digits"
    return Dataset(name, x_tr, torch.tensor(y_tr), x_te, torch.tensor(y_te), 10)


#: IDX magic numbers (LeCun's format): unsigned bytes, 3 dimensions (images) / 1 dimension (labels)
IDX_IMAGES, IDX_LABELS = 2051, 2049


def _idx_header(path: Path, magic: int, dims: int) -> list[int]:
    """The sizes in the header of the IDX file ``path``, checked against its magic number and its length.

    :raises ValueError: another magic number, a short header, or a length other than the header says."""
    with open(path, "rb") as f:
        head = f.read(4 + 4 * dims)
    if len(head) < 4 + 4 * dims:
        raise ValueError(f"{path.name}: header of {len(head)} bytes")
    found, *sizes = struct.unpack(f">I{dims}I", head)
    if found != magic:
        raise ValueError(f"{path.name}: magic number {found}, expected {magic}")
    size = path.stat().st_size
    if size != 4 + 4 * dims + math.prod(sizes):
        raise ValueError(f"{path.name}: {size} bytes, its header {sizes} says {4 + 4 * dims + math.prod(sizes)}")
    return sizes


def check_idx_files(folder: Path) -> None:
    """Check the four IDX files in ``folder`` against their headers and each other: magic numbers, file lengths,
    28×28 images, as many images as labels in each split.

    :raises ValueError: naming the file and what differs."""
    for split in ("train", "t10k"):
        images = _idx_header(folder / f"{split}-images-idx3-ubyte", IDX_IMAGES, 3)
        labels = _idx_header(folder / f"{split}-labels-idx1-ubyte", IDX_LABELS, 1)
        if images[1:] != [28, 28]:
            raise ValueError(f"{split}-images-idx3-ubyte: images of {images[1]}x{images[2]} pixels, expected 28x28")
        if images[0] != labels[0]:
            raise ValueError(f"{split}-images-idx3-ubyte holds {images[0]} images but {split}-labels-idx1-ubyte "
                             f"{labels[0]} labels")


def _check_arrays(x: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    """:raises ValueError: ``x`` not ``[N, *shape]`` or ``y`` not ``[N]`` labels in 0–9."""
    if tuple(x.shape[1:]) != shape or y.shape != x.shape[:1]:
        raise ValueError(f"{what}: images {list(x.shape)} and labels {list(y.shape)}, expected [N, "
                         f"{', '.join(map(str, shape))}] and [N]")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ValueError(f"{what}: labels from {int(y.min())} to {int(y.max())}, expected 0–9")


def _torchvision(name: str, root: str, download: bool) -> Dataset:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    folder = Path(root) / cls.__name__ / "raw"
    if all((folder / f).is_file() for f in _IDX_FILES):
        try:
            check_idx_files(folder)
        except (OSError, ValueError) as e:
            raise DataFormatError(f"{name} files in {folder} are not valid IDX files ({one_line(e)}); expected the "
                                  f"original {', '.join(_IDX_FILES)}") from None
    try:
        train = cls(root=root, train=True, download=download)
        test = cls(root=root, train=False, download=download)
    except Exception as e:  # torchvision raises RuntimeError, AssertionError, ValueError… for missing or bad files
        present = [f for f in _IDX_FILES if (folder / f).is_file() or (folder / f"{f}.gz").is_file()]
        if len(present) < len(_IDX_FILES):
            raise DataNotFoundError(
                f"{name} not found in {folder} (expected {', '.join(_IDX_FILES)}, optionally .gz); pass --data-root "
                f"(or set PYRO_SPARSE_DATA) to the folder that contains {cls.__name__}/raw, or download=True when "
                "online"
            ) from None
        raise DataFormatError(f"{name} files in {folder} are not valid IDX files ({one_line(e)}); expected the "
                              f"original {', '.join(_IDX_FILES)}") from None

    def to_tensor(ds):
        return ds.data.unsqueeze(1).float().div_(255.0), ds.targets.long()

    x_tr, y_tr = to_tensor(train)
    x_te, y_te = to_tensor(test)
    try:
        _check_arrays(x_tr, y_tr, (1, 28, 28), "train")
        _check_arrays(x_te, y_te, (1, 28, 28), "test")
    except ValueError as e:
        raise DataFormatError(f"{name} files in {folder} are not valid ({one_line(e)})") from None
    return Dataset(name, x_tr, y_tr, x_te, y_te, 10)


def _cifar10(root: str) -> Dataset:
    """CIFAR-10 as ``[N, 3, 32, 32]`` floats in [0, 1]. With the offline copy (``root/CIFAR10/*.npy``, uint8 HWC,
    read with ``allow_pickle=False``) the test set is the last 5,000 training images and the copy's 1,000 official
    test images are the extra test set ``official1k`` (too few to measure ~7% error to better than ±0.8 points; see
    its README); with torchvision's official files (``root/cifar-10-batches-py``) the standard 50,000 / 10,000
    split."""
    import numpy as np

    folder = Path(root) / "CIFAR10"
    if not all((folder / f).is_file() for f in _CIFAR_FILES):
        if (Path(root) / "cifar-10-batches-py").is_dir():
            from torchvision import datasets

            tr, te = datasets.CIFAR10(root, train=True), datasets.CIFAR10(root, train=False)
            x_tr, y_tr, x_te, y_te = tr.data, np.array(tr.targets), te.data, np.array(te.targets)
            extra_arrays = {}
        else:
            raise DataNotFoundError(f"cifar10 not found in {folder} (expected {', '.join(_CIFAR_FILES)}); pass "
                                    "--data-root (or set PYRO_SPARSE_DATA) to the folder that contains CIFAR10/")
    else:
        try:
            x, y = _cifar_arrays(folder, "train")
            extra_arrays = {"official1k": _cifar_arrays(folder, "test")}  # reported beside the held-out test set
            if x.shape[0] <= CIFAR_OFFLINE_TRAIN:
                raise ValueError(f"train_images.npy holds {x.shape[0]} images, expected the 50,000 of CIFAR-10")
        except Exception as e:
            raise DataFormatError(f"cifar10 files in {folder} are not the expected arrays ({one_line(e)}); expected "
                                  "uint8 images [N, 32, 32, 3] and integer labels [N] in 0–9") from None
        x_tr, y_tr = x[:CIFAR_OFFLINE_TRAIN], y[:CIFAR_OFFLINE_TRAIN]
        x_te, y_te = x[CIFAR_OFFLINE_TRAIN:], y[CIFAR_OFFLINE_TRAIN:]

    def to_tensor(images, labels):
        return (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0),
                torch.from_numpy(np.asarray(labels)).long())

    extra = {name: to_tensor(*arrays) for name, arrays in extra_arrays.items()}
    return Dataset("cifar10", *to_tensor(x_tr, y_tr), *to_tensor(x_te, y_te), 10, extra_tests=extra)


def _cifar_arrays(folder: Path, split: str):
    """``{split}_images.npy`` / ``{split}_labels.npy`` read as plain arrays (``allow_pickle=False``) and checked:
    uint8 images ``[N, 32, 32, 3]``, integer labels ``[N]`` in 0–9. :raises ValueError: naming the file."""
    import numpy as np

    x = np.load(folder / f"{split}_images.npy", allow_pickle=False)
    y = np.load(folder / f"{split}_labels.npy", allow_pickle=False)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise ValueError(f"{split}_images.npy is {x.dtype} {list(x.shape)}")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"{split}_labels.npy is {y.dtype} {list(y.shape)} beside {x.shape[0]} images")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ValueError(f"{split}_labels.npy holds labels from {int(y.min())} to {int(y.max())}")
    return x, y


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`).

    :raises InvalidInputError: unknown name (a ValueError). :raises DataNotFoundError: image data missing from
        ``root``. :raises DataFormatError: the files are there but are not valid IDX files.
    """
    if name in ("digits", "noise-digits"):
        return _digits(noise=name == "noise-digits")
    if name in ("mnist", "fashion-mnist"):
        return _torchvision(name, str(root or default_root()), download)
    if name == "cifar10":
        return _cifar10(str(root or default_root()))
    raise InvalidInputError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def subset(ds: Dataset, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """The first ``n_train`` / ``n_test`` examples (for tests and smoke runs)."""
    return replace(ds, x_train=ds.x_train[:n_train], y_train=ds.y_train[:n_train], x_test=ds.x_test[:n_test],
                   y_test=ds.y_test[:n_test])


#: seed of the validation split: fixed, so every run (whatever its ``--seed``) holds out the same examples
VAL_SPLIT_SEED = 0


def split_validation(ds: Dataset, n_val: int, seed: int = VAL_SPLIT_SEED) -> Dataset:
    """Hold out ``n_val`` training examples, drawn uniformly without replacement, as a validation set.

    Returns a new :class:`Dataset` whose ``x_train [N − n_val, ...]`` no longer holds them and whose
    ``x_val [n_val, ...]`` / ``y_val [n_val]`` do; the test set is untouched. The split depends on ``seed`` only.

    :raises InvalidInputError: ``n_val`` not in ``1 … N − 1``, or ``ds`` already has a validation split.
    """
    n = ds.x_train.shape[0]
    if ds.x_val is not None:
        raise InvalidInputError(f"{ds.name} already has a validation split of {ds.x_val.shape[0]} examples")
    if not 0 < n_val < n:
        raise InvalidInputError(f"validation size must be between 1 and {n - 1} (the training set has {n} examples), "
                         f"got {n_val}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
    return replace(ds, x_train=ds.x_train[train], y_train=ds.y_train[train], x_val=ds.x_train[val],
                   y_val=ds.y_train[val])


#: on-device augmentations of :func:`augment` (TrainConfig ``augment``, CLI ``--augment``)
AUGMENTATIONS = ("crop-flip",)


def augment(x: torch.Tensor, kind: str, padding: int = 4) -> torch.Tensor:
    """A randomly augmented copy of the image batch ``x [B, C, H, W]``, made on ``x``'s device with the global torch
    generator (no host round trip, no device read).

    ``crop-flip``: the standard CIFAR-10 augmentation of the papers' VGG-like / ResNet training (He et al. 2016,
    Sec. 4.2): each image zero-padded by ``padding`` pixels on every side, a random ``H×W`` crop of it, and a
    horizontal flip with probability 1/2, drawn independently per image.

    :raises InvalidInputError: ``kind`` not in :data:`AUGMENTATIONS`, or ``x`` not a 4-d image batch.
    """
    if kind not in AUGMENTATIONS:
        raise InvalidInputError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {kind!r}")
    if x.dim() != 4:
        raise InvalidInputError(f"augmentation {kind!r} needs image batches [B, C, H, W], got shape {list(x.shape)}")
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    flip = torch.rand(b, 1, device=x.device) < 0.5
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip, w - 1 - cols, cols) + dx  # a flipped crop reads its columns right to left
    rows = torch.arange(h, device=x.device) + dy
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
