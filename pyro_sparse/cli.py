"""The ``pyro-sparse`` command: ``train``, ``evaluate``, ``report``, ``reproduce`` (``pyro-sparse --help``).

The error contract, in one place (:func:`main`): bad input of any kind (options, files of a run directory, data)
exits with status 2 and one line on stderr naming what is wrong and what was expected; nothing already in RUN_DIR is
lost or changed. ``--debug`` or ``PYRO_SPARSE_DEBUG=1`` shows the traceback instead. Anything else (a bug) prints one
line and exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .errors import InvalidInputError, PyroSparseError, RunDirError, one_line

METHOD_DEFAULTS = {
    # METHODS.md schedules: SVD from scratch with KL warm-up; SBP / BB fine-tune with a larger lr on noise/gates
    "dense": {"lr_schedule": "linear"},
    "svd": {"lr_schedule": "linear", "warmup": True},
    "sbp": {"lr_schedule": "linear", "lr_latent": 1e-2},
    "bb": {"lr_schedule": "step", "lr_latent": 1e-2, "weight_decay": 1e-4},
    "dbb": {"lr_schedule": "step", "lr_latent": 1e-2, "weight_decay": 1e-4},
}
DEFAULT_EPOCHS = {"digits": 100, "noise-digits": 100, "mnist": 200, "fashion-mnist": 200, "cifar10": 200}
DEFAULT_LR = {"digits": 1e-2, "noise-digits": 1e-2, "mnist": 1e-3, "fashion-mnist": 1e-3, "cifar10": 1e-3}


#: train options that may differ on ``--resume`` (where outputs go and how they are shown, not what is computed)
#: (``--devices``: a resume on another number of processes continues the run, but its noise differs from an
#: uninterrupted run's)
RESUME_FREE = ("resume", "out", "quiet", "device", "data_root", "no_latency", "progress_every", "devices", "compile",
               "trust_code")
EPILOG = """environment:
  PYRO_SPARSE_DATA   folder holding MNIST/ and FashionMNIST/ (torchvision layout) when --data-root is not given
                     (default ./data); the folder used is recorded in RUN_DIR/config.json
  PYRO_SPARSE_DEBUG  1: show Python tracebacks instead of one-line errors (as --debug)"""


TRUST_HELP = ("import and call the package.module:factory that the run's files name (only for files you trust; "
              "without it, pass the same --arch)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"pyro-sparse: error: {message}\n")


def _fail(message: str):
    """Refuse bad input: :func:`main` prints the one line and exits 2."""
    raise InvalidInputError(message)


def _finite(text: str) -> float:
    """argparse type: a finite float."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _arch(text: str) -> str:
    """argparse type: a network of ``pyro_sparse.models.nets`` or ``package.module:factory``."""
    from pyro_sparse.models import ARCHS

    module, sep, attr = text.partition(":")
    if text in ARCHS or (sep and module and attr):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(ARCHS)}, or "
                                     "package.module:factory)")


def build_parser() -> argparse.ArgumentParser:
    from pyro_sparse.models import ARCHS, METHODS

    from .data import DATASETS

    p = _Parser(prog="pyro-sparse", description="Bayesian sparsification of neural networks in Pyro.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    t = sub.add_parser("train", help="train a model (dense or sparsifying) and write RUN_DIR", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--method", required=True, choices=METHODS)
    t.add_argument("--arch", required=True, type=_arch, metavar="ARCH",
                   help=f"{', '.join(ARCHS)}, or package.module:factory (a function returning your own nn.Module)")
    t.add_argument("--dataset", required=True, choices=DATASETS)
    t.add_argument("--data-root", default=None,
                   help="folder holding MNIST/ and FashionMNIST/ (torchvision layout); default $PYRO_SPARSE_DATA")
    t.add_argument("--epochs", type=int, default=None, help="default: 100 for digits, 200 for MNIST")
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--lr", type=_finite, default=None, help="Adam lr of the weights (1e-2 digits, 1e-3 MNIST)")
    t.add_argument("--lr-latent", type=_finite, default=None, help="Adam lr of the guide's parameters")
    t.add_argument("--weight-decay", type=_finite, default=None)
    t.add_argument("--lr-schedule", choices=("constant", "linear", "step"), default=None)
    t.add_argument("--warmup", type=int, nargs=2, metavar=("START", "END"), default=None,
                   help="KL weight 0 before epoch START, 1 from epoch END (SVD on MNIST: 5 20)")
    t.add_argument("--weight-threshold", type=_finite, default=None,
                   help="SVD: prune weights with log alpha >= this (default 3)")
    t.add_argument("--train-clip", action="store_true",
                   help="SVD: weights past --weight-threshold also leave the training-time mean (reference code); "
                   "same as --train-clip-from 0")
    t.add_argument("--train-clip-from", type=int, default=None, metavar="EPOCH",
                   help="SVD: as --train-clip, but only from EPOCH on (0-based, like --warmup; e.g. 180 of 200)")
    t.add_argument("--kl-scale", action="extend", nargs="+", default=None, metavar="LAYER=S",
                   help="multiply the KL of LAYER's latent sites by S > 0 (e.g. --kl-scale conv1=40 conv2=16, as "
                   "the BB authors' LeNet-5 configs do); default: the plain ELBO")
    t.add_argument("--unit-threshold", type=_finite, default=None,
                   help="SBP: prune units with SNR below this (default 1); BB/DBB: E[pi] (default 1e-3)")
    t.add_argument("--temperature", type=_finite, default=None, help="BB/DBB relaxed Bernoulli temperature (0.1)")
    t.add_argument("--noise", choices=("per-example", "per-batch"), default=None,
                   help="SBP/BB/DBB: draw theta / pi per example (default, lower variance) or once per minibatch "
                        "(the authors' code)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--subset", type=int, default=None, help="train on the first N training examples only")
    t.add_argument("--val-size", type=int, default=None, metavar="N",
                   help="hold out N training examples (a fixed random split, the same for every seed) and report "
                        "the validation error per epoch, to choose settings without looking at the test set")
    t.add_argument("--out", required=True, help="RUN_DIR")
    t.add_argument("--init-from", default=None,
                   help="RUN_DIR to start from: a dense run, a run of the same method (continue), or BB for DBB")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out with its recorded options (an option given with "
                   "another value than recorded is refused)")
    t.add_argument("--trust-code", action="store_true", help="--resume: " + TRUST_HELP)
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel on N processes (torchrun's launcher; gloo on cpu, nccl with one GPU each on "
                        "cuda); --batch-size is the global batch. Or start `torchrun --nproc-per-node N -m "
                        "pyro_sparse.cli train ...` yourself")
    t.add_argument("--augment", choices=("crop-flip",), default=None,
                   help="on-device augmentation of image batches: random 4-pixel crops and horizontal flips")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the network's forward pass")
    t.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    t.add_argument("--no-latency", action="store_true", help="skip the latency measurement in metrics.json")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--progress-every", type=int, default=20, metavar="K",
                   help="steps between progress-bar updates (each reads the running totals back from the device)")
    rp = sub.add_parser("reproduce", help="the papers' comparison table for one architecture (all methods)")
    rp.add_argument("--arch", required=True, choices=("lenet300", "lenet500", "lenet5"))
    rp.add_argument("--budget", required=True, choices=("smoke", "cpu", "paper"))
    rp.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    rp.add_argument("--data-root", default=None)
    rp.add_argument("--out", required=True)
    rp.add_argument("--seeds", type=int, default=1)
    rp.add_argument("--no-peer", action="store_true", help="leave out the pytorch-ard peer")
    rp.add_argument("--kl-scale", action="extend", nargs="+", default=None, metavar="LAYER=S",
                    help="per-layer KL scale for the SBP and BB stages (authors' LeNet-5: conv1=40 conv2=16)")
    r = sub.add_parser("report", help="write the diagnostic plots of RUN_DIR to RUN_DIR/report/")
    r.add_argument("run_dir")
    e = sub.add_parser("evaluate", help="re-measure the test error of RUN_DIR's compact network")
    e.add_argument("run_dir")
    e.add_argument("--data-root", default=None)
    e.add_argument("--device", default="cpu")
    for q in (r, e):
        q.add_argument("--arch", type=_arch, default=None, metavar="ARCH",
                       help="package.module:factory of the user's architecture the run records (it is imported)")
        q.add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    return p


def _train_config(a, epochs: int):
    from .infer import TrainConfig

    d = METHOD_DEFAULTS[a.method]
    if a.warmup is not None:
        warmup = tuple(a.warmup)
    elif d.get("warmup") and a.dataset in ("mnist", "fashion-mnist"):  # deep nets from scratch; not logreg on digits
        warmup = (5, 20) if epochs >= 40 else (epochs // 8, epochs // 2)
    else:
        warmup = (0, 0)

    def given(value, default):
        return default if value is None else value

    return TrainConfig(
        epochs=epochs, batch_size=a.batch_size, lr=given(a.lr, DEFAULT_LR[a.dataset]),
        lr_latent=given(a.lr_latent, d.get("lr_latent")),
        weight_decay=given(a.weight_decay, d.get("weight_decay", 0.0)),
        lr_schedule=a.lr_schedule or d["lr_schedule"], warmup_start=warmup[0], warmup_end=warmup[1], seed=a.seed,
        device=a.device, weight_threshold=a.weight_threshold, unit_threshold=a.unit_threshold,
        measure_latency=not a.no_latency, train_clip_from=0 if a.train_clip else a.train_clip_from,
        kl_scale=_parse_kl_scale(a.kl_scale), progress_every=a.progress_every,
        augment=getattr(a, "augment", None), bf16=bool(getattr(a, "bf16", False)),
        compile=bool(getattr(a, "compile", False)),
    )


def _parse_kl_scale(items: list[str] | None) -> dict[str, float]:
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


def _check_device(device: str) -> None:
    from .devices import resolve_device

    resolve_device(device, "--device")


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option of ``parser`` spelled out in ``argv``."""
    out = set()
    for action in parser._actions:
        for flag in action.option_strings:
            if any(arg == flag or arg.startswith(flag + "=") for arg in argv):
                out.add(action.dest)
    return out


def _recorded_args(a, saved: dict, given: set[str]):
    """``--resume``: the recorded options of the run, with only :data:`RESUME_FREE` options taken from ``a``.

    :raises InvalidInputError: an option given on the command line with another value than recorded.
    """
    recorded = saved["args"]
    for dest in sorted(given - set(RESUME_FREE)):
        now, was = getattr(a, dest), recorded.get(dest)
        if dest == "kl_scale":
            now, was = _parse_kl_scale(now), _parse_kl_scale(was)
        elif isinstance(now, tuple):
            now = list(now)
        if now != was:
            flag = "--" + dest.replace("_", "-")
            shown = was if was is not None else saved["config"].get(dest)  # None: the method's default
            shown = "default" if shown is None else repr(shown)
            _fail(f"--resume: {flag} {now!r} contradicts the recorded {shown} of the run in {a.out}; drop {flag} "
                  "to continue the recorded run, or start a new --out")
    # options added after the run was recorded keep their values from the command line (defaults or given)
    merged = {**vars(a), **recorded, **{k: getattr(a, k) for k in RESUME_FREE}}
    return argparse.Namespace(**merged)


def _validate_train_args(a) -> None:
    """Everything checkable from the options alone, before any file is read or written."""
    for name in ("temperature",):
        v = getattr(a, name)
        if v is not None and not v > 0:
            _fail(f"--{name} must be > 0, got {v}")
    for name in ("subset", "val_size"):
        v = getattr(a, name)
        if v is not None and v <= 0:
            _fail(f"--{name.replace('_', '-')} must be a positive number of examples, got {v}")
    if a.warmup is not None and (a.warmup[0] < 0 or a.warmup[1] < a.warmup[0]):
        _fail(f"--warmup START END expects 0 <= START <= END, got {a.warmup[0]} {a.warmup[1]}")
    for flag, value in (("--train-clip", a.train_clip), ("--train-clip-from", a.train_clip_from is not None)):
        if value and a.method != "svd":
            _fail(f"{flag} applies to --method svd only, got --method {a.method}")
    if a.train_clip and a.train_clip_from is not None:
        _fail("--train-clip and --train-clip-from exclude each other (--train-clip clips from the first epoch)")
    if a.weight_threshold is not None and a.method != "svd":
        _fail(f"--weight-threshold applies to --method svd only, got --method {a.method} (units: --unit-threshold)")
    if a.unit_threshold is not None and a.method not in ("sbp", "bb", "dbb"):
        _fail(f"--unit-threshold applies to --method sbp, bb and dbb only, got --method {a.method}")
    if getattr(a, "noise", None) is not None and a.method not in ("sbp", "bb", "dbb"):
        _fail(f"--noise applies to --method sbp, bb and dbb only, got --method {a.method}")
    if a.temperature is not None and a.method not in ("bb", "dbb"):
        _fail(f"--temperature applies to --method bb and dbb only, got --method {a.method}")
    if a.init_from is not None and Path(a.init_from).resolve() == Path(a.out).resolve():
        _fail("--init-from names the --out directory itself; expected another, finished run")
    if getattr(a, "augment", None) is not None and a.dataset in ("digits", "noise-digits"):
        _fail(f"--augment {a.augment} needs image data [N, C, H, W]; --dataset {a.dataset} has flat inputs")
    _check_device(a.device)
    _check_devices(a)


def _check_devices(a) -> None:
    import torch

    from .infer.distributed import launched_size

    n = getattr(a, "devices", 1)
    if n is None or n < 1:
        _fail(f"--devices must be a positive number of processes, got {n}")
    world = launched_size()
    if world > 1 and n > 1 and n != world:
        _fail(f"--devices {n} contradicts the {world} processes torchrun started; drop --devices or make them equal")
    if n > 1 and a.batch_size < n:
        _fail(f"--batch-size {a.batch_size} is the global batch and must be at least --devices {n}")
    if n > 1 and torch.device(a.device).type == "cuda" and torch.cuda.device_count() < n:
        _fail(f"--devices {n} needs {n} CUDA devices, torch sees {torch.cuda.device_count()}")


def _launch(n: int, argv: list[str]) -> int:
    """Run this same ``train`` command on ``n`` processes with torchrun's launcher (standalone, this machine)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={n}", "--module", "pyro_sparse.cli", *argv])
    try:
        run(args)
    except ChildFailedError as e:  # the failing worker has printed its one line already
        first = min(e.failures.items())[1]
        print(f"pyro-sparse: error: process {first.local_rank} of {n} failed with exit status {first.exitcode}",
              file=sys.stderr)
        return first.exitcode if first.exitcode > 0 else 1
    return 0


def _init_from(a, model, data) -> dict:
    """Load a compatible run into ``model``; returns its guide ``state_dict``.

    Compatible: the same architecture and input shape, data with the same statistics, and a source stage that
    the method continues (a dense run; a run of the same method; BB for DBB).

    :raises InvalidInputError: an incompatible or unreadable source, or one from which no weight was loaded.
    """
    from .models import load_pretrained
    from .runfiles import load_checkpoint, read_config

    src = Path(a.init_from)
    try:
        cfg = read_config(src)
        ckpt = load_checkpoint(src)
    except PyroSparseError as e:
        _fail(f"--init-from: {e}")
    stages = {"dense", a.method} | ({"bb"} if a.method == "dbb" else set())
    if cfg["method"] not in stages:
        _fail(f"--init-from {src} is a {cfg['method']} run; --method {a.method} starts from "
              f"{' or '.join(sorted(stages))} runs")
    if cfg["arch"] != a.arch:
        _fail(f"--init-from {src} is a {cfg['arch']} run; expected --arch {a.arch}")
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


def cmd_train(a, argv: list[str], parser: argparse.ArgumentParser) -> int:
    import pyro

    from .data import load_dataset, resolve_root, split_validation, subset
    from .guides import MeanFieldGuide
    from .infer import fit
    from .infer.distributed import launched_size
    from .models import build_model
    from .poutine import resolve_kl_scale
    from .runfiles import CONFIG, CONFIG_FORMAT, METRICS, RunLock, atomic_write_json, is_fresh, read_config
    from .trust import import_factory, recorded_network

    if getattr(a, "devices", 1) > 1 and launched_size() == 1:  # start the processes, each runs this command
        _validate_train_args(a)
        return _launch(a.devices, argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # rank 0 checks and writes RUN_DIR; the others only read it
    out = Path(a.out)
    if main_rank and out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; expected a run directory (a new or existing folder)")
    if a.resume:
        if main_rank and not (out / CONFIG).is_file():
            raise RunDirError(f"--resume: {out} holds no run (config.json missing); start it without --resume")
        a = _recorded_args(a, read_config(out), _given(parser, argv))
        if main_rank and (out / METRICS).is_file():
            raise RunDirError(f"--resume: the run in {out} has already finished (metrics.json exists)")
    elif main_rank and not is_fresh(out):
        raise RunDirError(f"{out} already holds files; choose a new --out or pass --resume to continue that run")
    epochs = a.epochs if a.epochs is not None else DEFAULT_EPOCHS[a.dataset]
    _validate_train_args(a)
    cfg = _train_config(a, epochs)
    cfg.validate(flag_prefix="--")
    data_root = resolve_root(a.dataset, a.data_root)
    data = load_dataset(a.dataset, data_root)
    if a.subset is not None:  # quick runs: the first N training examples (the test set stays whole)
        data = subset(data, a.subset)
    if a.val_size is not None:
        try:
            data = split_validation(data, a.val_size)
        except ValueError as e:
            _fail(f"--val-size: {e}")
    # a user's architecture: imported when the command line names it; on --resume (name read from config.json) only
    # with --arch given again or --trust-code
    factory = None
    if ":" in a.arch:
        given = not a.resume or "arch" in _given(parser, argv)
        factory = recorded_network({"name": a.arch, "kwargs": {}}, str(out / CONFIG),
                                   import_factory(a.arch) if given else None, a.trust_code)
    pyro.set_rng_seed(a.seed)  # the initial weights depend on the seed too
    net_kwargs = {k: v for k in ("temperature", "noise") if (v := getattr(a, k, None)) is not None}
    try:
        model = build_model(a.arch, a.method, data.input_shape, data.num_classes, data.x_train.shape[0],
                            data.mean, data.std, factory=factory, **net_kwargs)
    except ValueError as e:
        _fail(f"{e} (dataset {a.dataset})")
    init_guide = _init_from(a, model, data) if a.init_from else {}
    guide = MeanFieldGuide(model)
    if init_guide:  # e.g. DBB from BB: the BB guide of π is loaded and, for DBB, frozen (two-stage training)
        own = guide.state_dict()
        shared = {k: v for k, v in init_guide.items() if k in own and own[k].shape == v.shape}
        guide.load_state_dict(shared, strict=False)
        if a.method == "dbb":
            for name, p in guide.named_parameters():
                if name in shared:
                    p.requires_grad_(False)
    try:
        resolve_kl_scale(guide.site_names, cfg.kl_scale)
    except ValueError as e:
        _fail(f"--kl-scale: {e}")
    if not main_rank:  # fit() reads the checkpoint on --resume, writes nothing, returns rank 0's metrics
        fit(model, guide, data, cfg, out, resume=a.resume, progress=False, meta={})
        return 0
    with RunLock(out) as lock:  # one writer from here on
        if lock.stale_pid is not None:
            print(f"pyro-sparse: note: {out} had a stale lock of process {lock.stale_pid}, which is not running; "
                  "taken over", file=sys.stderr)
        if not a.resume:
            if not is_fresh(out):  # another process started it meanwhile
                raise RunDirError(f"{out} already holds files; choose a new --out or pass --resume")
            for tmp in out.glob("*.tmp"):  # leftovers of a process killed before its config.json
                tmp.unlink()
            args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()
                    if k not in ("command", "debug")}
            atomic_write_json({
                "format": CONFIG_FORMAT, "method": a.method, "arch": a.arch, "dataset": a.dataset, "seed": a.seed,
                "epochs": epochs, "subset": a.subset, "val_size": a.val_size,
                "train_clip_from": cfg.train_clip_from, "kl_scale": cfg.kl_scale or None,
                "command": _command_line(a), "init_from": a.init_from, "data_root": data_root,
                "input_shape": list(data.input_shape), "data_mean": data.mean, "data_std": data.std,
                "config": vars(cfg), "net_kwargs": net_kwargs, "args": args,
            }, out / CONFIG)
        try:
            metrics = fit(model, guide, data, cfg, out, resume=a.resume, progress=not a.quiet,
                          meta={"method": a.method, "arch": a.arch, "dataset": a.dataset, "init_from": a.init_from})
        except KeyboardInterrupt:
            print(f"pyro-sparse: interrupted; {out} keeps every finished epoch; continue with --resume",
                  file=sys.stderr)
            return 130
    _print_summary(metrics)
    return 0


def _command_line(a) -> str:
    """The train command that reproduces this run (every option spelled out)."""
    parts = ["pyro-sparse train"]
    for key, value in vars(a).items():
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


def _print_summary(m: dict) -> None:
    print(
        f"{m['method']} {m['arch']} on {m['dataset']}: "
        + (f"val error {m['val_error']:.2f}% ({m['val_size']} held out)  " if "val_error" in m else "")
        + f"test error {m['test_error']:.2f}%  "
        + "".join(f"({k.removeprefix('test_error_')} {v:.2f}%)  " for k, v in m.items()
                  if k.startswith("test_error_"))
        + f"compression {m['compression']:.1f}x ({m['n_nonzero']}/{m['n_weights']} weights)  "
        f"units {'-'.join(map(str, m['units']))}  FLOPs speed-up {m['flops_speedup']:.2f}x  "
        f"memory {100 * m['memory_fraction']:.2f}%  [{m['epochs']} epochs, {m['train_seconds']:.0f} s]"
    )


def _arch_factory(a, recorded: str, source) -> object:
    """The user's factory that ``--arch`` names (imported: the command line is the caller's), checked against the
    architecture ``source`` records; ``None`` without ``--arch``."""
    from .trust import import_factory

    if a.arch is None:
        return None
    if a.arch != recorded:
        _fail(f"--arch {a.arch} differs from the architecture {recorded!r} that {source} records")
    return import_factory(a.arch) if ":" in a.arch else None


def cmd_evaluate(a, argv, parser) -> int:
    import json

    import torch

    from .compact import COMPACT_SPEC, load_compact, read_compact_spec
    from .data import load_dataset
    from .metrics import classification_error, extra_test_errors, network_cost
    from .runfiles import config_digest, read_config

    run = Path(a.run_dir)
    cfg = read_config(run)
    _check_device(a.device)
    info = read_compact_spec(run)
    recorded = info["factory"].get("name") if isinstance(info["factory"], dict) else None
    factory = _arch_factory(a, str(recorded), run / COMPACT_SPEC)
    if info.get("config_sha256") not in (None, config_digest(run)):
        raise RunDirError(f"the compact network in {run} belongs to another run: {COMPACT_SPEC} was written under "
                          "another config.json (SHA-256 differs)")
    net = load_compact(run, factory=factory, device=a.device, trust_code=a.trust_code)
    shape = tuple(net.pyro_sparse_compact["input_shape"])
    data = load_dataset(cfg["dataset"], a.data_root or cfg.get("data_root"))
    if tuple(data.input_shape) != shape:
        raise RunDirError(f"the compact network of {run} takes inputs {list(shape)}, {cfg['dataset']} has "
                          f"{list(data.input_shape)}")
    err = classification_error(net, data.x_test.to(a.device), data.y_test.to(a.device))
    units = [int(u) for u in network_cost(net, torch.zeros(2, *shape, device=a.device))["units"]]
    print(json.dumps({"run_dir": str(run), "dataset": cfg["dataset"], "test_error": err,
                      **extra_test_errors(net, data), "units": units}))
    return 0


def cmd_report(a, argv, parser) -> int:
    from .diagnostics import write_report
    from .runfiles import CONFIG, RunLock, read_config
    from .runs import load_run

    factory = _arch_factory(a, read_config(a.run_dir)["arch"], Path(a.run_dir) / CONFIG)
    model, guide, _ = load_run(a.run_dir, factory=factory, trust_code=a.trust_code)
    with RunLock(a.run_dir):
        paths = write_report(a.run_dir, model, guide)
    for path in paths:
        print(path)
    return 0


def cmd_reproduce(a, argv, parser) -> int:
    from .reproduce import markdown, run

    if a.seeds < 1:
        _fail(f"--seeds must be >= 1, got {a.seeds}")
    kl_scale = _parse_kl_scale(a.kl_scale)
    table = run(a.arch, a.budget, a.out, a.dataset, a.data_root, a.seeds, peer=not a.no_peer,
                kl_scale=kl_scale or None)
    print(markdown(table))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report, "reproduce": cmd_reproduce}


def main(argv: list[str] | None = None) -> int:
    """Run the ``pyro-sparse`` command line; returns the exit status (0, or 130 after Ctrl-C in ``train``).

    :raises SystemExit: 2 after one line on stderr for bad input (options, run-directory files, data); 1 after one
        line for an unexpected error. With ``--debug`` / ``PYRO_SPARSE_DEBUG=1`` the exception propagates instead.
    """
    from .settings import module_local_params

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `pyro-sparse` alone: usage and the commands
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("PYRO_SPARSE_DEBUG", "") not in ("", "0")
    sub = parser._subparsers._group_actions[0].choices[args.command]
    try:
        with module_local_params():  # our parameters live in the modules; the caller's Pyro settings come back
            return COMMANDS[args.command](args, argv, sub)
    except (PyroSparseError, ValueError, OSError) as e:  # bad input: one line, exit 2
        if debug:
            raise
        print(f"pyro-sparse: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if debug:
            raise
        print(f"pyro-sparse: internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    sys.exit(main())
