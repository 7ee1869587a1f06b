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
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pyro_sparse.model import Classifier

from ..compact import check_guide, compact, full_network, save_compact
from ..data import Dataset, augment
from ..devices import resolve_device
from ..errors import CheckpointError, DivergenceError, InvalidInputError
from ..metrics import classification_error, extra_test_errors, summarize
from ..nn import set_train_clip
from ..poutine import kl_scale, resolve_kl_scale
from ..runfiles import CHECKPOINT, LOG, METRICS, RunLock, atomic_write_json, config_digest, load_checkpoint
from ..runfiles import recover as recover_run_dir
from ..settings import flush_denormals, module_local_params, prepare_module_local, training_switches
from ..sparsify import SparseModel
from . import distributed
from .callbacks import Callback, CompactMetrics, EpochEnd, ProgressLine, RunFiles, _Call, example_input
from .config import EngineSettings, Hyperparameters, TrainConfig
from .elbo import SparseELBO
from .step import Objective, SVIStep, make_optimizer

__all__ = ["CHECKPOINT", "LOG", "METRICS", "CheckpointError", "EngineSettings", "Hyperparameters", "Objective",
           "TrainConfig", "example_input", "fit", "load_checkpoint", "make_optimizer"]


@contextlib.contextmanager
def _training_switches(model, guide, cfg: TrainConfig):
    """For the training loop only: bf16 autocast of the network's forward and no global guide draws that the model
    would throw away — switches the model and guide read (:func:`pyro_sparse.settings.training_switches`), not
    attributes set on them —, subnormal floats flushed to zero on the CPU (restored on exit), and ``torch.compile`` of
    the network (the one switch that lives on the module: torch keeps the compiled forward there; undone on exit)."""
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
        with switches, flush_denormals() if cfg.flush_denormal else contextlib.nullcontext():
            yield
    finally:
        if compiled:
            model.net._compiled_call_impl = None  # back to eager: compact() and evaluation deep-copy the net


@module_local_params()
def fit(model, guide, data: Dataset, cfg: TrainConfig | Hyperparameters, run_dir: str | os.PathLike | None = None,
        resume: bool = False, progress: bool = True, meta: dict | None = None, callback=None, *,
        callbacks: Sequence[Callback] = (), engine: EngineSettings | None = None) -> dict:
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
    :param cfg: a :class:`TrainConfig` (hyperparameters and engine settings in one), or the method's
        :class:`Hyperparameters` with the ``engine`` settings apart (default: the CPU).
    :param meta: extra entries for ``metrics.json`` (method, arch, dataset…).
    :param callback: called as ``callback(record)`` after each epoch's checkpoint (e.g. early stopping by raising).
    :param callbacks: :class:`~pyro_sparse.infer.callbacks.Callback` objects, each ``on_epoch_end(state)`` after the
        built-in ones (compact-network metrics, progress line, log line and checkpoint) and before ``callback``.
    :raises CheckpointError: the checkpoint is corrupted or does not fit the model.
    :raises InvalidInputError: an invalid ``cfg``, or a ``cfg.kl_scale`` layer without latent sites (ValueErrors).
    :raises RunLockedError: another process is writing ``run_dir``.
    :raises DivergenceError: a non-finite loss (named by epoch and step) or parameter; ``run_dir`` keeps the
        checkpoint of the last finished epoch.

    Runs with module-local parameters (:func:`pyro_sparse.module_local_params`): Pyro's global param store is not
    touched, and the caller's ``pyro.settings`` are restored on return or exception.
    """
    cfg = _config(cfg, engine)
    _check_fit_args(model, guide, data, cfg, run_dir, resume, meta, callback, callbacks)
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
        metrics = _fit(model, guide, data, cfg, run_dir, resume, progress and world.main, meta,
                       [*callbacks, *([_Call(callback)] if callback is not None else [])], world)
    # after success only: tearing the group down while another rank is inside a collective would hang it (after an
    # exception the process ends and torchrun stops the others)
    distributed.leave(world)
    return metrics


def _config(cfg, engine) -> TrainConfig:
    """``fit``'s ``cfg`` and ``engine`` as one :class:`TrainConfig`.

    :raises InvalidInputError: neither form, or engine settings given twice."""
    if isinstance(cfg, TrainConfig):
        if engine is not None:
            raise InvalidInputError("fit got engine settings twice: a TrainConfig holds them; pass "
                                    "cfg=Hyperparameters(...) with engine=EngineSettings(...), or a TrainConfig alone")
        return cfg
    if isinstance(cfg, Hyperparameters):
        if engine is not None and not isinstance(engine, EngineSettings):
            raise InvalidInputError(f"fit expects engine=EngineSettings(...) or None, got a {type(engine).__name__}")
        return TrainConfig.combine(cfg, engine)
    raise InvalidInputError(f"fit expects cfg=TrainConfig(...) or Hyperparameters(...), got a {type(cfg).__name__}")


def _check_fit_args(model, guide, data, cfg, run_dir, resume, meta, callback, callbacks) -> None:
    """Every argument of :func:`fit` by type, and the config against the model, before anything runs.

    :raises InvalidInputError: one line naming the argument and what was expected."""
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
    bad = [type(c).__name__ for c in (callbacks if isinstance(callbacks, Sequence) else [callbacks])
           if not callable(getattr(c, "on_epoch_end", None))]
    if bad or not isinstance(callbacks, Sequence):
        raise InvalidInputError(f"callbacks must be a list of objects with on_epoch_end(state) (pyro_sparse.infer."
                                f"callbacks.Callback), got {', '.join(bad) or type(callbacks).__name__}")


def _shape(t) -> str:
    return f"{t.dtype} {list(t.shape)}" if torch.is_tensor(t) else type(t).__name__


def _fit(model, guide, data: Dataset, cfg: TrainConfig, run_dir: Path | None, resume: bool, progress: bool,
         meta: dict | None, callbacks: list[Callback], world: distributed.World) -> dict:
    device, opt, sched, elbo, step = _setup(model, guide, data, cfg, world)
    writes = run_dir if world.main else None  # rank 0 alone writes the run directory
    # the checkpoints and the compact network name the config.json they were written under
    files = [RunFiles(writes, config_digest(writes))] if writes is not None else []
    callbacks = [CompactMetrics(), *([ProgressLine()] if progress else []), *files, *callbacks]
    start, train_seconds, record = _resume(model, guide, opt, sched, run_dir, resume, world)
    last_good = start
    x, y = data.x_train.to(device), data.y_train.to(device)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loss, nll, wrong, steps = _train_epoch(model, guide, sched, elbo, step, x, y, epoch, cfg, progress, run_dir,
                                               last_good, world)
        train_seconds += time.perf_counter() - t0
        last_good = epoch + 1
        if not world.main:  # compaction, metrics and files are rank 0's
            continue
        record = {"epoch": epoch + 1, "loss": loss / steps, "nll": nll / steps, "kl": float(elbo.kl),
                  "kl_weight": elbo.kl_weight, "lr": opt.param_groups[0]["lr"],
                  "train_error": 100.0 * wrong / x.shape[0]}
        state = EpochEnd(epoch, record, model, guide, opt, sched, cfg, data, train_seconds, t0)
        for callback in callbacks:
            callback.on_epoch_end(state)
    distributed.barrier(world)  # the other ranks wait for rank 0's last checkpoint
    metrics = finalize(model, guide, data, cfg, writes, train_seconds, meta, record) if world.main else None
    return distributed.broadcast(metrics, world)


def _setup(model, guide, data: Dataset, cfg: TrainConfig, world: distributed.World):
    """``(device, optimizer, scheduler, elbo, step)``: the parameter mode, the KL scale, the device, DDP and the
    research step (:class:`~pyro_sparse.infer.step.SVIStep`)."""
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
    return device, opt, sched, elbo, SVIStep(objective, opt)


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


def _train_epoch(model, guide, sched, elbo, step, x, y, epoch: int, cfg: TrainConfig, progress: bool,
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
        result = step(xb, yb, weight)
        steps += 1
        value = result.loss.double()
        newly = (first_bad < 0) & ~torch.isfinite(value)
        first_bad = torch.where(newly, steps, first_bad)
        bad_loss = torch.where(newly, value, bad_loss)
        tot_loss += value / n
        tot_nll += result.nll.double() / n
        wrong += (result.logits.argmax(-1) != yb).sum()
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
