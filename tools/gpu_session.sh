#!/usr/bin/env bash
# The GPU checks of one device call, prepared so a short loan is not spent typing: build for
# Hopper, run the CUDA tests and the GPU benchmarks (or compute-sanitizer), and bring back every
# log and JSON in one archive (the device tool returns at most 8 files from $OUT).
#
#   bash tools/gpu_session.sh all        # build, pytest -m cuda, GPU benchmarks: <= 540 s
#   bash tools/gpu_session.sh sanitize   # build, compute-sanitizer memcheck/racecheck on the op tests
#
# Run it with the device tool's timeout_s=600. Steps run in priority order, each with its own time
# limit (they add up to 540 s), so a slow step costs only its own share; $OUT/summary.txt lists
# each step's exit status and seconds and $OUT/results.tar.gz holds the logs and benchmark JSON
# (commit the JSON under bench/results/<device>/).
set -u
OUT=${OUT:?"set OUT to the folder that comes back"}
MODE=${1:-all}
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export WEIGHTKIT_CUDA=ON  # fail the build rather than build a CPU-only package
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PYTHONUNBUFFERED=1
[[ -d /usr/local/cuda/bin ]] && export PATH=/usr/local/cuda/bin:$PATH
cd "$(dirname "$0")/.."

step() {  # step NAME SECONDS CMD...: CMD with a time limit, its log in the archive
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$OUT/summary.txt"
  tail -n 3 "$WORK/$name.log"
  tar -czf "$OUT/results.tar.gz" -C "$WORK" .  # after every step: a killed call still brings back the rest
  return $rc
}

nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1
step build 180 "$PY" -m pip install --no-build-isolation --no-deps . -q || exit 1
"$PY" -c "import json, weightkit; print(json.dumps(weightkit.build_info(), indent=1))" >"$WORK/build_info.json" 2>&1

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfE)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 60)  # one hung kernel cannot eat the step

case "$MODE" in
  all)
    step pytest_cuda 120 "${PYTEST[@]}" -m cuda --junitxml="$WORK/pytest-cuda.xml"
    step bench_palette 60 "$PY" bench/bench_palette.py --device cuda --no-mse --json "$WORK/palette.json"
    step bench_trit_plane 45 "$PY" bench/bench_trit_plane.py --device cuda --json "$WORK/trit_plane.json"
    step bench_newton_schulz 45 "$PY" bench/bench_newton_schulz.py --device cuda --json "$WORK/newton_schulz.json"
    step bench_sparse_lowrank 45 "$PY" bench/bench_sparse_lowrank.py --device cuda \
      --json "$WORK/sparse_lowrank.json"
    step bench_rls 45 "$PY" bench/bench_rls.py --only synthetic --device cuda --max-minutes 0.5 \
      --json "$WORK/rls.json"
    ;;
  sanitize)
    # The caching allocator hides out-of-bounds accesses inside its blocks from memcheck.
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    if ! compute-sanitizer --version >"$WORK/sanitizer_version.txt" 2>&1; then
      echo "compute-sanitizer unavailable" | tee -a "$OUT/summary.txt"
    fi
    step sanitizer_memcheck 180 compute-sanitizer --tool memcheck --error-exitcode 9 \
      "${PYTEST[@]}" -m cuda -x tests/ops/test_palette_cuda.py tests/ops/test_tcq.py tests/ops/test_rls.py \
      tests/ops/test_sparse_lowrank.py tests/ops/test_trit_plane.py tests/ops/test_newton_schulz.py
    step sanitizer_racecheck 180 compute-sanitizer --tool racecheck --error-exitcode 9 \
      "${PYTEST[@]}" -m cuda -x tests/ops/test_palette_cuda.py -k "hadamard and not 14336 or tcq_matches"
    ;;
  *)
    echo "unknown mode $MODE (all | sanitize)" >&2
    exit 2
    ;;
esac
