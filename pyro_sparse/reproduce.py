"""``pyro-sparse reproduce``: the papers' comparison table for one architecture, in one command.

Every row of a table is one training stage (:func:`pyro_sparse.stage.train_stage`, the library function behind
``pyro-sparse train``) in ``OUT/seed<S>/<row>``; a finished stage is reused and an interrupted one continues
(``resume``), so an interrupted reproduction goes on where it stopped. Writes ``table.md`` / ``table.json`` in the
papers' format and the figures ``error_vs_flops.png`` (ours and the papers' points) and ``units.png`` (units or
filters kept per layer, the paper's beside ours), plus for the LeNets ``svd_log_alpha.png`` and (LeNet-300/500)
``input_masks.png``.

The tables (:data:`TABLES`):

* ``lenet300``, ``lenet500``, ``lenet5`` on MNIST (METHODS.md §6): the dense network once per seed, then SVD, SBP,
  BB fine-tuned from it and DBB from the BB run (SVD from scratch for LeNet-300-100, as its paper did, with
  train-time clipping in the last 10% of its epochs);
* ``vgg_like`` on CIFAR-10 (the beta-Bernoulli paper's Table 1): the same stages on the VGG-like network at width
  multiplier ``width`` (default 0.25 at the ``cpu`` budget, 1 at ``paper``), with crop-and-flip augmentation; the
  error on the 5,000 held-out images and on the 1,000 official test images, filters kept per gated layer;
* ``conv3fc3`` on CIFAR-10 (the sparse-VD paper's Table 4): four configurations from scratch with the paper's KL
  warm-up (β = 0 for the first 4% of the epochs, linear to 1 by 40%: 10 and 100 of its 250) — no regularisation
  (``none``), binary dropout everywhere (``bd``), binary dropout on the convs + SVD on the fully connected layers
  (``bd+svd-fc``), SVD everywhere (``svd``); the compression of the fully connected layers beside the whole net's.

``--kl-scale LAYER=S ...`` passes a per-layer KL scale to the SBP and BB stages (the beta-Bernoulli authors' LeNet-5
configs: ``conv1=40 conv2=16``; see :mod:`pyro_sparse.poutine.scale`); the table's command and title say so.

Budgets (epochs per stage, :data:`BUDGETS`): ``smoke`` — 1 epoch on 2,000 training examples (a test runs it);
``cpu`` — fits sessions on 2 CPU cores; ``paper`` — the papers' schedules (200 epochs; 250 for ``conv3fc3``) with
the recipes chosen on a validation split (:data:`PAPER_RECIPES`; 5,000 training images held out on MNIST and
Fashion-MNIST).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .errors import InvalidInputError, RunDirError
from .runfiles import read_json
from .settings import module_local_params
from .stage import train_stage

METHOD_ROWS = ("dense", "svd", "sbp", "bb", "dbb")
#: the rows of each table: row → (method, the row it starts from or None, extra stage options)
TABLES: dict[str, dict[str, tuple[str, str | None, dict]]] = {
    **{arch: {"dense": ("dense", None, {}), "svd": ("svd", "dense", {}), "sbp": ("sbp", "dense", {}),
              "bb": ("bb", "dense", {}), "dbb": ("dbb", "bb", {})} for arch in ("lenet500", "lenet5", "vgg_like")},
    "lenet300": {"dense": ("dense", None, {}), "svd": ("svd", None, {}), "sbp": ("sbp", "dense", {}),
                 "bb": ("bb", "dense", {}), "dbb": ("dbb", "bb", {})},
    "conv3fc3": {"none": ("dense", None, {"arch_option": ["dropout=none"]}),
                 "bd": ("dense", None, {"arch_option": ["dropout=all"]}),
                 "bd+svd-fc": ("svd", None, {"arch_option": ["dropout=conv"], "include": ["fc*"]}),
                 "svd": ("svd", None, {"arch_option": ["dropout=none"]})},
}
DATASETS = {"lenet300": ("mnist", "fashion-mnist"), "lenet500": ("mnist", "fashion-mnist"),
            "lenet5": ("mnist", "fashion-mnist"), "vgg_like": ("cifar10",), "conv3fc3": ("cifar10",)}
BUDGETS = {
    "smoke": {arch: dict.fromkeys(rows, 1) for arch, rows in TABLES.items()},
    "cpu": {
        "lenet300": {"dense": 20, "svd": 200, "sbp": 30, "bb": 30, "dbb": 20},
        "lenet500": {"dense": 20, "svd": 30, "sbp": 30, "bb": 30, "dbb": 20},
        "lenet5": {"dense": 10, "svd": 10, "sbp": 10, "bb": 10, "dbb": 5},
        "vgg_like": {"dense": 30, "svd": 15, "sbp": 15, "bb": 15, "dbb": 10},
        "conv3fc3": dict.fromkeys(TABLES["conv3fc3"], 30),
    },
    "paper": {**{arch: dict.fromkeys(rows, 200) for arch, rows in TABLES.items()},
              "lenet500": {"dense": 20, "svd": 200, "sbp": 200, "bb": 200, "dbb": 200},
              # (LeNet-5's dense stage as LeNet-500-300's: 20 epochs reach 0.80-0.82% validation error, 0.62-0.67%
              # test; the LeNet-5 paper-budget runs of issue 26 start from it)
              "lenet5": {"dense": 20, "svd": 200, "sbp": 200, "bb": 200, "dbb": 200},
              "conv3fc3": dict.fromkeys(TABLES["conv3fc3"], 250)},
}
#: ``--budget paper``: each row's recipe beyond the table's defaults, chosen on the validation split (issue 26;
#: benchmarks/RESULTS.md, "Paper-budget runs with a validation split"). Rule: among the 200-epoch runs of a row, the
#: lowest validation error of those that reach the paper's FLOPs speed-up, else of all (ties of one validation image
#: keep the table's default). LeNet-500-300: BB at gate lr 0.1 with the linear decay is the only BB run past 13.26x;
#: DBB at gate lr 1e-2 from that BB run (validation 1.72% vs 1.96% at 3e-2); SVD from the dense net (2.36% vs 2.34%
#: from scratch: one image); SBP at gate lr 3e-2 (validation 1.76% at 16.6x vs 1.86% at 11.5x with 1e-2). The dense
#: stage trains 20 epochs, the net every recipe above started from.
PAPER_RECIPES: dict[tuple[str, str], dict] = {
    ("lenet500", "bb"): {"noise": "per-batch", "lr_latent": 0.1, "lr_schedule": "linear"},
    ("lenet500", "dbb"): {"noise": "per-batch", "lr_latent": 0.01},
    ("lenet500", "sbp"): {"lr_latent": 0.03},
}
#: ``--budget paper`` holds out this many training images on MNIST / Fashion-MNIST unless ``--val-size`` says otherwise
PAPER_VAL_SIZE = 5000
#: vgg_like's width multiplier per budget (``--width`` overrides)
DEFAULT_WIDTH = {"smoke": 0.25, "cpu": 0.25, "paper": 1.0}
SMOKE_SUBSET = 2000
#: the stages that take ``--kl-scale`` (the authors' ``*_scale`` configs exist for SBP and BB; DBB trains only β)
KL_SCALED_METHODS = ("sbp", "bb")
#: METHODS.md §6 and §7 (error %, units, FLOPs ×, memory %); CIFAR-10 at width k = 1
PAPER = {
    ("lenet300", "dense"): (1.64, None, 1.0, 100.0), ("lenet300", "svd"): (1.92, None, None, None),
    ("lenet500", "dense"): (1.56, "784-500-300", 1.0, 100.0), ("lenet500", "svd"): (1.50, "532-64-34", 14.87, 6.72),
    ("lenet500", "sbp"): (1.58, "257-97-43", 18.33, 5.44), ("lenet500", "bb"): (1.32, "294-110-71", 13.26, 7.52),
    ("lenet500", "dbb"): (1.40, "106-56-46", 33.51, 0.98),
    ("lenet5", "dense"): (0.70, "20-50-800-500", 1.0, 100.0), ("lenet5", "sbp"): (0.82, "9-17-130-42", 5.53, 13.42),
    ("lenet5", "bb"): (0.57, "13-25-156-54", 2.94, 16.2), ("lenet5", "dbb"): (0.63, "13-24-53-27", 2.95, 14.79),
    ("vgg_like", "dense"): (7.43, "64-64-128-128-256-256-256-512-512-512-512-512-512-512-512", 1.0, 100.0),
    ("vgg_like", "svd"): (8.08, "64-64-128-128-254-206-48-96-90-14-147-107-85-85-458", 1.42, 17.9),
    ("vgg_like", "sbp"): (8.68, "64-64-128-128-254-209-55-107-103-15-163-125-346-375-491", 1.34, 21.2),
    ("vgg_like", "bb"): (6.78, "64-64-128-126-251-174-41-87-81-13-118-110-25-25-69", 1.47, 5.5),
    ("vgg_like", "dbb"): (7.03, "62-61-126-122-236-134-35-63-65-11-93-94-19-20-50", 1.53, 4.2),
    ("conv3fc3", "none"): (23.3, None, None, None), ("conv3fc3", "bd"): (17.9, None, None, None),
    ("conv3fc3", "bd+svd-fc"): (17.6, None, None, None), ("conv3fc3", "svd"): (19.8, None, None, None),
}
#: the sparse-VD paper's compression of conv3fc3's fully connected layers (Table 4, BD + sparse VD on FC)
PAPER_FC_COMPRESSION = {("conv3fc3", "bd+svd-fc"): 171.0}


def _kl_scale_args(kl_scale: dict[str, float] | None) -> list[str]:
    return ["--kl-scale", *(f"{k}={v:g}" for k, v in kl_scale.items())] if kl_scale else []


def row_options(arch: str, row: str, epochs: int, seed: int, dataset: str, data_root: str | None, out: Path,
                  budget: str, kl_scale: dict[str, float] | None = None, width: float | None = None,
                  val_size: int | None = None) -> dict:
    """The :func:`pyro_sparse.stage.train_stage` options of one row's stage in ``out`` (``out/<row>``)."""
    method, source, extra = TABLES[arch][row]
    options: dict = {"method": method, "arch": arch, "dataset": dataset, "epochs": epochs, "seed": seed,
                     "out": str(out / row), "quiet": True, **{k: list(v) for k, v in extra.items()}}
    if method in KL_SCALED_METHODS and kl_scale:
        options["kl_scale"] = _kl_scale_args(kl_scale)[1:]
    if data_root:
        options["data_root"] = data_root
    if val_size:
        options["val_size"] = val_size
    if budget == "smoke":
        options.update(subset=SMOKE_SUBSET, no_latency=True)
    if budget == "paper":
        options.update(PAPER_RECIPES.get((arch, row), {}))
    if source is not None:
        options["init_from"] = str(out / source)
    if dataset == "cifar10":
        options["augment"] = "crop-flip"
    if arch == "vgg_like":
        options["arch_option"] = [f"k={width if width is not None else DEFAULT_WIDTH[budget]:g}"]
    if arch == "conv3fc3" and method == "svd":  # the paper's warm-up: 10 and 100 of 250 epochs
        options["warmup"] = [round(epochs * 10 / 250), round(epochs * 100 / 250)]
    if method == "svd" and arch == "lenet300" and epochs >= 40:  # from scratch: the reference's train_clip, last 10%
        options["train_clip_from"] = epochs - epochs // 10
    return options


@module_local_params()
def run(arch: str, budget: str, out: str | Path, dataset: str | None = None, data_root: str | None = None,
        seeds: int = 1, methods: tuple[str, ...] | None = None, peer: bool = True,
        kl_scale: dict[str, float] | None = None, width: float | None = None, val_size: int | None = None,
        jobs: int = 1) -> dict:
    """Run (or reuse, or continue) every stage for ``seeds`` seeds and write the table and plots to ``out``; returns
    the table.

    :param arch: a key of :data:`TABLES`; ``dataset`` defaults to its first data set (MNIST or CIFAR-10).
    :param methods: the rows to run (default: all of the table's; a row's source row must be among them or done).
    :param peer: ``False`` (``--no-peer``) leaves out the ``pytorch-ard`` peer row (LeNets only).
    :param kl_scale: ``{"conv1": 40.0}``, to the SBP and BB stages.
    :param width: ``vgg_like``'s width multiplier (default :data:`DEFAULT_WIDTH` of the budget).
    :param val_size: hold out this many training examples in every stage (the validation error is then reported).
    :param jobs: stages trained at once, each in its own process with ``max(1, torch threads // jobs)`` threads (a
        stage starts when the stage it continues is done; e.g. ``--seeds 3 --jobs 2`` on 2 cores). Results are those
        of a sequential run with as many threads per stage.
    :raises InvalidInputError: an unknown arch, budget, row or data set for ``arch``, ``jobs`` < 1.
    :raises RunDirError: ``out`` is a file, or a finished stage in ``out`` was made with another KL scale than asked
        for (it is not reused and nothing is overwritten: choose another ``out``).
    """
    if arch not in TABLES:
        raise InvalidInputError(f"reproduce has no table for arch {arch!r}; expected one of {', '.join(TABLES)}")
    if budget not in BUDGETS:
        raise InvalidInputError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)}")
    dataset = dataset or DATASETS[arch][0]
    if dataset not in DATASETS[arch]:
        raise InvalidInputError(f"the {arch} table is on {' or '.join(DATASETS[arch])}, got --dataset {dataset}")
    rows = tuple(methods or TABLES[arch])
    unknown = [r for r in rows if r not in TABLES[arch]]
    if unknown:
        raise InvalidInputError(f"the {arch} table has no row {', '.join(unknown)}; its rows: "
                                f"{', '.join(TABLES[arch])}")
    if width is not None and arch != "vgg_like":
        raise InvalidInputError(f"--width is vgg_like's width multiplier; {arch} has none")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; expected a folder for the reproduction")
    epochs = {r: BUDGETS[budget][arch][r] for r in rows}
    if budget == "paper" and val_size is None and dataset in ("mnist", "fashion-mnist"):
        val_size = PAPER_VAL_SIZE
    per_row: dict[str, list[dict]] = {r: [] for r in rows}
    for seed in range(seeds):  # before training anything: every stage already there must match the KL scale
        for row in rows:
            cfg_path = out / f"seed{seed}" / row / "config.json"
            want = (kl_scale or None) if TABLES[arch][row][0] in KL_SCALED_METHODS else None
            had = read_json(cfg_path, "run configuration").get("kl_scale") if cfg_path.is_file() else want
            if had != want:
                raise RunDirError(f"{cfg_path.parent} was trained with kl_scale {had}, this reproduction asks for "
                                  f"{want}; choose another --out")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InvalidInputError(f"--jobs must be a positive integer, got {jobs!r}")
    out.mkdir(parents=True, exist_ok=True)
    todo = {(seed, row): {**row_options(arch, row, epochs[row], seed, dataset, data_root, out / f"seed{seed}", budget,
                                        kl_scale, width, val_size),
                          "resume": (out / f"seed{seed}" / row / "config.json").is_file()}
            for seed in range(seeds) for row in rows if not (out / f"seed{seed}" / row / "metrics.json").is_file()}
    if jobs == 1:
        for options in todo.values():
            train_stage(options)
    else:
        _train_in_parallel(todo, {(s, r): TABLES[arch][r][1] for s, r in todo}, jobs)
    for seed in range(seeds):
        for row in rows:
            per_row[row].append(read_json(out / f"seed{seed}" / row / "metrics.json", "metrics file"))
    command = (f"pyro-sparse reproduce --arch {arch} --budget {budget} --dataset {dataset}"
               + (f" --data-root {data_root}" if data_root else "") + f" --out {out} --seeds {seeds}"
               + (f" --width {width:g}" if width is not None else "") + (f" --val-size {val_size}" if val_size else "")
               + ("" if peer else " --no-peer") + "".join(" " + a for a in _kl_scale_args(kl_scale)))
    stages = {r: [read_json(out / f"seed{s}" / r / "config.json", "run configuration").get("command")
                  for s in range(seeds)]
              for r in rows}
    commits = sorted({str(read_json(out / f"seed{s}" / r / "config.json", "run configuration").get("commit"))
                      for s in range(seeds) for r in rows})
    table = {"arch": arch, "dataset": dataset, "budget": budget, "seeds": seeds, "epochs": epochs,
             "width": (width if width is not None else DEFAULT_WIDTH[budget]) if arch == "vgg_like" else None,
             "kl_scale": kl_scale or None, "command": command, "stage_commands": stages, "commits": commits,
             "rows": [_row(arch, dataset, r, runs) for r, runs in per_row.items()]}
    lenet = arch.startswith("lenet")
    peer_rows = _peer(arch, budget, epochs.get("svd", 1), dataset, data_root, seeds, out) if peer and lenet else []
    if peer_rows:
        table["rows"].append(_row(arch, dataset, "pytorch-ard (peer)", peer_rows))
    (out / "table.json").write_text(json.dumps(table, indent=1))
    (out / "table.md").write_text(markdown(table))
    plot(table, out)
    if lenet:
        plot_posteriors(arch, out / "seed0", [r for r in rows if r != "dense"], out)
    return table


def _train_in_parallel(todo: dict[tuple[int, str], dict], sources: dict[tuple[int, str], str | None],
                       jobs: int) -> None:
    """Train the stages ``todo`` (``(seed, row) → options``) in ``jobs`` processes, each once the stage it continues
    (``sources``: same seed; ``None`` or one not in ``todo``: ready) is done; a failure stops the rest."""
    import multiprocessing
    import sys
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    waiting, running, done = dict(todo), {}, set()
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        while waiting or running:
            for key in [k for k in waiting if (k[0], sources[k]) not in todo or (k[0], sources[k]) in done]:
                running[pool.submit(train_stage, waiting.pop(key))] = key
                print(f"pyro-sparse reproduce: seed {key[0]} {key[1]} started", file=sys.stderr)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                future.result()  # a failed stage raises here (the pool lets the running ones finish)
                done.add(key)
                print(f"pyro-sparse reproduce: seed {key[0]} {key[1]} done", file=sys.stderr)


def _peer(arch, budget, epochs, dataset, data_root, seeds: int | list[int], out: Path) -> list[dict]:
    """The pytorch-ard peer per seed (cached in ``OUT/seed<S>/peer.json``); empty if the package is missing.

    ``seeds``: how many (seeds 0 … N−1), or the seeds themselves (to fill the caches from parallel processes)."""
    try:
        import torch_ard  # noqa: F401
    except ImportError:
        return []
    from .data import load_dataset, subset
    from .infer import TrainConfig
    from .peer import train_ard_peer

    data = load_dataset(dataset, data_root)
    if budget == "smoke":
        data = subset(data, SMOKE_SUBSET)
    rows = []
    for seed in range(seeds) if isinstance(seeds, int) else seeds:
        cache = out / f"seed{seed}" / "peer.json"
        if not cache.is_file():
            scratch = arch == "lenet300"  # same protocol as our SVD row (the peer has no dense init)
            cfg = TrainConfig(epochs=epochs, lr_schedule="linear", warmup_start=5 if scratch and epochs >= 40 else 0,
                              warmup_end=20 if scratch and epochs >= 40 else 0, seed=seed, measure_latency=False)
            cache.write_text(json.dumps(train_ard_peer(arch, data, cfg)))
        rows.append(json.loads(cache.read_text()))
    return rows


def _median_range(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fc_compression(metrics: dict) -> float | None:
    """Compression of the fully connected layers alone: their weights / their non-zero weights (``None`` for metrics
    written before per-layer counts were recorded)."""
    kinds, full, kept = (metrics.get(k) for k in ("layer_kinds", "layer_weights", "layer_nonzero"))
    if not kinds or not full or not kept:
        return None
    fc = [i for i, kind in enumerate(kinds) if kind == "linear"]
    return sum(full[i] for i in fc) / max(1, sum(kept[i] for i in fc))


def _row(arch: str, dataset: str, method: str, runs: list[dict]) -> dict:
    keys = ("test_error", "test_error_official1k", "val_error", "flops_speedup", "memory_fraction", "compression",
            "speedup_measured_b1000", "train_seconds")
    row = {"method": method, "epochs": runs[0]["epochs"], **{k: _median_range([r.get(k) for r in runs]) for k in keys}}
    row["seconds_per_epoch"] = _median_range([r["train_seconds"] / r["epochs"] for r in runs])
    if arch == "conv3fc3":
        row["fc_compression"] = _median_range([fc_compression(r) for r in runs])
        row["paper_fc_compression"] = PAPER_FC_COMPRESSION.get((arch, method))
    units = [r.get("units", []) for r in runs]
    row["units"] = [statistics.median(u[i] for u in units) for i in range(len(units[0]))]
    row["paper"] = PAPER.get((arch, method)) if dataset in ("mnist", "cifar10") else None
    return row


def markdown(table: dict) -> str:
    """The table in the papers' format (Markdown); CIFAR-10 tables show both test sets (METHODS.md §7)."""
    def fmt(v, scale=1.0, digits=2, suffix=""):
        if v is None:
            return "—"
        s = f"{v['median'] * scale:.{digits}f}{suffix}"
        return s if v["min"] == v["max"] else f"{s} [{v['min'] * scale:.{digits}f}–{v['max'] * scale:.{digits}f}]"

    cifar = table["dataset"] == "cifar10"
    fc = table["arch"] == "conv3fc3"
    title = (f"### {table['arch']}" + (f" (k = {table['width']:g})" if table.get("width") else "")
             + f" on {table['dataset']} — budget `{table['budget']}`, median [range] over {table['seeds']} seed(s)"
             + (", KL × " + ", ".join(f"{k} {v:g}" for k, v in table["kl_scale"].items()) + " (SBP, BB)"
                if table.get("kl_scale") else ""))
    error_cols = ("error % (5,000 held out) | error % (1,000 official) | " if cifar else "error % | ")
    header = ("| method | epochs | val error % | " + error_cols + ("filters / units" if cifar else "units")
              + " | FLOPs × | memory | compression × | " + ("FC compression × | " if fc else "")
              + "CPU speed-up (b=1000) | train time | s / epoch | paper: error %, units, FLOPs ×, memory"
              + (", FC compression" if fc else "") + " |")
    lines = [title, "", header, "|" + "---|" * header.count(" | ") + "---|"]
    if table.get("command"):
        lines[1:1] = ["", f"`{table['command']}`"]
    for r in table["rows"]:
        p = r["paper"]
        paper = "—" if not p else ", ".join("—" if v is None else str(v) for v in p)
        if fc and r.get("paper_fc_compression"):
            paper += f", {r['paper_fc_compression']:g}×"
        units = "-".join(f"{u:g}" for u in r["units"]) or "—"
        errors = (f"{fmt(r.get('test_error'))} | {fmt(r.get('test_error_official1k'))} | " if cifar
                  else f"{fmt(r.get('test_error'))} | ")
        lines.append(
            f"| {r['method']} | {r['epochs']} | {fmt(r.get('val_error'))} | {errors}{units} | "
            f"{fmt(r['flops_speedup'])} | {fmt(r['memory_fraction'], 100, 2, '%')} | {fmt(r['compression'], 1, 1)} | "
            + (f"{fmt(r.get('fc_compression'), 1, 1)} | " if fc else "")
            + f"{fmt(r['speedup_measured_b1000'])} | {fmt(r['train_seconds'], 1 / 60, 1, ' min')} | "
            f"{fmt(r['seconds_per_epoch'], 1, 1)} | {paper} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, out: Path) -> None:
    """``error_vs_flops.png`` (ours and the papers' points) and ``units.png`` (units kept per layer per method, the
    paper's as dashed lines where it gives them). Uses matplotlib's object API: no backend is changed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for i, r in enumerate(table["rows"]):
        color = f"C{i}"
        if r["flops_speedup"] and r["test_error"]:
            ax.scatter(r["flops_speedup"]["median"], r["test_error"]["median"], color=color, label=f"{r['method']}")
        p = r["paper"]
        if p and p[2] is not None:
            ax.scatter(p[2], p[0], color=color, marker="x")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs speed-up (×)")
    ax.set_ylabel("test error %" + (" (5,000 held out)" if table["dataset"] == "cifar10" else ""))
    ax.set_title(f"{table['arch']}: ours (●) vs papers (×)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "error_vs_flops.png", dpi=110)
    fig = Figure(figsize=(6 if len(table["rows"][0]["units"]) > 5 else 5, 3.5))
    ax = fig.subplots()
    width = table.get("width") or 1.0
    for i, r in enumerate(table["rows"]):
        ax.plot(range(len(r["units"])), r["units"], "o-", color=f"C{i}", label=r["method"])
        p = r["paper"]
        if p and p[1] and len(p[1].split("-")) == len(r["units"]):
            paper_units = [float(u) * width for u in p[1].split("-")]
            ax.plot(range(len(paper_units)), paper_units, "x--", color=f"C{i}", alpha=0.6,
                    label=f"{r['method']} (paper" + (f", × k = {width:g})" if width != 1 else ")"))
    ax.set_yscale("log")
    ax.set_xlabel("unit position (layer)")
    ax.set_ylabel("units / filters kept")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "units.png", dpi=110)


def plot_posteriors(arch: str, seed_dir: Path, methods: list[str], out: Path) -> list[Path]:
    """The papers' posterior figures from the seed-0 runs: ``svd_log_alpha.png`` (first layer's log α as images, SVD
    paper Fig. 3) and, for the fully connected nets, ``input_masks.png`` (the input pixels each method keeps, as
    28×28 masks, SBP / BB papers' figures). Returns the paths written."""
    import matplotlib.pyplot as plt

    from .diagnostics import plot_first_layer, plot_input_mask
    from .runs import load_run

    written = []
    runs = {m: load_run(seed_dir / m)[:2] for m in methods}
    if "svd" in runs:
        fig = plot_first_layer(*runs["svd"])
        written.append(out / "svd_log_alpha.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if arch in ("lenet300", "lenet500") and runs:
        fig, axes = plt.subplots(1, len(runs), figsize=(2.4 * len(runs), 2.7), squeeze=False)
        for ax, (method, (model, guide)) in zip(axes[0], runs.items(), strict=True):
            plot_input_mask(model, guide, ax=ax, label=method)
        fig.suptitle(f"{arch}: kept input pixels (white), kept/total", fontsize=9)
        fig.tight_layout()
        written.append(out / "input_masks.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
