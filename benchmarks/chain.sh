#!/usr/bin/env bash
# Run a chain of trainings one after another (each waits for the previous run's metrics.json).
# Usage: benchmarks/chain.sh RUN_DIR "pyro-sparse train ... --out RUN_DIR" [RUN_DIR "cmd"] ...
# A step whose input run (the first argument pair's RUN_DIR) is still training is waited for.
set -u
while [ $# -ge 2 ]; do
  wait_for="$1"; cmd="$2"; shift 2
  while [ -n "$wait_for" ] && [ ! -f "$wait_for/metrics.json" ]; do sleep 20; done
  echo "$(date -u +%H:%M:%S) start: $cmd"
  eval "$cmd"
  echo "$(date -u +%H:%M:%S) done (rc=$?): $cmd"
done
