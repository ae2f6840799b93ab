// matmul.h — single-precision matrix multiply for the CPU.
//
// C (M x N) = beta * C + op(A) (M x K) * op(B) (K x N), row-major, beta 0 or 1.
//   op(A)(m, k) = transA ? A[k * lda + m] : A[m * lda + k]
//   op(B)(k, n) = transB ? B[n * ldb + k] : B[k * ldb + n]
// Packed GotoBLAS-style blocking, a register-blocked micro-kernel (AVX-512,
// AVX2+FMA or portable C, picked at run time) and OpenMP threads over tiles of C.
//
// A linear layer y = x W^T with W stored (out, in):
//   sgemm(false, true, BT, OUT, IN, x, IN, W, IN, 0.f, y, OUT);
#pragma once
#include <cstdint>

namespace pyllama {

void sgemm(bool transA, bool transB, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc);

// C (M x N) = A (M x K) B^T with B stored (N, K) as bfloat16 bits (uint16) and M small
// (decoding with bf16 weights: half the bytes streamed per token). Accumulates in float32.
void sgemm_bf16_nt(int M, int N, int K, const float* A, int lda, const uint16_t* B, int ldb, float* C, int ldc);

// Plain triple loop (double accumulation) for tests.
void sgemm_reference(bool transA, bool transB, int M, int N, int K, const float* A, int lda, const float* B,
                     int ldb, float beta, float* C, int ldc);

}  // namespace pyllama
