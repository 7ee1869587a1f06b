#!/usr/bin/env bash
# The one prepared GPU check of issue 16, for a session that is lent a GPU machine (nvidia-h200: Python 3.12 with
# torch, pytest and hypothesis, no network). Two steps:
#   1. here, on the CPU machine:  bash benchmarks/gpu_check.sh --prepare
#      (downloads the pure-Python wheels the GPU image lacks into .whl/, which .gitignore keeps out of git)
#   2. device run, with carry [".whl"] and a timeout of ~540 s:  bash benchmarks/gpu_check.sh
#      -> $OUT/ (or benchmarks/gpu/): pytest's log, gpu_epoch.json (fp32) and gpu_epoch_bf16_compile.json
# What it checks: the CUDA tests (steps free of host-device syncs under torch.cuda.set_sync_debug_mode("error");
# every method trains, compacts, saves and resumes on cuda: tests/test_device.py) and benchmarks/gpu_epoch.py
# (epoch seconds per method, LeNet-500-300 and VGG-like k = 1, plain PyTorch beside; then bf16 + compile).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  python3 -m pip download -q --no-deps -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2 torch-pruning==1.6.1
  ls .whl
  exit 0
fi
out="${OUT:-benchmarks/gpu}"
mkdir -p "$out"
{
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
} > "$out/install.log" 2>&1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYRO_SPARSE_DATA=/nonexistent
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_sync_free.py tests/test_device.py -k cuda \
  > "$out/pytest_cuda.log" 2>&1
echo "pytest cuda: exit $?" | tee -a "$out/summary.txt"
timeout 200 python3 benchmarks/gpu_epoch.py --device cuda --epochs 2 --out "$out/gpu_epoch.json" \
  > "$out/gpu_epoch.log" 2>&1
echo "gpu_epoch fp32: exit $?" | tee -a "$out/summary.txt"
timeout 120 python3 benchmarks/gpu_epoch.py --device cuda --epochs 2 --bf16 --compile --nets vgg_like \
  --out "$out/gpu_epoch_bf16_compile.json" > "$out/gpu_epoch_bf16_compile.log" 2>&1
echo "gpu_epoch bf16+compile: exit $?" | tee -a "$out/summary.txt"
tail -n 3 "$out"/*.log
