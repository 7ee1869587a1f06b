"""``pyro-sparse reproduce``: the papers' comparison table for one architecture, in one command.

Pretrains the dense network once per seed, sparsifies it with every method (SVD, SBP, BB, then DBB from the BB run;
SVD from scratch for LeNet-300-100, as its paper did, with train-time clipping in the last 10% of its epochs), and
writes ``table.md`` / ``table.json`` in the papers' format (method, error %, units per layer, FLOPs speed-up, memory,
compression, measured CPU speed-up, train time, epochs) plus ``error_vs_flops.png``, ``units.png``,
``svd_log_alpha.png`` and (LeNet-300/500) ``input_masks.png``. Every stage is an ordinary ``pyro-sparse train`` run
in ``OUT/seed<S>/<method>``; a stage whose run already finished is reused, so an interrupted reproduction continues.

``--kl-scale LAYER=S ...`` passes a per-layer KL scale to the SBP and BB stages (the beta-Bernoulli authors' LeNet-5
configs: ``conv1=40 conv2=16``; see :mod:`pyro_sparse.poutine.scale`); the table's command and title say so.

Budgets (epochs per stage): ``smoke`` — 1 epoch on 2,000 training examples (a test runs it); ``cpu`` — fits a session
on 2 CPU cores; ``paper`` — the papers' 200 epochs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pyro_sparse.models import METHODS

from .errors import RunDirError
from .runfiles import read_json
from .settings import module_local_params

BUDGETS = {
    "smoke": {arch: dict.fromkeys(METHODS, 1) for arch in ("lenet300", "lenet500", "lenet5")},
    "cpu": {
        "lenet300": {"dense": 20, "svd": 200, "sbp": 30, "bb": 30, "dbb": 20},
        "lenet500": {"dense": 20, "svd": 30, "sbp": 30, "bb": 30, "dbb": 20},
        "lenet5": {"dense": 10, "svd": 10, "sbp": 10, "bb": 10, "dbb": 5},
    },
    "paper": {arch: dict.fromkeys(METHODS, 200) for arch in ("lenet300", "lenet500", "lenet5")},
}
SMOKE_SUBSET = 2000
#: the stages that take ``--kl-scale`` (the authors' ``*_scale`` configs exist for SBP and BB; DBB trains only β)
KL_SCALED_METHODS = ("sbp", "bb")
#: METHODS.md §6 (error %, units, FLOPs ×, memory %)
PAPER = {
    ("lenet300", "dense"): (1.64, None, 1.0, 100.0), ("lenet300", "svd"): (1.92, None, None, None),
    ("lenet500", "dense"): (1.56, "784-500-300", 1.0, 100.0), ("lenet500", "svd"): (1.50, "532-64-34", 14.87, 6.72),
    ("lenet500", "sbp"): (1.58, "257-97-43", 18.33, 5.44), ("lenet500", "bb"): (1.32, "294-110-71", 13.26, 7.52),
    ("lenet500", "dbb"): (1.40, "106-56-46", 33.51, 0.98),
    ("lenet5", "dense"): (0.70, "20-50-800-500", 1.0, 100.0), ("lenet5", "sbp"): (0.82, "9-17-130-42", 5.53, 13.42),
    ("lenet5", "bb"): (0.57, "13-25-156-54", 2.94, 16.2), ("lenet5", "dbb"): (0.63, "13-24-53-27", 2.95, 14.79),
}


def _kl_scale_args(kl_scale: dict[str, float] | None) -> list[str]:
    return ["--kl-scale", *(f"{k}={v:g}" for k, v in kl_scale.items())] if kl_scale else []


def _stage_args(arch: str, method: str, epochs: int, seed: int, dataset: str, data_root: str | None, out: Path,
                budget: str, kl_scale: dict[str, float] | None = None) -> list[str]:
    args = ["train", "--method", method, "--arch", arch, "--dataset", dataset, "--epochs", str(epochs),
            "--seed", str(seed), "--out", str(out / method), "--quiet"]
    if method in KL_SCALED_METHODS:
        args += _kl_scale_args(kl_scale)
    if data_root:
        args += ["--data-root", data_root]
    if budget == "smoke":
        args += ["--subset", str(SMOKE_SUBSET), "--no-latency"]
    if method == "dbb":
        args += ["--init-from", str(out / "bb")]
    elif method != "dense" and not (method == "svd" and arch == "lenet300"):
        args += ["--init-from", str(out / "dense")]
    if method == "svd" and arch == "lenet300" and epochs >= 40:  # from scratch: the reference's train_clip, last 10%
        args += ["--train-clip-from", str(epochs - epochs // 10)]
    return args


@module_local_params()
def run(arch: str, budget: str, out: str | Path, dataset: str = "mnist", data_root: str | None = None,
        seeds: int = 1, methods: tuple[str, ...] = METHODS, peer: bool = True,
        kl_scale: dict[str, float] | None = None) -> dict:
    """Run (or reuse) every stage for ``seeds`` seeds and write the table and plots to ``out``; returns the table.

    ``peer=False`` (``--no-peer``) leaves out the ``pytorch-ard`` peer row. ``kl_scale`` (``{"conv1": 40.0}``) goes
    to the SBP and BB stages.

    :raises ValueError: a finished stage in ``out`` was made with another KL scale than asked for (it is not reused
        and nothing is overwritten: choose another ``out``).
    """
    from .cli import main as cli

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; expected a folder for the reproduction")
    epochs = BUDGETS[budget][arch]
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in range(seeds):  # before training anything: every stage already there must match the KL scale
        for method in methods:
            cfg_path = out / f"seed{seed}" / method / "config.json"
            want = (kl_scale or None) if method in KL_SCALED_METHODS else None
            had = read_json(cfg_path, "run configuration").get("kl_scale") if cfg_path.is_file() else want
            if had != want:
                raise RunDirError(f"{cfg_path.parent} was trained with kl_scale {had}, this reproduction asks for "
                                  f"{want}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for seed in range(seeds):
        seed_dir = out / f"seed{seed}"
        for method in methods:
            run_dir = seed_dir / method
            if not (run_dir / "metrics.json").is_file():
                resume = (run_dir / "checkpoint.pt").is_file()
                args = _stage_args(arch, method, epochs[method], seed, dataset, data_root, seed_dir, budget, kl_scale)
                code = cli(args + (["--resume"] if resume else []))
                if code:
                    raise SystemExit(code)
            per_method[method].append(read_json(run_dir / "metrics.json", "metrics file"))
    command = (f"pyro-sparse reproduce --arch {arch} --budget {budget} --dataset {dataset}"
               + (f" --data-root {data_root}" if data_root else "") + f" --out {out} --seeds {seeds}"
               + ("" if peer else " --no-peer") + "".join(" " + a for a in _kl_scale_args(kl_scale)))
    stages = {m: [read_json(out / f"seed{s}" / m / "config.json", "run configuration").get("command")
                  for s in range(seeds)]
              for m in methods}
    table = {"arch": arch, "dataset": dataset, "budget": budget, "seeds": seeds, "epochs": epochs,
             "kl_scale": kl_scale or None, "command": command, "stage_commands": stages,
             "rows": [_row(arch, dataset, m, runs) for m, runs in per_method.items()]}
    peer_rows = _peer(arch, budget, epochs.get("svd", 1), dataset, data_root, seeds, out) if peer else []
    if peer_rows:
        table["rows"].append(_row(arch, dataset, "pytorch-ard (peer)", peer_rows))
    (out / "table.json").write_text(json.dumps(table, indent=1))
    (out / "table.md").write_text(markdown(table))
    plot(table, out)
    plot_posteriors(arch, out / "seed0", [m for m in methods if m != "dense"], out)
    return table


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


def _row(arch: str, dataset: str, method: str, runs: list[dict]) -> dict:
    keys = ("test_error", "flops_speedup", "memory_fraction", "compression", "speedup_measured_b1000",
            "train_seconds")
    row = {"method": method, "epochs": runs[0]["epochs"], **{k: _median_range([r.get(k) for r in runs]) for k in keys}}
    row["seconds_per_epoch"] = _median_range([r["train_seconds"] / r["epochs"] for r in runs])
    units = [r.get("units", []) for r in runs]
    row["units"] = [statistics.median(u[i] for u in units) for i in range(len(units[0]))]
    row["paper"] = PAPER.get((arch, method)) if dataset == "mnist" else None
    return row


def markdown(table: dict) -> str:
    def fmt(v, scale=1.0, digits=2, suffix=""):
        if v is None:
            return "—"
        s = f"{v['median'] * scale:.{digits}f}{suffix}"
        return s if v["min"] == v["max"] else f"{s} [{v['min'] * scale:.{digits}f}–{v['max'] * scale:.{digits}f}]"

    lines = [f"### {table['arch']} on {table['dataset']} — budget `{table['budget']}`, median [range] over "
             f"{table['seeds']} seed(s)"
             + (", KL × " + ", ".join(f"{k} {v:g}" for k, v in table["kl_scale"].items()) + " (SBP, BB)"
                if table.get("kl_scale") else ""), "",
             "| method | epochs | error % | units | FLOPs × | memory | compression × | CPU speed-up (b=1000) | "
             "train time | s / epoch | paper: error %, units, FLOPs ×, memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if table.get("command"):
        lines[1:1] = ["", f"`{table['command']}`"]
    for r in table["rows"]:
        p = r["paper"]
        paper = "—" if not p else ", ".join("—" if v is None else str(v) for v in p)
        units = "-".join(f"{u:g}" for u in r["units"]) or "—"
        lines.append(
            f"| {r['method']} | {r['epochs']} | {fmt(r['test_error'])} | {units} | "
            f"{fmt(r['flops_speedup'])} | {fmt(r['memory_fraction'], 100, 2, '%')} | {fmt(r['compression'], 1, 1)} | "
            f"{fmt(r['speedup_measured_b1000'])} | {fmt(r['train_seconds'], 1 / 60, 1, ' min')} | "
            f"{fmt(r['seconds_per_epoch'], 1, 1)} | {paper} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, out: Path) -> None:
    """``error_vs_flops.png`` (ours and the papers' points) and ``units.png`` (units kept per layer per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, r in enumerate(table["rows"]):
        color = f"C{i}"
        if r["flops_speedup"] and r["test_error"]:
            ax.scatter(r["flops_speedup"]["median"], r["test_error"]["median"], color=color, label=f"{r['method']}")
        p = r["paper"]
        if p and p[2] is not None:
            ax.scatter(p[2], p[0], color=color, marker="x")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs speed-up (×)")
    ax.set_ylabel("test error %")
    ax.set_title(f"{table['arch']}: ours (●) vs papers (×)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "error_vs_flops.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, r in enumerate(table["rows"]):
        ax.plot(range(len(r["units"])), r["units"], "o-", color=f"C{i}", label=r["method"])
    ax.set_yscale("log")
    ax.set_xlabel("unit position (layer)")
    ax.set_ylabel("units kept")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "units.png", dpi=110)
    plt.close(fig)


def plot_posteriors(arch: str, seed_dir: Path, methods: list[str], out: Path) -> list[Path]:
    """The papers' posterior figures from the seed-0 runs: ``svd_log_alpha.png`` (first layer's log α as images, SVD
    paper Fig. 3) and, for the fully connected nets, ``input_masks.png`` (the input pixels each method keeps, as
    28×28 masks, SBP / BB papers' figures). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
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
