#!/usr/bin/env bash
# The GPU checks and figures in one go, on a machine with CUDA (docs/benchmarks.md, "On a GPU"):
#   bash bench/gpu.sh            # logs and summaries under $OUT, else ./gpu-check/
# Six files come back: four logs and two summaries (a device's $OUT returns a few files only).
# 1. `pytest -m cuda`: every stage on the GPU (tests/gpu/test_cuda.py);
# 2. the compositor: Cython threads against torch on the CPU and on CUDA (bench/synth.py);
# 3. pill_noniid and pill_detect with device=cuda from an empty cache, wall time of each.
# Each step has its own time limit and the script goes on after a failure; it exits non-zero if
# any step failed. FEDRAY_CACHE is a fresh folder unless set.
set -u
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE="${WANDB_MODE:-offline}" RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export FEDRAY_CACHE="${FEDRAY_CACHE:-$(mktemp -d)}"
runs=$(mktemp -d)  # the runs' own folders; their summaries are copied to $out
threads=$(nproc)
failed=0

step() {  # step NAME LIMIT_S COMMAND...: run, log to $out/NAME.log, print the wall time
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "== $name: rc=$rc, $(($(date +%s) - start)) s (log: $out/$name.log)"
  [ "$rc" -eq 0 ] || failed=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || exit 2
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'" || exit 2

step tests 300 python3 -m pytest -q -m cuda tests/gpu -p no:cacheprovider
tail -n 3 "$out/tests.log"
step synth 120 python3 bench/synth.py --scenes 64 --size 640 --threads "$threads" --repeats 3 \
  --paths cython,torch-cpu,torch-cuda
tail -n 4 "$out/synth.log"
step noniid 600 python3 launch.py +experiment=pill_noniid logger=jsonl logger.plots=false \
  device=cuda hydra.run.dir="$runs/noniid"
grep -E "pretrained:|head init|done:" "$out/noniid.log"
cp "$runs/noniid/summary.json" "$out/noniid_summary.json" 2>/dev/null
step detect 600 python3 launch.py +experiment=pill_detect logger=jsonl device=cuda \
  hydra.run.dir="$runs/detect"
grep -E "detect: synthetic val" "$out/detect.log"
cp "$runs/detect/summary.json" "$out/detect_summary.json" 2>/dev/null
exit "$failed"
