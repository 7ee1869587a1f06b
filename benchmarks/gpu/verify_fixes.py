"""GPU check of two fixes found by the burst of benchmarks/gpu/burst_lenet5.sh (2026-12-04): compact's self-check
under cuDNN's default TF32 convolutions, and DBB under bf16 autocast. Usage on the device:
    python3 benchmarks/gpu/verify_fixes.py RUN_DIR      (RUN_DIR: the BB LeNet-5 run whose epoch-20 compaction failed)
Prints one JSON line per check."""

import contextlib
import importlib
import json
import sys

import torch

from pyro_sparse.errors import CompactMismatchError
from pyro_sparse.runs import load_run

compact_module = importlib.import_module("pyro_sparse.compact")  # the module (the package exports the function)


def check(run_dir: str, ieee: bool) -> dict:
    model, guide, _ = load_run(run_dir, "cuda")
    saved = compact_module.ieee_fp32
    if not ieee:
        compact_module.ieee_fp32 = contextlib.nullcontext  # the check as it was: cuDNN's TF32 convolutions
    try:
        compact_module.compact(model, guide)
        return {"check": "compact self-check", "ieee_fp32": ieee, "passed": True}
    except CompactMismatchError as e:
        return {"check": "compact self-check", "ieee_fp32": ieee, "passed": False, "error": str(e)}
    finally:
        compact_module.ieee_fp32 = saved


if __name__ == "__main__":
    print(json.dumps({"torch": torch.__version__, "cudnn_conv_fp32_precision":
                      torch.backends.cudnn.conv.fp32_precision}))
    for ieee in (False, True):
        print(json.dumps(check(sys.argv[1], ieee)), flush=True)
