"""The ``pyro-sparse`` command: ``train`` and ``evaluate`` (``pyro-sparse --help``).

Bad input exits with status 2 and one line on stderr naming what is wrong; nothing already in RUN_DIR is lost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METHOD_DEFAULTS = {
    # METHODS.md schedules: SVD from scratch with KL warm-up; SBP / BB fine-tune with a larger lr on noise/gates
    "dense": {"lr_schedule": "linear"},
    "svd": {"lr_schedule": "linear", "warmup": True},
    "sbp": {"lr_schedule": "linear", "lr_latent": 1e-2},
    "bb": {"lr_schedule": "step", "lr_latent": 1e-2, "weight_decay": 1e-4},
    "dbb": {"lr_schedule": "step", "lr_latent": 1e-2, "weight_decay": 1e-4},
}
DEFAULT_EPOCHS = {"digits": 100, "noise-digits": 100, "mnist": 200, "fashion-mnist": 200}
DEFAULT_LR = {"digits": 1e-2, "noise-digits": 1e-2, "mnist": 1e-3, "fashion-mnist": 1e-3}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"pyro-sparse: error: {message}\n")


def _fail(message: str, code: int = 2):
    print(f"pyro-sparse: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    from pyro_sparse.models import ARCHS, METHODS

    from .data import DATASETS

    p = _Parser(prog="pyro-sparse", description="Bayesian sparsification of neural networks in Pyro.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a model (dense or sparsifying) and write RUN_DIR")
    t.add_argument("--method", required=True, choices=METHODS)
    t.add_argument("--arch", required=True, choices=ARCHS)
    t.add_argument("--dataset", required=True, choices=DATASETS)
    t.add_argument("--data-root", default=None, help="folder holding MNIST/ and FashionMNIST/ (torchvision layout)")
    t.add_argument("--epochs", type=int, default=None, help="default: 100 for digits, 200 for MNIST")
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--lr", type=float, default=None, help="Adam lr of the weights (1e-2 digits, 1e-3 MNIST)")
    t.add_argument("--lr-latent", type=float, default=None, help="Adam lr of the guide's parameters")
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--lr-schedule", choices=("constant", "linear", "step"), default=None)
    t.add_argument("--warmup", type=int, nargs=2, metavar=("START", "END"), default=None,
                   help="KL weight 0 before epoch START, 1 from epoch END (SVD on MNIST: 5 20)")
    t.add_argument("--weight-threshold", type=float, default=3.0, help="SVD: prune weights with log alpha >= this")
    t.add_argument("--train-clip", action="store_true",
                   help="SVD: weights past --weight-threshold also leave the training-time mean (reference code); "
                   "same as --train-clip-from 0")
    t.add_argument("--train-clip-from", type=int, default=None, metavar="EPOCH",
                   help="SVD: as --train-clip, but only from EPOCH on (0-based, like --warmup; e.g. 180 of 200)")
    t.add_argument("--kl-scale", action="extend", nargs="+", default=None, metavar="LAYER=S",
                   help="multiply the KL of LAYER's latent sites by S > 0 (e.g. --kl-scale conv1=40 conv2=16, as "
                   "the BB authors' LeNet-5 configs do); default: the plain ELBO")
    t.add_argument("--unit-threshold", type=float, default=None, help="SBP: SNR threshold (1); BB: E[pi] (1e-3)")
    t.add_argument("--temperature", type=float, default=None, help="BB/DBB relaxed Bernoulli temperature (0.1)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--subset", type=int, default=None, help="train on the first N training examples only")
    t.add_argument("--val-size", type=int, default=None, metavar="N",
                   help="hold out N training examples (a fixed random split, the same for every seed) and report "
                        "the validation error per epoch, to choose settings without looking at the test set")
    t.add_argument("--out", required=True, help="RUN_DIR")
    t.add_argument("--init-from", default=None, help="RUN_DIR of a finished dense run to start from")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--no-latency", action="store_true", help="skip the latency measurement in metrics.json")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
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
    return TrainConfig(
        epochs=epochs, batch_size=a.batch_size, lr=a.lr or DEFAULT_LR[a.dataset],
        lr_latent=a.lr_latent or d.get("lr_latent"),
        weight_decay=a.weight_decay if a.weight_decay is not None else d.get("weight_decay", 0.0),
        lr_schedule=a.lr_schedule or d["lr_schedule"], warmup_start=warmup[0], warmup_end=warmup[1], seed=a.seed,
        device=a.device, weight_threshold=a.weight_threshold, unit_threshold=a.unit_threshold,
        measure_latency=not a.no_latency, train_clip_from=0 if a.train_clip else a.train_clip_from,
        kl_scale=_parse_kl_scale(a.kl_scale),
    )


def _parse_kl_scale(items: list[str] | None) -> dict[str, float]:
    """``["conv1=40", "conv2=16"]`` → ``{"conv1": 40.0, "conv2": 16.0}``; exits 2 on a malformed item."""
    out: dict[str, float] = {}
    for item in items or []:
        layer, sep, value = item.partition("=")
        try:
            s = float(value)
        except ValueError:
            s = float("nan")
        if not sep or not layer or not s > 0 or s == float("inf"):
            _fail(f"--kl-scale expects LAYER=S with S a positive number (e.g. conv1=40), got {item!r}")
        out[layer] = s
    return out


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        _fail(f"unknown --device {device!r}; expected cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda was asked for, but torch sees no CUDA device")


def cmd_train(a) -> int:
    import pyro

    from pyro_sparse.guides import MeanFieldGuide
    from pyro_sparse.models import build_model, load_pretrained

    from .data import DataNotFoundError, load_dataset, split_validation, subset
    from .infer import CheckpointError, fit, load_checkpoint
    from .infer.train import METRICS
    from .poutine import resolve_kl_scale

    epochs = a.epochs if a.epochs is not None else DEFAULT_EPOCHS[a.dataset]
    if epochs <= 0:
        _fail(f"--epochs must be a positive integer, got {epochs}")
    for name in ("lr", "lr_latent", "temperature"):
        v = getattr(a, name)
        if v is not None and not v > 0:
            _fail(f"--{name.replace('_', '-')} must be positive, got {v}")
    for flag, value in (("--train-clip", a.train_clip), ("--train-clip-from", a.train_clip_from is not None)):
        if value and a.method != "svd":
            _fail(f"{flag} applies to --method svd only, got --method {a.method}")
    if a.train_clip and a.train_clip_from is not None:
        _fail("--train-clip and --train-clip-from exclude each other (--train-clip clips from the first epoch)")
    if a.batch_size <= 0:
        _fail(f"--batch-size must be positive, got {a.batch_size}")
    if a.val_size is not None and a.val_size <= 0:
        _fail(f"--val-size must be a positive number of examples, got {a.val_size}")
    _check_device(a.device)
    out = Path(a.out)
    cfg = _train_config(a, epochs)
    identity = {"method": a.method, "arch": a.arch, "dataset": a.dataset, "seed": a.seed, "epochs": epochs,
                "subset": a.subset, "val_size": a.val_size,
                "train_clip_from": cfg.train_clip_from, "kl_scale": cfg.kl_scale or None}
    if a.resume:
        cfg_path = out / "config.json"
        if not cfg_path.is_file():
            _fail(f"--resume: {out} holds no run (config.json missing)")
        saved = json.loads(cfg_path.read_text())
        diff = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
        if diff:
            _fail(f"--resume: arguments differ from the run in {out}: " +
                  ", ".join(f"{k} was {s!r}, now {n!r}" for k, (s, n) in diff.items()))
        if (out / METRICS).is_file():
            _fail(f"--resume: the run in {out} has already finished (metrics.json exists)")
    elif out.exists() and any(out.iterdir()):
        _fail(f"{out} already holds files; choose a new --out or pass --resume to continue that run")
    try:
        data = load_dataset(a.dataset, a.data_root)
    except DataNotFoundError as e:
        _fail(str(e))
    if a.subset is not None:  # quick runs: the first N training examples (the test set stays whole)
        if a.subset <= 0:
            _fail(f"--subset must be positive, got {a.subset}")
        data = subset(data, a.subset)
    if a.val_size is not None:
        try:
            data = split_validation(data, a.val_size)
        except ValueError as e:
            _fail(f"--val-size: {e}")
    pyro.set_rng_seed(a.seed)  # the initial weights depend on the seed too
    net_kwargs = {"temperature": a.temperature} if a.temperature is not None and a.method in ("bb", "dbb") else {}
    if a.resume:  # the model is rebuilt as the run was started
        net_kwargs = saved.get("net_kwargs", saved.get("unit_kwargs", {}))
    try:
        model = build_model(a.arch, a.method, data.input_shape, data.num_classes, data.x_train.shape[0],
                            data.mean, data.std, **net_kwargs)
    except ValueError as e:
        _fail(f"{e} (dataset {a.dataset})")
    init_guide = {}
    if a.init_from:
        try:
            ckpt = load_checkpoint(a.init_from)
            used = load_pretrained(model, ckpt["model"])
        except (CheckpointError, ValueError) as e:
            _fail(f"--init-from: {e}")
        if not used:
            _fail(f"--init-from: nothing in {a.init_from} matches arch {a.arch}")
        init_guide = ckpt["guide"]
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
        cfg.validate()
        resolve_kl_scale(guide.site_names, cfg.kl_scale)
    except ValueError as e:
        _fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    if not a.resume:
        cfg_json = {**identity, "command": _command_line(a),
                    "init_from": a.init_from, "data_root": a.data_root,
                    "config": vars(cfg), "net_kwargs": net_kwargs}
        (out / "config.json").write_text(json.dumps(cfg_json, indent=1))
    try:
        metrics = fit(model, guide, data, cfg, out, resume=a.resume, progress=not a.quiet,
                      meta={"method": a.method, "arch": a.arch, "dataset": a.dataset, "init_from": a.init_from})
    except CheckpointError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        print(f"pyro-sparse: interrupted; {out} keeps every finished epoch; continue with --resume", file=sys.stderr)
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
        f"compression {m['compression']:.1f}x ({m['n_nonzero']}/{m['n_weights']} weights)  "
        f"units {'-'.join(map(str, m['units']))}  FLOPs speed-up {m['flops_speedup']:.2f}x  "
        f"memory {100 * m['memory_fraction']:.2f}%  [{m['epochs']} epochs, {m['train_seconds']:.0f} s]"
    )


def cmd_evaluate(a) -> int:
    from .compress import load_compressed
    from .data import DataNotFoundError, load_dataset
    from .metrics import classification_error

    run = Path(a.run_dir)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        _fail(f"{run} holds no run (config.json missing)")
    _check_device(a.device)
    cfg = json.loads(cfg_path.read_text())
    try:
        net = load_compressed(run, a.device)
        data = load_dataset(cfg["dataset"], a.data_root or cfg.get("data_root"))
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except DataNotFoundError as e:
        _fail(str(e))
    err = classification_error(net, data.x_test, data.y_test)
    print(json.dumps({"run_dir": str(run), "dataset": cfg["dataset"], "test_error": err, "units": net.units}))
    return 0


def cmd_report(a) -> int:
    from .diagnostics import write_report
    from .infer import CheckpointError
    from .runs import load_run

    try:
        model, guide, _ = load_run(a.run_dir)
    except (FileNotFoundError, CheckpointError) as e:
        _fail(str(e))
    for path in write_report(a.run_dir, model, guide):
        print(path)
    return 0


def cmd_reproduce(a) -> int:
    from .reproduce import run

    if a.seeds < 1:
        _fail(f"--seeds must be >= 1, got {a.seeds}")
    kl_scale = _parse_kl_scale(a.kl_scale)
    try:
        table = run(a.arch, a.budget, a.out, a.dataset, a.data_root, a.seeds, peer=not a.no_peer,
                    kl_scale=kl_scale or None)
    except ValueError as e:
        _fail(str(e))
    from .reproduce import markdown

    print(markdown(table))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .settings import module_local_params

    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report, "reproduce": cmd_reproduce}
    with module_local_params():  # our parameters live in the modules; the caller's Pyro settings come back on exit
        return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
