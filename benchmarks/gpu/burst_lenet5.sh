#!/usr/bin/env bash
# One GPU burst (issues 25 and 26), for a session lent a GPU machine with ~15 device minutes. Run from the repository
# root on the device with carry [".whl", ".gpuburst"] and a timeout of ~560 s:
#   bash benchmarks/gpu/burst_lenet5.sh
# Prepare here first: `bash benchmarks/gpu_check.sh --prepare` (wheels in .whl/) and MNIST's four idx files, gzipped,
# in .gpuburst/data/MNIST/raw/ (both ignored by git). Dry run on the CPU machine:
#   BURST_DEVICE=cpu BURST_PYTHON=.venv/bin/python BURST_SUBSET=600 BURST_DENSE_EPOCHS=1 BURST_DEADLINE=120 OUT=/tmp/burst bash benchmarks/gpu/burst_lenet5.sh
# Three parts, each under its own limit, each writing as it goes:
#   1. benchmarks/gpu_epoch.py, VGG-like k = 1 BB and DBB with bf16 + channels_last + torch.compile (the compiled
#      step was never timed after the unit hooks were made compile-safe), alone on the machine;
#   2. the CUDA tests (tests/infer/test_sync_free.py, tests/infer/test_device.py -k cuda) of the engine as split in issue 27,
#      beside the dense LeNet-5 stage of part 3 (tests check, they do not time);
#   3. the LeNet-5 paper-budget runs on real MNIST (5,000 training images held out): dense seeds 0 and 1 for
#      BURST_DENSE_EPOCHS (20) epochs, then BB seed 0 with the table's default recipe and with LeNet-500-300's BB recipe
#      (gate lr 0.1, linear decay, per-minibatch pi), and SVD seeds 0 and 1, four processes at once until
#      BURST_DEADLINE seconds after the start; each run directory comes back as a tarball to continue on the CPU with
#      `pyro-sparse train ... --resume --device cpu`.
set -uo pipefail
cd "$(dirname "$0")/../.."
t_start=$SECONDS
out="${OUT:-/tmp/burst_out}"
dev="${BURST_DEVICE:-cuda}"
py="${BURST_PYTHON:-python3}"
deadline="${BURST_DEADLINE:-520}"
mkdir -p "$out"
scratch=/tmp/burst_scratch  # logs, packed into $out/logs.tar.gz at the end ($OUT brings back 8 files at most)
mkdir -p "$scratch"
log="$scratch/all.log"
summary="$out/summary.txt"
if [ "$dev" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >> "$log" 2>&1
  export PYTHONPATH=/tmp/site
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$log" 2>&1
  nvidia-smi >> "$summary" 2>&1
fi
export PYTHONUNBUFFERED=1
"$py" -c "import torch, pyro, torch_pruning; print('torch', torch.__version__, 'pyro', pyro.__version__)" >> "$summary" 2>&1
git log --oneline -1 >> "$summary" 2>&1
note() { echo "[$((SECONDS - t_start)) s] $*" | tee -a "$summary"; }
note "installed"

# 1. compiled epoch, alone
timeout "${BURST_COMPILE_LIMIT:-110}" "$py" benchmarks/gpu_epoch.py --device "$dev" --epochs 2 \
  --examples "${BURST_EXAMPLES:-10000}" --nets vgg_like --methods bb dbb --bf16 --channels-last --compile \
  --out "$scratch/epoch_bf16_cl_compile.json" >> "$log" 2>&1
note "compile epoch: exit $?"

# 3a. dense LeNet-5 (two seeds at once) beside 2. the CUDA tests
runs=/tmp/burst_runs
rm -rf "$runs"; mkdir -p "$runs"
data=/tmp/burst_data
mkdir -p "$data/MNIST/raw"; for f in .gpuburst/data/MNIST/raw/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
sub=(); [ -n "${BURST_SUBSET:-}" ] && sub=(--subset "$BURST_SUBSET")
common=(--arch lenet5 --dataset mnist --data-root "$data" --val-size 5000 --device "$dev" --devices 1 --no-latency
        --progress-every 1000 "${sub[@]}")
train() { local name=$1; shift; "$py" -m pyro_sparse.cli train "$@" "${common[@]}" --out "$runs/$name" \
          > "$scratch/$name.log" 2>&1; echo "$name: exit $?" >> "$summary"; }
train dense5_s0 --method dense --epochs "${BURST_DENSE_EPOCHS:-20}" --seed 0 &
train dense5_s1 --method dense --epochs "${BURST_DENSE_EPOCHS:-20}" --seed 1 &
if [ "$dev" = cuda ]; then
  timeout 120 "$py" -m pytest -q -p no:cacheprovider --durations=10 tests/infer/test_sync_free.py tests/infer/test_device.py \
    -k cuda > "$scratch/pytest_cuda.log" 2>&1
  note "pytest cuda: exit $?"
fi
wait
note "dense done"

# 3b. four 200-epoch runs until the deadline
train bb5_s0 --method bb --epochs 200 --batch-size 100 --init-from "$runs/dense5_s0" --seed 0 &
train bb5_lin01_s0 --method bb --epochs 200 --batch-size 100 --lr-latent 0.1 --lr-schedule linear \
  --noise per-batch --init-from "$runs/dense5_s0" --seed 0 &
train svd5_s0 --method svd --epochs 200 --batch-size 100 --weight-threshold 3.0 --init-from "$runs/dense5_s0" --seed 0 &
train svd5_s1 --method svd --epochs 200 --batch-size 100 --weight-threshold 3.0 --init-from "$runs/dense5_s1" --seed 1 &
while [ $((SECONDS - t_start)) -lt "$deadline" ] && [ -n "$(jobs -r)" ]; do sleep 2; done
pkill -INT -f "out $runs/"; sleep 8; pkill -KILL -f "out $runs/"; wait
note "stopped the runs"
for r in "$runs"/*; do
  n=$(basename "$r"); echo "$n: $(wc -l < "$r/log.jsonl") epochs; last: $(tail -n 1 "$r/log.jsonl" | cut -c1-240)" >> "$summary"
done
tar -C "$runs" -czf "$out/dense5.tar.gz" dense5_s0 dense5_s1
for n in bb5_s0 bb5_lin01_s0 svd5_s0 svd5_s1; do tar -C "$runs" -czf "$out/$n.tar.gz" "$n"; done
cp "$summary" "$scratch/"; tar -C "$scratch" -czf "$out/logs.tar.gz" .
note "packed"
ls -la "$out" >> "$summary"
