"""Measured CPU speed-up of compact networks over their full-size versions, in three engines, at three batch sizes
(issue 29, item 5).

    python benchmarks/latency.py DIR [DIR ...] [--engines eager eager+csr compile onnxruntime] [--batches 1 32 1000]
                                 [--threads 1] [--repeats 50] [--processes 3] [--csr-max-density 0.05]
                                 [--out benchmarks/latency_engines]

DIR is a finished run directory or a folder written by ``save_compact`` (anything with ``compact.json``). For each
DIR, the compact network (``load_compact``) is timed against the full network of the same architecture (the unpruned
base network rebuilt from ``compact.json``: same layers, nothing removed; the weights' values do not change the
time):

- ``eager``: ``torch.inference_mode()``;
- ``eager+csr``: the same, with the compact network's ``nn.Linear`` layers of at most ``--csr-max-density``
  (default 0.05) of their weights non-zero run as ``SparseLinear`` (``pyro_sparse.sparse_kernels``; the same network
  as ``eager`` where no layer is that sparse);
- ``compile``: ``torch.compile`` (inductor, default mode; compiled once per batch size during warm-up);
- ``onnxruntime``: both networks written by ``pyro_sparse.export`` (checked against torch) and run by onnxruntime's
  CPU provider.

Full and compact are timed alternately on the same random batch (one call of each per repeat), so that drifts of
machine load hit both alike; each engine × batch size gives the median of ``--repeats`` calls. Torch and onnxruntime
use ``--threads`` intra-op threads (default 1). Each DIR is measured in ``--processes`` fresh Python processes, one
after the other, and every number is the median over them (``*_range``: min and max of the speed-up): on this 2-core
VM one process's speed at small matmuls is bimodal, so one process is one draw.

FLOPs speed-up: the run's ``metrics.json`` when there is one (for DBB: active units averaged over the test set), else
the static count of :func:`pyro_sparse.metrics.network_cost`. Writes ``OUT.json`` and ``OUT.png`` (measured speed-up
at the largest batch vs FLOPs speed-up, one marker per engine, the lines y = x and y = x/2 beside).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ENGINES = ("eager", "eager+csr", "compile", "onnxruntime")


def _networks(directory: str):
    from pyro_sparse.compact import COMPACT_SPEC, load_compact
    from pyro_sparse.trust import recorded_network

    compact = load_compact(directory)
    info = compact.pyro_sparse_compact
    full = recorded_network(info["factory"], str(Path(directory) / COMPACT_SPEC))().eval()
    return full, compact.eval(), tuple(info["input_shape"]), info


def _engine(name: str, full, compact, x: torch.Tensor, tmp: Path, threads: int, max_density: float = 0.05):
    """Two zero-argument callables (full, compact) that run one forward pass of ``x`` in engine ``name``."""
    if name == "eager":
        return (lambda: full(x)), (lambda: compact(x))
    if name == "eager+csr":  # mostly-zero dense layers as SparseLinear (pyro_sparse.sparse_kernels)
        from pyro_sparse import sparse_kernels

        fast = sparse_kernels(compact, max_density)
        return (lambda: full(x)), (lambda: fast(x))
    if name == "compile":
        f, c = torch.compile(full), torch.compile(compact)
        return (lambda: f(x)), (lambda: c(x))
    import onnxruntime

    from pyro_sparse import export

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    runs = []
    for tag, net in (("full", full), ("compact", compact)):
        path = export(net, tmp / f"{tag}.onnx", x[:2])
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        runs.append(lambda session=session, feed=feed: session.run(None, feed))
    return runs[0], runs[1]


def measure(directory: str, engines: list[str], batches: list[int], threads: int, repeats: int,
            max_density: float = 0.05) -> dict:
    """One process's measurement of one directory: milliseconds and ratios per engine and batch size."""
    from pyro_sparse.metrics import network_cost, time_alternately

    torch.set_num_threads(threads)
    full, compact, shape, info = _networks(directory)
    metrics = Path(directory) / "metrics.json"
    cost, cost_full = network_cost(compact, torch.rand(2, *shape)), network_cost(full, torch.rand(2, *shape))
    row = {"method": info.get("method"), "units": [round(float(u), 2) for u in cost["units"]],
           "flops_speedup": json.loads(metrics.read_text())["flops_speedup"] if metrics.is_file()
           else cost_full["flops"] / cost["flops"],
           "params": cost["params"], "params_full": cost_full["params"]}
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            for bs in batches:
                x = torch.rand(bs, *shape)
                run_full, run_compact = _engine(engine, full, compact, x, Path(tmp), threads, max_density)
                t_full, t_comp = time_alternately(run_full, run_compact, repeats)
                row[f"{engine}_b{bs}"] = {"full_ms": 1e3 * t_full, "compact_ms": 1e3 * t_comp,
                                          "speedup": t_full / t_comp}
    return row


def _median_rows(rows: list[dict], engines, batches) -> dict:
    out = {k: rows[0][k] for k in ("method", "units", "flops_speedup", "params", "params_full")}
    for engine in engines:
        for bs in batches:
            key = f"{engine}_b{bs}"
            cells = [r[key] for r in rows]
            out[key] = {k: statistics.median(c[k] for c in cells) for k in ("full_ms", "compact_ms", "speedup")}
            out[key]["speedup_range"] = [min(c["speedup"] for c in cells), max(c["speedup"] for c in cells)]
    return out


def table(results: dict, engines, batches) -> str:
    """Markdown: one row per directory; measured speed-up [range] per engine and batch size."""
    head = ["run", "method", "units", "FLOPs ×"] + [f"{e} b{b}" for e in engines for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, str(r["method"]), "-".join(f"{u:g}" for u in r["units"]), f"{r['flops_speedup']:.2f}"]
        for e in engines:
            for b in batches:
                c = r[f"{e}_b{b}"]
                lo, hi = c["speedup_range"]
                cells.append(f"{c['speedup']:.2f} [{lo:.2f}–{hi:.2f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, engines, batch: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    top = max(r["flops_speedup"] for r in results.values()) * 1.2
    ax.plot([1, top], [1, top], "k-", lw=0.8, label="y = x")
    ax.plot([1, top], [0.5, top / 2], "k--", lw=0.8, label="y = x / 2 (the goal)")
    for engine, marker in zip(engines, "osD^", strict=False):
        xs = [r["flops_speedup"] for r in results.values()]
        ys = [r[f"{engine}_b{batch}"]["speedup"] for r in results.values()]
        ax.scatter(xs, ys, marker=marker, label=engine)
    ax.set(xscale="log", yscale="log", xlabel="FLOPs speed-up (×)", title="compact vs full network",
           ylabel=f"measured CPU speed-up at batch {batch} (×)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32, 1000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--processes", type=int, default=3, help="fresh processes per directory (median over them)")
    ap.add_argument("--csr-max-density", type=float, default=0.05,
                    help="eager+csr: dense layers with at most this fraction of non-zero weights run sparse")
    ap.add_argument("--out", default=str(Path(__file__).with_name("latency_engines")), help="OUT.json, OUT.png")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process, one directory
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(measure(a.dirs[0], a.engines, a.batches, a.threads, a.repeats, a.csr_max_density)))
        return
    for name, v in (("--processes", a.processes), ("--threads", a.threads), ("--repeats", a.repeats)):
        if v < 1:
            ap.error(f"{name} must be >= 1, got {v}")
    if not 0 < a.csr_max_density <= 1:
        ap.error(f"--csr-max-density must be a fraction in (0, 1], got {a.csr_max_density}")
    if min(a.batches) < 1:
        ap.error(f"--batches must be >= 1, got {a.batches}")
    results = {}
    for d in a.dirs:
        rows = []
        for _ in range(a.processes):
            cmd = [sys.executable, __file__, d, "--worker", "--threads", str(a.threads), "--repeats", str(a.repeats),
                   "--engines", *a.engines, "--batches", *map(str, a.batches),
                   "--csr-max-density", str(a.csr_max_density)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"latency.py: {d}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results[Path(d).name] = _median_rows(rows, a.engines, a.batches)
        print(json.dumps({Path(d).name: results[Path(d).name]}), flush=True)
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:])
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "torch": torch.__version__,
                                                    "threads": a.threads, "processes": a.processes,
                                                    "repeats": a.repeats, "runs": results}, indent=1))
    plot(results, a.engines, max(a.batches), out.with_suffix(".png"))
    print(table(results, a.engines, a.batches))


if __name__ == "__main__":
    main()
