#!/usr/bin/env bash
# Build weightkit with CUDA through its real CMake path, against the torch the GPU machine runs
# (2.11.0+cu130), on a machine without a GPU: the package's configure, compile and link steps are
# then known to work before a short GPU loan is spent on them.
#
#   bash tools/check_cuda_build.sh [TORCH_VERSION]     # default 2.11.0; ~3 min on 2 cores
#
# A CUDA build of torch cannot be imported without its nvidia-* runtime packages (GBs), so the
# script unpacks the wheel (headers, CMake files, libraries) and stands in a tiny `torch` module
# that answers the three questions CMakeLists.txt asks (cmake prefix, version, CUDA). After
# linking it checks that every symbol the module needs is defined by that torch's libraries.
# Needs nvcc (13.x for cu130 wheels), cmake, ninja, pybind11 and network access to PyPI.
set -euo pipefail
TORCH_VERSION=${1:-2.11.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${WORK:-}" ]]; then  # a temporary folder (~2 GB unpacked) unless WORK names one to keep
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
PY=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}
echo "check_cuda_build: torch $TORCH_VERSION, work dir $WORK"

"$PY" -m pip download -q "torch==$TORCH_VERSION" --no-deps --only-binary=:all: -d "$WORK/wheel"
WHEEL=$(ls "$WORK"/wheel/torch-*.whl)
(cd "$WORK" && "$PY" -m zipfile -e "$WHEEL" unpacked >/dev/null)  # python's unzip: no extra tool
TORCH_DIR=$WORK/unpacked/torch
FULL_VERSION=$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$TORCH_DIR/version.py")
CUDA_VERSION=$(sed -n "s/^cuda: Optional\[str\] = '\(.*\)'/\1/p" "$TORCH_DIR/version.py")
if [[ -z "$CUDA_VERSION" ]]; then
  echo "check_cuda_build: torch $FULL_VERSION from PyPI is not a CUDA build" >&2
  exit 1
fi

mkdir -p "$WORK/shim/torch"
cat >"$WORK/shim/torch/__init__.py" <<EOF
# Stand-in for torch $FULL_VERSION (unpacked, not importable without its CUDA runtime packages).
__version__ = "$FULL_VERSION"
class version:
    cuda = "$CUDA_VERSION"
class utils:
    cmake_prefix_path = "$TORCH_DIR/share/cmake"
EOF

# Where nvcc's toolkit lives (nvcc may be a wrapper script outside it): its libcudart is checked below.
CUDA_ROOT=$("$NVCC" -v -x cu -E /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
CUDA_ROOT=$(cd "$CUDA_ROOT" && pwd)  # TOP is <root>/bin/..

mkdir -p "$WORK/build"
cd "$WORK/build"
PYTHONPATH="$WORK/shim" TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} cmake -G Ninja "$ROOT" \
  -DPython_EXECUTABLE="$(command -v "$PY")" -DWEIGHTKIT_CUDA=ON -DSKBUILD_PROJECT_VERSION=0.0.0 \
  >configure.log 2>&1 || { tail -n 40 configure.log; echo "check_cuda_build: configure failed" >&2; exit 1; }
ninja >build.log 2>&1 || { grep -E -A8 "error|FAILED" build.log | head -n 80; echo "check_cuda_build: build failed" >&2; exit 1; }
MODULE=$(ls "$WORK"/build/_C*.so)

# Every strong undefined symbol must come from torch's libraries, the CUDA runtime, the C/C++
# runtime or Python (resolved by the interpreter at import).
nm -D --undefined-only "$MODULE" | awk '$1 == "U" {sub(/@.*/, "", $2); print $2}' | sort -u >needed.txt
for lib in "$TORCH_DIR"/lib/*.so* "$CUDA_ROOT"/lib64/libcudart.so* \
           $(ldd "$MODULE" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}'); do
  nm -D --defined-only "$lib" 2>/dev/null | awk '{sub(/@.*/, "", $3); print $3}'
done | sort -u >defined.txt
MISSING=$(comm -23 needed.txt defined.txt | grep -v -E '^_?Py' || true)
if [[ -n "$MISSING" ]]; then
  echo "check_cuda_build: symbols not defined by torch $FULL_VERSION:" >&2
  echo "$MISSING" | head -n 20 >&2
  exit 1
fi
echo "check_cuda_build: OK, $(basename "$MODULE") built with CUDA $CUDA_VERSION against torch $FULL_VERSION" \
     "($(wc -l <needed.txt) symbols resolved)"
