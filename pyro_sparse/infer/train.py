"""The one training loop of pyro-sparse, for every method and architecture (docs/design.md, contract 6).

SVI on :class:`~pyro_sparse.infer.SparseELBO` with a PyTorch Adam over two parameter groups — the model's point
estimates (``lr``, ``weight_decay``) and the guide's variational parameters (``lr_latent``) — a per-epoch learning-rate
schedule, KL warm-up, a tqdm progress bar, per-epoch metrics of the *compact* network appended to ``log.jsonl``, an
atomic checkpoint every epoch and exact resume.

Determinism: epoch ``e`` seeds its shuffling and its noise with ``seed·100003 + e``, so a resumed run reaches the same
final state as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from pyro import poutine as pyro_poutine
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pyro_sparse.model import Classifier

from ..compact import check_guide, compact, full_network, save_compact
from ..data import AUGMENTATIONS, Dataset, augment
from ..devices import resolve_device
from ..errors import CheckpointError, DivergenceError, InvalidInputError
from ..metrics import classification_error, extra_test_errors, network_cost, summarize
from ..nn import set_train_clip
from ..poutine import check_kl_scale, kl_scale, resolve_kl_scale
from ..runfiles import (
    CHECKPOINT,
    LOG,
    METRICS,
    RunLock,
    append_line,
    atomic_torch_save,
    atomic_write_json,
    config_digest,
    load_checkpoint,
)
from ..runfiles import recover as recover_run_dir
from ..settings import direct_param_reads, module_local_params, prepare_module_local, training_switches
from ..sparsify import SparseModel
from . import distributed
from .elbo import SparseELBO

SCHEDULES = ("constant", "linear", "step")
#: seeds must fit ``pyro.set_rng_seed`` (NumPy's 32-bit seeds)
MAX_SEED = 2**32 - 1
__all__ = ["CHECKPOINT", "LOG", "METRICS", "CheckpointError", "Objective", "TrainConfig", "fit", "load_checkpoint",
           "make_optimizer"]


@dataclass
class TrainConfig:
    """Hyperparameters of one run (defaults: METHODS.md §1 schedule for SVD).

    :ivar epochs: number of epochs (> 0).
    :ivar batch_size: minibatch size B.
    :ivar lr: Adam learning rate of the model's point estimates (weights, biases).
    :ivar lr_latent: learning rate of the guide's parameters (θ, log σ², noise and gate parameters); None = ``lr``.
    :ivar weight_decay: L2 weight decay on the model's point estimates only.
    :ivar lr_schedule: ``constant``; ``linear`` (constant until ``decay_start``·epochs, then linear to 0);
        ``step`` (×0.1 at 50% and 80% of the epochs).
    :ivar warmup_start, warmup_end: KL weight β is 0 before epoch ``warmup_start`` and rises linearly to 1 at
        ``warmup_end`` (equal values: no warm-up).
    :ivar weight_threshold: SVD's keep rule: weights with log α ≥ this are pruned; ``None`` (default): the method's
        3. Refused for a model without latent weights.
    :ivar unit_threshold: the unit methods' keep rule: units with SNR (SBP) or E[π] (BB, DBB) below this are pruned;
        ``None`` (default): the method's 1 / 1e-3. Refused for a model without unit latents.
    :ivar train_clip_from: SVD only: from this epoch on (0-based, like ``warmup_start``) weights with
        log α ≥ ``weight_threshold`` also leave the training-time mean (:func:`pyro_sparse.nn.set_train_clip`, the
        reference code's ``train_clip``); before it clipping is off. ``None``: the model's own setting is kept.
    :ivar kl_scale: ``{layer: s}``: the KL of that layer's latent sites is multiplied by ``s`` (> 0) in the
        objective (:func:`pyro_sparse.poutine.kl_scale`; the BB authors' code uses conv1 40, conv2 16 on LeNet-5);
        empty (default): the ELBO. The logged ``kl`` is the objective's, with these scales.
    :ivar progress_every: steps between progress-bar updates, each one host read of the epoch's running totals (and
        of the divergence check); the totals are read once more at the end of the epoch. Steps themselves read
        nothing back to the host.
    :ivar augment: ``None`` (default) or ``"crop-flip"``: random 4-pixel crops and horizontal flips of every training
        batch, made on the device (:func:`pyro_sparse.data.augment`); image data only.
    :ivar bf16: run the network's forward pass under ``torch.autocast`` with bfloat16 (the convolutions and matrix
        products; logits, likelihood, KL and the distributions stay float32/float64). Off by default: it changes
        results.
    :ivar compile: ``torch.compile`` the user's network (``nn.Module.compile``: parameter names and checkpoints
        unchanged) for training. Off by default; the first step then compiles (a minute on a CPU). The unit latents'
        hooks draw through Pyro, which dynamo cannot trace: they run eagerly, so the graph breaks at every unit
        layer and the segments between them are compiled (once, in the first step). SVD's local reparameterisation
        compiles whole.
    :ivar channels_last: hand the network its image batches (``[B, C, H, W]``) in ``torch.channels_last`` memory
        format, which cuDNN's convolutions (bf16 above all) run faster on a GPU; the convolutions' outputs follow the
        input's format. Same values up to floating-point rounding; off by default.

    Data-parallel training needs no field here: launched by ``torchrun`` (or ``pyro-sparse train --devices N``),
    :func:`fit` splits each global batch of ``batch_size`` examples over the processes
    (:mod:`pyro_sparse.infer.distributed`).
    """

    epochs: int = 200
    batch_size: int = 100
    lr: float = 1e-3
    lr_latent: float | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    decay_start: float = 0.5
    warmup_start: int = 0
    warmup_end: int = 0
    seed: int = 0
    device: str = "cpu"
    weight_threshold: float | None = None
    unit_threshold: float | None = None
    measure_latency: bool = True
    train_clip_from: int | None = None
    kl_scale: dict[str, float] = field(default_factory=dict)
    progress_every: int = 20
    augment: str | None = None
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False

    @classmethod
    def for_method(cls, method: str, epochs: int = 200, **overrides) -> TrainConfig:
        """The configuration ``pyro-sparse train --method METHOD`` uses on MNIST (:attr:`pyro_sparse.Method.training`:
        SVD's linear decay and KL warm-up 5 → 20 of 200 epochs, scaled for shorter runs; SBP's gate lr 1e-2; BB/DBB's
        step schedule, gate lr 1e-2 and weight decay 1e-4), with ``overrides`` (any field) on top.

        :raises InvalidInputError: an unknown method or field."""
        from pyro_sparse.sparsify import training_defaults

        d = training_defaults(method)
        warm = (5, 20) if epochs >= 40 else (epochs // 8, epochs // 2)
        fields = {"epochs": epochs, "lr_schedule": d.get("lr_schedule", "linear"), "lr_latent": d.get("lr_latent"),
                  "weight_decay": d.get("weight_decay", 0.0)}
        if d.get("kl_warmup"):
            fields["warmup_start"], fields["warmup_end"] = warm
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInputError(f"TrainConfig.for_method: unknown field(s) {', '.join(unknown)}; valid: "
                                    f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**{**fields, **overrides})

    def validate(self, flag_prefix: str = "") -> None:
        """Check every field: finite, in range, consistent with the others.

        :param flag_prefix: put before field names in messages (the CLI passes ``"--"``: ``--lr must be > 0``).
        :raises InvalidInputError: (a ``ValueError``) naming the field, its value and what was expected.
        """

        def bad(name: str, value, expected: str):
            raise InvalidInputError(f"{flag_prefix}{name.replace('_', '-')} must be {expected}, got {value!r}")

        def number(name: str, positive: bool = False, non_negative: bool = False, optional: bool = False):
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, v, "a finite number")
            if positive and not v > 0:
                bad(name, v, "> 0")
            if non_negative and not v >= 0:
                bad(name, v, ">= 0")

        for name in ("epochs", "batch_size", "progress_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(name, v, "a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            bad("seed", self.seed, f"an integer in 0 … {MAX_SEED}")
        number("lr", positive=True)
        number("lr_latent", positive=True, optional=True)
        number("weight_decay", non_negative=True)
        number("weight_threshold", optional=True)
        number("unit_threshold", positive=True, optional=True)
        number("decay_start")
        if not 0 <= self.decay_start <= 1:
            bad("decay_start", self.decay_start, "a fraction of the epochs in [0, 1]")
        if self.lr_schedule not in SCHEDULES:
            bad("lr_schedule", self.lr_schedule, f"one of {', '.join(SCHEDULES)}")
        for name in ("warmup_start", "warmup_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(name, v, "an epoch >= 0")
        if self.warmup_end < self.warmup_start:
            raise InvalidInputError(f"warmup END ({self.warmup_end}) must be >= START ({self.warmup_start})")
        if self.train_clip_from is not None and (
                isinstance(self.train_clip_from, bool) or not isinstance(self.train_clip_from, int)
                or not 0 <= self.train_clip_from < self.epochs):
            bad("train_clip_from", self.train_clip_from, f"an epoch in 0 … {self.epochs - 1} (0-based, < epochs)")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            bad("augment", self.augment, f"one of {', '.join(AUGMENTATIONS)} or None")
        for name in ("bf16", "compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                bad(name, getattr(self, name), "True or False")
        if not isinstance(self.kl_scale, dict):
            bad("kl_scale", self.kl_scale, "a {layer: scale} mapping")
        try:
            check_kl_scale(self.kl_scale)
        except ValueError as e:
            raise InvalidInputError(str(e)) from None

    def kl_weight(self, epoch: int) -> float:
        """KL warm-up β for ``epoch`` (0-based)."""
        if self.warmup_end <= self.warmup_start:
            return 1.0
        return min(1.0, max(0.0, (epoch - self.warmup_start) / (self.warmup_end - self.warmup_start)))

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the learning rates in ``epoch`` (0-based)."""
        if self.lr_schedule == "linear":
            start = int(self.decay_start * self.epochs)
            return 1.0 if epoch < start else max(0.0, 1.0 - (epoch - start) / max(1, self.epochs - start))
        if self.lr_schedule == "step":
            return 0.1 ** ((epoch >= 0.5 * self.epochs) + (epoch >= 0.8 * self.epochs))
        return 1.0


def _checked_init(init):
    names = [f.name for f in fields(TrainConfig)]

    def __init__(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(names))
        if unknown or len(args) > len(names):
            what = ", ".join(map(repr, unknown)) if unknown else f"{len(args)} positional values"
            raise InvalidInputError(f"TrainConfig: unknown option(s) {what}; valid: {', '.join(names)}")
        init(self, *args, **kwargs)

    __init__.__doc__, __init__.__wrapped__ = init.__doc__, init
    return __init__


#: an unknown option is refused naming the valid ones (not Python's bare TypeError)
TrainConfig.__init__ = _checked_init(TrainConfig.__init__)


def make_optimizer(model, guide, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the two parameter groups ``weights`` (model point estimates, with weight decay) and ``latent``
    (guide parameters, plus the model's point-estimated gate parameters that a module lists in its
    ``gate_parameters`` attribute, e.g. DBB's γ; no weight decay); parameters with ``requires_grad=False`` are left
    out (DBB's frozen BB guide)."""
    gate = {id(getattr(m, name)) for m in model.modules() for name in getattr(m, "gate_parameters", ())}
    model_params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in model_params if id(p) not in gate], "lr": cfg.lr, "weight_decay": cfg.weight_decay,
         "name": "weights"},
        {"params": [p for p in model_params if id(p) in gate] + [p for p in guide.parameters() if p.requires_grad],
         "lr": cfg.lr_latent or cfg.lr, "weight_decay": 0.0, "name": "latent"},
    ]
    return torch.optim.Adam([g for g in groups if g["params"]])


class Objective(nn.Module):
    """``−ELBO`` of a minibatch as a module, ``forward(x, y, weight=1.0) -> 0-d loss``, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` can wrap model and guide together (Pyro's ``ELBOModule``,
    with the guide possibly wrapped in :func:`~pyro_sparse.poutine.kl_scale`). ``weight`` multiplies the likelihood
    (a rank's share of an uneven global batch, :func:`pyro_sparse.infer.distributed.shard`). Parameters are read
    inside :func:`~pyro_sparse.settings.direct_param_reads` (with module-local parameters: no placeholder param
    statements)."""

    def __init__(self, model, guide, elbo: SparseELBO, guide_fn=None):
        super().__init__()
        self.model, self.guide, self.elbo = model, guide, elbo
        object.__setattr__(self, "guide_fn", guide_fn or guide)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        model = self.model if weight == 1.0 else pyro_poutine.scale(self.model, weight)
        with direct_param_reads():
            return self.elbo.differentiable_loss(model, self.guide_fn, x, y)


@contextlib.contextmanager
def _training_switches(model, guide, cfg: TrainConfig):
    """For the training loop only: bf16 autocast of the network's forward and no global guide draws that the model
    would throw away — switches the model and guide read (:func:`pyro_sparse.settings.training_switches`), not
    attributes set on them — and ``torch.compile`` of the network (the one switch that lives on the module: torch
    keeps the compiled forward there; undone on exit)."""
    if (cfg.bf16 or cfg.compile) and not isinstance(model, Classifier):
        raise InvalidInputError(f"bf16 and compile need a pyro_sparse model (Classifier, SparseModel) with a network "
                                f"in .net; got {type(model).__name__}")
    compiled = cfg.compile and not getattr(model.net, "_compiled_call_impl", None)
    if compiled:
        model.net.compile()
    # a SparseModel draws every latent per example: global draws would be thrown away
    switches = training_switches(autocast_dtype=torch.bfloat16 if cfg.bf16 else None,
                                 global_draws=False if isinstance(model, SparseModel) else None)
    try:
        with switches:
            yield
    finally:
        if compiled:
            model.net._compiled_call_impl = None  # back to eager: compact() and evaluation deep-copy the net


@module_local_params()
def fit(model, guide, data: Dataset, cfg: TrainConfig, run_dir: str | os.PathLike | None = None,
        resume: bool = False, progress: bool = True, meta: dict | None = None, callback=None) -> dict:
    """Train ``model`` and ``guide`` on ``data``; returns the final metrics (also written to ``RUN_DIR``).

    Each epoch's record (``log.jsonl``) holds the test error of the compact network, and its validation error
    (``val_error``, percent) when ``data`` has a validation split (:func:`pyro_sparse.data.split_validation`).

    Data-parallel: in processes started by ``torchrun`` (``WORLD_SIZE`` > 1) or inside a caller's initialised
    ``torch.distributed`` process group, every process calls ``fit`` with the same arguments; each global batch of
    ``cfg.batch_size`` examples is split across the ranks, gradients are averaged by DDP (the N/B scaling stays that
    of the global batch), each rank draws its own noise, and rank 0 alone writes ``run_dir``, compacts and measures
    (and calls ``callback``); every rank returns rank 0's metrics. :mod:`pyro_sparse.infer.distributed`.

    :param run_dir: where ``log.jsonl``, ``checkpoint.pt``, the compact network and ``metrics.json`` go (None: keep
        nothing on disk). Held with :class:`~pyro_sparse.runfiles.RunLock` (one writer) while training.
    :param resume: continue from ``RUN_DIR/checkpoint.pt`` (a directory killed before its first checkpoint starts
        from the beginning); log lines past the checkpoint, torn lines and ``*.tmp`` leftovers are dropped first, so
        the final directory equals an uninterrupted run's.
    :param meta: extra entries for ``metrics.json`` (method, arch, dataset…).
    :param callback: called as ``callback(record)`` after each epoch's checkpoint (e.g. early stopping by raising).
    :raises CheckpointError: the checkpoint is corrupted or does not fit the model.
    :raises InvalidInputError: an invalid ``cfg``, or a ``cfg.kl_scale`` layer without latent sites (ValueErrors).
    :raises RunLockedError: another process is writing ``run_dir``.
    :raises DivergenceError: a non-finite loss (named by epoch and step) or parameter; ``run_dir`` keeps the
        checkpoint of the last finished epoch.

    Runs with module-local parameters (:func:`pyro_sparse.module_local_params`): Pyro's global param store is not
    touched, and the caller's ``pyro.settings`` are restored on return or exception.
    """
    _check_fit_args(model, guide, data, cfg, run_dir, resume, meta, callback)
    run_dir = Path(run_dir) if run_dir is not None else None
    if cfg.augment is not None and data.x_train.dim() != 4:
        raise InvalidInputError(f"augment {cfg.augment!r} needs image data [N, C, H, W]; {data.name} has inputs "
                                f"{list(data.input_shape)}")
    world = distributed.join(cfg.device)
    if world.size > 1 and cfg.batch_size < world.size:
        raise InvalidInputError(f"batch size {cfg.batch_size} is smaller than the {world.size} processes; "
                                "expected at least one example per process")
    lock = RunLock(run_dir) if run_dir is not None and world.main else contextlib.nullcontext()
    with lock, warnings.catch_warnings(), _training_switches(model, guide, cfg):
        # a non-finite loss is reported once, as DivergenceError, not also as Pyro's "Encountered NaN" warning
        warnings.filterwarnings("ignore", message="Encountered (NaN|[+-]inf)", category=UserWarning)
        metrics = _fit(model, guide, data, cfg, run_dir, resume, progress and world.main, meta, callback, world)
    # after success only: tearing the group down while another rank is inside a collective would hang it (after an
    # exception the process ends and torchrun stops the others)
    distributed.leave(world)
    return metrics


def _check_fit_args(model, guide, data, cfg, run_dir, resume, meta, callback) -> None:
    """Every argument of :func:`fit` by type, and the config against the model, before anything runs.

    :raises InvalidInputError: one line naming the argument and what was expected."""
    if not isinstance(cfg, TrainConfig):
        raise InvalidInputError(f"fit expects cfg=TrainConfig(...), got a {type(cfg).__name__}")
    cfg.validate()
    resolve_device(cfg.device)
    if not isinstance(model, nn.Module) or not isinstance(guide, nn.Module) or not callable(guide):
        raise InvalidInputError(f"fit expects a Pyro model and its guide as nn.Modules (e.g. sparsify(...) and "
                                f"MeanFieldGuide(model)), got {type(model).__name__} and {type(guide).__name__}")
    if not isinstance(data, Dataset):
        raise InvalidInputError(f"fit expects data as a pyro_sparse.data.Dataset, got a {type(data).__name__}")
    for split in ("train", "test", "val"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if x is None and split == "val":
            continue
        if not torch.is_tensor(x) or not torch.is_tensor(y) or x.shape[:1] != y.shape or y.dim() != 1 \
                or not x.is_floating_point() or y.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise InvalidInputError(f"data: x_{split} must be float inputs [N, ...] and y_{split} integer labels [N], "
                                    f"got {_shape(x)} and {_shape(y)}")
    shape = getattr(model, "input_shape", None)
    if shape is not None and tuple(data.input_shape) != tuple(shape):
        raise InvalidInputError(f"data has inputs {list(data.input_shape)}, the model expects {list(shape)}")
    if isinstance(model, SparseModel):
        model.set_thresholds(weight=cfg.weight_threshold, unit=cfg.unit_threshold)
        if cfg.train_clip_from is not None and not model.weight_layers:
            raise InvalidInputError(f"train_clip_from applies to latent weights (svd); this {model.method} model has "
                                    "none")
    elif cfg.weight_threshold is not None or cfg.unit_threshold is not None or cfg.train_clip_from is not None:
        raise InvalidInputError("weight_threshold, unit_threshold and train_clip_from apply to sparsified models; "
                                f"got a {type(model).__name__} without latents")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise InvalidInputError(f"run_dir must be a path or None, got a {type(run_dir).__name__}")
    if not isinstance(resume, bool) or (resume and run_dir is None):
        raise InvalidInputError(f"resume must be True or False, and True needs a run_dir; got {resume!r} with "
                                f"run_dir {run_dir!r}")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidInputError(f"meta must be a dict of extra metrics.json entries or None, got {type(meta).__name__}")
    if callback is not None and not callable(callback):
        raise InvalidInputError(f"callback must be callable (called with each epoch's record) or None, got "
                                f"{type(callback).__name__}")


def _shape(t) -> str:
    return f"{t.dtype} {list(t.shape)}" if torch.is_tensor(t) else type(t).__name__


def _fit(model, guide, data: Dataset, cfg: TrainConfig, run_dir: Path | None, resume: bool, progress: bool,
         meta: dict | None, callback, world: distributed.World) -> dict:
    device, opt, sched, elbo, objective = _setup(model, guide, data, cfg, world)
    writes = run_dir if world.main else None  # rank 0 alone writes the run directory
    # the checkpoints and the compact network name the config.json they were written under
    config_sha256 = config_digest(run_dir) if writes is not None else None
    start, train_seconds, record = _resume(model, guide, opt, sched, run_dir, resume, world)
    last_good = start
    x, y = data.x_train.to(device), data.y_train.to(device)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        totals = _train_epoch(model, guide, opt, sched, elbo, objective, x, y, epoch, cfg, progress, run_dir,
                              last_good, world)
        train_seconds += time.perf_counter() - t0
        last_good = epoch + 1
        if not world.main:  # compaction, metrics and files are rank 0's
            continue
        record = _epoch_record(model, guide, data, elbo, opt, epoch, totals, train_seconds, t0)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1:4d}  loss {record['loss']:.4f}  nll {record['nll']:.4f}  kl {record['kl']:.1f}  "
                f"train err {record['train_error']:.2f}%  "
                + ("" if data.x_val is None else f"val err {record['val_error']:.2f}%  ")
                + f"test err {record['test_error']:.2f}%  "
                f"units {'-'.join(map(str, record['units']))}"
            )
        if writes is not None:  # the log line first: a kill before the checkpoint drops it and redoes the epoch
            append_line(writes / LOG, record)
            atomic_torch_save(
                {"epoch": epoch, "model": model.state_dict(), "guide": guide.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "train_seconds": train_seconds,
                 "config": json.dumps(asdict(cfg)), **({"config_sha256": config_sha256} if config_sha256 else {})},
                writes / CHECKPOINT,
            )
        if callback is not None:
            callback(record)
    distributed.barrier(world)  # the other ranks wait for rank 0's last checkpoint
    metrics = finalize(model, guide, data, cfg, writes, train_seconds, meta, record) if world.main else None
    return distributed.broadcast(metrics, world)


def _setup(model, guide, data: Dataset, cfg: TrainConfig, world: distributed.World):
    """``(device, optimizer, scheduler, elbo, objective)``: the parameter mode, the KL scale, the device and DDP."""
    prepare_module_local(model, guide)
    if isinstance(model, SparseModel):  # (reads the guide's posteriors: after the parameter mode is prepared)
        check_guide(model, guide)
    guide_fn = guide
    if cfg.kl_scale:
        if hasattr(guide, "site_names"):
            try:
                resolve_kl_scale(guide.site_names, cfg.kl_scale)
            except ValueError as e:
                raise InvalidInputError(str(e)) from None
        guide_fn = kl_scale(guide, cfg.kl_scale)
    device = distributed.device_of(cfg.device, world)
    model.to(device)
    guide.to(device)
    model.num_data = data.x_train.shape[0]
    opt = make_optimizer(model, guide, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    elbo = SparseELBO()
    objective = Objective(model, guide, elbo, guide_fn)
    if world.size > 1:
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    return device, opt, sched, elbo, objective


def _resume(model, guide, opt, sched, run_dir: Path | None, resume: bool, world: distributed.World):
    """``(first epoch, train seconds so far, last log record)``: the checkpoint's state loaded on ``resume``, and the
    run directory trimmed to it (rank 0)."""
    start, train_seconds, record = 0, 0.0, {}
    if resume and (run_dir / CHECKPOINT).is_file():
        ckpt = load_checkpoint(run_dir)
        try:
            model.load_state_dict(ckpt["model"])
            guide.load_state_dict(ckpt["guide"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"checkpoint in {run_dir} does not fit this model ({first})") from None
        start, train_seconds = ckpt["epoch"] + 1, float(ckpt.get("train_seconds", 0.0))
        if world.main:
            kept = recover_run_dir(run_dir, ckpt["epoch"])
            record = kept[-1] if kept and kept[-1]["epoch"] == start else {}
    elif resume and world.main:  # killed (or diverged) before the first checkpoint: nothing was trained yet
        recover_run_dir(run_dir, -1)
    return start, train_seconds, record


def _train_epoch(model, guide, opt, sched, elbo, objective, x, y, epoch: int, cfg: TrainConfig, progress: bool,
                 run_dir, last_good: int, world: distributed.World) -> tuple[float, float, int, int]:
    """One epoch of steps; returns ``(summed loss / N, summed NLL / N, wrong predictions, steps)`` over the ranks.

    No step reads anything back to the host: the totals stay on the device and are read every ``progress_every``
    steps (progress bar) and once at the end. :raises TrainingDivergedError: a non-finite loss or parameter."""
    device = x.device
    n = x.shape[0]
    # every global batch has at least one example per process (a last one with fewer is left out on many processes)
    batches = range(0, n - (n % cfg.batch_size if n % cfg.batch_size < world.size else 0), cfg.batch_size)
    seed = cfg.seed * 100003 + epoch
    torch.manual_seed(seed * world.size + world.rank)  # each rank its own noise; one process: the epoch's seed
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)  # the same on every rank
    elbo.kl_weight = cfg.kl_weight(epoch)
    if cfg.train_clip_from is not None:
        set_train_clip(model, model.weight_threshold() if epoch >= cfg.train_clip_from else None)
    model.train()
    guide.train()
    tot_loss = torch.zeros((), dtype=torch.float64, device=device)
    tot_nll = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.long, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    bad_loss = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=None if progress else True, mininterval=1.0)
    for i in bar:
        idx, weight = distributed.shard(perm[i:i + cfg.batch_size], world)
        xb, yb = x[idx], y[idx]
        if cfg.augment is not None:
            xb = augment(xb, cfg.augment)
        if cfg.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = objective(xb, yb, weight)
        loss.backward()
        opt.step()
        steps += 1
        value = loss.detach().double()
        newly = (first_bad < 0) & ~torch.isfinite(value)
        first_bad = torch.where(newly, steps, first_bad)
        bad_loss = torch.where(newly, value, bad_loss)
        tot_loss += value / n
        tot_nll += elbo.nll.double() / n
        wrong += (elbo.last_return.argmax(-1) != yb).sum()
        if progress and steps % cfg.progress_every == 0:
            _check_finite(first_bad, bad_loss, epoch, run_dir, last_good)
            seen = min(n, steps * cfg.batch_size)
            bar.set_postfix(loss=f"{float(tot_loss) / steps:.4f}", err=f"{100 * int(wrong) / seen:.2f}%")
    sched.step()
    # the ranks' totals: loss and NLL averaged (each rank's is an estimate of the global batch's), errors summed
    distributed.all_sum(tot_loss, tot_nll, wrong, bad_loss, world=world)
    distributed.first_over_ranks(first_bad, world)
    tot_loss, tot_nll = tot_loss / world.size, tot_nll / world.size
    _check_finite(first_bad, bad_loss, epoch, run_dir, last_good)
    params = [*model.named_parameters(), *guide.named_parameters()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for _, p in params]).all()):
        bad = next(name for name, p in params if not torch.isfinite(p).all())
        _diverged(run_dir, last_good, f"in epoch {epoch + 1}: parameter {bad!r} is no longer finite")
    return float(tot_loss), float(tot_nll), int(wrong), steps


def _epoch_record(model, guide, data: Dataset, elbo, opt, epoch: int, totals, train_seconds: float,
                  t0: float) -> dict:
    """The epoch's ``log.jsonl`` line: losses, errors of the compact network (test, extra tests, validation), units,
    non-zero weights, times."""
    tot_loss, tot_nll, wrong, steps = totals
    n = data.x_train.shape[0]
    small = compact(model, guide)  # the keep rules' thresholds: the model's (set from cfg in _check_fit_args)
    cost = network_cost(small, example_input(model))
    return {
        "epoch": epoch + 1,
        "loss": tot_loss / steps,
        "nll": tot_nll / steps,
        "kl": float(elbo.kl),
        "kl_weight": elbo.kl_weight,
        "lr": opt.param_groups[0]["lr"],
        "train_error": 100.0 * wrong / n,
        "test_error": classification_error(small, data.x_test, data.y_test),
        **extra_test_errors(small, data),
        **({} if data.x_val is None else {"val_error": classification_error(small, data.x_val, data.y_val)}),
        "units": [int(u) for u in cost["units"]],
        "nonzero_weights": sum(nz for _, nz in cost["layers"]),
        "train_seconds": train_seconds,
        "epoch_seconds": time.perf_counter() - t0,
    }


def example_input(model) -> torch.Tensor:
    """The model's example batch (:func:`pyro_sparse.sparsify`), or two zero inputs on its device."""
    x = getattr(model, "example_input", None)
    if x is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = torch.zeros(2, *model.input_shape, device=device)
    return x


def _check_finite(first_bad: torch.Tensor, bad_loss: torch.Tensor, epoch: int, run_dir: Path | None,
                  last_good: int) -> None:
    """Read the divergence trackers (one host read); raise if a step of this epoch had a non-finite loss."""
    step = int(first_bad)
    if step >= 0:
        _diverged(run_dir, last_good, f"at epoch {epoch + 1}, step {step}: the loss is {float(bad_loss)}")


def _diverged(run_dir: Path | None, last_good: int, what: str):
    where = "" if run_dir is None else (
        f"; {run_dir} keeps its checkpoint of epoch {last_good}" if last_good else f"; {run_dir} has no checkpoint yet")
    raise DivergenceError(f"training diverged {what}{where}; lower --lr / --lr-latent and start a new --out")


def finalize(model, guide, data: Dataset, cfg: TrainConfig, run_dir: Path | None, train_seconds: float,
             meta: dict | None = None, last: dict | None = None) -> dict:
    """Compact, measure (one metrics function) and write ``metrics.json`` + the compact network to ``run_dir``.

    ``last``: the last epoch's log record (its ``nll``, ``kl`` and ``train_error`` go into ``metrics.json``).
    """
    small = compact(model, guide)
    digest = config_digest(run_dir) if run_dir is not None else None
    if digest is not None:  # evaluate checks that the compact network is this run's
        small.pyro_sparse_compact["config_sha256"] = digest
    full = full_network(model)
    metrics = {**(meta or {}), "epochs": cfg.epochs, "seed": cfg.seed}
    if data.x_val is not None:
        metrics["val_error"] = classification_error(small, data.x_val, data.y_val)
        metrics["val_size"] = int(data.x_val.shape[0])
    # the latency measurement (CPU, batch 1 and 1000) comes last inside summarize: it moves both networks to the CPU
    metrics.update(summarize(small, full, example_input(model), data.x_test, data.y_test,
                             latency_batches=(1, 1000) if cfg.measure_latency else ()))
    metrics.update(extra_test_errors(small, data))
    metrics["train_seconds"] = train_seconds
    metrics["seconds_per_epoch"] = train_seconds / max(1, cfg.epochs)
    if last:
        metrics.update({k: last[k] for k in ("nll", "kl", "train_error") if k in last})
    if run_dir is not None:
        save_compact(small, run_dir)
        atomic_write_json(metrics, run_dir / METRICS)
    return metrics
