"""Measured CPU speed-up of compact networks over their full-size versions (median latency, same script, same
machine state), for finished runs.

    python benchmarks/latency.py runs/sbp_lenet500_mnist runs/sbp_lenet5_mnist ... [--repeats 50] [--processes 3]

For each RUN_DIR: the compact network (``load_compact``) against the full deterministic network of the same run
(``full_network(model)``), at batch 1 and batch 1000, ``torch.inference_mode``, torch's default
threads, timed alternately (``pyro_sparse.metrics.compare_latency``). Each run is measured in ``--processes`` fresh
Python processes, one after the other, and every number is the median over them (``speedup_*_range``: min and max):
on this 2-core VM a process's small-matmul speed is bimodal (the same compact LeNet-500-300 at batch 1000 takes
~0.8 ms in some processes and ~2.4 ms in others, whatever the repeats within it), so one process is one draw.
Writes ``benchmarks/latency.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch


def measure(run: str, repeats: int) -> dict:
    """One process's measurement of one run (milliseconds and ratios)."""
    from pyro_sparse.compact import full_network, load_compact
    from pyro_sparse.metrics import compare_latency, network_cost
    from pyro_sparse.runs import load_run

    model, guide, cfg = load_run(run)
    compact, full = load_compact(run), full_network(model)
    shape = tuple(compact.pyro_sparse_compact["input_shape"])
    units = [int(u) for u in network_cost(compact, torch.zeros(2, *shape))["units"]]
    row = {"method": cfg["method"], "arch": cfg["arch"], "units": units}
    for bs in (1, 1000):
        t_full, t_comp = compare_latency(full, compact, shape, bs, repeats)
        row[f"full_ms_b{bs}"], row[f"compact_ms_b{bs}"] = 1e3 * t_full, 1e3 * t_comp
        row[f"speedup_b{bs}"] = t_full / t_comp
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--processes", type=int, default=3, help="fresh processes per run (median over them)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process, one run: print its row
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(measure(a.runs[0], a.repeats)))
        return
    if a.processes < 1:
        ap.error(f"--processes must be >= 1, got {a.processes}")
    results = {}
    for run in a.runs:
        rows = []
        for _ in range(a.processes):
            out = subprocess.run([sys.executable, __file__, run, "--repeats", str(a.repeats), "--worker"],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        row = {k: rows[0][k] for k in ("method", "arch", "units")}
        for key in rows[0]:
            if key.endswith(("_ms_b1", "_ms_b1000")) or key.startswith("speedup_"):
                row[key] = statistics.median(r[key] for r in rows)
        for bs in (1, 1000):
            row[f"speedup_b{bs}_range"] = [min(r[f"speedup_b{bs}"] for r in rows),
                                           max(r[f"speedup_b{bs}"] for r in rows)]
        results[Path(run).name] = row
        print(json.dumps({Path(run).name: row}))
    out = {"command": "python benchmarks/latency.py " + " ".join(a.runs) + f" --repeats {a.repeats} "
           f"--processes {a.processes}", "processes": a.processes,
           "torch_threads": torch.get_num_threads(), "runs": results}
    Path(__file__).with_name("latency.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
