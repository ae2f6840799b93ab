#!/usr/bin/env bash
# One-shot GPU check for the CUDA backend (under 10 minutes on an H100/H200, 16 cores,
# no network): build the package in place (and the kernel lab's programs, cuda/lab), run the
# CUDA tests, the GPU benchmark and the lab's timings, and keep every log in OUTDIR.
#
#   tests/gpu/run.sh OUTDIR
#
# Needs: nvcc + cuBLAS (CUDA toolkit at /usr/local/cuda), Python with scikit-build-core,
# pybind11, cmake, ninja, numpy, torch, transformers (and pytest for the test step;
# without it the pytest-free `bench/gpu.py --check` runs instead); nvidia-nccl-cu13 (or
# PYLLAMA_NCCL_LIBRARY) for the NCCL step (about a minute).
# Logs (7 files: the device tool brings back at most 8): OUTDIR/summary.txt,
# OUTDIR/{build,tests,nccl,bench,sanitizer}.log (build.log starts with the environment; bench.log
# also holds the profile and the kernel lab's output), OUTDIR/bench.json. Exit status: non-zero when the build, the tests or memcheck fail.
# The whole script keeps to PYLLAMA_GPU_TOTAL_S seconds (default 570): each step's
# timeout is its cap or what is left, and later steps are skipped with a note.
# Set PYLLAMA_GPU_ARCHS to change the architectures built (default: 90, the machine's own).
set -uo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python3}
export PATH="/usr/local/cuda/bin:$PATH"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
ARCHS=${PYLLAMA_GPU_ARCHS:-90}
status=0
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
# One deadline for the whole script (the device tool stops a command at 10 minutes):
# every step's timeout is its own cap or what is left of TOTAL, whichever is smaller.
TOTAL=${PYLLAMA_GPU_TOTAL_S:-570}
cap() {  # cap SECONDS -> the timeout to use now (0 when the time is spent)
  local left=$(( TOTAL - ($(date +%s) - START) ))
  [ "$left" -lt 0 ] && left=0
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
run_step() {  # run_step NAME CAP cmd... : skips with a note when no time is left
  local name=$1 c; c=$(cap "$2"); shift 2
  if [ "$c" -lt 10 ]; then summary "$name: skipped (out of time)"; return 124; fi
  timeout "$c" "$@"
}
: > "$OUT/summary.txt"
START=$(date +%s)

echo "== environment" | tee "$OUT/build.log"
{
  date -u
  nvidia-smi || true
  nvcc --version || true
  "$PY" --version
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" || true
  ls /usr/local/cuda/lib64 | grep -i cublas || echo "no cuBLAS in /usr/local/cuda/lib64"
} 2>&1 | tee -a "$OUT/build.log"

echo "== build (pip install --no-build-isolation -e ., CUDA archs $ARCHS, with the kernel lab)" | tee -a "$OUT/build.log"
cd "$ROOT"
if timeout "$(cap 300)" env PYLLAMA_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . \
    -Cbuild-dir=build/gpu -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCHS" -Ccmake.define.PYLLAMA_BUILD_LAB=ON \
    2>&1 | tee -a "$OUT/build.log"; then
  summary "build: ok ($(( $(date +%s) - START ))s)"
else
  summary "build: FAILED (see build.log)"
  exit 1
fi
grep -E "pyllama: CUDA backend|cuBLAS" "$OUT/build.log" | tail -2 | tee -a "$OUT/summary.txt"

cd "$OUT"  # test the installed package, not the source folder
"$PY" -c "import pyllama, json; print(json.dumps(pyllama.build_info()))" 2>&1 | tee -a "$OUT/summary.txt"
if ! "$PY" -c "import pyllama, sys; sys.exit(0 if pyllama.build_info()['cuda_available'] else 1)"; then
  summary "NO USABLE GPU: build_info()['cuda_available'] is False, so every GPU test will skip (see build.log)"
  status=1
fi

HAVE_PYTEST=0
"$PY" -c "import pytest" 2>/dev/null && HAVE_PYTEST=1
# pytest_step NAME LOG CAP pytest-args... : runs pytest into LOG, reports in summary.txt
pytest_step() {
  local name=$1 log=$2 c=$3; shift 3
  if run_step "$name" "$c" "$PY" -m pytest "$@" -v -rs 2>&1 | tee -a "$log"; then
    summary "$name: ok ($(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -1))"
  else
    summary "$name: FAILED ($(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -1))"
    grep -E "^(FAILED|ERROR)" "$log" | tee -a "$OUT/summary.txt"
    status=1
  fi
}

echo "== CUDA tests (every test marked cuda, except the NCCL ones: a later step)" | tee "$OUT/tests.log"
if [ "$HAVE_PYTEST" = 1 ]; then
  pytest_step tests "$OUT/tests.log" 240 "$ROOT/tests" -m "cuda and not nccl" --durations=10
else
  summary "tests: pytest is not installed here; running bench/gpu.py --check instead"
  if run_step check 120 "$PY" "$ROOT/bench/gpu.py" --check 2>&1 | tee -a "$OUT/tests.log"; then
    summary "check: ok"
  else
    summary "check: FAILED (see tests.log)"
    status=1
  fi
fi

echo "== benchmark" | tee "$OUT/bench.log"
# bench/gpu.py keeps to its --budget (170 s: optional rows, torch.compile last, are skipped or cut
# off when it is spent); the timeout leaves 40 s for start-up and the last row's overrun.
if run_step bench 210 "$PY" "$ROOT/bench/gpu.py" --budget 170 --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/bench.log"; then
  summary "bench: ok"
else
  summary "bench: FAILED or timed out (see bench.log; not counted as a test failure)"
fi
grep -E '^# (train|decode|total)|skipped|failed' "$OUT/bench.log" | tee -a "$OUT/summary.txt"
# where the time goes: per-op CUDA-event timings (training step, eager decode steps), into bench.log
echo "== profile (bench/gpu.py --profile)" | tee -a "$OUT/bench.log"
if run_step profile 90 "$PY" "$ROOT/bench/gpu.py" --profile 2>&1 | tee -a "$OUT/bench.log"; then
  summary "profile: ok"
else
  summary "profile: FAILED or timed out (see bench.log)"
fi
grep -E '^# profile:' "$OUT/bench.log" | tee -a "$OUT/summary.txt"

# The kernel lab (cuda/lab/README.md): the variants that left the library because no GPU had
# timed them faster, each checked against the library's kernel on this GPU and then timed
# beside it ("variant / library" < 1: the variant is faster). Into bench.log; not counted.
echo "== kernel lab (build/gpu/lab: each variant checked, then timed against the library)" | tee -a "$OUT/bench.log"
for prog in flash_fwd_rows64 flash_dq_atomic attention_gemm matmul_tune; do
  exe="$ROOT/build/gpu/lab/$prog"
  if [ ! -x "$exe" ]; then
    summary "lab $prog: not built (see build.log)"
    continue
  fi
  echo "== lab: $prog" >> "$OUT/bench.log"
  if run_step "lab $prog" 60 "$exe" >> "$OUT/bench.log" 2>&1; then
    summary "lab $prog: ok"
  else
    summary "lab $prog: FAILED or timed out (see bench.log; not counted)"
  fi
done
grep -E '^(time |FAIL)' "$OUT/bench.log" | tee -a "$OUT/summary.txt"

echo "== NCCL tests (the GPU tests of tests/test_distributed_nccl.py, marked nccl; its CPU tests run in CI)" \
  | tee "$OUT/nccl.log"
"$PY" -c "from pyllama import distributed as d; print('NCCL library:', d.load_nccl())" 2>&1 | tee -a "$OUT/nccl.log" \
  | tail -1 | tee -a "$OUT/summary.txt"
if [ "$HAVE_PYTEST" = 1 ]; then
  pytest_step "nccl tests" "$OUT/nccl.log" 150 "$ROOT/tests/test_distributed_nccl.py" -m nccl --durations=5
else
  summary "nccl tests: skipped (no pytest)"
fi

# Out-of-bounds / race check of every kernel (bench/gpu.py --check: a small model, every
# training attention and decode path, cuda_check_ops) with what time is left.
ELAPSED=$(( $(date +%s) - START ))
if command -v compute-sanitizer >/dev/null && [ $(( TOTAL - ELAPSED )) -ge 60 ]; then
  echo "== compute-sanitizer memcheck (bench/gpu.py --check)" | tee "$OUT/sanitizer.log"
  if run_step memcheck 300 compute-sanitizer --tool memcheck --error-exitcode 3 \
      "$PY" "$ROOT/bench/gpu.py" --check 2>&1 | tail -60 | tee -a "$OUT/sanitizer.log"; then
    summary "memcheck: ok"
  else
    summary "memcheck: FAILED or timed out (see sanitizer.log)"
    status=1
  fi
else
  summary "memcheck: skipped (no compute-sanitizer or out of time, ${ELAPSED}s elapsed)"
fi

# Nsight Compute on one eager batch-1 decode step (its 5 kernels a layer and the logits kernel),
# appended to bench.log, when ncu is installed and time is left
ELAPSED=$(( $(date +%s) - START ))
if command -v ncu >/dev/null && [ $(( TOTAL - ELAPSED )) -ge 60 ]; then
  echo "== ncu: one eager batch-1 bf16 decode step (fused kernels)" | tee -a "$OUT/bench.log"
  if run_step ncu 120 ncu --kernel-name regex:'fused_gemv|decode_attn' --launch-count 61 --csv \
      --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__registers_per_thread \
      "$PY" "$ROOT/bench/gpu.py" --eager-decode 2 >> "$OUT/bench.log" 2>&1; then
    summary "ncu: ok (bench.log)"
  else
    summary "ncu: FAILED or timed out (see bench.log; not counted)"
  fi
else
  summary "ncu: skipped (no ncu or out of time)"
fi

summary "total: $(( $(date +%s) - START ))s, status $status"
exit $status
