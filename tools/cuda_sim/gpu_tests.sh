#!/bin/sh
# The GPU tests of tests/ on the CPU emulator: builds pyllama with PYLLAMA_CUDA=SIM (every
# cuda/*.cu file on the emulator, the CUDA runtime and cuBLAS emulated by sim_host.cpp and
# sim_cublas.cpp) into $OUT, then runs the cuda-marked tests against that build.
#
#   tools/cuda_sim/gpu_tests.sh                        # every cuda-marked test (slow: ~15 min on 2 cores)
#   tools/cuda_sim/gpu_tests.sh -k "greedy or adamw"   # extra pytest arguments select tests
#   SIM_ASAN=1 tools/cuda_sim/gpu_tests.sh ...         # with AddressSanitizer and UBSan (slower)
#
# Needs cmake, a C++20 g++ (>= 10), python3 with pybind11, numpy and pytest (the test extras).
# What it proves and what it cannot: tools/cuda_sim/README.md ("The whole backend").
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
OUT=${SIM_OUT:-${TMPDIR:-/tmp}/pyllama_cuda_sim_pkg}
BUILD="$OUT/build"
GEN=""
command -v ninja >/dev/null 2>&1 && GEN="-G Ninja"
FLAGS=""
PRELOAD=""
if [ -n "$SIM_ASAN" ]; then
  BUILD="$OUT/build-asan"
  FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer"
  PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
fi
mkdir -p "$BUILD"
PYBIND=$("$PY" -m pybind11 --cmakedir)
# shellcheck disable=SC2086
cmake -S "$ROOT" -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release -DPYLLAMA_CUDA=SIM -DPYLLAMA_FORCE_PYTHON=ON \
  -DPYLLAMA_BUILD_TESTS=OFF -DPYLLAMA_BUILD_EXAMPLES=OFF -Dpybind11_DIR="$PYBIND" \
  -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_SHARED_LINKER_FLAGS="$FLAGS" >"$OUT/configure.log" 2>&1 ||
  { cat "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --target _core -j "$(nproc 2>/dev/null || echo 2)" >"$OUT/build.log" 2>&1 ||
  { tail -60 "$OUT/build.log"; exit 1; }
# the package: pyllama/*.py of this checkout with the emulated _core
PKG="$OUT/pkg"
rm -rf "$PKG"
mkdir -p "$PKG"
cp -R "$ROOT/pyllama" "$PKG/"
rm -f "$PKG"/pyllama/_core*.so "$PKG"/pyllama/_core*.pyd
cp "$BUILD"/_core*.so "$PKG/pyllama/"
CORE=$(ls "$PKG"/pyllama/_core*.so)
# an editable install of pyllama (its import hook comes before PYTHONPATH) would shadow it
(cd / && PYTHONPATH="$PKG" LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0 "$PY" -c "import pyllama, sys; sys.exit(pyllama.build_info()['cuda_archs'] != 'sim')") || {
  echo "gpu_tests.sh: '$PY' does not import the emulated build from $PKG (an editable install of" >&2
  echo "pyllama in this environment shadows PYTHONPATH): run it with a Python without one (PYTHON=...)" >&2
  exit 1
}
cd "$ROOT/tests"
# NCCL: the emulator's one-rank NCCL (sim_nccl.cpp) is exported by the extension itself
PYLLAMA_NCCL_LIBRARY="$CORE" PYTHONPATH="$PKG" LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYLLAMA_CUDA_SIM=1 \
  "$PY" -m pytest -p no:cacheprovider -m cuda -rs "$@"
