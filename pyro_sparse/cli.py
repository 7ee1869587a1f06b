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


def _method(text: str) -> str:
    """argparse type: a registered method (``dense``, ``svd``, …) or ``package.module:Name`` (a user's Method)."""
    from pyro_sparse.models import method_names

    module, sep, attr = text.partition(":")
    if text in method_names() or (sep and module and attr):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(method_names())}, or "
                                     "package.module:Name, a pyro_sparse.Method of yours)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyro-sparse", description="Bayesian sparsification of neural networks in Pyro.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    _train_parser(sub)
    _reproduce_parser(sub)
    _run_dir_parsers(sub)
    return p


def _train_parser(sub) -> None:
    from pyro_sparse.models import ARCHS, method_names

    from .data import DATASETS
    from .stage import STAGE_DEFAULTS

    t = sub.add_parser("train", help="train a model (dense or sparsifying) and write RUN_DIR", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--method", required=True, type=_method, metavar="METHOD",
                   help=f"{', '.join(method_names())}, or package.module:Name (a pyro_sparse.Method of yours; it is "
                        "imported and registered)")
    t.add_argument("--arch", required=True, type=_arch, metavar="ARCH",
                   help=f"{', '.join(ARCHS)}, or package.module:factory (a function returning your own nn.Module)")
    t.add_argument("--dataset", required=True, choices=DATASETS)
    t.add_argument("--data-root",
                   help="folder holding MNIST/ and FashionMNIST/ (torchvision layout); default $PYRO_SPARSE_DATA")
    t.add_argument("--epochs", type=int, help="default: 100 for digits, 200 for MNIST")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=_finite, help="Adam lr of the weights (1e-2 digits, 1e-3 MNIST)")
    t.add_argument("--lr-latent", type=_finite, help="Adam lr of the guide's parameters")
    t.add_argument("--weight-decay", type=_finite)
    t.add_argument("--lr-schedule", choices=("constant", "linear", "step"))
    t.add_argument("--warmup", type=int, nargs=2, metavar=("START", "END"),
                   help="KL weight 0 before epoch START, 1 from epoch END (SVD on MNIST: 5 20)")
    t.add_argument("--weight-threshold", type=_finite,
                   help="SVD: prune weights with log alpha >= this (default 3)")
    t.add_argument("--train-clip", action="store_true",
                   help="SVD: weights past --weight-threshold also leave the training-time mean (reference code); "
                   "same as --train-clip-from 0")
    t.add_argument("--train-clip-from", type=int, metavar="EPOCH",
                   help="SVD: as --train-clip, but only from EPOCH on (0-based, like --warmup; e.g. 180 of 200)")
    t.add_argument("--kl-scale", action="extend", nargs="+", metavar="LAYER=S",
                   help="multiply the KL of LAYER's latent sites by S > 0 (e.g. --kl-scale conv1=40 conv2=16, as "
                   "the BB authors' LeNet-5 configs do); default: the plain ELBO")
    t.add_argument("--unit-threshold", type=_finite,
                   help="SBP: prune units with SNR below this (default 1); BB/DBB: E[pi] (default 1e-3)")
    t.add_argument("--include", nargs="+", metavar="GLOB",
                   help="sparsify only the layers whose names match one of these globs (e.g. 'fc*': SVD on the "
                        "fully connected layers only)")
    t.add_argument("--exclude", nargs="+", metavar="GLOB", help="leave the layers matching these globs dense")
    t.add_argument("--arch-option", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="an option of the architecture (vgg_like: k=0.25, its width multiplier; conv3fc3: "
                        "dropout=none|conv|all)")
    t.add_argument("--temperature", type=_finite, help="BB/DBB relaxed Bernoulli temperature (0.1)")
    t.add_argument("--noise", choices=("per-example", "per-batch"),
                   help="SBP/BB/DBB: draw theta / pi per example (default, lower variance) or once per minibatch "
                        "(the authors' code)")
    t.add_argument("--seed", type=int)
    t.add_argument("--subset", type=int, help="train on the first N training examples only")
    t.add_argument("--val-size", type=int, metavar="N",
                   help="hold out N training examples (a fixed random split, the same for every seed) and report "
                        "the validation error per epoch, to choose settings without looking at the test set")
    t.add_argument("--out", required=True, help="RUN_DIR")
    t.add_argument("--init-from",
                   help="RUN_DIR to start from: a dense run, a run of the same method (continue), or BB for DBB")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out with its recorded options (an option given with "
                   "another value than recorded is refused)")
    t.add_argument("--trust-code", action="store_true", help="--resume: " + TRUST_HELP)
    _engine_options(t)
    t.set_defaults(**{k: v for k, v in STAGE_DEFAULTS.items() if v is not None})


def _engine_options(t) -> None:
    """``train``'s options of where and how it runs (devices, precision, output), not what it computes."""
    t.add_argument("--device", help="cpu or cuda")
    t.add_argument("--devices", type=int, metavar="N",
                   help="data-parallel on N processes (torchrun's launcher; gloo on cpu, nccl with one GPU each on "
                        "cuda); --batch-size is the global batch. Or start `torchrun --nproc-per-node N -m "
                        "pyro_sparse.cli train ...` yourself")
    t.add_argument("--augment", choices=("crop-flip",),
                   help="on-device augmentation of image batches: random 4-pixel crops and horizontal flips")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the network's forward pass")
    t.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    t.add_argument("--channels-last", action="store_true",
                   help="image batches in channels_last memory format (faster cuDNN convolutions on a GPU)")
    t.add_argument("--keep-denormals", action="store_true",
                   help="keep IEEE subnormal floats on the CPU (default: flushed to zero while training, which keeps "
                        "BB's pruned units from slowing CPU steps 10-100x)")
    t.add_argument("--no-latency", action="store_true", help="skip the latency measurement in metrics.json")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--progress-every", type=int, metavar="K",
                   help="steps between progress-bar updates (each reads the running totals back from the device)")


def _reproduce_parser(sub) -> None:
    from .reproduce import TABLES

    rp = sub.add_parser("reproduce", help="the papers' comparison table for one architecture (all methods)")
    rp.add_argument("--arch", required=True, choices=tuple(TABLES),
                    help="lenet300 / lenet500 / lenet5 (MNIST), vgg_like (CIFAR-10, the beta-Bernoulli paper's "
                         "Table 1), conv3fc3 (CIFAR-10, the sparse-VD paper's Table 4)")
    rp.add_argument("--budget", required=True, choices=("smoke", "cpu", "paper"))
    rp.add_argument("--dataset", default=None, choices=("mnist", "fashion-mnist", "cifar10"),
                    help="default: mnist for the LeNets, cifar10 for vgg_like and conv3fc3")
    rp.add_argument("--data-root", default=None)
    rp.add_argument("--out", required=True)
    rp.add_argument("--seeds", type=int, default=1)
    rp.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="train N stages at once, each in its own process (e.g. --seeds 3 --jobs 2 on 2 cores)")
    rp.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                    help="only these rows of the table (e.g. dense bb); a row's source row must be among them or done")
    rp.add_argument("--width", type=_finite, default=None, metavar="K",
                    help="vgg_like's width multiplier (default 0.25 at --budget smoke/cpu, 1 at paper)")
    rp.add_argument("--val-size", type=int, default=None, metavar="N",
                    help="hold out N training examples in every stage and report the validation error")
    rp.add_argument("--no-peer", action="store_true", help="leave out the pytorch-ard peer")
    rp.add_argument("--kl-scale", action="extend", nargs="+", default=None, metavar="LAYER=S",
                    help="per-layer KL scale for the SBP and BB stages (authors' LeNet-5: conv1=40 conv2=16)")


def _run_dir_parsers(sub) -> None:
    r = sub.add_parser("report", help="write the diagnostic plots of RUN_DIR to RUN_DIR/report/")
    r.add_argument("run_dir")
    r.add_argument("--method", default=None, metavar="package.module:Name",
                   help="the Method of a run trained with --method package.module:Name (it is imported)")
    e = sub.add_parser("evaluate", help="re-measure the test error of RUN_DIR's compact network")
    e.add_argument("run_dir")
    e.add_argument("--data-root", default=None)
    e.add_argument("--device", default="cpu")
    x = sub.add_parser("export", help="write the compact network of DIR (a run or save_compact folder) as ONNX or a "
                                      "torch.export program, checked against the network")
    x.add_argument("run_dir", metavar="DIR")
    x.add_argument("out", metavar="FILE", help="the file to write (.onnx, .pt2)")
    x.add_argument("--format", choices=["onnx", "torch.export"], default="onnx")
    x.add_argument("--dense", action="store_true", help="ONNX: store every weight dense (for runtimes that do not "
                                                        "read sparse initializers)")
    for q in (r, e, x):
        q.add_argument("--arch", type=_arch, default=None, metavar="ARCH",
                       help="package.module:factory of the user's architecture the run records (it is imported)")
        q.add_argument("--trust-code", action="store_true", help=TRUST_HELP)


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


def cmd_train(a, argv: list[str], parser: argparse.ArgumentParser) -> int:
    from .infer.distributed import launched_size
    from .stage import STAGE_DEFAULTS, check_options, stage_options, train_stage
    from .trust import import_factory, import_method

    options = {k: v for k, v in vars(a).items() if k in STAGE_DEFAULTS}
    given = _given(parser, argv)
    # a user's method: imported (and registered) when the command line names it; on --resume only with --method
    # given again, or --trust-code
    method = import_method(a.method) if ":" in a.method and (not a.resume or "method" in given) else None
    if a.devices > 1 and launched_size() == 1:  # start the processes, each runs this command
        check_options(stage_options({**options, "method": method.name if method else a.method}))
        return _launch(a.devices, argv)
    # a user's architecture: imported when the command line names it (the command line is the caller's); on --resume
    # (the name read from config.json) only with --arch given again, or --trust-code
    factory = import_factory(a.arch) if ":" in a.arch and (not a.resume or "arch" in given) else None
    try:
        metrics = train_stage(options, given=given, factory=factory, method=method)
    except KeyboardInterrupt:
        return 130
    if metrics is not None:
        _print_summary(metrics)
    return 0


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


def _load_compact_arg(a, device: str = "cpu"):
    """The compact network of ``a.run_dir`` (a run or a save_compact folder), rebuilt under the trust rule: the
    architecture it records, the user's ``--arch`` (checked against the record) or ``--trust-code``."""
    from .compact import COMPACT_SPEC, load_compact, read_compact_spec

    run = Path(a.run_dir)
    info = read_compact_spec(run)
    recorded = info["factory"].get("name") if isinstance(info["factory"], dict) else None
    factory = _arch_factory(a, str(recorded), run / COMPACT_SPEC)
    return load_compact(run, factory=factory, device=device, trust_code=a.trust_code)


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

    from .compact import COMPACT_SPEC, read_compact_spec
    from .data import load_dataset
    from .metrics import classification_error, extra_test_errors, gate_fractions, network_cost
    from .runfiles import config_digest, read_config

    run = Path(a.run_dir)
    cfg = read_config(run)
    _check_device(a.device)
    if read_compact_spec(run).get("config_sha256") not in (None, config_digest(run)):
        raise RunDirError(f"the compact network in {run} belongs to another run: {COMPACT_SPEC} was written under "
                          "another config.json (SHA-256 differs)")
    net = _load_compact_arg(a, a.device)
    shape = tuple(net.pyro_sparse_compact["input_shape"])
    data = load_dataset(cfg["dataset"], a.data_root or cfg.get("data_root"))
    if tuple(data.input_shape) != shape:
        raise RunDirError(f"the compact network of {run} takes inputs {list(shape)}, {cfg['dataset']} has "
                          f"{list(data.input_shape)}")
    err = classification_error(net, data.x_test.to(a.device), data.y_test.to(a.device))
    fractions = gate_fractions(net, data.x_test)  # DBB: units active per example, averaged over the test set
    cost = network_cost(net, torch.zeros(2, *shape, device=a.device), fractions)
    units = [round(float(u), 2) if fractions else int(u) for u in cost["units"]]
    print(json.dumps({"run_dir": str(run), "dataset": cfg["dataset"], "test_error": err,
                      **extra_test_errors(net, data), "units": units}))
    return 0


def cmd_report(a, argv, parser) -> int:
    from .diagnostics import write_report
    from .runfiles import CONFIG, RunLock, read_config
    from .runs import load_run
    from .trust import import_method

    cfg = read_config(a.run_dir)
    factory = _arch_factory(a, cfg["arch"], Path(a.run_dir) / CONFIG)
    if a.method and a.method != cfg.get("method_source"):
        _fail(f"--method {a.method} differs from the method source {cfg.get('method_source')!r} that "
              f"{Path(a.run_dir) / CONFIG} records")
    method = import_method(a.method) if a.method else None
    model, guide, _ = load_run(a.run_dir, factory=factory, method=method, trust_code=a.trust_code)
    with RunLock(a.run_dir):
        paths = write_report(a.run_dir, model, guide)
    for path in paths:
        print(path)
    return 0


def cmd_reproduce(a, argv, parser) -> int:
    from .reproduce import markdown, run
    from .stage import parse_kl_scale

    if a.seeds < 1:
        _fail(f"--seeds must be >= 1, got {a.seeds}")
    if a.jobs < 1:
        _fail(f"--jobs must be >= 1, got {a.jobs}")
    kl_scale = parse_kl_scale(a.kl_scale)
    if a.val_size is not None and a.val_size < 1:
        _fail(f"--val-size must be a positive number of examples, got {a.val_size}")
    if a.width is not None and not 0 < a.width <= 16:
        _fail(f"--width must be a width multiplier in (0, 16], got {a.width:g}")
    table = run(a.arch, a.budget, a.out, a.dataset, a.data_root, a.seeds, methods=tuple(a.rows) if a.rows else None,
                peer=not a.no_peer, kl_scale=kl_scale or None, width=a.width, val_size=a.val_size, jobs=a.jobs)
    print(markdown(table))
    return 0


def cmd_export(a, argv, parser) -> int:
    import json

    import torch

    from .export import export

    net = _load_compact_arg(a)
    shape = net.pyro_sparse_compact["input_shape"]
    path = export(net, a.out, torch.zeros(2, *shape), format=a.format, sparse=not a.dense)
    print(json.dumps({"file": str(path), "format": a.format, "bytes": path.stat().st_size,
                      "input_shape": ["batch", *shape]}))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report, "reproduce": cmd_reproduce,
            "export": cmd_export}


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
