"""A steady-state training step reads nothing back to the host (issue 16, item 2, the CPU check; issue 24, item 6).

The one training engine runs one epoch of 2 and of 4 steps under :class:`HostSyncs`, which records every operation
that would make the host wait for a GPU: at the dispatcher, the aten ops that synchronise (``_local_scalar_dense``
behind ``item()`` / ``float()`` / ``bool()``, ``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing and
index assignment, copies from a CUDA tensor to the host); above it, the Python methods that hand a tensor to the
host even when it is already there, which the dispatcher never sees on a CPU (``.cpu()``, ``.numpy()``,
``.tolist()``, ``.item()``, ``__bool__``/``__int__``/``__float__``/``__index__``). Per-epoch reads (metrics,
compaction) are the same in both runs, so any difference is a read inside a step. Adam's host-side step counter
(inside ``torch.optim``) is no device synchronisation and is counted apart. (``.to("cpu")`` of a CPU tensor cannot be
told from a device-agnostic ``.to(x.device)`` here; the CUDA test below catches it.)
"""

import traceback
from collections import Counter

import pyro
import pytest
import torch
from pyro_sparse.guides import MeanFieldGuide
from pyro_sparse.models import build_model
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_sparse.data import Dataset
from pyro_sparse.infer import TrainConfig, fit

OPTIMIZER = "torch.optim (host step counter)"
aten = torch.ops.aten
#: aten ops that synchronise a CUDA device with the host whatever their arguments
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.is_nonzero, aten.unique_dim,
            aten._unique2, aten.unique_consecutive, aten.equal, aten.repeat_interleave, aten.nonzero_static}
#: Python-level methods that hand a tensor to the host
HOST_METHODS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__,
                torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class HostSyncs(TorchDispatchMode):
    """Counts host synchronisations (see the module docstring): ``counts["other"]`` and ``counts[OPTIMIZER]``, with
    the first few places in ``where``."""

    def __init__(self):
        super().__init__()
        self.counts, self.where = Counter(), []
        self.methods = _HostMethods(self)

    def record(self, what: str) -> None:
        stack = traceback.extract_stack()
        key = OPTIMIZER if any("/torch/optim/" in f.filename for f in stack[-12:]) else "other"
        self.counts[key] += 1
        if key == "other" and len(self.where) < 5:
            caller = next((f for f in reversed(stack) if "pyro_sparse" in f.filename or "/models/" in f.filename
                           or "/guides/" in f.filename), stack[-3])
            self.where.append(f"{what} at {caller.filename}:{caller.lineno}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in SYNC_OPS or (packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_)
                                  and _bool_index(args)):
            self.record(str(func))
        elif packet in (aten._to_copy, aten.copy_) and _to_host(func, args, kwargs):
            self.record(str(func))
        return func(*args, **kwargs)

    def __enter__(self):
        self.methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.methods.__exit__(*exc)


def _to_host(func, args, kwargs) -> bool:
    if func.overloadpacket is aten.copy_:  # copy_(dst, src)
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    target = kwargs.get("device")
    return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"


class _HostMethods(TorchFunctionMode):
    def __init__(self, owner: HostSyncs):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_METHODS:
            self.owner.record(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _epoch(method, arch, shape, steps, **cfg):
    g = torch.Generator().manual_seed(0)
    n = 20 * steps
    data = Dataset("synthetic", torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g),
                   torch.rand(10, *shape, generator=g), torch.randint(0, 10, (10,), generator=g), 10)
    pyro.set_rng_seed(0)
    model = build_model(arch, method, shape, 10)
    guide = MeanFieldGuide(model)
    config = TrainConfig(epochs=1, batch_size=20, measure_latency=False, **cfg)
    syncs = HostSyncs()
    with syncs:
        fit(model, guide, data, config, progress=False)
    return syncs


def _steps_read_nothing(method, arch, shape, **cfg) -> None:
    short, long = _epoch(method, arch, shape, 2, **cfg), _epoch(method, arch, shape, 4, **cfg)
    assert long.counts["other"] == short.counts["other"], long.where  # zero per step
    assert long.counts[OPTIMIZER] > short.counts[OPTIMIZER]  # the counter does see every step's conversions


@pytest.mark.parametrize("method", ["svd", "sbp", "bb", "dbb"])
@pytest.mark.parametrize("arch, shape", [("lenet5", (1, 28, 28)), ("logreg", (64,))], ids=["lenet5", "logreg"])
def test_training_steps_read_nothing_back(method, arch, shape):
    _steps_read_nothing(method, arch, shape)


def test_kl_scale_and_clipping_keep_steps_free():
    _steps_read_nothing("sbp", "logreg", (64,), kl_scale={"fc1": 2.0})
    _steps_read_nothing("svd", "logreg", (64,), train_clip_from=0)


@pytest.mark.parametrize("mutation", ["cpu", "mask", "nonzero", "item"])
def test_the_detector_sees_each_kind_of_host_read(mutation, monkeypatch):
    """The check can fail: each kind of host read, put into every step, is counted once per step."""
    from pyro_sparse.models import Classifier

    forward = Classifier.forward
    reads = {"cpu": lambda t: t.cpu(), "mask": lambda t: t[t > 0], "nonzero": lambda t: t.nonzero(),
             "item": lambda t: t.sum().item()}

    def mutated(self, x, y=None):
        reads[mutation](x.detach())
        return forward(self, x, y)

    monkeypatch.setattr(Classifier, "forward", mutated)
    short, long = _epoch("bb", "logreg", (64,), 2), _epoch("bb", "logreg", (64,), 4)
    assert long.counts["other"] > short.counts["other"]


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
