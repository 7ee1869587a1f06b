"""Hostile files and arguments: reading a compact network, a run directory or a data file never runs what it names,
and every public entry point checks what it is given (issue 24; DESIGN contract 12, ``pyro_sparse.trust``).

Table-driven, like ``test_bad_inputs.py``. Each case damages a copy of a finished run (or makes a bad argument),
then calls a public function or the CLI: the named exception (API) or exit status 2 (CLI), one line, and

* nothing executed: the sentinel module that a tampered file names is never imported, and the sentinel file that
  importing or calling it would create never appears (also for ``subprocess:run`` with a ``touch`` command);
* nothing changed: every file of the shared runs and of the case's own copies hashes the same before and after.

Categories (counted in :func:`test_every_category_has_cases`): ``code`` — files naming other callables, modules,
attributes and dunder names; ``integrity`` — spec against tensors, checkpoint against config, files swapped between
runs, truncated or non-finite tensors; ``data`` — IDX and CIFAR-10 files against their headers and each other;
``api`` — arguments of the public functions.
"""

import hashlib
import json
import shutil
import struct
import sys

import numpy as np
import pytest
import torch
from conftest import cli_error
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model, nets
from safetensors.torch import load, save
from torch import nn

import pyro_sparse
from pyro_sparse import compact, errors, load_compact, save_compact, sparsify
from pyro_sparse.cli import main
from pyro_sparse.data import Dataset, load_dataset
from pyro_sparse.diagnostics import to_inference_data
from pyro_sparse.infer import TrainConfig, fit
from pyro_sparse.metrics import summarize
from pyro_sparse.runs import load_run

ONE = ["--dataset", "digits", "--epochs", "1", "--quiet", "--no-latency"]
SBP_TRAIN = ["train", "--method", "sbp", "--arch", "logreg", *ONE]
SVD_TRAIN = ["train", "--method", "svd", "--arch", "logreg", *ONE]


class World:
    """The shared runs, the folder of importable code and the sentinel path."""

    def __init__(self, root):
        self.root, self.runs, self.code = root, root / "runs", root / "code"
        self.sentinel = root / "SENTINEL"

    def run(self, name):
        return self.runs / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("hostile"))
    w.code.mkdir()
    # importing this module, or calling its factory, leaves the sentinel file: the proof that code ran
    (w.code / "hostile_sentinel.py").write_text(
        f"import pathlib\npathlib.Path({str(w.sentinel)!r}).touch()\n\n\n"
        f"def boom(**kwargs):\n    pathlib.Path({str(w.sentinel)!r}).touch()\n"
        "    import torch\n    return torch.nn.Linear(64, 10)\n"
    )
    (w.code / "hostile_user_net.py").write_text(
        "from torch import nn\n\n\ndef factory():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n"
    )
    sys.path.insert(0, str(w.code))
    try:
        for name, method, arch in (
            ("svd", "svd", "logreg"),
            ("sbp", "sbp", "logreg"),
            ("user", "sbp", "hostile_user_net:factory"),
        ):
            assert main(["train", "--method", method, "--arch", arch, *ONE, "--out", str(w.run(name))]) == 0
        w.sentinel.unlink(missing_ok=True)
        yield w
    finally:
        sys.path.remove(str(w.code))
        sys.modules.pop("hostile_user_net", None)


def _snapshot(*dirs):
    out = {}
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if f.is_file():
                out[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
    return out


def _copy(w, name, tmp):
    dst = tmp / f"copy_{name}"
    shutil.copytree(w.run(name), dst)
    return dst


def _spec(w, name, tmp, edit):
    """A copy of run ``name`` whose compact.json is ``edit(spec)`` (edited in place or returned)."""
    d = _copy(w, name, tmp)
    spec = json.loads((d / "compact.json").read_text())
    spec = edit(spec) or spec
    (d / "compact.json").write_text(json.dumps(spec))
    return d


def _factory(name, kwargs=None):
    def edit(spec):
        spec["factory"] = {"name": name, "kwargs": kwargs or {}}

    return edit


def _tensors(w, name, tmp, edit):
    """A copy of run ``name`` whose tensors are ``edit(tensors)``, the recorded SHA-256 updated to match (an
    attacker who knows the format)."""
    d = _copy(w, name, tmp)
    tensors = load((d / "compact.safetensors").read_bytes())
    edit(tensors)
    data = save(tensors)
    (d / "compact.safetensors").write_bytes(data)
    spec = json.loads((d / "compact.json").read_text())
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    (d / "compact.json").write_text(json.dumps(spec))
    return d


def _config(w, name, tmp, restamp=True, **changes):
    """A copy of run ``name`` with ``config.json`` changed; ``restamp``: its checkpoint names the new file (as if the
    run had been made so), else it still names the original."""
    d = _copy(w, name, tmp)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    cfg["args"].update({k: v for k, v in changes.items() if k in cfg["args"]})  # the recorded options alike
    (d / "config.json").write_text(json.dumps(cfg))
    if restamp:
        ckpt = torch.load(d / "checkpoint.pt", weights_only=True)
        ckpt["config_sha256"] = hashlib.sha256((d / "config.json").read_bytes()).hexdigest()
        torch.save(ckpt, d / "checkpoint.pt")
    return d


def _config_raw(w, name, tmp, **changes):
    """A copy of run ``name`` whose top-level ``config.json`` entries are changed and nothing else."""
    d = _copy(w, name, tmp)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    ckpt = torch.load(d / "checkpoint.pt", weights_only=True)
    ckpt["config_sha256"] = hashlib.sha256((d / "config.json").read_bytes()).hexdigest()
    torch.save(ckpt, d / "checkpoint.pt")
    return d


def _swap(w, name, other, tmp, *files):
    d = _copy(w, name, tmp)
    for f in files:
        shutil.copy(w.run(other) / f, d / f)
    return d


def _mnist(tmp, n_images=(6, 4), n_labels=(6, 4), size=28, label=0, truncate=False):
    raw = tmp / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, m in (("train", n_images[0], n_labels[0]), ("t10k", n_images[1], n_labels[1])):
        body = bytes(n * size * size)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, size, size) + (body[:-5] if truncate else body)
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, m) + bytes([label] * m))
    return str(tmp / "data")


def _cifar(tmp, images=None, labels=None, allow_pickle=False):
    folder = tmp / "data" / "CIFAR10"
    folder.mkdir(parents=True)
    x = np.zeros((45_010, 32, 32, 3), np.uint8) if images is None else images
    y = np.zeros(x.shape[0], np.uint8) if labels is None else labels
    for split in ("train", "test"):
        np.save(folder / f"{split}_images.npy", x, allow_pickle=allow_pickle)
        np.save(folder / f"{split}_labels.npy", y, allow_pickle=allow_pickle)
    return str(tmp / "data")


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def _lenet5():
    return nets.build("lenet5", (1, 28, 28), 10)


def _trained(method="svd"):
    model = sparsify(_mlp(), method, torch.rand(4, 64), num_data=100)
    return model, MeanFieldGuide(model)


def _digits():
    return load_dataset("digits")


SENTINEL_SPEC = ("hostile_sentinel:boom",)


# (id, category, prepare(world, tmp) -> callable, exception, expected text)
API = [
    # -- code named in files: never imported or called ------------------------------------------------------------
    (
        "spec-user-factory",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, _factory(*SENTINEL_SPEC))),
        errors.UntrustedCodeError,
        "does not import code named in a file",
    ),
    (
        "spec-subprocess-args",
        "code",
        lambda w, t: _call(
            load_compact, _spec(w, "svd", t, _factory("subprocess:run", {"args": ["touch", str(w.sentinel)]}))
        ),
        errors.RunDirError,
        "a user's factory takes none",
    ),
    (
        "spec-subprocess",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, _factory("subprocess:run"))),
        errors.UntrustedCodeError,
        "'subprocess:run'",
    ),
    (
        "spec-os-system",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, _factory("os:system"))),
        errors.UntrustedCodeError,
        "trust_code=True",
    ),
    (
        "spec-builtins-eval",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, _factory("builtins:eval"))),
        errors.UntrustedCodeError,
        "'builtins:eval'",
    ),
    (
        "spec-dunder-attr",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, _factory("os:__class__"))),
        errors.RunDirError,
        "expected one of logreg",
    ),
    (
        "spec-dunder-module",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, _factory("__main__:boom")), trust_code=True),
        errors.RunDirError,
        "package.module:factory",
    ),
    (
        "spec-path-module",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, _factory("../evil:boom"))),
        errors.RunDirError,
        "package.module:factory",
    ),
    (
        "spec-factory-list",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, lambda s: s.update(factory=["hostile_sentinel", "boom"]))),
        errors.RunDirError,
        "entry 'factory' is missing or malformed",
    ),
    (
        "spec-factory-extra-key",
        "code",
        lambda w, t: _call(
            load_compact,
            _spec(w, "svd", t, lambda s: s.update(factory={"name": "logreg", "kwargs": {}, "call": "os:system"})),
        ),
        errors.RunDirError,
        "recorded factory is malformed",
    ),
    (
        "spec-registry-option",
        "code",
        lambda w, t: _call(
            load_compact, _spec(w, "svd", t, lambda s: s["factory"]["kwargs"].update(hook="hostile_sentinel:boom"))
        ),
        errors.RunDirError,
        "unknown option(s) 'hook'",
    ),
    (
        "spec-registry-bomb",
        "code",
        lambda w, t: _call(
            load_compact, _spec(w, "svd", t, lambda s: s["factory"]["kwargs"].update(input_shape=[100000, 100000]))
        ),
        errors.RunDirError,
        "input_shape must be 1 to 4 positive integers",
    ),
    (
        "spec-unknown-arch",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, lambda s: s["factory"].update(name="resnet1000"))),
        errors.RunDirError,
        "names the architecture 'resnet1000'",
    ),
    (
        "spec-history-attr",
        "code",
        lambda w, t: _call(
            load_compact, _spec(w, "svd", t, lambda s: s.update(history=[["forward.__globals__", True, [0]]]))
        ),
        errors.RunDirError,
        "no prunable layer",
    ),
    (
        "spec-select-dunder",
        "code",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, lambda s: s.update(selects={"__class__": 3}))),
        errors.RunDirError,
        "no nn.Linear",
    ),
    (
        "spec-gate-missing",
        "code",
        lambda w, t: _call(
            load_compact,
            _spec(
                w, "svd", t, lambda s: s.update(gates={"fc9": {"where": "out", "n": 2, "eps": 1e-6, "threshold": 1e-3}})
            ),
        ),
        errors.RunDirError,
        "no weight or normalisation layer",
    ),
    (
        "spec-gate-where",
        "code",
        lambda w, t: _call(
            load_compact,
            _spec(
                w,
                "svd",
                t,
                lambda s: s.update(gates={"fc1": {"where": "sideways", "n": 2, "eps": 1e-6, "threshold": 1e-3}}),
            ),
        ),
        errors.RunDirError,
        "entry 'gates' is missing or malformed",
    ),
    (
        "user-no-factory",
        "code",
        lambda w, t: _call(load_compact, w.run("user")),
        errors.UntrustedCodeError,
        "'hostile_user_net:factory'",
    ),
    (
        "run-config-arch",
        "code",
        lambda w, t: _call(load_run, _config(w, "sbp", t, arch=SENTINEL_SPEC[0])),
        errors.UntrustedCodeError,
        "names the factory 'hostile_sentinel:boom'",
    ),
    (
        "run-config-options",
        "code",
        lambda w, t: _call(load_run, _config(w, "sbp", t, net_kwargs={"factory": "hostile_sentinel:boom"})),
        errors.RunDirError,
        "'net_kwargs' must hold only temperature, noise",
    ),
    (
        "run-config-selector",
        "code",
        lambda w, t: _call(load_run, _config(w, "sbp", t, net_kwargs={"include": "hostile_sentinel:boom"})),
        errors.RunDirError,
        "must be a list of layer-name globs",
    ),
    (
        "run-config-arch-hook",
        "code",
        lambda w, t: _call(load_run, _config(w, "sbp", t, arch_options={"factory": "hostile_sentinel:boom"})),
        errors.RunDirError,
        "unknown option(s) 'factory'",
    ),
    (
        "run-config-arch-bomb",
        "code",
        lambda w, t: _call(load_run, _config(w, "sbp", t, arch_options=[1, 2])),
        errors.RunDirError,
        "entry 'arch_options' is not an object",
    ),
    (
        "run-user-no-factory",
        "code",
        lambda w, t: _call(load_run, w.run("user")),
        errors.UntrustedCodeError,
        "(--trust-code)",
    ),
    # -- integrity: spec against tensors, checkpoint against config, swapped and damaged files -------------------
    (
        "spec-shape",
        "integrity",
        lambda w, t: _call(
            load_compact, _spec(w, "svd", t, lambda s: s["tensors"]["fc1.weight"].update(shape=[10, 999]))
        ),
        errors.RunDirError,
        "records float32 [10, 999]",
    ),
    (
        "spec-dtype",
        "integrity",
        lambda w, t: _call(
            load_compact, _spec(w, "svd", t, lambda s: s["tensors"]["fc1.weight"].update(dtype="float64"))
        ),
        errors.RunDirError,
        "tensor 'fc1.weight' is float32",
    ),
    (
        "spec-extra-tensor",
        "integrity",
        lambda w, t: _call(
            load_compact,
            _spec(w, "svd", t, lambda s: s["tensors"].update({"fc2.weight": {"shape": [1], "dtype": "float32"}})),
        ),
        errors.RunDirError,
        "name different tensors",
    ),
    (
        "spec-hash",
        "integrity",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, lambda s: s.update(sha256="0" * 64))),
        errors.RunDirError,
        "SHA-256 differs",
    ),
    (
        "spec-hash-malformed",
        "integrity",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, lambda s: s.update(sha256="x"))),
        errors.RunDirError,
        "entry 'sha256'",
    ),
    (
        "spec-format",
        "integrity",
        lambda w, t: _call(load_compact, _spec(w, "svd", t, lambda s: s.update(format="pyro-sparse-compact/2"))),
        errors.RunDirError,
        "expected one of 'pyro-sparse-compact/3', 'pyro-sparse-compact/4'",
    ),
    (
        "tensors-swapped",
        "integrity",
        lambda w, t: _call(load_compact, _swap(w, "svd", "sbp", t, "compact.safetensors")),
        errors.RunDirError,
        "SHA-256 differs",
    ),
    (
        "tensors-truncated",
        "integrity",
        lambda w, t: _call(load_compact, _truncate(w, "svd", t)),
        errors.RunDirError,
        "SHA-256 differs",
    ),
    (
        "tensors-nonfinite",
        "integrity",
        lambda w, t: _call(
            load_compact, _tensors(w, "svd", t, lambda ts: ts["fc1.weight"].view(-1)[0].fill_(float("nan")))
        ),
        errors.RunDirError,
        "non-finite values",
    ),
    (
        "tensors-reshaped",
        "integrity",
        lambda w, t: _call(
            load_compact,
            _tensors(w, "svd", t, lambda ts: ts.update({"fc1.weight": ts["fc1.weight"][:, :-1].contiguous()})),
        ),
        errors.RunDirError,
        "tensor 'fc1.weight' is float32",
    ),
    (
        "tensors-header",
        "integrity",
        lambda w, t: _call(load_compact, _garbled_header(w, t)),
        errors.RunDirError,
        "not a readable safetensors file",
    ),
    (
        "user-wrong-factory",
        "integrity",
        lambda w, t: _call(
            load_compact,
            w.run("user"),
            factory=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
        ),
        errors.RunDirError,
        "user",
    ),
    (
        "ckpt-swapped",
        "integrity",
        lambda w, t: _call(load_run, _swap(w, "sbp", "svd", t, "checkpoint.pt")),
        errors.CheckpointError,
        "belongs to another run",
    ),
    (
        "config-edited",
        "integrity",
        lambda w, t: _call(load_run, _config(w, "sbp", t, restamp=False, seed=7)),
        errors.CheckpointError,
        "belongs to another run",
    ),
    (
        "config-shape",
        "integrity",
        lambda w, t: _call(load_run, _config(w, "sbp", t, input_shape="abc")),
        errors.RunDirError,
        "entry 'input_shape' is not a list of positive ints",
    ),
    (
        "config-inconsistent",
        "integrity",
        lambda w, t: _call(load_run, _config_raw(w, "sbp", t, arch="lenet300")),
        errors.RunDirError,
        "'arch' is 'lenet300' but the recorded options say 'logreg'",
    ),
    (
        "config-root",
        "integrity",
        lambda w, t: _call(load_run, _config(w, "sbp", t, data_root=["/", "etc"])),
        errors.RunDirError,
        "entry 'data_root' is not a path or null",
    ),
    # -- data files ---------------------------------------------------------------------------------------------
    (
        "idx-counts",
        "data",
        lambda w, t: _call(load_dataset, "mnist", _mnist(t, n_images=(3, 4))),
        errors.DataFormatError,
        "holds 3 images but train-labels-idx1-ubyte 6 labels",
    ),
    (
        "idx-truncated",
        "data",
        lambda w, t: _call(load_dataset, "mnist", _mnist(t, truncate=True)),
        errors.DataFormatError,
        "its header [6, 28, 28] says",
    ),
    (
        "idx-size",
        "data",
        lambda w, t: _call(load_dataset, "mnist", _mnist(t, size=32)),
        errors.DataFormatError,
        "images of 32x32 pixels, expected 28x28",
    ),
    (
        "idx-labels",
        "data",
        lambda w, t: _call(load_dataset, "mnist", _mnist(t, label=12)),
        errors.DataFormatError,
        "labels from 12 to 12, expected 0–9",
    ),
    (
        "cifar-pickle",
        "data",
        lambda w, t: _call(load_dataset, "cifar10", _cifar(t, labels=np.array([object()] * 45_010), allow_pickle=True)),
        errors.DataFormatError,
        "allow_pickle=False",
    ),
    (
        "cifar-layout",
        "data",
        lambda w, t: _call(load_dataset, "cifar10", _cifar(t, np.zeros((4, 3, 32, 32), np.uint8))),
        errors.DataFormatError,
        "train_images.npy is uint8 [4, 3, 32, 32]",
    ),
    (
        "cifar-float",
        "data",
        lambda w, t: _call(load_dataset, "cifar10", _cifar(t, np.zeros((4, 32, 32, 3)))),
        errors.DataFormatError,
        "train_images.npy is float64",
    ),
    (
        "cifar-labels",
        "data",
        lambda w, t: _call(load_dataset, "cifar10", _cifar(t, labels=np.full(45_010, 10, np.uint8))),
        errors.DataFormatError,
        "labels from 10 to 10",
    ),
    (
        "cifar-count",
        "data",
        lambda w, t: _call(load_dataset, "cifar10", _cifar(t, labels=np.zeros(7, np.uint8))),
        errors.DataFormatError,
        "beside 45010 images",
    ),
    # -- public API arguments -----------------------------------------------------------------------------------
    (
        "sparsify-threshold",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.rand(2, 64), threshold=float("nan")),
        errors.InvalidInputError,
        "weight threshold must be a finite number",
    ),
    (
        "sparsify-svd-option",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.rand(2, 64), temperature=0.5),
        errors.InvalidInputError,
        "unknown option(s) 'temperature'; valid: threshold",
    ),
    (
        "sparsify-bb-option",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "bb", torch.rand(2, 64), rho2=5.0),
        errors.InvalidInputError,
        "valid: threshold, alpha_over_k, temperature",
    ),
    (
        "sparsify-unbatched",
        "api",
        lambda w, t: lambda: sparsify(_lenet5(), "sbp", torch.rand(1, 28, 28)),
        errors.InvalidInputError,
        "add the batch dim",
    ),
    (
        "sparsify-int-input",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.ones(2, 64, dtype=torch.long)),
        errors.InvalidInputError,
        "must be a float tensor",
    ),
    (
        "sparsify-nan-input",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.full((2, 64), float("nan"))),
        errors.InvalidInputError,
        "non-finite values",
    ),
    (
        "sparsify-meta-input",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.rand(2, 64, device="meta")),
        errors.InvalidInputError,
        "on cpu or cuda",
    ),
    (
        "sparsify-nothing",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "sbp", torch.rand(2, 64), include="conv*"),
        errors.InvalidInputError,
        "no layer selected",
    ),
    (
        "sparsify-everything-excluded",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.rand(2, 64), exclude="*"),
        errors.InvalidInputError,
        "no layer selected",
    ),
    (
        "sparsify-selector",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.rand(2, 64), include=3),
        errors.InvalidInputError,
        "include selector 3",
    ),
    (
        "sparsify-num-data",
        "api",
        lambda w, t: lambda: sparsify(_mlp(), "svd", torch.rand(2, 64), num_data=0),
        errors.InvalidInputError,
        "num_data must be the number of training examples",
    ),
    (
        "compact-other-guide",
        "api",
        lambda w, t: (
            lambda: compact(
                _trained()[0], MeanFieldGuide(sparsify(nn.Sequential(nn.Linear(64, 10)), "svd", torch.rand(2, 64)))
            )
        ),
        errors.InvalidInputError,
        "the guide does not belong to this model",
    ),
    (
        "compact-other-width",
        "api",
        lambda w, t: (
            lambda: compact(
                _trained()[0],
                MeanFieldGuide(
                    sparsify(
                        nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
                        "svd",
                        torch.rand(2, 64),
                    )
                ),
            )
        ),
        errors.InvalidInputError,
        "has shape [8, 64] in the guide, [16, 64] in the model",
    ),
    (
        "compact-weight-thr-on-units",
        "api",
        lambda w, t: lambda: compact(*_trained("sbp"), weight_threshold=3.0),
        errors.InvalidInputError,
        "a weight threshold applies to latent weights (svd)",
    ),
    (
        "compact-unit-thr-on-svd",
        "api",
        lambda w, t: lambda: compact(*_trained("svd"), unit_threshold=0.5),
        errors.InvalidInputError,
        "a unit threshold applies to unit latents",
    ),
    (
        "compact-probe",
        "api",
        lambda w, t: lambda: compact(*_trained(), probe=torch.rand(3, 65)),
        errors.InvalidInputError,
        "probe must be a float batch [B, 64]",
    ),
    (
        "compact-rtol",
        "api",
        lambda w, t: lambda: compact(*_trained(), rtol=-1.0),
        errors.InvalidInputError,
        "rtol must be a finite number >= 0",
    ),
    (
        "compact-plain-module",
        "api",
        lambda w, t: lambda: compact(_mlp()),
        errors.InvalidInputError,
        "compact takes a pyro_sparse model",
    ),
    (
        "save-plain-module",
        "api",
        lambda w, t: lambda: save_compact(_mlp(), t / "out"),
        errors.InvalidInputError,
        "save_compact takes a network made by pyro_sparse.compact",
    ),
    (
        "save-into-file",
        "api",
        lambda w, t: lambda: save_compact(load_compact(w.run("svd")), w.run("svd") / "metrics.json"),
        errors.RunDirError,
        "is a file",
    ),
    (
        "load-factory",
        "api",
        lambda w, t: _call(load_compact, w.run("user"), factory="hostile_user_net:factory"),
        errors.InvalidInputError,
        "factory must be a callable",
    ),
    (
        "load-device",
        "api",
        lambda w, t: _call(load_compact, w.run("svd"), device="tpu"),
        errors.InvalidInputError,
        "unknown device 'tpu'",
    ),
    (
        "load-trust",
        "api",
        lambda w, t: _call(load_compact, w.run("svd"), trust_code="yes"),
        errors.InvalidInputError,
        "trust_code must be True or False",
    ),
    (
        "fit-cfg-dict",
        "api",
        lambda w, t: lambda: fit(*_trained(), _digits(), {"epochs": 1}),
        errors.InvalidInputError,
        "fit expects cfg=TrainConfig",
    ),
    (
        "fit-data-shape",
        "api",
        lambda w, t: lambda: fit(*_trained(), load_dataset("noise-digits"), TrainConfig()),
        errors.InvalidInputError,
        "data has inputs [128], the model expects [64]",
    ),
    (
        "fit-weight-thr-on-units",
        "api",
        lambda w, t: lambda: fit(*_trained("sbp"), _digits(), TrainConfig(weight_threshold=3.0)),
        errors.InvalidInputError,
        "a weight threshold applies to latent weights",
    ),
    (
        "fit-clip-on-units",
        "api",
        lambda w, t: lambda: fit(*_trained("bb"), _digits(), TrainConfig(train_clip_from=0)),
        errors.InvalidInputError,
        "train_clip_from applies to latent weights (svd)",
    ),
    (
        "fit-resume-no-dir",
        "api",
        lambda w, t: lambda: fit(*_trained(), _digits(), TrainConfig(), resume=True),
        errors.InvalidInputError,
        "True needs a run_dir",
    ),
    (
        "fit-callback",
        "api",
        lambda w, t: lambda: fit(*_trained(), _digits(), TrainConfig(), callback=5),
        errors.InvalidInputError,
        "callback must be callable",
    ),
    (
        "fit-labels",
        "api",
        lambda w, t: lambda: fit(*_trained(), _float_labels(), TrainConfig()),
        errors.InvalidInputError,
        "y_train integer labels [N]",
    ),
    (
        "fit-device",
        "api",
        lambda w, t: lambda: fit(*_trained(), _digits(), TrainConfig(device="tpu")),
        errors.InvalidInputError,
        "unknown device 'tpu'",
    ),
    (
        "config-unknown",
        "api",
        lambda w, t: lambda: TrainConfig(epoch=3),
        errors.InvalidInputError,
        "unknown option(s) 'epoch'; valid: epochs",
    ),
    (
        "summarize-labels",
        "api",
        lambda w, t: lambda: summarize(_mlp(), _mlp(), torch.rand(2, 64), torch.rand(5, 64)),
        errors.InvalidInputError,
        "give x_test and y_test together",
    ),
    (
        "summarize-latency",
        "api",
        lambda w, t: lambda: summarize(_mlp(), _mlp(), torch.rand(2, 64), latency_batches=(0,)),
        errors.InvalidInputError,
        "latency_batches must be positive batch sizes",
    ),
    (
        "idata-shape",
        "api",
        lambda w, t: lambda: to_inference_data(*_trained(), torch.rand(5, 63), torch.zeros(5, dtype=torch.long)),
        errors.InvalidInputError,
        "x must be inputs [n, 64]",
    ),
    (
        "idata-samples",
        "api",
        lambda w, t: (
            lambda: to_inference_data(*_trained(), torch.rand(5, 64), torch.zeros(5, dtype=torch.long), num_samples=0)
        ),
        errors.InvalidInputError,
        "num_samples must be >= 1",
    ),
    (
        "nets-option",
        "api",
        lambda w, t: lambda: nets.build("logreg", (64,), 10, hook=print),
        ValueError,
        "unknown option(s) 'hook'",
    ),
    (
        "nets-width",
        "api",
        lambda w, t: lambda: nets.build("vgg_like", (3, 32, 32), 10, k=1e9),
        ValueError,
        "width multiplier k must be a number in (0, 16]",
    ),
    (
        "nets-user-name",
        "api",
        lambda w, t: lambda: nets.build("hostile_sentinel:boom", (64,), 10),
        ValueError,
        "is a user's factory",
    ),
    (
        "build-model-user",
        "api",
        lambda w, t: lambda: build_model("hostile_sentinel:boom", "svd", (64,), 10),
        ValueError,
        "pass factory=<that callable>",
    ),
]


def _call(fn, *args, **kwargs):
    """``fn`` bound to its arguments, which are evaluated (files damaged) now, before the snapshot."""
    return lambda: fn(*args, **kwargs)


def _truncate(w, name, tmp):
    d = _copy(w, name, tmp)
    data = (d / "compact.safetensors").read_bytes()
    (d / "compact.safetensors").write_bytes(data[: len(data) // 2])
    return d


def _garbled_header(w, tmp):
    d = _copy(w, "svd", tmp)
    data = b"\xff" * 8 + (d / "compact.safetensors").read_bytes()[8:]
    (d / "compact.safetensors").write_bytes(data)
    spec = json.loads((d / "compact.json").read_text())
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    (d / "compact.json").write_text(json.dumps(spec))
    return d


def _float_labels():
    d = _digits()
    return Dataset(d.name, d.x_train, d.y_train.float(), d.x_test, d.y_test, 10)


# (id, category, argv builder (world, tmp) -> argv, expected text in the one line)
CLI = [
    (
        "eval-spec-factory",
        "code",
        lambda w, t: ["evaluate", str(_spec(w, "svd", t, _factory(*SENTINEL_SPEC)))],
        "--trust-code",
    ),
    (
        "eval-spec-subprocess",
        "code",
        lambda w, t: [
            "evaluate",
            str(_spec(w, "svd", t, _factory("subprocess:run", {"args": ["touch", str(w.sentinel)]}))),
        ],
        "takes none",
    ),
    ("eval-user-no-arch", "code", lambda w, t: ["evaluate", str(w.run("user"))], "--arch hostile_user_net:factory"),
    (
        "eval-arch-differs",
        "code",
        lambda w, t: ["evaluate", str(w.run("user")), "--arch", "hostile_sentinel:boom"],
        "differs from the architecture 'hostile_user_net:factory'",
    ),
    (
        "report-config-arch",
        "code",
        lambda w, t: ["report", str(_config(w, "sbp", t, arch=SENTINEL_SPEC[0]))],
        "names the factory 'hostile_sentinel:boom'",
    ),
    (
        "resume-config-arch",
        "code",
        lambda w, t: [
            *SBP_TRAIN,
            "--resume",
            "--out",
            str(_cut(_config(w, "sbp", t, arch=SENTINEL_SPEC[0]))),
        ],
        "--arch 'logreg' contradicts the recorded 'hostile_sentinel:boom'",
    ),
    (
        "init-from-config-arch",
        "code",
        lambda w, t: [
            *SBP_TRAIN,
            "--out",
            str(t / "new"),
            "--init-from",
            str(_config(w, "sbp", t, arch=SENTINEL_SPEC[0])),
        ],
        "is a hostile_sentinel:boom run; expected --arch logreg",
    ),
    (
        "eval-other-run",
        "integrity",
        lambda w, t: ["evaluate", str(_swap(w, "svd", "sbp", t, "compact.json", "compact.safetensors"))],
        "belongs to another run",
    ),
    (
        "eval-nonfinite",
        "integrity",
        lambda w, t: ["evaluate", str(_tensors(w, "svd", t, lambda ts: ts["fc1.bias"].fill_(float("inf"))))],
        "non-finite values",
    ),
    (
        "report-ckpt-swapped",
        "integrity",
        lambda w, t: ["report", str(_swap(w, "svd", "sbp", t, "checkpoint.pt"))],
        "belongs to another run",
    ),
    (
        "train-wthr-sbp",
        "api",
        lambda w, t: [
            *SBP_TRAIN,
            "--out",
            str(t / "new"),
            "--weight-threshold",
            "3",
        ],
        "--weight-threshold applies to --method svd only",
    ),
    (
        "train-noise-svd",
        "api",
        lambda w, t: [*SVD_TRAIN, "--out", str(t / "new"), "--noise", "per-batch"],
        "--noise applies to --method sbp, bb and dbb only",
    ),
    (
        "train-uthr-svd",
        "api",
        lambda w, t: [
            *SVD_TRAIN,
            "--out",
            str(t / "new"),
            "--unit-threshold",
            "1",
        ],
        "--unit-threshold applies to --method sbp, bb and dbb only",
    ),
]


def _cut(d):
    """Run directory ``d`` as if killed before it finished (no metrics, no compact network)."""
    for name in ("metrics.json", "compact.json", "compact.safetensors"):
        (d / name).unlink()
    return d


def _nothing_ran(w):
    assert not w.sentinel.exists(), "a file's code ran: the sentinel was created"
    assert "hostile_sentinel" not in sys.modules, "a file's module was imported"


@pytest.mark.parametrize("case", API, ids=[c[0] for c in API])
def test_api_refuses_hostile_input(case, world, tmp_path):
    name, _, prepare, exc, expected = case
    call = prepare(world, tmp_path)
    before = _snapshot(world.runs, tmp_path)
    with pytest.raises(exc) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and expected in message, message
    _nothing_ran(world)
    assert _snapshot(world.runs, tmp_path) == before


@pytest.mark.parametrize("case", CLI, ids=[c[0] for c in CLI])
def test_cli_refuses_hostile_input(case, world, tmp_path, capsys):
    name, _, build, expected = case
    argv = build(world, tmp_path)
    capsys.readouterr()
    before = _snapshot(world.runs, tmp_path)
    err = cli_error(argv, capsys)
    assert expected in err, err
    _nothing_ran(world)
    assert _snapshot(world.runs, tmp_path) == before
    assert not (tmp_path / "new").exists()


def test_every_category_has_cases():
    """The issue asks for at least 40 new cases; the issue note quotes these counts."""
    counts = {}
    for case in API + CLI:
        counts[case[1]] = counts.get(case[1], 0) + 1
    assert len(API) + len(CLI) >= 40 and set(counts) == {"code", "integrity", "data", "api"}, counts


def test_the_caller_can_pass_the_code(world, tmp_path, capsys):
    """What the refusals point to works: ``factory=``, ``--arch`` equal to the recorded name, and the explicit
    opt-in ``trust_code=True`` / ``--trust-code`` (which does import what the file names: the sentinel appears)."""
    import hostile_user_net

    net = load_compact(world.run("user"), factory=hostile_user_net.factory)
    assert isinstance(net, nn.Sequential)
    assert main(["evaluate", str(world.run("user")), "--arch", "hostile_user_net:factory"]) == 0
    assert json.loads(capsys.readouterr().out)["test_error"] < 100
    model, guide, _ = load_run(world.run("user"), trust_code=True)
    assert model.method == "sbp"
    assert not world.sentinel.exists()
    d = _spec(world, "svd", tmp_path, _factory(*SENTINEL_SPEC))
    try:
        with pytest.raises(errors.RunDirError):  # the opt-in imports and calls it; the layer does not fit the files
            load_compact(d, trust_code=True)
        assert world.sentinel.exists(), "trust_code=True should import and call the recorded factory"
    finally:
        world.sentinel.unlink(missing_ok=True)
        sys.modules.pop("hostile_sentinel", None)


def test_threshold_reaches_every_keep_rule():
    """``threshold`` given to ``sparsify`` is the one value the ``.eval()`` network and ``compact`` read, for every
    method: a threshold that prunes everything (or nothing) shows in the compact network."""
    x = torch.rand(4, 64)
    for method, prune_all in (("svd", -100.0), ("sbp", 1e6), ("bb", 0.999)):
        model = sparsify(_mlp(), method, x, num_data=10, threshold=prune_all)
        guide = MeanFieldGuide(model)
        kind = "weight" if method == "svd" else "unit"
        assert model.thresholds[kind] == prune_all
        small = compact(model, guide)
        if method == "svd":
            assert all(float(p.detach().abs().sum()) == 0 for n, p in small.named_parameters() if n.endswith("weight"))
        else:
            assert set(small.pyro_sparse_compact["units"].values()) == {0}
        with torch.no_grad():
            assert torch.allclose(model.eval()(x), small(x), atol=1e-5)


def test_missing_num_data_warns_once():
    model, guide = _trained()
    model.num_data = None
    elbo = pyro_sparse.infer.SparseELBO()
    x, y = torch.rand(4, 64), torch.zeros(4, dtype=torch.long)
    with pytest.warns(UserWarning, match="num_data is not set") as record:
        elbo.differentiable_loss(model, guide, x, y)
        elbo.differentiable_loss(model, guide, x, y)
    assert len([r for r in record if "num_data" in str(r.message)]) == 1
