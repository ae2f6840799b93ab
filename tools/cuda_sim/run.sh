#!/bin/sh
# CPU emulation of the kernels of cuda/flash_attention.cu, for machines without a GPU:
#
#   tools/cuda_sim/run.sh
#
# Every CUDA thread of a block runs as an OS thread; __syncthreads is a block barrier
# that aborts when threads arrive from different lines; __shfl_xor_sync and
# mma.sync.m16n8k16 (emulated from the PTX ISA fragment layout) exchange through
# per-warp buffers; shared memory is a buffer of exactly the launch's size, NaN-filled
# at each block start; built with AddressSanitizer and UBSan (out-of-bounds global or
# shared accesses, misaligned float4 / 32-bit loads abort). Results are compared with a
# double-precision causal GQA attention (forward, lse, backward). Needs g++ >= 10.
# It checks indexing, masking, barriers and the algorithm, not GPU timing or memory
# ordering beyond the barriers; the kernels still need tests/gpu/run.sh on a GPU.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$HERE/../../cuda/flash_attention.cu
OUT=${TMPDIR:-/tmp}/pyllama_cuda_sim
mkdir -p "$OUT"
# the kernels: the anonymous namespace of flash_attention.cu, up to the launchers
start=$(grep -n '^namespace {' "$SRC" | head -1 | cut -d: -f1)
end=$(grep -n '^// -* launchers' "$SRC" | head -1 | cut -d: -f1)
{
  echo "namespace pyllama { namespace gpu {"
  sed -n "$((start + 1)),$((end - 1))p" "$SRC" |
    sed "s/extern __shared__ float4 smem4\[\];/float4* smem4 = reinterpret_cast<float4*>(sim_smem);/"
  echo "}}"
} > "$OUT/kernels_extracted.inc"
g++ -std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -pthread -Wno-unknown-pragmas \
  -I"$OUT" "$HERE/flash_sim.cpp" -o "$OUT/flash_sim"
"$OUT/flash_sim"
