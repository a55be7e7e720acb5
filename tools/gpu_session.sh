#!/usr/bin/env bash
# The GPU checks of one device call, prepared so a short loan is not spent typing: build for
# Hopper, run the CUDA tests, the GPU benchmarks and compute-sanitizer, and leave every log and
# JSON under $OUT (the device tool brings $OUT back; commit the JSON under bench/results/).
#
#   bash tools/gpu_session.sh all        # build, pytest -m cuda, benchmarks (~8 min on an H100/H200)
#   bash tools/gpu_session.sh sanitize   # build, then compute-sanitizer memcheck + racecheck on the op tests
#
# Each step has its own time limit, so one slow step cannot take the whole call; $OUT/summary.txt
# lists every step's exit status and seconds.
set -u
OUT=${OUT:?"set OUT to the folder that comes back"}
MODE=${1:-all}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
cd "$(dirname "$0")/.."

step() {  # step NAME SECONDS CMD...: runs CMD with a time limit, log in $OUT/NAME.log
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/$name.log"
  return $rc
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step build 300 pip install --no-build-isolation --no-deps . -q || exit 1
python -c "import json, weightkit; print(json.dumps(weightkit.build_info(), indent=1))" >"$OUT/build_info.json"

case "$MODE" in
  all)
    step pytest_cuda 240 python -m pytest -m cuda -q -p no:cacheprovider -rfE --junitxml="$OUT/pytest-cuda.xml"
    for family in newton_schulz trit_plane palette sparse_lowrank; do
      step "bench_$family" 150 python "bench/bench_$family.py" --device cuda --json "$OUT/$family.json"
    done
    step bench_rls 150 python bench/bench_rls.py --only synthetic --device cuda --max-minutes 2 --json "$OUT/rls.json"
    ;;
  sanitize)
    for tool in memcheck racecheck; do
      step "sanitizer_$tool" 240 compute-sanitizer --tool "$tool" --error-exitcode 9 \
        python -m pytest -m cuda -q -p no:cacheprovider -x tests/ops
    done
    ;;
  *)
    echo "unknown mode $MODE (all | sanitize)" >&2
    exit 2
    ;;
esac
