#!/bin/sh
# CPU emulation of the hand-written CUDA kernels of cuda/, for machines without a GPU:
#
#   tools/cuda_sim/run.sh            # every check; prints ALL OK when all passed
#   tools/cuda_sim/run.sh decode     # only the checks whose name contains "decode"
#   tools/cuda_sim/run.sh lab        # only the kernel lab's programs (cuda/lab), --check
#
# prep.py rewrites each cuda/FILE.cu for g++ (launches <<<...>>> become calls of
# sim::launch, __shared__ variables become per-block objects); sim_cuda.h (with the
# stand-ins include/cuda_runtime.h, include/cuda_bf16.h) supplies the CUDA built-ins and
# sim_runtime.cpp runs them: the blocks of a launch one after another, the threads of a
# block as fibers switched at barriers, __syncthreads and warp barriers (shuffles,
# __syncwarp, mma.sync, ldmatrix; one warp released at a time) checked for divergence,
# exited threads and deadlock; cp.async lands only at its wait_group (NaN before); shared
# memory and outputs start as NaN; built with AddressSanitizer and UBSan (out-of-bounds global or
# shared accesses, misaligned vector loads abort). The drivers test_FILE.cpp call the
# launchers of cuda/kernels.cuh and cuda/decode.cuh on awkward shapes and compare with
# double-precision references, and (test_cpu_twin.cpp) the float kernels with the CPU
# core's ops (csrc sources linked in). The kernel lab's programs (cuda/lab/*.cu: variants
# of the library's kernels, each checked against the library's default and a double
# reference) are built the same way, one executable each, and run with --check first.
# README.md lists what is covered and what is not.
# Needs g++ >= 10 and python3 (or $PYTHON); about 6.5 minutes on 2 cores, mostly the ASan
# builds (the kernel checks themselves about a minute).
# It checks indexing, masking, barriers and the algorithms, not GPU timing, memory
# ordering beyond the barriers, or races between blocks; the kernels still need
# tests/gpu/run.sh on a GPU.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${TMPDIR:-/tmp}/pyllama_cuda_sim
mkdir -p "$OUT"
CXX=${CXX:-g++}
FLAGS="-std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Wno-unknown-pragmas"
FLAGS="$FLAGS -I$HERE/include -I$HERE -I$ROOT/csrc/core -I$ROOT/csrc/cpu -I$ROOT/cuda"
# the kernel files under test (each with its driver test_*.cpp)
CU="flash_attention decode attention norm rope swiglu crossentropy embedding adamw elementwise matmul"
# headers that hold kernels (launches, dynamic shared memory): prepared like the .cu files; the
# prepared copy sits beside the prepared sources, so their #include finds it first
CUH="flash_tc"
# the kernel lab's programs (cuda/lab/NAME.cu, each with its own main)
LAB="flash_fwd_rows64 flash_dq_atomic attention_gemm matmul_tune"
CORE="cpu/kernels/ops_impl cpu/ops_dispatch cpu/matmul cpu/runtime cpu/adamw_cpu core/adamw core/rope core/llama_config"
JOBS=$(nproc 2>/dev/null || echo 2)
PY=${PYTHON:-python3}
for f in $CU; do "$PY" "$HERE/prep.py" "$ROOT/cuda/$f.cu" "$OUT/$f.cu.cpp"; done
for h in $CUH; do "$PY" "$HERE/prep.py" "$ROOT/cuda/$h.cuh" "$OUT/$h.cuh"; done
for p in $LAB; do "$PY" "$HERE/prep.py" "$ROOT/cuda/lab/$p.cu" "$OUT/lab_$p.cu.cpp"; done
{
  for f in $CU; do echo "$CXX $FLAGS -x c++ -c $OUT/$f.cu.cpp -o $OUT/$f.cu.o"; done
  for p in $LAB; do echo "$CXX $FLAGS -I$ROOT/cuda/lab -x c++ -c $OUT/lab_$p.cu.cpp -o $OUT/lab_$p.cu.o"; done
  for s in "$HERE"/sim_runtime.cpp "$HERE"/sim_host.cpp "$HERE"/sim_cublas.cpp "$HERE"/sim_nccl.cpp "$HERE"/main.cpp "$HERE"/test_*.cpp; do
    echo "$CXX $FLAGS -c $s -o $OUT/$(basename "$s" .cpp).o"
  done
  # the CPU core's twins of the kernels (test_cpu_twin.cpp): generic variant, no OpenMP
  for s in $CORE; do
    echo "$CXX -std=c++17 -O1 -g -DPYLLAMA_OPS_NS=ops_generic -I$ROOT/csrc/core -I$ROOT/csrc/cpu -c $ROOT/csrc/$s.cpp -o $OUT/core_$(echo "$s" | tr / _).o"
  done
} | xargs -P "$JOBS" -I{} sh -c '{}'
objs=""
for f in $CU; do objs="$objs $OUT/$f.cu.o"; done
for s in "$HERE"/sim_runtime.cpp "$HERE"/sim_host.cpp "$HERE"/sim_cublas.cpp "$HERE"/sim_nccl.cpp "$HERE"/main.cpp "$HERE"/test_*.cpp; do objs="$objs $OUT/$(basename "$s" .cpp).o"; done
for s in $CORE; do objs="$objs $OUT/core_$(echo "$s" | tr / _).o"; done
$CXX -fsanitize=address,undefined $objs -o "$OUT/cuda_sim" -ldl
# a lab program: its object, the kernel files (an archive: what it uses) and the emulator
rm -f "$OUT/libkernels.a"
ar rcs "$OUT/libkernels.a" $(for f in $CU; do echo "$OUT/$f.cu.o"; done)
for p in $LAB; do
  $CXX -fsanitize=address,undefined "$OUT/lab_$p.cu.o" "$OUT/libkernels.a" "$OUT/sim_runtime.o" "$OUT/sim_host.o" \
    "$OUT/sim_cublas.o" -o "$OUT/lab_$p" -ldl
done

# the lab's checks (those whose name contains the argument, if any), then the kernel checks
for p in $LAB; do
  case "lab_$p" in
    *"${1:-}"*)
      echo "== lab_$p --check"
      ASAN_OPTIONS=detect_leaks=0 "$OUT/lab_$p" --check ;;
  esac
done
case "${1:-}" in
  lab*) echo "ALL OK"; exit 0 ;;  # only the lab was asked for (set -e: a failure stopped above)
esac
ASAN_OPTIONS=detect_leaks=0 "$OUT/cuda_sim" "$@"
