// flash_tc.cuh — the bf16 tensor-core flash attention's building blocks (fragments, ldmatrix,
// cp.async, mma.sync, the forward kernel template, the dK/dV tile layout, launch helpers) and the
// dsum kernel: shared by flash_attention.cu (the library) and the kernel lab (cuda/lab/), whose
// variants build on the same code. Internal: include it from a .cu file only (everything is in
// an anonymous namespace, one copy per file). tools/cuda_sim prepares it with prep.py as it
// does the .cu files (its kernels have launches and dynamic shared memory).
#pragma once
#include <cstdint>

#include "common.h"  // PYLLAMA_CHECK, ValueError
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kThreads = 128;  // every flash kernel (SIMT: 16 x 8 threads, see flash_attention.cu)

// Rows of 16-byte vectors: HS and the row stride a multiple of 16 / sizeof(T), src aligned.
// (Shared tiles filled this way need ld and their base 16-byte aligned: every tile here is.)
// The same for the whole block (every thread takes the same branch).
template <typename T>
__device__ __forceinline__ bool vec16_ok(const T* src, long long src_ld, int HS) {
  constexpr int VE = 16 / sizeof(T);
  return HS % VE == 0 && src_ld % VE == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0;
}

// ------------------------------------------------------------------ backward: dsum
// dsum (B, NH, T) = rowsum(dout * out) per (row, head): one warp per (n, h).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_dsum_kernel(float* dsum, const T* dout, const T* out, int B, int T_, int NH, int HS) {
  const int lane = threadIdx.x & 31;
  const long long row = (long long)blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5);  // n * NH + h
  if (row >= (long long)B * T_ * NH) return;  // the whole warp leaves
  const int h = (int)(row % NH);
  const long long n = row / NH;
  const long long off = n * NH * HS + (long long)h * HS;
  float acc = 0.f;
  for (int d = lane; d < HS; d += 32) acc += to_f(dout[off + d]) * to_f(out[off + d]);
  acc = warp_sum(acc);
  const int b = (int)(n / T_), t = (int)(n % T_);
  if (lane == 0) dsum[((long long)b * NH + h) * T_ + t] = acc;
}

// ------------------------------------------------------------------ tensor cores (bf16)
// The bf16 instantiation with HS <= 128 on sm_80+: the same algorithm with the tile
// products on tensor cores, mma.sync.m16n8k16 (bf16 inputs, float accumulation).
// Each warp owns 16 query rows (dq; the forward: 16 or, for HS <= 64, 2 x 16) or 16
// keys (dk/dv). Fragment layout (PTX ISA), g = lane / 4, q = lane % 4, registers of two
// bf16 (low half = lower index):
//   A (16 x 16, row-major) reg i: row g + 8 (i & 1), cols 2q + 8 (i >> 1) + {0, 1}
//   B (16 x 8, k x n)      reg i: k = 2q + 8 i + {0, 1}, n = g
//   C (16 x 8, float)      c[0], c[1]: row g, cols 2q + {0, 1}; c[2], c[3]: row g + 8
// so a C fragment pair (n-tiles 2j, 2j+1) is the A fragment of the next product, and
// the probabilities never leave registers. Tiles sit in shared memory as bf16, row-major
// only, with HSP = HS rounded up to 16 columns (zero past HS) and rows padded by 8
// elements (16 bytes), so the eight 16-byte rows of each ldmatrix phase hit different
// banks. Fragments come from ldmatrix.x4: A and the B operand along the head dimension
// (Q K^T, dO V^T) plain, the B operand along keys / queries (P V, dS K, P^T dO, dS^T Q)
// with .trans from the same row-major tiles. Tiles stream in with cp.async into two
// buffers (the next one is copied while the current one is computed; one __syncthreads
// per tile). P and dS are rounded to bf16 for their products (as FlashAttention does),
// and the exponentials are exp2f of log2(e)-scaled scores (lse is stored in natural log).
#ifndef PYLLAMA_CUDA_SIM  // tools/cuda_sim emulates these (sim_cuda.h)
__device__ __forceinline__ uint16_t bf16_bits(bf16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
// ldmatrix.x4: four 8 x 8 b16 matrices, row j of matrix i at the shared address of lane
// 8 i + j (16-byte aligned); lane l gets row l / 4, columns 2 (l % 4) + {0, 1} of matrix i
// in r[i] (.trans: rows 2 (l % 4) + {0, 1} of column l / 4), i.e. mma fragments.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#else
  __trap();
#endif
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#else
  __trap();
#endif
}
// cp.async global -> shared, 16 bytes bypassing L1 (.cg) or 4 bytes (.ca); src-size 0
// (valid false) zero-fills the destination without reading src. Completed, per thread,
// by cp_async_wait<N>() (all but the N most recent committed groups); other threads see
// the data only after a __syncthreads that follows their writers' waits.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 4 : 0)
               : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // never launched below sm_80 (the launcher checks the device)
#endif
}
#endif

__host__ __device__ __forceinline__ int hs_pad16(int HS) { return (HS + 15) & ~15; }
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return (uint32_t)bf16_bits(from_f<bf16>(lo)) | ((uint32_t)bf16_bits(from_f<bf16>(hi)) << 16);
}

// Reductions over the 4 lanes of a quad (the threads holding one row of a C fragment).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// dst (nrows x HSP bf16, row stride ld) = rows r0 .. of src (row stride src_ld), zero for
// rows >= T_ and columns >= HS. With 16-byte-aligned rows (vec16_ok): cp.async of 8 bf16
// (zero-filled past T_ / HS; ld and HSP are multiples of 8), lanes walking a row
// (coalesced); the caller commits the group and waits for it (cp_async_wait) before the
// __syncthreads that publishes the tile. Otherwise plain loads and stores (the same
// __syncthreads publishes them).
__device__ __forceinline__ void load_tile_bf16(bf16* dst, int ld, const bf16* src, long long src_ld, int r0, int nrows,
                                               int T_, int HS, int HSP) {
  if (vec16_ok(src, src_ld, HS)) {
    const int wv = HSP / 8, nv = nrows * wv;
    for (int e = threadIdx.x; e < nv; e += kThreads) {
      const int r = e / wv, d = (e - r * wv) * 8, t = r0 + r;
      const bool ok = t < T_ && d < HS;
      cp_async16(dst + r * ld + d, ok ? src + (long long)t * src_ld + d : src, ok);
    }
    return;
  }
  const int n = nrows * HSP;
  const bf16 zero = from_f<bf16>(0.f);
  for (int e = threadIdx.x; e < n; e += kThreads) {
    const int r = e / HSP, d = e - r * HSP;
    const int t = r0 + r;
    dst[r * ld + d] = (t < T_ && d < HS) ? src[(long long)t * src_ld + d] : zero;
  }
}

// acc[nt] (16 x 8 C fragments, nt < NT) = A (16 rows of a row-major tile, row stride lda,
// columns 0..HSP-1) times B^T where B rows are the n index (row-major, stride ldb): both
// operands contiguous along the HSP (k) dimension. Only n-tiles lo <= nt < hi are
// computed (the others, wholly masked by causality, stay 0); lo, hi warp-uniform. Whole warp.
// Fragments by ldmatrix.x4: A, lane l gives row l % 16 at column 8 (l / 16) (matrices =
// a[0..3]); B, two n-tiles at once, lane l gives row n = 8 (l / 16) + l % 8 at column
// 8 ((l / 8) % 2) (matrices = b0, b1 of n-tile 2 np, then of 2 np + 1).
template <int NT>
__device__ __forceinline__ void mma_rows(float (&acc)[NT][4], const bf16* A, int lda, const bf16* Bm, int ldb, int HSP,
                                         int lo, int hi) {
  static_assert(NT % 2 == 0, "n-tiles go in pairs");
  const int lane = threadIdx.x & 31;
  const bf16* pa = A + (lane & 15) * lda + 8 * (lane >> 4);
  const bf16* pb = Bm + (8 * (lane >> 4) + (lane & 7)) * ldb + 8 * ((lane >> 3) & 1);
#pragma unroll
  for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
  for (int kc = 0; kc < HSP; kc += 16) {
    uint32_t a[4];
    ldsm_x4(a, pa + kc);
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
      if (2 * np + 1 < lo || 2 * np >= hi) continue;
      uint32_t b[4];
      ldsm_x4(b, pb + np * 16 * ldb + kc);
      if (2 * np >= lo) mma16816(acc[2 * np], a, b[0], b[1]);
      if (2 * np + 1 < hi) mma16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// The A fragments of 16 rows x HSP columns of a row-major tile (row stride lda), one
// ldmatrix.x4 per 16 columns (kc < KC = DMAX / 16), to keep in registers across tiles.
template <int KC>
__device__ __forceinline__ void load_a_frags(uint32_t (&a)[KC][4], const bf16* A, int lda, int HSP) {
  const int lane = threadIdx.x & 31;
  const bf16* pa = A + (lane & 15) * lda + 8 * (lane >> 4);
#pragma unroll
  for (int kc = 0; kc < KC; kc++)
    if (kc * 16 < HSP) ldsm_x4(a[kc], pa + kc * 16);
}

// mma_rows with the A fragments in registers (load_a_frags); the same products in the
// same order.
template <int NT, int KC>
__device__ __forceinline__ void mma_rows_reg(float (&acc)[NT][4], const uint32_t (&a)[KC][4], const bf16* Bm, int ldb,
                                             int HSP, int lo, int hi) {
  static_assert(NT % 2 == 0, "n-tiles go in pairs");
  const int lane = threadIdx.x & 31;
  const bf16* pb = Bm + (8 * (lane >> 4) + (lane & 7)) * ldb + 8 * ((lane >> 3) & 1);
#pragma unroll
  for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
  for (int kc = 0; kc < KC; kc++) {
    if (kc * 16 >= HSP) break;  // the same for every lane
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
      if (2 * np + 1 < lo || 2 * np >= hi) continue;
      uint32_t b[4];
      ldsm_x4(b, pb + np * 16 * ldb + kc * 16);
      if (2 * np >= lo) mma16816(acc[2 * np], a[kc], b[0], b[1]);
      if (2 * np + 1 < hi) mma16816(acc[2 * np + 1], a[kc], b[2], b[3]);
    }
  }
}

// acc[dt] += P (16 x 16*KT, C fragments p[2 kk], p[2 kk + 1] per 16-column chunk kk)
// times Bk, Bk row-major (rows = the k index, columns = n = head dim, stride ldb): for
// dt*8 < HSP and the chunks lo <= kk < hi (the others are wholly zero); lo, hi
// warp-uniform. B fragments by ldmatrix.x4.trans, two head-dim tiles at once: lane l
// gives row k = l % 16 at column 8 (l / 16) (matrices = b0, b1 of dt = 2 dp, then 2 dp + 1).
template <int KT, int DT>
__device__ __forceinline__ void mma_frag(float (&acc)[DT][4], const float (&p)[2 * KT][4], const bf16* Bk, int ldb,
                                         int HSP, int lo, int hi) {
  static_assert(DT % 2 == 0, "head-dim tiles go in pairs");
  const int lane = threadIdx.x & 31;
  const bf16* pb = Bk + (lane & 15) * ldb + 8 * (lane >> 4);
#pragma unroll
  for (int kk = 0; kk < KT; kk++) {
    if (kk < lo || kk >= hi) continue;
    const uint32_t a[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]), pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                           pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < DT / 2; dp++) {
      if (dp * 16 >= HSP) break;  // the same for every lane (HSP: a multiple of 16)
      uint32_t b[4];
      ldsm_x4_t(b, pb + kk * 16 * ldb + dp * 16);
      mma16816(acc[2 * dp], a, b[0], b[1]);
      mma16816(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int kTcRows = 64;  // query rows per block: 4 warps x 16
constexpr int kTcKeys = 64;  // keys per block

// The forward's warps take MT m-tiles of 16 rows each, at rows 64 mt + 16 warp of the
// block: with MT = 2 every K / V fragment read from shared memory feeds two mma, with MT = 1
// a block needs about half the registers and shared memory (twice the blocks per SM). Each
// m-tile's arithmetic is its own, so both give the same bits. HS <= 64 takes MT = 2, larger
// heads MT = 1 (MT = 1 at HS <= 64, never timed faster, is in the kernel lab:
// cuda/lab/flash_fwd_rows64.cu).
template <int MT>
__host__ __device__ constexpr int tc_fwd_rows() {
  return 64 * MT;  // query rows per block
}

template <int MT>
size_t tc_fwd_smem_bytes(int HS) {
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  return sizeof(bf16) * ((size_t)tc_fwd_rows<MT>() * ld + 4 * (size_t)kTcKeys * ld);  // Q, 2 x (K, V)
}

// grid (B * NH, ceil(T / BR)), last query block first.
template <int DMAX, int MT>
__global__ void __launch_bounds__(kThreads)
    flash_fwd_tc_kernel(bf16* out, float* lse, const bf16* qkv, int T_, int NH, int NKV, int HS, float scale) {
  constexpr int BR = tc_fwd_rows<MT>(), NT = kTcKeys / 8, DT = DMAX / 8, KC = DMAX / 16;
  extern __shared__ float4 smem4[];
  bf16* sm = reinterpret_cast<bf16*>(smem4);
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  const int tile = kTcKeys * ld;
  bf16* Qs = sm;             // BR x ld
  bf16* KVs = Qs + BR * ld;  // buffer i: K at KVs + 2 i tile, V at KVs + (2 i + 1) tile (kTcKeys x ld)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int h = blockIdx.x % NH, b = blockIdx.x / NH;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * BR;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, kvh = h / (NH / NKV);
  const bf16* seq = qkv + (long long)b * T_ * QKVD;
  const bf16* kseq = seq + C + (long long)kvh * HS;
  auto load_kv = [&](int kb) {  // key block kb into buffer kb % 2 (cp.async, one group)
    bf16* Kb = KVs + 2 * (kb & 1) * tile;
    load_tile_bf16(Kb, ld, kseq, QKVD, kb * kTcKeys, kTcKeys, T_, HS, HSP);
    load_tile_bf16(Kb + tile, ld, kseq + KVD, QKVD, kb * kTcKeys, kTcKeys, T_, HS, HSP);
    cp_async_commit();
  };

  load_tile_bf16(Qs, ld, seq + (long long)h * HS, QKVD, q0, BR, T_, HS, HSP);
  load_kv(0);  // one group with Q
  const int qend = min(q0 + BR, T_);
  const int nkb = (qend + kTcKeys - 1) / kTcKeys;
  const float scale2 = scale * kLog2e;  // scores in log2 units: exp(x) = exp2(x log2 e)
  // m-tile mt: rows r0[mt] + g (row limit lim[mt][0]) and r0[mt] + g + 8 (lim[mt][1])
  int r0[MT], lim[MT][2];
  float m[MT][2], l[MT][2], o[MT][DT][4];
  uint32_t qf[MT][KC][4];  // this warp's Q rows, kept in registers
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    r0[mt] = q0 + 64 * mt + warp * 16;
    lim[mt][0] = min(r0[mt] + g, T_ - 1);
    lim[mt][1] = min(r0[mt] + g + 8, T_ - 1);
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
  }
  // ldmatrix row offsets in a K / V tile (as in mma_rows and mma_frag)
  const int offk = (8 * (lane >> 4) + (lane & 7)) * ld + 8 * ((lane >> 3) & 1);
  const int offv = (lane & 15) * ld + 8 * (lane >> 4);

  // double-buffered K/V: block kb + 1 is copied (cp.async) while block kb is computed
  for (int kb = 0; kb < nkb; kb++) {
    const int k0 = kb * kTcKeys;
    cp_async_wait<0>();  // this thread's copies of block kb (and Q)
    __syncthreads();     // everyone's; and block kb - 1 (the other buffer) is no longer read
    if (kb + 1 < nkb) load_kv(kb + 1);
    const bf16* Ks = KVs + 2 * (kb & 1) * tile;
    const bf16* Vs = Ks + tile;
    if (kb == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++) load_a_frags(qf[mt], Qs + (64 * mt + warp * 16) * ld, ld, HSP);
    }

    // n-tiles (8 keys) with a key visible to some row of m-tile mt: nt < hi[mt]
    // (non-decreasing in mt; 0 when the whole m-tile is before k0)
    int hi[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      const int kmax = min(r0[mt] + 15, T_ - 1) - k0;
      hi[mt] = kmax < 0 ? 0 : min(NT, kmax / 8 + 1);
    }
    // S = Q K^T: each pair of K fragments (ldmatrix.x4) serves every m-tile
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int nt = 0; nt < NT; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < KC; kc++) {
      if (kc * 16 >= HSP) break;  // the same for every lane
#pragma unroll
      for (int np = 0; np < NT / 2; np++) {
        if (2 * np >= hi[MT - 1]) continue;
        uint32_t bk[4];
        ldsm_x4(bk, Ks + offk + np * 16 * ld + kc * 16);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          if (2 * np < hi[mt]) mma16816(s[mt][2 * np], qf[mt][kc], bk[0], bk[1]);
          if (2 * np + 1 < hi[mt]) mma16816(s[mt][2 * np + 1], qf[mt][kc], bk[2], bk[3]);
        }
      }
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      if (hi[mt] == 0) continue;  // wholly masked: m, l, o unchanged
      // masking only where some key of the block is past some row's limit (the diagonal
      // block); unscaled scores, the scale folded into the exponent's fma
      const bool diag = k0 + kTcKeys - 1 > min(r0[mt], T_ - 1);  // the smallest row limit of the m-tile
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int c = k0 + nt * 8 + 2 * q + e;
          if (diag && c > lim[mt][0]) s[mt][nt][e] = -INFINITY;
          if (diag && c > lim[mt][1]) s[mt][nt][2 + e] = -INFINITY;
          mx0 = fmaxf(mx0, s[mt][nt][e]);
          mx1 = fmaxf(mx1, s[mt][nt][2 + e]);
        }
      // in log2 units; finite: every row sees key k0 of a block with hi > 0 (k0 <= r0)
      const float mn0 = fmaxf(m[mt][0], quad_max(mx0) * scale2), mn1 = fmaxf(m[mt][1], quad_max(mx1) * scale2);
      const float al0 = exp2f(m[mt][0] - mn0), al1 = exp2f(m[mt][1] - mn1);
      float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          s[mt][nt][e] = exp2f(fmaf(s[mt][nt][e], scale2, -mn0));
          s[mt][nt][2 + e] = exp2f(fmaf(s[mt][nt][2 + e], scale2, -mn1));
          rs0 += s[mt][nt][e];
          rs1 += s[mt][nt][2 + e];
        }
      l[mt][0] = l[mt][0] * al0 + quad_sum(rs0);
      l[mt][1] = l[mt][1] * al1 + quad_sum(rs1);
      m[mt][0] = mn0;
      m[mt][1] = mn1;
#pragma unroll
      for (int dt = 0; dt < DT; dt++) {
        o[mt][dt][0] *= al0;
        o[mt][dt][1] *= al0;
        o[mt][dt][2] *= al1;
        o[mt][dt][3] *= al1;
      }
    }

    // O += P V: the probabilities are the A fragments (16 keys = C fragments 2 kk, 2 kk + 1);
    // each pair of V fragments (ldmatrix.x4.trans) serves every m-tile with keys there
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++) {
      if (2 * kk >= hi[MT - 1]) continue;
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        a[mt][0] = pack_bf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack_bf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < DT / 2; dp++) {
        if (dp * 16 >= HSP) break;  // the same for every lane (HSP: a multiple of 16)
        uint32_t bv[4];
        ldsm_x4_t(bv, Vs + offv + kk * 16 * ld + dp * 16);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          if (2 * kk >= hi[mt]) continue;
          mma16816(o[mt][2 * dp], a[mt], bv[0], bv[1]);
          mma16816(o[mt][2 * dp + 1], a[mt], bv[2], bv[3]);
        }
      }
    }
  }

  const long long lrow = ((long long)b * NH + h) * T_;
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const int t = r0[mt] + g + 8 * half;
      if (t >= T_) continue;
      const float inv = 1.f / l[mt][half];
      bf16* orow = out + ((long long)b * T_ + t) * C + (long long)h * HS;
#pragma unroll
      for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int d = dt * 8 + 2 * q + e;
          if (d < HS) orow[d] = from_f<bf16>(o[mt][dt][2 * half + e] * inv);
        }
      if (q == 0) lse[lrow + t] = (m[mt][half] + log2f(l[mt][half])) * kLn2;
    }
}

// Inverse RoPE of one row in a thread's accumulator fragments (the backward's dq and dk):
// the thread holds columns d = 8 dt + 2 q + e, e < 2, in acc[dt][2 hh + e]; with HS a
// multiple of 16 the partner d + HS / 2 is at dt + HS / 16, same q and e, so the pair is
// rotated in registers: (a, b) -> (a c + b s, b c - a s), rope_apply's inverse. cr, sr: the
// row's cos and sin (HS / 2 each). HD is a template argument so that acc stays in registers.
template <int HD, int DT>
__device__ __forceinline__ void rope_inverse_pairs(float (&acc)[DT][4], int hh, int q, const float* cr,
                                                   const float* sr) {
  static_assert(2 * HD <= DT, "the pair partner is inside the fragment");
#pragma unroll
  for (int dt = 0; dt < HD; dt++)
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int i = dt * 8 + 2 * q + e;
      const float c = cr[i], sn = sr[i];
      const float a = acc[dt][2 * hh + e], b = acc[dt + HD][2 * hh + e];
      acc[dt][2 * hh + e] = a * c + b * sn;
      acc[dt + HD][2 * hh + e] = b * c - a * sn;
    }
}
template <int DT>
__device__ __forceinline__ void rope_inverse_frag(float (&acc)[DT][4], int hh, int q, int HS, const float* cr,
                                                  const float* sr) {
  switch (HS / 16) {  // the launcher fuses only HS % 16 == 0, HS <= DMAX
#define PYLLAMA_ROPE_CASE(HD) \
  case HD:                    \
    if constexpr (2 * HD <= DT) rope_inverse_pairs<HD>(acc, hh, q, cr, sr); \
    break;
    PYLLAMA_ROPE_CASE(1)
    PYLLAMA_ROPE_CASE(2)
    PYLLAMA_ROPE_CASE(3)
    PYLLAMA_ROPE_CASE(4)
    PYLLAMA_ROPE_CASE(5)
    PYLLAMA_ROPE_CASE(6)
    PYLLAMA_ROPE_CASE(7)
    PYLLAMA_ROPE_CASE(8)
#undef PYLLAMA_ROPE_CASE
    default:
      break;
  }
}

template <int DMAX>
struct TcKV {
  static constexpr int QT = DMAX <= 64 ? 64 : 32;  // query rows per step (registers: dK, dV take DMAX)
};

// Shared memory of the dK/dV kernel (flash_attention.cu): K, V, 2 x (Q, dO, lse, dsum)
template <int DMAX>
size_t tc_dkv_smem_bytes(int HS) {
  constexpr int QT = TcKV<DMAX>::QT;
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  return sizeof(bf16) * (2 * (size_t)kTcKeys * ld + 4 * (size_t)QT * ld) + 4 * sizeof(float) * QT;
}

// ------------------------------------------------------------------ launch helpers
inline void check_shape(int B, int T_, int NH, int NKV, int HS, const char* who) {
  PYLLAMA_CHECK(B >= 0 && T_ >= 0, ValueError, who << ": negative batch " << B << " or length " << T_);
  PYLLAMA_CHECK(NH >= 1 && NKV >= 1 && NH % NKV == 0, ValueError,
                who << ": num heads " << NH << " must be a positive multiple of num kv heads " << NKV);
  PYLLAMA_CHECK(HS >= 1 && HS <= kMaxHeadSize, ValueError,
                who << ": head size " << HS << " must be in [1, " << kMaxHeadSize << "]");
}

// Opts the kernel in to `bytes` of dynamic shared memory (above the 48 KB default),
// after checking the device allows it.
template <typename K>
void prepare_smem(K kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  int dev = 0, optin = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  PYLLAMA_CHECK(bytes <= (size_t)optin, CudaError,
                "flash attention needs " << bytes << " bytes of shared memory per block; device " << dev
                                         << " allows " << optin);
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

inline dim3 grid2(long long x, long long y, const char* who) {
  PYLLAMA_CHECK(x <= 0x7fffffffLL && y <= 65535, ValueError,
                who << ": grid (" << x << ", " << y << ") too large (sequence length or batch x heads)");
  return dim3((unsigned)x, (unsigned)y);
}

template <int DMAX, int MT>
void launch_fwd_tc(bf16* out, float* lse, const bf16* qkv, int B, int T_, int NH, int NKV, int HS,
                   cudaStream_t stream) {
  const size_t bytes = tc_fwd_smem_bytes<MT>(HS);
  prepare_smem(flash_fwd_tc_kernel<DMAX, MT>, bytes);
  constexpr int BR = tc_fwd_rows<MT>();
  const dim3 grid = grid2((long long)B * NH, (T_ + BR - 1) / BR, "flash attention");
  flash_fwd_tc_kernel<DMAX, MT>
      <<<grid, kThreads, bytes, stream>>>(out, lse, qkv, T_, NH, NKV, HS, 1.0f / sqrtf((float)HS));
  CUDA_CHECK_LAUNCH();
}

}  // namespace
}  // namespace gpu
}  // namespace pyllama
