#!/usr/bin/env bash
# What one lent GPU machine ran for issue 4 (kept so the figures can be traced and rerun):
#   the c10_mini benchmark (2 seeds side by side), a beta sweep of the attention weight on the
#   Real-to-Bin rows (3 values), and the full-width Real-to-Bin CIFAR-10 run, all at the same
#   time on one GPU (the small runs are launch-bound; the full-width images/s are measured while
#   they share the GPU). Each job is cut at BUDGET seconds; results land in $OUT.
# Usage (repo root, CIFAR-10 archives in .devdata/ or ../shared/data):
#   OUT=/tmp/out EP_FULL=8 BUDGET=500 bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; EP_FULL=${EP_FULL:-8}; BUDGET=${BUDGET:-400}; BETAS=${BETAS:-"1 10 30"}
mkdir -p "$OUT" /tmp/logs
data=$(cd benchmarks && python3 -c "from common import unpack_cifar10; print(unpack_cifar10())")
timeout "$BUDGET" python3 benchmarks/run_c10_mini.py --parallel 2 --set runtime.precision=32-true --data "$data" \
  --runs /tmp/c10 --results "$OUT/c10" > /tmp/logs/c10.log 2>&1 &
for b in $BETAS; do
  timeout "$BUDGET" python3 -m r2b.cli train --config benchmarks/c10_mini/beta_sweep.yaml \
    --set data.root="$data" --set stages.r2b_fp.loss.att="$b" --set stages.r2b_ban.loss.att="$b" \
    --set runtime.progress=false --set runtime.precision=32-true --out "/tmp/beta$b" > "/tmp/logs/beta$b.log" 2>&1 &
done
timeout "$BUDGET" python3 benchmarks/gpu_r2b_cifar10.py --epochs "$EP_FULL" --set runtime.precision=32-true --data "$data" \
  --out /tmp/full --results "$OUT/full" > /tmp/logs/full.log 2>&1 &
wait
cp /tmp/c10/*.log /tmp/logs/ 2>/dev/null
tar czf "$OUT/runs.tgz" --ignore-failed-read /tmp/logs /tmp/c10/*/results.json /tmp/c10/*/*/metrics.csv \
  /tmp/beta*/results.json /tmp/beta*/*/metrics.csv /tmp/full/results.json /tmp/full/*/metrics.csv \
  /tmp/*/config.yaml /tmp/c10/*/config.yaml 2>/dev/null
tail -n 3 /tmp/logs/*.log
