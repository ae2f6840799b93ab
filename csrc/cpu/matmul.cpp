// matmul.cpp — see matmul.h. Blocking: C is cut into MC x NC tiles that threads
// take independently; for each KC slice a thread packs its A block into MR-row
// strips and its B block into NR-column strips (zero-padded), then runs the
// MR x NR micro-kernel over every strip pair.
#include "matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.h"
#include "runtime.h"
#ifdef PYLLAMA_HAVE_OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PYLLAMA_X86 1
#endif

namespace pyllama {

namespace {

constexpr int MR = 6;
constexpr int MC_MAX = 144;  // rows of A per block (multiple of MR)
constexpr int KC_MAX = 384;  // depth per block (multiple of 8)
constexpr int NC_MAX = 1024; // columns of B per panel

// ---------------------------------------------------------------- packing
// A block (mc x kc) -> strips of MR rows: strip s holds, for each p, MR values a(s*MR + i, p).
void pack_a(bool trans, const float* A, int lda, int m0, int k0, int mc, int kc, float* out) {
  for (int s = 0; s < mc; s += MR) {
    int rows = std::min(MR, mc - s);
    if (trans) {  // column m of A^T is contiguous over m: read MR neighbours per p
      for (int p = 0; p < kc; p++) {
        const float* src = A + (size_t)(k0 + p) * lda + m0 + s;
        for (int i = 0; i < rows; i++) out[p * MR + i] = src[i];
        for (int i = rows; i < MR; i++) out[p * MR + i] = 0.f;
      }
    } else {  // rows of A are contiguous over k: stream each row once
      for (int i = 0; i < rows; i++) {
        const float* src = A + (size_t)(m0 + s + i) * lda + k0;
        for (int p = 0; p < kc; p++) out[p * MR + i] = src[p];
      }
      for (int i = rows; i < MR; i++)
        for (int p = 0; p < kc; p++) out[p * MR + i] = 0.f;
    }
    out += (size_t)kc * MR;
  }
}

// B block (kc x nc) -> strips of NR columns: strip s holds, for each p, NR values b(p, s*NR + j).
template <int NR>
void pack_b(bool trans, const float* B, int ldb, int k0, int n0, int kc, int nc, float* out, int s_begin, int s_end) {
  out += (size_t)s_begin * kc * NR;
  for (int s = s_begin * NR; s < nc && s < s_end * NR; s += NR) {
    int cols = std::min(NR, nc - s);
    if (!trans) {
      for (int p = 0; p < kc; p++) {
        const float* src = B + (size_t)(k0 + p) * ldb + n0 + s;
        float* dst = out + p * NR;
        std::memcpy(dst, src, sizeof(float) * cols);
        for (int j = cols; j < NR; j++) dst[j] = 0.f;
      }
    } else {
      for (int j = 0; j < cols; j++) {
        const float* src = B + (size_t)(n0 + s + j) * ldb + k0;
        for (int p = 0; p < kc; p++) out[p * NR + j] = src[p];
      }
      for (int j = cols; j < NR; j++)
        for (int p = 0; p < kc; p++) out[p * NR + j] = 0.f;
    }
    out += (size_t)kc * NR;
  }
}

// ---------------------------------------------------------------- micro-kernels
// c (MR x NR, row stride ldc) = (accumulate ? c : 0) + a_strip * b_strip
template <int NR>
void kernel_generic(int kc, const float* a, const float* b, float* c, int ldc, bool accumulate) {
  float acc[MR][NR] = {};
  for (int p = 0; p < kc; p++) {
    for (int i = 0; i < MR; i++) {
      float ai = a[p * MR + i];
      for (int j = 0; j < NR; j++) acc[i][j] += ai * b[p * NR + j];
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0.f) + acc[i][j];
}

#ifdef PYLLAMA_X86
__attribute__((target("avx2,fma"))) void kernel_avx2(int kc, const float* a, const float* b, float* c, int ldc,
                                                      bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
         c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
         c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
         c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int p = 0; p < kc; p++) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 t;
    t = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(t, b0, c00); c01 = _mm256_fmadd_ps(t, b1, c01);
    t = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(t, b0, c10); c11 = _mm256_fmadd_ps(t, b1, c11);
    t = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(t, b0, c20); c21 = _mm256_fmadd_ps(t, b1, c21);
    t = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(t, b0, c30); c31 = _mm256_fmadd_ps(t, b1, c31);
    t = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(t, b0, c40); c41 = _mm256_fmadd_ps(t, b1, c41);
    t = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(t, b0, c50); c51 = _mm256_fmadd_ps(t, b1, c51);
    a += MR;
    b += 16;
  }
  __m256 r[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < MR; i++) {
    float* ci = c + (size_t)i * ldc;
    if (accumulate) {
      r[i][0] = _mm256_add_ps(r[i][0], _mm256_loadu_ps(ci));
      r[i][1] = _mm256_add_ps(r[i][1], _mm256_loadu_ps(ci + 8));
    }
    _mm256_storeu_ps(ci, r[i][0]);
    _mm256_storeu_ps(ci + 8, r[i][1]);
  }
}

__attribute__((target("avx512f"))) void kernel_avx512(int kc, const float* a, const float* b, float* c, int ldc,
                                                       bool accumulate) {
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(),
         c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(),
         c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps(),
         c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  for (int p = 0; p < kc; p++) {
    __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
    __m512 t;
    t = _mm512_set1_ps(a[0]); c00 = _mm512_fmadd_ps(t, b0, c00); c01 = _mm512_fmadd_ps(t, b1, c01);
    t = _mm512_set1_ps(a[1]); c10 = _mm512_fmadd_ps(t, b0, c10); c11 = _mm512_fmadd_ps(t, b1, c11);
    t = _mm512_set1_ps(a[2]); c20 = _mm512_fmadd_ps(t, b0, c20); c21 = _mm512_fmadd_ps(t, b1, c21);
    t = _mm512_set1_ps(a[3]); c30 = _mm512_fmadd_ps(t, b0, c30); c31 = _mm512_fmadd_ps(t, b1, c31);
    t = _mm512_set1_ps(a[4]); c40 = _mm512_fmadd_ps(t, b0, c40); c41 = _mm512_fmadd_ps(t, b1, c41);
    t = _mm512_set1_ps(a[5]); c50 = _mm512_fmadd_ps(t, b0, c50); c51 = _mm512_fmadd_ps(t, b1, c51);
    a += MR;
    b += 32;
  }
  __m512 r[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < MR; i++) {
    float* ci = c + (size_t)i * ldc;
    if (accumulate) {
      r[i][0] = _mm512_add_ps(r[i][0], _mm512_loadu_ps(ci));
      r[i][1] = _mm512_add_ps(r[i][1], _mm512_loadu_ps(ci + 16));
    }
    _mm512_storeu_ps(ci, r[i][0]);
    _mm512_storeu_ps(ci + 16, r[i][1]);
  }
}
#endif

using Kernel = void (*)(int, const float*, const float*, float*, int, bool);

struct alignas(64) PackBuffers {
  std::vector<float> a, b;
};

// Per-thread pack buffers, allocated on a thread's first multiply and reused.
PackBuffers& thread_buffers() {
  thread_local PackBuffers buf;
  return buf;
}

float* aligned_ptr(std::vector<float>& v, size_t n) {
  if (v.size() < n + 16) v.resize(n + 16);
  uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int round_up(int a, int b) { return ceil_div(a, b) * b; }

// GotoBLAS loop order: for each NC-column panel and KC-deep slice of B, the team packs
// the B panel once (shared), then threads take MC-row blocks of A (packed privately)
// and run the micro-kernel over every MR x NR tile of the block. Blocks are sized so
// every thread gets the same number. Called from inside a parallel region (attention
// runs one sgemm per head on each thread) it runs on the calling thread alone.
template <int NR>
void sgemm_impl(Kernel kernel, bool transA, bool transB, int M, int N, int K, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc) {
  if (K == 0) {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        float& c = C[(size_t)i * ldc + j];
        c = beta == 0.f ? 0.f : c;
      }
    return;
  }
  int nth = 1;
#ifdef PYLLAMA_HAVE_OPENMP
  if (!omp_in_parallel() && (double)M * N * K > 2e5) nth = omp_get_max_threads();
#endif
  const int nk = ceil_div(K, KC_MAX);
  const int KC = std::min(KC_MAX, round_up(ceil_div(K, nk), 8));
  const int NC = std::min(NC_MAX, round_up(N, NR));
  const int mblocks = round_up(ceil_div(M, MC_MAX), nth);
  const int MC = std::min(MC_MAX, round_up(ceil_div(M, mblocks), MR));
  const int nmb = ceil_div(M, MC);
  float* pb = aligned_ptr(thread_buffers().b, (size_t)KC_MAX * NC_MAX);  // the caller's; shared by the team

#pragma omp parallel num_threads(nth) if (nth > 1)
  {
    float* pa = aligned_ptr(thread_buffers().a, (size_t)MC_MAX * KC_MAX);
    alignas(64) float edge[MR * NR];
    for (int n0 = 0; n0 < N; n0 += NC) {
      const int nc = std::min(NC, N - n0);
      const int nstrips = ceil_div(nc, NR);
      for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = std::min(KC, K - k0);
        const bool accumulate = k0 > 0 || beta != 0.f;
#pragma omp for schedule(static)
        for (int st = 0; st < nstrips; st += 4) pack_b<NR>(transB, B, ldb, k0, n0, kc, nc, pb, st, std::min(st + 4, nstrips));
        // implicit barrier: the panel is complete
#pragma omp for schedule(dynamic, 1)
        for (int mb = 0; mb < nmb; mb++) {
          const int m0 = mb * MC, mc = std::min(MC, M - m0);
          pack_a(transA, A, lda, m0, k0, mc, kc, pa);
          for (int js = 0; js < nc; js += NR) {
            const int cols = std::min(NR, nc - js);
            const float* bs = pb + (size_t)(js / NR) * kc * NR;
            for (int is = 0; is < mc; is += MR) {
              const int rows = std::min(MR, mc - is);
              const float* as = pa + (size_t)(is / MR) * kc * MR;
              float* c = C + (size_t)(m0 + is) * ldc + n0 + js;
              if (rows == MR && cols == NR) {
                kernel(kc, as, bs, c, ldc, accumulate);
              } else {
                kernel(kc, as, bs, edge, NR, false);
                for (int i = 0; i < rows; i++)
                  for (int j = 0; j < cols; j++)
                    c[(size_t)i * ldc + j] = (accumulate ? c[(size_t)i * ldc + j] : 0.f) + edge[i * NR + j];
              }
            }
          }
        }
        // implicit barrier: nobody still reads the panel when it is repacked
      }
    }
  }
}

// ---------------------------------------------------------------- skinny products (decoding)
// C (M x N) = beta*C + A (M x K) B^T with B stored (N, K) and M small: every row of B is
// streamed once and dotted with the M rows of A; no packing (the weights are read once).
constexpr int SKINNY_M = 4;

template <int LEVEL>
float dot_row(const float* a, const float* b, int K);

template <>
float dot_row<0>(const float* a, const float* b, int K) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int k = 0; k < K; k++) s += a[k] * b[k];
  return s;
}

#ifdef PYLLAMA_X86
__attribute__((target("avx2,fma"))) void skinny_avx2(int M, int n0, int n1, int K, const float* A, int lda,
                                                      const float* B, int ldb, float beta, float* C, int ldc) {
  for (int n = n0; n < n1; n++) {
    const float* b = B + (size_t)n * ldb;
    for (int m = 0; m < M; m++) {
      const float* a = A + (size_t)m * lda;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      int k = 0;
      for (; k + 16 <= K; k += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
      }
      acc0 = _mm256_add_ps(acc0, acc1);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
      float s = _mm_cvtss_f32(h);
      for (; k < K; k++) s += a[k] * b[k];
      float& c = C[(size_t)m * ldc + n];
      c = (beta == 0.f ? 0.f : c) + s;
    }
  }
}

__attribute__((target("avx512f"))) void skinny_avx512(int M, int n0, int n1, int K, const float* A, int lda,
                                                       const float* B, int ldb, float beta, float* C, int ldc) {
  for (int n = n0; n < n1; n++) {
    const float* b = B + (size_t)n * ldb;
    for (int m = 0; m < M; m++) {
      const float* a = A + (size_t)m * lda;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      int k = 0;
      for (; k + 32 <= K; k += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), acc1);
      }
      if (k + 16 <= K) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc0);
        k += 16;
      }
      float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
      for (; k < K; k++) s += a[k] * b[k];
      float& c = C[(size_t)m * ldc + n];
      c = (beta == 0.f ? 0.f : c) + s;
    }
  }
}
#endif

void skinny_generic(int M, int n0, int n1, int K, const float* A, int lda, const float* B, int ldb, float beta,
                    float* C, int ldc) {
  for (int n = n0; n < n1; n++)
    for (int m = 0; m < M; m++) {
      float s = dot_row<0>(A + (size_t)m * lda, B + (size_t)n * ldb, K);
      float& c = C[(size_t)m * ldc + n];
      c = (beta == 0.f ? 0.f : c) + s;
    }
}

void sgemm_skinny(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float beta, float* C,
                  int ldc) {
  auto fn = skinny_generic;
#ifdef PYLLAMA_X86
  if (simd_level() == 2) fn = skinny_avx512;
  else if (simd_level() == 1) fn = skinny_avx2;
#endif
  const int chunk = 64;
  const int nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if ((double)N * K > 1e5)
  for (int c = 0; c < nchunks; c++) fn(M, c * chunk, std::min(N, (c + 1) * chunk), K, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

void sgemm(bool transA, bool transB, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
  PYLLAMA_CHECK(beta == 0.f || beta == 1.f, ValueError, "sgemm: beta must be 0 or 1, got " << beta);
  PYLLAMA_CHECK(M >= 0 && N >= 0 && K >= 0, ValueError, "sgemm: negative size");
  if (M == 0 || N == 0) return;
  if (M <= SKINNY_M && !transA && transB && K > 0) return sgemm_skinny(M, N, K, A, lda, B, ldb, beta, C, ldc);
#ifdef PYLLAMA_X86
  int level = simd_level();
  if (level == 2) return sgemm_impl<32>(kernel_avx512, transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc);
  if (level == 1) return sgemm_impl<16>(kernel_avx2, transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc);
#endif
  sgemm_impl<16>(kernel_generic<16>, transA, transB, M, N, K, A, lda, B, ldb, beta, C, ldc);
}

// ---------------------------------------------------------------- bf16 weights (decoding)
namespace {
inline float bf16_bits_to_float(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void bf16_rows_generic(int M, int n0, int n1, int K, const float* A, int lda, const uint16_t* B, int ldb, float* C,
                       int ldc) {
  for (int n = n0; n < n1; n++) {
    const uint16_t* b = B + (size_t)n * ldb;
    for (int m = 0; m < M; m++) {
      const float* a = A + (size_t)m * lda;
      float s = 0.f;
      for (int k = 0; k < K; k++) s += a[k] * bf16_bits_to_float(b[k]);
      C[(size_t)m * ldc + n] = s;
    }
  }
}

#ifdef PYLLAMA_X86
__attribute__((target("avx2,fma"))) void bf16_rows_avx2(int M, int n0, int n1, int K, const float* A, int lda,
                                                         const uint16_t* B, int ldb, float* C, int ldc) {
  for (int n = n0; n < n1; n++) {
    const uint16_t* b = B + (size_t)n * ldb;
    for (int m = 0; m < M; m++) {
      const float* a = A + (size_t)m * lda;
      __m256 acc = _mm256_setzero_ps();
      int k = 0;
      for (; k + 8 <= K; k += 8) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k));
        __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), w, acc);
      }
      __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      q = _mm_add_ps(q, _mm_movehl_ps(q, q));
      q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
      float s = _mm_cvtss_f32(q);
      for (; k < K; k++) s += a[k] * bf16_bits_to_float(b[k]);
      C[(size_t)m * ldc + n] = s;
    }
  }
}

__attribute__((target("avx512f"))) void bf16_rows_avx512(int M, int n0, int n1, int K, const float* A, int lda,
                                                          const uint16_t* B, int ldb, float* C, int ldc) {
  for (int n = n0; n < n1; n++) {
    const uint16_t* b = B + (size_t)n * ldb;
    for (int m = 0; m < M; m++) {
      const float* a = A + (size_t)m * lda;
      __m512 acc = _mm512_setzero_ps();
      int k = 0;
      for (; k + 16 <= K; k += 16) {
        __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + k));
        __m512 w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), w, acc);
      }
      float s = _mm512_reduce_add_ps(acc);
      for (; k < K; k++) s += a[k] * bf16_bits_to_float(b[k]);
      C[(size_t)m * ldc + n] = s;
    }
  }
}
#endif
}  // namespace

void sgemm_bf16_nt(int M, int N, int K, const float* A, int lda, const uint16_t* B, int ldb, float* C, int ldc) {
  PYLLAMA_CHECK(M >= 0 && N >= 0 && K >= 0, ValueError, "sgemm_bf16_nt: negative size");
  auto fn = bf16_rows_generic;
#ifdef PYLLAMA_X86
  if (simd_level() == 2) fn = bf16_rows_avx512;
  else if (simd_level() == 1) fn = bf16_rows_avx2;
#endif
  const int chunk = 64;
  const int nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if ((double)N * K > 1e5)
  for (int c = 0; c < nchunks; c++) fn(M, c * chunk, std::min(N, (c + 1) * chunk), K, A, lda, B, ldb, C, ldc);
}

void sgemm_reference(bool transA, bool transB, int M, int N, int K, const float* A, int lda, const float* B,
                     int ldb, float beta, float* C, int ldc) {
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double acc = beta == 0.f ? 0.0 : C[(size_t)m * ldc + n];
      for (int k = 0; k < K; k++) {
        double a = transA ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k];
        double b = transB ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n];
        acc += a * b;
      }
      C[(size_t)m * ldc + n] = (float)acc;
    }
}

}  // namespace pyllama
