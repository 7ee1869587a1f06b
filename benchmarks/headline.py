"""The headline table of ``benchmarks/RESULTS.md`` (issue 26): one row per paper row, ours as the median [range] over
the seeds of the recipe chosen on validation, read from the committed compact networks' ``metrics.json`` and
``config.json`` (``benchmarks/models/<row>/``), the paper's number beside, and whether the target is met.

    python benchmarks/headline.py            # prints the table (markdown)
    python benchmarks/headline.py --write    # replaces the table between the markers in RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pyro_sparse.reproduce import PAPER

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
BEGIN, END = "<!-- headline: benchmarks/headline.py -->", "<!-- /headline -->"

#: paper row → (the chosen recipe's committed folders, one per seed; the target: error ≤ and speed-up ≥, and which
#: speed-up: FLOPs or weight compression)
ROWS: dict[tuple[str, str], tuple[list[str], float, float, str]] = {
    # (seeds not run yet are left out until their folder exists)
    ("lenet500", "svd"): (["lenet500_svd_pb", *(f"lenet500_svd_s{s}_pb" for s in (1, 2))], 1.50, 14.87, "flops"),
    ("lenet500", "sbp"): (["lenet500_sbp_lr003_pb", *(f"lenet500_sbp_lr003_s{s}_pb" for s in (1, 2, 3, 4))], 1.58,
                          18.33, "flops"),
    ("lenet500", "bb"): (["lenet500_bb_lr01_linear_pb", *(f"lenet500_bb_lr01_linear_s{s}_pb" for s in (1, 2, 3, 4))],
                         1.32, 13.26, "flops"),
    ("lenet500", "dbb"): (["lenet500_dbb_lr001_linear_pb", *(f"lenet500_dbb_lr001_linear_s{s}_pb" for s in (3, 4))],
                          1.40, 33.51, "flops"),
    ("lenet5", "svd"): (["lenet5_svd_pb"], 0.75, 280.0, "compression"),
    ("lenet5", "bb"): (["lenet5_bb_pb"], 0.57, 2.94, "flops"),
    ("lenet5", "dbb"): ([], 0.63, 2.95, "flops"),
}
NAMES = {"lenet500": "LeNet-500-300", "lenet5": "LeNet-5-Caffe"}


def _summary(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}}" if len(values) == 1 else f"{med:{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"


def table() -> str:
    lines = ["| paper row | seeds | test error % (paper) | speed-up (paper) | val error % | target met | "
             "recipe (seed 0's command; folders under benchmarks/models/) |", "|---|---|---|---|---|---|---|"]
    for (arch, method), (folders, err_target, speed_target, kind) in ROWS.items():
        paper_err = PAPER.get((arch, method), (err_target,))[0]
        label = f"{method.upper()} {NAMES[arch]}"
        what = "FLOPs" if kind == "flops" else "fewer weights"
        present = [f for f in folders if (MODELS / f / "metrics.json").is_file()]
        if not present:
            lines.append(f"| {label} | 0 | — ({paper_err}) | — ({speed_target:g}× {what}) | — | not run at the "
                         "paper's budget yet | — |")
            continue
        metrics = [json.loads((MODELS / f / "metrics.json").read_text()) for f in present]
        command = json.loads((MODELS / present[0] / "config.json").read_text())["command"]
        for a, b in (("/work/runs/gpuburst/", "runs/"), ("/work/runs/", "runs/"), ("/tmp/runs/", "runs/"),
                     ("/tmp/burst_runs/", "runs/"), ("/tmp/burst_data", "../shared/data"),
                     ("/work/main/.gpuburst/init/", "runs/"), ("/work/shared/data", "../shared/data"),
                     ("/tmp/data", "../shared/data")):  # the run directories of the sessions that made them
            command = command.replace(a, b)
        errors = [m["test_error"] for m in metrics]
        speeds = [m["flops_speedup"] if kind == "flops" else m["compression"] for m in metrics]
        vals = [m["val_error"] for m in metrics if m.get("val_error") is not None]
        met = statistics.median(errors) <= err_target and statistics.median(speeds) >= speed_target
        lines.append(f"| {label} | {len(metrics)} | {_summary(errors, '.2f')} ({paper_err}) | "
                     f"{_summary(speeds, '.2f')}× ({speed_target:g}× {what}) | {_summary(vals, '.2f') if vals else '—'}"
                     f" | {'yes' if met else 'no'} | `{command}`; {', '.join(f'`{f}`' for f in present)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="replace the table between the markers in RESULTS.md")
    a = ap.parse_args()
    text = table()
    if not a.write:
        print(text)
        return
    path = HERE / "RESULTS.md"
    doc = path.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    path.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


if __name__ == "__main__":
    main()
