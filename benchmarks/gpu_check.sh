#!/usr/bin/env bash
# The one prepared GPU check of issue 16 (run once on a lent GPU machine, from the repository root):
#   bash benchmarks/gpu_check.sh            -> $OUT/ (or benchmarks/gpu/) gets pytest's log and gpu_epoch.json
# 1. the CUDA tests: steps free of host-device syncs (torch.cuda.set_sync_debug_mode("error")), every method trains,
#    compacts, saves and resumes on cuda (tests/test_device.py), the switches on cuda;
# 2. benchmarks/gpu_epoch.py: epoch seconds per method, LeNet-500-300 and VGG-like k = 1, plain PyTorch beside,
#    eager fp32 and then bf16 + torch.compile.
# Installs what it needs into .venv when missing (torch from the machine's own CUDA build if present).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/gpu}"
mkdir -p "$out"
if ! python -c "import pyro_sparse" 2>/dev/null; then
  python -m pip install -q -e ".[dev]" > "$out/install.log" 2>&1 || true
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
export PYRO_SPARSE_DATA="${PYRO_SPARSE_DATA:-/nonexistent}"
timeout 240 python -m pytest -q -x tests/test_sync_free.py tests/test_device.py -k cuda \
  > "$out/pytest_cuda.log" 2>&1
echo "pytest cuda: exit $?" | tee -a "$out/summary.txt"
timeout 240 python benchmarks/gpu_epoch.py --device cuda --epochs 2 --out "$out/gpu_epoch.json" \
  > "$out/gpu_epoch.log" 2>&1
echo "gpu_epoch fp32: exit $?" | tee -a "$out/summary.txt"
timeout 200 python benchmarks/gpu_epoch.py --device cuda --epochs 2 --bf16 --compile --nets vgg_like \
  --out "$out/gpu_epoch_bf16_compile.json" > "$out/gpu_epoch_bf16_compile.log" 2>&1
echo "gpu_epoch bf16+compile: exit $?" | tee -a "$out/summary.txt"
tail -n 3 "$out"/*.log
