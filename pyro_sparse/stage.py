"""One training stage from its options: :func:`train_stage`, the library function behind ``pyro-sparse train`` and
``pyro-sparse reproduce`` (the command line only parses ``argv`` into these options and reports errors).

A stage trains one model — ``dense`` or a sparsifying method — on one data set and writes ``RUN_DIR``
(``config.json``, ``checkpoint.pt`` per epoch, ``log.jsonl``, ``metrics.json``, the compact network). It continues
an interrupted run (``resume=True``: the recorded options, an option given with another value is refused), starts from
a finished run (``init_from``: a dense run, a run of the same method, or BB for DBB, whose π guide is then frozen),
and records the command that reproduces it.

Options (the names of ``pyro-sparse train``'s flags with ``_`` for ``-``; :data:`STAGE_DEFAULTS` has every one and
its default): ``method``, ``arch``, ``dataset`` and ``out`` are required. ``arch_option`` (``["k=0.25"]``) passes
architecture options to :func:`pyro_sparse.models.nets.build`; ``include`` / ``exclude`` (lists of layer-name globs)
go to :func:`pyro_sparse.sparsify`'s selectors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from torch import nn

from .errors import CompactMismatchError, InvalidInputError, PyroSparseError, RunDirError

DEFAULT_EPOCHS = {"digits": 100, "noise-digits": 100, "mnist": 200, "fashion-mnist": 200, "cifar10": 200}
DEFAULT_LR = {"digits": 1e-2, "noise-digits": 1e-2, "mnist": 1e-3, "fashion-mnist": 1e-3, "cifar10": 1e-3}

#: every option of a stage and its default (``None``: the method's or data set's default); the CLI's flags read these
STAGE_DEFAULTS: dict[str, object] = {
    "method": None, "arch": None, "dataset": None, "out": None, "data_root": None, "epochs": None, "batch_size": 100,
    "lr": None, "lr_latent": None, "weight_decay": None, "lr_schedule": None, "warmup": None,
    "weight_threshold": None, "train_clip": False, "train_clip_from": None, "kl_scale": None,
    "unit_threshold": None, "temperature": None, "noise": None, "seed": 0, "subset": None, "val_size": None,
    "init_from": None, "resume": False, "trust_code": False, "device": "cpu", "devices": 1, "augment": None,
    "bf16": False, "compile": False, "channels_last": False, "no_latency": False, "quiet": False, "progress_every": 20,
    "keep_denormals": False, "arch_option": None,
    "include": None, "exclude": None,
}
REQUIRED = ("method", "arch", "dataset", "out")

#: options that may differ on ``resume`` (where outputs go and how they are shown, not what is computed)
#: (``devices``: a resume on another number of processes continues the run, but its noise differs from an
#: uninterrupted run's)
RESUME_FREE = ("resume", "out", "quiet", "device", "data_root", "no_latency", "progress_every", "devices", "compile",
               "channels_last", "keep_denormals", "trust_code")


class _Options(dict):
    """The options of a stage, read as attributes (``a.method``)."""

    __getattr__ = dict.__getitem__


def _fail(message: str):
    raise InvalidInputError(message)


def stage_options(options: Mapping[str, object]) -> _Options:
    """``options`` completed with :data:`STAGE_DEFAULTS`.

    :raises InvalidInputError: an unknown option (naming the valid ones) or a required one missing."""
    unknown = sorted(set(options) - set(STAGE_DEFAULTS))
    if unknown:
        _fail(f"unknown stage option(s) {', '.join(unknown)}; valid: {', '.join(STAGE_DEFAULTS)}")
    missing = [k for k in REQUIRED if options.get(k) is None]
    if missing:
        _fail(f"a training stage needs {', '.join(missing)}")
    return _Options({**STAGE_DEFAULTS, **options})


def parse_kl_scale(items: list[str] | None) -> dict[str, float]:
    """``["conv1=40", "conv2=16"]`` → ``{"conv1": 40.0, "conv2": 16.0}``.

    :raises InvalidInputError: a malformed item or a repeated layer."""
    out: dict[str, float] = {}
    for item in items or []:
        layer, sep, value = item.partition("=")
        try:
            s = float(value)
        except ValueError:
            s = float("nan")
        if not sep or not layer or not s > 0 or s == float("inf"):
            _fail(f"--kl-scale expects LAYER=S with S a positive number (e.g. conv1=40), got {item!r}")
        if layer in out:
            _fail(f"--kl-scale gives layer {layer!r} twice; expected each layer once")
        out[layer] = s
    return out


def parse_arch_options(items: list[str] | None) -> dict[str, object]:
    """``["k=0.25", "dropout=conv"]`` → ``{"k": 0.25, "dropout": "conv"}`` (numbers as numbers, the rest as text).

    :raises InvalidInputError: a malformed item or a repeated key (the values are checked by the architecture)."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier() or not text:
            _fail(f"--arch-option expects KEY=VALUE (e.g. k=0.25), got {item!r}")
        if key in out:
            _fail(f"--arch-option gives {key!r} twice; expected each option once")
        try:
            value: object = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                value = text
        out[key] = value
    return out


def train_config(a: Mapping, epochs: int):
    """The engine's :class:`pyro_sparse.infer.TrainConfig` of stage options ``a`` (method defaults filled in)."""
    from .infer import TrainConfig
    from .sparsify import training_defaults

    d = training_defaults(a["method"])  # the method object's (pyro_sparse.Method.training)
    if a["warmup"] is not None:
        warmup = tuple(a["warmup"])
    elif d.get("kl_warmup") and a["dataset"] in ("mnist", "fashion-mnist"):  # deep nets from scratch; not on digits
        warmup = (5, 20) if epochs >= 40 else (epochs // 8, epochs // 2)
    else:
        warmup = (0, 0)

    def given(value, default):
        return default if value is None else value

    return TrainConfig(
        epochs=epochs, batch_size=a["batch_size"], lr=given(a["lr"], DEFAULT_LR[a["dataset"]]),
        lr_latent=given(a["lr_latent"], d.get("lr_latent")),
        weight_decay=given(a["weight_decay"], d.get("weight_decay", 0.0)),
        lr_schedule=a["lr_schedule"] or d.get("lr_schedule", "linear"), warmup_start=warmup[0], warmup_end=warmup[1],
        seed=a["seed"], device=a["device"], weight_threshold=a["weight_threshold"],
        unit_threshold=a["unit_threshold"], measure_latency=not a["no_latency"],
        train_clip_from=0 if a["train_clip"] else a["train_clip_from"], kl_scale=parse_kl_scale(a["kl_scale"]),
        progress_every=a["progress_every"], augment=a["augment"], bf16=bool(a["bf16"]), compile=bool(a["compile"]),
        channels_last=bool(a["channels_last"]), flush_denormal=not a["keep_denormals"],
    )


def _recorded(a: _Options, saved: dict, given: Collection[str]) -> _Options:
    """``resume``: the recorded options of the run, with only :data:`RESUME_FREE` options taken from ``a``.

    :raises InvalidInputError: an option given with another value than recorded.
    """
    recorded = saved["args"]
    for dest in sorted(set(given) - set(RESUME_FREE)):
        now, was = a.get(dest), recorded.get(dest)
        if dest == "kl_scale":
            now, was = parse_kl_scale(now), parse_kl_scale(was)
        elif isinstance(now, tuple):
            now = list(now)
        if now != was:
            flag = "--" + dest.replace("_", "-")
            shown = was if was is not None else saved["config"].get(dest)  # None: the method's default
            shown = "default" if shown is None else repr(shown)
            _fail(f"--resume: {flag} {now!r} contradicts the recorded {shown} of the run in {a.out}; drop {flag} "
                  "to continue the recorded run, or start a new --out")
    # options added after the run was recorded keep their values from the caller (defaults or given)
    return _Options({**a, **{k: v for k, v in recorded.items() if k in STAGE_DEFAULTS},
                     **{k: a[k] for k in RESUME_FREE}})


def check_options(a: Mapping) -> None:
    """Everything checkable from the options alone, before any file is read or written.

    :raises InvalidInputError: one line naming the option and what was expected."""
    from .models import method_names
    from .sparsify import METHODS

    if a["method"] not in method_names():
        _fail(f"unknown method {a['method']!r}; expected one of {', '.join(method_names())}")
    weight_methods = _and([m for m, spec in METHODS.items() if spec.kind == "weights"])
    unit_methods = _and([m for m, spec in METHODS.items() if spec.kind == "units"])
    kind = METHODS[a["method"]].kind if a["method"] in METHODS else "dense"
    for name in ("temperature",):
        v = a[name]
        if v is not None and not v > 0:
            _fail(f"--{name} must be > 0, got {v}")
    for name in ("subset", "val_size"):
        v = a[name]
        if v is not None and v <= 0:
            _fail(f"--{name.replace('_', '-')} must be a positive number of examples, got {v}")
    if a["warmup"] is not None and (a["warmup"][0] < 0 or a["warmup"][1] < a["warmup"][0]):
        _fail(f"--warmup START END expects 0 <= START <= END, got {a['warmup'][0]} {a['warmup'][1]}")
    method = a["method"]
    for flag, value in (("--train-clip", a["train_clip"]), ("--train-clip-from", a["train_clip_from"] is not None)):
        if value and kind != "weights":
            _fail(f"{flag} applies to --method {weight_methods} only, got --method {method}")
    if a["train_clip"] and a["train_clip_from"] is not None:
        _fail("--train-clip and --train-clip-from exclude each other (--train-clip clips from the first epoch)")
    if a["weight_threshold"] is not None and kind != "weights":
        _fail(f"--weight-threshold applies to --method {weight_methods} only, got --method {method} (units: "
              "--unit-threshold)")
    if a["unit_threshold"] is not None and kind != "units":
        _fail(f"--unit-threshold applies to --method {unit_methods} only, got --method {method}")
    if a["noise"] is not None and kind != "units":
        _fail(f"--noise applies to --method {unit_methods} only, got --method {method}")
    if a["temperature"] is not None and method not in ("bb", "dbb"):
        _fail(f"--temperature applies to --method bb and dbb only, got --method {method}")
    for name in ("include", "exclude"):
        v = a[name]
        if v is not None and (method == "dense" or not isinstance(v, (list, tuple)) or not v
                              or not all(isinstance(s, str) and s for s in v)):
            _fail(f"--{name} expects layer-name globs (e.g. 'fc*') for a sparsifying method, got {v!r} with "
                  f"--method {method}")
    if a["arch_option"] is not None and ":" in str(a["arch"]):
        _fail(f"--arch-option sets options of our architectures; {a['arch']} is built by your factory")
    parse_arch_options(a["arch_option"])
    if a["init_from"] is not None and Path(a["init_from"]).resolve() == Path(a["out"]).resolve():
        _fail("--init-from names the --out directory itself; expected another, finished run")
    if a["augment"] is not None and a["dataset"] in ("digits", "noise-digits"):
        _fail(f"--augment {a['augment']} needs image data [N, C, H, W]; --dataset {a['dataset']} has flat inputs")
    from .devices import resolve_device

    resolve_device(a["device"], "--device")
    _check_devices(a)


def _and(names: list[str]) -> str:
    """``["sbp", "bb", "dbb"]`` → ``"sbp, bb and dbb"``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _check_devices(a: Mapping) -> None:
    import torch

    from .infer.distributed import launched_size

    n = a["devices"]
    if n is None or n < 1:
        _fail(f"--devices must be a positive number of processes, got {n}")
    world = launched_size()
    if world > 1 and n > 1 and n != world:
        _fail(f"--devices {n} contradicts the {world} processes torchrun started; drop --devices or make them equal")
    if n > 1 and a["batch_size"] < n:
        _fail(f"--batch-size {a['batch_size']} is the global batch and must be at least --devices {n}")
    if n > 1 and torch.device(a["device"]).type == "cuda" and torch.cuda.device_count() < n:
        _fail(f"--devices {n} needs {n} CUDA devices, torch sees {torch.cuda.device_count()}")


def _init_from(a: _Options, model, data) -> dict:
    """Load a compatible run into ``model``; returns its guide ``state_dict``.

    Compatible: the same architecture (and options) and input shape, data with the same statistics, and a source
    stage that the method continues (a dense run; a run of the same method; BB for DBB).

    :raises InvalidInputError: an incompatible or unreadable source, or one from which no weight was loaded.
    """
    from .models import load_pretrained
    from .runfiles import load_checkpoint, read_config
    from .sparsify import METHODS

    src = Path(a.init_from)
    try:
        cfg = read_config(src)
        ckpt = load_checkpoint(src)
    except PyroSparseError as e:
        _fail(f"--init-from: {e}")
    spec = METHODS.get(a.method)
    stages = {"dense", a.method} | set(spec.starts_from if spec else ())
    if cfg["method"] not in stages:
        _fail(f"--init-from {src} is a {cfg['method']} run; --method {a.method} starts from "
              f"{' or '.join(sorted(stages))} runs")
    if cfg["arch"] != a.arch:
        _fail(f"--init-from {src} is a {cfg['arch']} run; expected --arch {a.arch}")
    if (cfg.get("arch_options") or {}) != parse_arch_options(a.arch_option):
        _fail(f"--init-from {src} has the architecture options {cfg.get('arch_options') or {}}; this run's are "
              f"{parse_arch_options(a.arch_option)}")
    shape = list(data.input_shape)
    if cfg.get("input_shape") != shape:
        _fail(f"--init-from {src} was trained on inputs {cfg.get('input_shape')}; this run's are {shape}")
    if cfg["dataset"] != a.dataset:
        _fail(f"--init-from {src} was trained on {cfg['dataset']}; expected --dataset {a.dataset}")
    mean, std = cfg.get("data_mean"), cfg.get("data_std")
    if mean is None or std is None or abs(mean - data.mean) > 0.05 * data.std or abs(std / data.std - 1) > 0.05:
        _fail(f"--init-from {src} was trained on data with mean {mean} and std {std}; this run's data have "
              f"{data.mean:.4f} and {data.std:.4f} (another --subset or data copy?)")
    try:
        used = load_pretrained(model, ckpt["model"])
    except ValueError as e:
        _fail(f"--init-from: {e}")
    params = {name for name, _ in model.named_parameters()}
    weights = [k for k in used if k in params or k.endswith(".weight")]
    if not weights:
        _fail(f"--init-from {src}: no weight of that run fits --arch {a.arch} --method {a.method}")
    print(f"pyro-sparse: --init-from {src}: loaded {len(used)} tensors of its {cfg['method']} run "
          f"({len(weights)} weights and biases)", file=sys.stderr)
    return ckpt["guide"]


def command_line(a: Mapping) -> str:
    """The ``pyro-sparse train`` command that reproduces a stage (every option spelled out)."""
    parts = ["pyro-sparse train"]
    for key, value in a.items():
        if key in ("command", "resume", "quiet") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {' '.join(map(str, value))}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def train_stage(options: Mapping[str, object], *, given: Collection[str] | None = None,
                factory: Callable[[], nn.Module] | None = None, method=None) -> dict | None:
    """Train one stage and write its run directory; returns the run's ``metrics.json`` content.

    :param options: the stage's options (:data:`STAGE_DEFAULTS`; ``method``, ``arch``, ``dataset``, ``out``
        required). With ``resume=True`` the run in ``out`` continues with its recorded options.
    :param given: which options the caller set on purpose (default: the keys of ``options``); with ``resume``,
        those that differ from the recorded run are refused.
    :param factory: builds the user's network when ``arch`` is ``package.module:factory`` (the CLI imports it from
        ``--arch``; on ``resume`` without it only ``trust_code`` imports the recorded name).
    :param method: the :class:`pyro_sparse.Method` when ``options["method"]`` is ``package.module:Name`` (a method
        defined outside the package; the CLI imports it from ``--method``); registered if it is not. On ``resume``
        without it only ``trust_code`` imports the recorded name. ``config.json`` records the name as
        ``method_source`` beside the method's own name.
    :returns: the metrics (``None`` on a data-parallel worker other than rank 0, which writes nothing).
    :raises InvalidInputError, RunDirError, DataError, UntrustedCodeError: bad options, a run directory that does
        not fit (already holds another run, finished, or is a file), data that cannot be read; nothing already in
        ``out`` is lost. ``KeyboardInterrupt`` leaves every finished epoch in ``out`` (continue with ``resume``).
    :raises CompactMismatchError: an epoch's compaction (its metrics) failed its self-check; every epoch before it is
        kept in ``out``, as on an interrupt.
    """
    from .infer import fit
    from .runfiles import RunLock

    a, method_source = _open_run(stage_options(options), set(options) if given is None else set(given), method)
    out = Path(a.out)
    epochs = a.epochs if a.epochs is not None else DEFAULT_EPOCHS[a.dataset]
    check_options(a)
    cfg = train_config(a, epochs)
    cfg.validate(flag_prefix="--")
    data = _stage_data(a)
    model, guide, net_kwargs = _stage_model(a, data, cfg, factory)
    if not _main_rank():  # fit() reads the checkpoint on resume, writes nothing, returns rank 0's metrics
        fit(model, guide, data, cfg, out, resume=a.resume, progress=False, meta={})
        return None
    with RunLock(out) as lock:  # one writer from here on
        if lock.stale_pid is not None:
            print(f"pyro-sparse: note: {out} had a stale lock of process {lock.stale_pid}, which is not running; "
                  "taken over", file=sys.stderr)
        if not a.resume:
            _write_config(a, method_source, epochs, cfg, data, net_kwargs,
                          [name for name, p in guide.named_parameters() if not p.requires_grad])
        try:
            return fit(model, guide, data, cfg, out, resume=a.resume, progress=not a.quiet,
                       meta={"method": a.method, "arch": a.arch, "dataset": a.dataset, "init_from": a.init_from})
        except KeyboardInterrupt:
            print(f"pyro-sparse: interrupted; {out} keeps every finished epoch; continue with --resume",
                  file=sys.stderr)
            raise
        except CompactMismatchError:  # the per-epoch compaction's self-check: the epochs before it are kept
            print(f"pyro-sparse: note: an epoch's compaction failed its self-check; {out} keeps every finished epoch "
                  "(continue with --resume once the cause is fixed)", file=sys.stderr)
            raise


def _main_rank() -> bool:
    """Rank 0 checks and writes the run directory; the other data-parallel ranks only read it."""
    return int(os.environ.get("RANK", "0")) == 0


def _open_run(a: _Options, given: set[str], method) -> tuple[_Options, str | None]:
    """Check ``out`` for a new run or a resume (then the recorded options), and resolve a user's method; returns the
    options with the method's registered name and its ``package.module:Name`` source (or ``None``)."""
    from .runfiles import CONFIG, METRICS, is_fresh, read_config
    from .trust import recorded_method

    main_rank = _main_rank()
    out = Path(a.out)
    if main_rank and out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; expected a run directory (a new or existing folder)")
    if a.resume:
        if main_rank and not (out / CONFIG).is_file():
            raise RunDirError(f"--resume: {out} holds no run (config.json missing); start it without --resume")
        a = _recorded(a, read_config(out), given)
        if main_rank and (out / METRICS).is_file():
            raise RunDirError(f"--resume: the run in {out} has already finished (metrics.json exists)")
    elif main_rank and not is_fresh(out):
        raise RunDirError(f"{out} already holds files; choose a new --out or pass --resume to continue that run")
    method_source = a.method if ":" in str(a.method) else None
    if method_source:  # a method defined outside the package: the caller's object, or trust_code on resume
        a = _Options({**a, "method": recorded_method(method_source, str(out / CONFIG), method, a.trust_code).name})
    elif method is not None:
        _fail("method= is the object of a --method package.module:Name; this stage names a registered method")
    return a, method_source


def _stage_data(a: _Options):
    """The stage's data set: ``subset`` first, then the validation split."""
    from .data import load_dataset, resolve_root, split_validation, subset

    data = load_dataset(a.dataset, resolve_root(a.dataset, a.data_root))
    if a.subset is not None:  # quick runs: the first N training examples (the test set stays whole)
        data = subset(data, a.subset)
    if a.val_size is not None:
        try:
            data = split_validation(data, a.val_size)
        except ValueError as e:
            _fail(f"--val-size: {e}")
    return data


def _stage_model(a: _Options, data, cfg, factory):
    """``(model, guide, net_kwargs)``: the seeded model, its guide, the run it continues (``init_from``, with the
    method's freezing rule) and the checked KL scale."""
    import pyro

    from .continuation import load_source_guide
    from .guides import MeanFieldGuide
    from .models import build_model
    from .poutine import resolve_kl_scale
    from .runfiles import CONFIG, read_config
    from .sparsify import METHODS
    from .trust import recorded_network

    # a user's architecture: built by the caller's factory; on resume (name read from config.json) without one only
    # with trust_code
    builder = None
    if ":" in a.arch:
        builder = recorded_network({"name": a.arch, "kwargs": {}}, str(Path(a.out) / CONFIG), factory, a.trust_code)
    pyro.set_rng_seed(a.seed)  # the initial weights depend on the seed too
    net_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k in ("temperature", "noise", "include", "exclude")
                  if (v := a[k]) is not None}
    try:
        model = build_model(a.arch, a.method, data.input_shape, data.num_classes, data.x_train.shape[0],
                            data.mean, data.std, factory=builder, arch_options=parse_arch_options(a.arch_option),
                            **net_kwargs)
    except ValueError as e:
        _fail(f"{e} (dataset {a.dataset})")
    recorded = _recorded_freeze(a)
    init_guide = _init_from(a, model, data) if a.init_from and recorded is None else {}
    guide = MeanFieldGuide(model)
    if recorded is not None:  # a resume: the checkpoint holds the state; only the source's freezing is re-applied
        params = dict(guide.named_parameters())
        unknown = sorted(set(recorded) - set(params))
        if unknown:
            _fail(f"--resume: {Path(a.out) / CONFIG} freezes guide parameters {', '.join(unknown)} that this "
                  f"{a.method} model has not; the file is damaged or was edited")
        for name in recorded:
            params[name].requires_grad_(False)
    if init_guide:  # e.g. DBB from BB: the BB guide of π is loaded and, for DBB, frozen (two-stage training)
        spec = METHODS.get(a.method)
        load_source_guide(guide, init_guide, freeze=bool(
            spec and spec.freezes_source and read_config(a.init_from)["method"] in spec.starts_from))
    try:
        resolve_kl_scale(guide.site_names, cfg.kl_scale)
    except ValueError as e:
        _fail(f"--kl-scale: {e}")
    return model, guide, net_kwargs


def _recorded_freeze(a: _Options) -> list[str] | None:
    """On a resume whose checkpoint exists: the guide parameters the run froze at its start (``config.json``'s
    ``frozen``, e.g. DBB's π from its BB run), so the source run (``init_from``) need not exist any more; ``None``
    when the source must be read (a new run, no checkpoint yet, or a config from before the key)."""
    from .runfiles import CHECKPOINT, CONFIG, read_config

    if not (a.resume and a.init_from and (Path(a.out) / CHECKPOINT).is_file()):
        return None
    frozen = read_config(a.out).get("frozen")
    if frozen is None:
        return None
    if not isinstance(frozen, list) or not all(isinstance(n, str) for n in frozen):
        _fail(f"--resume: {Path(a.out) / CONFIG}: entry 'frozen' is not a list of names; the file is damaged")
    return frozen


def _write_config(a: _Options, method_source: str | None, epochs: int, cfg, data, net_kwargs: dict,
                  frozen: list[str]) -> None:
    """``config.json`` of a new run (under the run's lock): everything that rebuilds and reproduces it."""
    from .data import resolve_root
    from .runfiles import CONFIG, CONFIG_FORMAT, atomic_write_json, is_fresh

    out = Path(a.out)
    if not is_fresh(out):  # another process started it meanwhile
        raise RunDirError(f"{out} already holds files; choose a new --out or pass --resume")
    for tmp in out.glob("*.tmp"):  # leftovers of a process killed before its config.json
        tmp.unlink()
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in a.items()}
    if method_source:
        args["method"] = method_source
    record = {
        "format": CONFIG_FORMAT, "method": a.method, "arch": a.arch, "dataset": a.dataset, "seed": a.seed,
        "epochs": epochs, "subset": a.subset, "val_size": a.val_size,
        "train_clip_from": cfg.train_clip_from, "kl_scale": cfg.kl_scale or None,
        "command": command_line({**a, "method": method_source or a.method}), "init_from": a.init_from,
        "data_root": resolve_root(a.dataset, a.data_root),
        "input_shape": list(data.input_shape), "data_mean": data.mean, "data_std": data.std,
        "config": vars(cfg), "net_kwargs": net_kwargs, "args": args, "commit": _commit(),
    }
    arch_options = parse_arch_options(a.arch_option)
    if arch_options:
        record["arch_options"] = arch_options
    if method_source:
        record["method_source"] = method_source
    if a.init_from:  # what the source run's freezing rule froze: a resume re-applies it without the source
        record["frozen"] = frozen
    atomic_write_json(record, out / CONFIG)


def _commit() -> str | None:
    """The git commit of the pyro-sparse checkout this runs from, ``+changes`` when tracked files differ from it
    (``None`` outside a git checkout, e.g. an installed wheel): each row of a table records the code it ran on."""
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                           text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = r.stdout.strip()
    if r.returncode or len(text) != 40:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent, timeout=10, check=False).stdout.strip()
    return text + ("+changes" if dirty else "")

