"""Measured CPU speed-up of compact networks over their full-size versions (median latency, same script, same
machine state), for finished runs.

    python benchmarks/latency.py runs/sbp_lenet500_mnist runs/sbp_lenet5_mnist ... [--repeats 50]

For each RUN_DIR: the compact network (``load_compressed``) against the full deterministic network of the same run
(``compress(model, guide, keep_all=True)``), at batch 1 and batch 1000, ``torch.inference_mode``, torch's default
threads, timed alternately (``pyro_sparse.metrics.compare_latency``). Writes ``benchmarks/latency.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pyro_sparse.compress import compress, load_compressed
from pyro_sparse.metrics import compare_latency
from pyro_sparse.runs import load_run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    results = {}
    for run in a.runs:
        model, guide, cfg = load_run(run)
        compact, full = load_compressed(run), compress(model, guide, keep_all=True)
        shape = tuple(compact.input_shape)
        row = {"method": cfg["method"], "arch": cfg["arch"], "units": compact.units}
        for bs in (1, 1000):
            t_full, t_comp = compare_latency(full, compact, shape, bs, a.repeats)
            row[f"full_ms_b{bs}"], row[f"compact_ms_b{bs}"] = 1e3 * t_full, 1e3 * t_comp
            row[f"speedup_b{bs}"] = t_full / t_comp
        results[Path(run).name] = row
        print(json.dumps({Path(run).name: row}))
    out = {"command": "python benchmarks/latency.py " + " ".join(a.runs) + f" --repeats {a.repeats}",
           "torch_threads": torch.get_num_threads(), "runs": results}
    Path(__file__).with_name("latency.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
