#!/usr/bin/env bash
# The one prepared GPU check (issues 16 and 25), for a session that is lent a GPU machine (nvidia-h200: Python 3.12
# with torch, pytest and hypothesis, no network; about 6 minutes). Two steps:
#   1. here, on the CPU machine:  bash benchmarks/gpu_check.sh --prepare
#      (downloads the pure-Python wheels the GPU image lacks into .whl/, which .gitignore keeps out of git)
#   2. device run, with carry [".whl"] and a timeout of ~420 s:  bash benchmarks/gpu_check.sh
#      -> $OUT/ (or benchmarks/gpu/): summary.txt (nvidia-smi, exit codes), pytest_cuda.log, epoch_fp32.json,
#         epoch_bf16_cl.json, epoch_bf16_cl_compile.json and all.log (install and benchmark output)
# What it checks: the CUDA tests (steps free of host-device syncs under torch.cuda.set_sync_debug_mode("error");
# every method trains, compacts, saves and resumes on cuda: tests/infer/test_device.py) and benchmarks/gpu_epoch.py
# (epoch seconds per method, VGG-like k = 1 and LeNet-500-300, plain PyTorch beside, on 10,000 synthetic examples per
# timed epoch extrapolated to the full one: fp32; bf16 + channels_last; bf16 + channels_last + compile). Each part
# has its own time limit and writes its rows as it goes, so a slow part costs only its own rows.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  python3 -m pip download -q --no-deps -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2 torch-pruning==1.6.1
  ls .whl
  exit 0
fi
out="${OUT:-benchmarks/gpu}"
mkdir -p "$out"
log="$out/all.log"
{
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
} > "$log" 2>&1
echo "install: exit $?" >> "$out/summary.txt"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYRO_SPARSE_DATA=/nonexistent
nvidia-smi >> "$out/summary.txt" 2>&1
python3 -c "import torch, pyro, torch_pruning; print('torch', torch.__version__, 'pyro', pyro.__version__)" \
  >> "$out/summary.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...: run under a time limit, record its exit code
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/summary.txt"
}
if [ -z "${GPU_CHECK_NO_TESTS:-}" ]; then
  t0=$SECONDS
  timeout 100 python3 -m pytest -q -p no:cacheprovider --durations=10 tests/infer/test_sync_free.py tests/infer/test_device.py \
    -k cuda > "$out/pytest_cuda.log" 2>&1
  echo "pytest cuda: exit $? in $((SECONDS - t0)) s (limit 100 s)" | tee -a "$out/summary.txt"
fi
# a dry run on the CPU machine: GPU_CHECK_DEVICE=cpu GPU_CHECK_EXAMPLES=200 OUT=/tmp/gc bash benchmarks/gpu_check.sh
E="python3 benchmarks/gpu_epoch.py --device ${GPU_CHECK_DEVICE:-cuda} --epochs 2 --examples ${GPU_CHECK_EXAMPLES:-10000}"
step "fp32" 100 $E --nets vgg_like lenet500 --methods bb svd sbp dbb --out "$out/epoch_fp32.json"
step "bf16+channels_last" 45 $E --nets vgg_like --methods bb svd sbp dbb --bf16 --channels-last \
  --out "$out/epoch_bf16_cl.json"
step "bf16+channels_last+compile" "${GPU_CHECK_COMPILE_LIMIT:-110}" $E --nets vgg_like --methods bb dbb svd sbp --bf16 --channels-last --compile \
  --out "$out/epoch_bf16_cl_compile.json"
grep '^{"arch"' "$log" >> "$out/summary.txt"
