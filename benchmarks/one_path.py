"""Same seed, same recipe, old path vs new path: do two run directories hold the same training?

    python benchmarks/one_path.py OLD_RUN NEW_RUN [OLD_RUN NEW_RUN ...]

Compares every epoch's loss, NLL, KL, train/test error, units and non-zero weights of ``log.jsonl`` and the final
``metrics.json`` (timings aside), and writes ``benchmarks/one_path.json`` (rendered into RESULTS.md by
``results.py``). Issue 14, item 6: the per-method builders + Sequential ``compress`` (commit 0b2b346) against
``sparsify`` + ``compact``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("loss", "nll", "kl", "train_error", "test_error", "units", "nonzero_weights")
FINAL = ("test_error", "units", "n_nonzero", "compression", "flops_speedup", "memory_fraction")


def compare(old: Path, new: Path) -> dict:
    a = [json.loads(line) for line in (old / "log.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (new / "log.jsonl").read_text().splitlines()]
    diffs = [(r["epoch"], k, r[k], s[k]) for r, s in zip(a, b, strict=True) for k in KEYS if r[k] != s[k]]
    ma, mb = json.loads((old / "metrics.json").read_text()), json.loads((new / "metrics.json").read_text())
    final = {k: [ma[k], mb[k]] for k in FINAL}
    cfg = json.loads((new / "config.json").read_text())
    return {"old": str(old), "new": str(new), "command": cfg["command"], "epochs": len(a),
            "identical_epochs": not diffs, "epoch_differences": diffs[:20], "final": final,
            "final_identical": all(v[0] == v[1] for v in final.values())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="pairs OLD_RUN NEW_RUN")
    a = ap.parse_args()
    if len(a.runs) % 2:
        ap.error("expected pairs OLD_RUN NEW_RUN")
    pairs = [compare(Path(o), Path(n)) for o, n in zip(a.runs[::2], a.runs[1::2], strict=True)]
    (HERE / "one_path.json").write_text(json.dumps({"pairs": pairs}, indent=1))
    print(json.dumps(pairs, indent=1))


if __name__ == "__main__":
    main()
