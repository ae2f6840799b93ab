// flash_attention.cu — causal grouped-query attention for training without a T x T
// array in global memory (issue #8). The CPU twin is attention_forward_flash /
// attention_backward_flash in csrc/ops.h: same inputs, same outputs, same lse layout.
//
// Layouts: qkv (B, T, QKVD) rows (q | k | v), QKVD = (NH + 2 NKV) HS; out and dout
// (B, T, NH*HS); lse and dsum (B, NH, T) float; dqkv (B, T, QKVD) assigned.
//
// All three kernels are plain SIMT (no tensor cores): tiles of q/k/v/dout are staged
// in shared memory as float (rows padded so that threads walking different rows hit
// different banks; the tiles of the score products read as float4), every product
// accumulates in float in registers. 128 threads per block, seen as 16 x 8: thread (ty, tx) with tx = lane & 7
// and ty = 4 * warp + lane / 8, so the 8 threads sharing a ty are 8 adjacent lanes of
// one warp (row reductions are three __shfl_xor_sync). DMAX (64, 128 or 256) is the
// head size rounded up; loops over head dims are guarded by d < HS.
//
// forward   block = (b, h, BR query rows); loops over the causal key blocks of kKeys
//           keys: S = Q K^T (thread: rows ty + 16 i, keys tx + 8 k), online softmax
//           (running max m and sum l per row), P to shared memory, O += P V (thread:
//           rows ty + 16 i, dims tx + 8 j). Writes O / l and lse = m + log l.
// backward  (FlashAttention-2) 1. dsum = rowsum(dout * out) per (row, head);
//           2. dK, dV: block = (b, kv head, BCKV keys), loops over the query heads of
//              the group and the query rows >= its first key, recomputing
//              P = exp(scale S - lse) and dS = P (dP - dsum) scale; dK and dV stay in
//              registers (thread: keys ty + 16 i, dims tx + 8 j), each written once;
//           3. dQ: block = (b, h, BR query rows), loops over key blocks like the
//              forward, dQ = dS K in registers, written once.
//           No atomics: every output element has one owner, so results are
//           deterministic (same order of additions on every run).
// bf16 with HS <= 128 on sm_80+ (unless the caller passes tensor_cores = false) runs
// the same three passes on tensor cores instead: see "tensor cores (bf16)" in
// flash_tc.cuh, which holds their building blocks, the forward kernel and the dsum kernel
// (shared with the kernel lab, cuda/lab/, whose variants of these kernels build on them).
// tools/cuda_sim/run.sh runs every kernel here on the CPU (no GPU needed).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "common.h"  // PYLLAMA_CHECK, ValueError
#include "flash_tc.cuh"
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

// kThreads (128), vec16_ok, the dsum kernel and the tensor-core pieces: flash_tc.cuh
constexpr int kKeys = 32;      // keys per block in the forward and dq kernels (thread: keys tx + 8 k)
constexpr int kKJ = kKeys / 8;
constexpr int kRowsKV = 32;    // query rows per step of the dk/dv kernel (thread: rows ty + 16 i)
constexpr int kRI_KV = kRowsKV / 16;

template <int DMAX>
struct FlashCfg {
  static_assert(DMAX == 64 || DMAX == 128 || DMAX == 256, "DMAX");
  static constexpr int R = DMAX >= 256 ? 2 : 4;  // query rows per thread (forward, dq)
  static constexpr int BR = 16 * R;              // query rows per block (forward, dq)
  static constexpr int DJ = DMAX / 8;            // head dims per thread: tx + 8 j
  static constexpr int KC = DMAX >= 256 ? 1 : DMAX >= 128 ? 2 : 4;  // keys per thread (dk/dv)
  static constexpr int BCKV = 16 * KC;                               // keys per block (dk/dv)
  static constexpr int KKV = BCKV / 8;  // keys per thread in the dk/dv score tile: tx + 8 k
};

struct ThreadPos {
  int tid, tx, ty;
};
__device__ __forceinline__ ThreadPos thread_pos() {
  ThreadPos p;
  p.tid = threadIdx.x;
  const int lane = p.tid & 31;
  p.tx = lane & 7;
  p.ty = (p.tid >> 5) * 4 + (lane >> 3);
  return p;
}

// Reductions over the 8 lanes that share a ty (adjacent lanes; every lane calls them).
__device__ __forceinline__ float group8_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
  return v;
}
__device__ __forceinline__ float group8_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  return v;
}

// Tiles that dot_tile reads hold HSP = HS rounded up to a multiple of 4 columns (zero
// past HS) with row stride ldp4(HS) = HSP + 4: rows start 16-byte aligned, and the 8
// different rows that 8 lanes read at once fall in different 16-byte bank groups when
// HSP / 4 is even (HS = 32, 64, 128, 256 ...).
__host__ __device__ __forceinline__ int hs_pad4(int HS) { return (HS + 3) & ~3; }
__host__ __device__ __forceinline__ int ldp4(int HS) { return hs_pad4(HS) + 4; }

// dst (nrows x width, row stride ld, float) = columns 0 .. width-1 of rows r0 ..
// r0+nrows-1 of src (row stride src_ld), zero for rows >= T_ and columns >= HS
// (width >= HS). Every thread of the block calls it.

template <typename T>
__device__ __forceinline__ void load_tile(float* dst, int ld, int width, const T* src, long long src_ld, int r0,
                                          int nrows, int T_, int HS) {
  constexpr int VE = 16 / sizeof(T);
  if (width % VE == 0 && vec16_ok(src, src_ld, HS)) {  // 16-byte loads; d < HS means d + VE <= HS
    const int wv = width / VE, nv = nrows * wv;
    for (int e = threadIdx.x; e < nv; e += kThreads) {
      const int r = e / wv, d = (e - r * wv) * VE;
      const int t = r0 + r;
      float4* o = reinterpret_cast<float4*>(dst + r * ld + d);  // ld, d multiples of 4: aligned
      float f[VE];
      if (t < T_ && d < HS) {
        const uint4 raw = *reinterpret_cast<const uint4*>(src + (long long)t * src_ld + d);
        T v[VE];
        memcpy(v, &raw, 16);
#pragma unroll
        for (int i = 0; i < VE; i++) f[i] = to_f(v[i]);
      } else {
#pragma unroll
        for (int i = 0; i < VE; i++) f[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < VE / 4; i++) o[i] = make_float4(f[4 * i], f[4 * i + 1], f[4 * i + 2], f[4 * i + 3]);
    }
    return;
  }
  const int n = nrows * width;
  for (int e = threadIdx.x; e < n; e += kThreads) {
    const int r = e / width, d = e - r * width;
    const int t = r0 + r;
    dst[r * ld + d] = (t < T_ && d < HS) ? to_f(src[(long long)t * src_ld + d]) : 0.f;
  }
}

// acc[i][k] = sum_{d < HSP} A[(ra + 16 i) * ld + d] * Bm[(cb + 8 k) * ld + d], both tiles
// with row stride ld = ldp4(HS) and 16-byte aligned (float4 loads; d in increasing order).
template <int NI, int NK>
__device__ __forceinline__ void dot_tile(float (&acc)[NI][NK], const float* A, int ra, const float* Bm, int cb,
                                         int HS) {
#pragma unroll
  for (int i = 0; i < NI; i++)
#pragma unroll
    for (int k = 0; k < NK; k++) acc[i][k] = 0.f;
  const int ld4 = ldp4(HS) / 4, n4 = hs_pad4(HS) / 4;
  const float4* a0 = reinterpret_cast<const float4*>(A) + ra * ld4;
  const float4* b0 = reinterpret_cast<const float4*>(Bm) + cb * ld4;
#pragma unroll 1
  for (int d4 = 0; d4 < n4; d4++) {
    float4 a[NI], b[NK];
#pragma unroll
    for (int i = 0; i < NI; i++) a[i] = a0[16 * i * ld4 + d4];
#pragma unroll
    for (int k = 0; k < NK; k++) b[k] = b0[8 * k * ld4 + d4];
#pragma unroll
    for (int i = 0; i < NI; i++)
#pragma unroll
      for (int k = 0; k < NK; k++) {
        float x = fmaf(a[i].x, b[k].x, acc[i][k]);
        x = fmaf(a[i].y, b[k].y, x);
        x = fmaf(a[i].z, b[k].z, x);
        acc[i][k] = fmaf(a[i].w, b[k].w, x);
      }
  }
}

// ------------------------------------------------------------------ forward
template <int DMAX>
size_t fwd_smem_floats(int HS) {
  using Cf = FlashCfg<DMAX>;
  return (size_t)Cf::BR * ldp4(HS) + (size_t)kKeys * ldp4(HS) + (size_t)kKeys * HS + (size_t)Cf::BR * (kKeys + 1);
}

// grid (B * NH, ceil(T / BR)); query block taken from the last (the longest) down.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kThreads)
    flash_fwd_kernel(T* out, float* lse, const T* qkv, int T_, int NH, int NKV, int HS, float scale) {
  using Cf = FlashCfg<DMAX>;
  constexpr int R = Cf::R, BR = Cf::BR, DJ = Cf::DJ;
  extern __shared__ float4 smem4[];  // float4: 16-byte aligned
  float* smem = reinterpret_cast<float*>(smem4);
  const int ld = ldp4(HS), ldv = HS, ldp = kKeys + 1;
  float* Qs = smem;               // BR x ld
  float* Ks = Qs + BR * ld;       // kKeys x ld
  float* Vs = Ks + kKeys * ld;    // kKeys x ldv
  float* Ps = Vs + kKeys * ldv;   // BR x ldp
  const ThreadPos tp = thread_pos();
  const int h = blockIdx.x % NH, b = blockIdx.x / NH;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * BR;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, kvh = h / (NH / NKV);
  const T* seq = qkv + (long long)b * T_ * QKVD;

  load_tile(Qs, ld, hs_pad4(HS), seq + (long long)h * HS, QKVD, q0, BR, T_, HS);
  const int qend = min(q0 + BR, T_);
  const int nkb = (qend + kKeys - 1) / kKeys;  // key blocks holding keys 0 .. qend-1

  int row[R];  // the causal limit of each row; rows past T_ behave as row T_-1 (finite, never stored)
  float m[R], l[R], o[R][DJ];
#pragma unroll
  for (int i = 0; i < R; i++) {
    row[i] = min(q0 + tp.ty + 16 * i, T_ - 1);
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int j = 0; j < DJ; j++) o[i][j] = 0.f;
  }

  for (int kb = 0; kb < nkb; kb++) {  // nkb is the same for the whole block
    const int k0 = kb * kKeys;
    __syncthreads();  // the previous block's reads of Ks, Vs, Ps are done
    load_tile(Ks, ld, hs_pad4(HS), seq + C + (long long)kvh * HS, QKVD, k0, kKeys, T_, HS);
    load_tile(Vs, ldv, HS, seq + C + KVD + (long long)kvh * HS, QKVD, k0, kKeys, T_, HS);
    __syncthreads();  // Ks, Vs (and Qs on the first pass) are in place

    float s[R][kKJ];
    dot_tile<R, kKJ>(s, Qs, tp.ty, Ks, tp.tx, HS);
#pragma unroll
    for (int i = 0; i < R; i++) {
      float mx = -INFINITY;
#pragma unroll
      for (int k = 0; k < kKJ; k++) {
        const int c = k0 + tp.tx + 8 * k;
        s[i][k] = c <= row[i] ? s[i][k] * scale : -INFINITY;
        mx = fmaxf(mx, s[i][k]);
      }
      mx = group8_max(mx);
      // finite: key 0 is visible to every row, and it is in the first key block
      const float mnew = fmaxf(m[i], mx);
      const float alpha = expf(m[i] - mnew);  // 0 on the first block (m = -inf)
      float rs = 0.f;
#pragma unroll
      for (int k = 0; k < kKJ; k++) {
        const float p = expf(s[i][k] - mnew);  // 0 for masked keys
        Ps[(tp.ty + 16 * i) * ldp + tp.tx + 8 * k] = p;
        rs += p;
      }
      rs = group8_sum(rs);
      l[i] = l[i] * alpha + rs;
      m[i] = mnew;
#pragma unroll
      for (int j = 0; j < DJ; j++) o[i][j] *= alpha;
    }
    __syncthreads();  // Ps complete

#pragma unroll 4
    for (int c = 0; c < kKeys; c++) {  // masked and padding keys have p = 0 and v = 0
      float p[R], v[DJ];
#pragma unroll
      for (int i = 0; i < R; i++) p[i] = Ps[(tp.ty + 16 * i) * ldp + c];
#pragma unroll
      for (int j = 0; j < DJ; j++) {
        const int d = tp.tx + 8 * j;
        v[j] = d < HS ? Vs[c * ldv + d] : 0.f;
      }
#pragma unroll
      for (int i = 0; i < R; i++)
#pragma unroll
        for (int j = 0; j < DJ; j++) o[i][j] = fmaf(p[i], v[j], o[i][j]);
    }
  }

#pragma unroll
  for (int i = 0; i < R; i++) {
    const int t = q0 + tp.ty + 16 * i;
    if (t >= T_) continue;
    const float inv = 1.f / l[i];
    T* orow = out + ((long long)b * T_ + t) * C + (long long)h * HS;
#pragma unroll
    for (int j = 0; j < DJ; j++) {
      const int d = tp.tx + 8 * j;
      if (d < HS) orow[d] = from_f<T>(o[i][j] * inv);
    }
    if (tp.tx == 0) lse[((long long)b * NH + h) * T_ + t] = m[i] + logf(l[i]);
  }
}

// ------------------------------------------------------------------ backward

template <int DMAX>
size_t dq_smem_floats(int HS) {
  using Cf = FlashCfg<DMAX>;
  return 2 * (size_t)Cf::BR * ldp4(HS) + 2 * (size_t)kKeys * ldp4(HS) + (size_t)Cf::BR * (kKeys + 1);
}

// grid (B * NH, ceil(T / BR)): dq of BR query rows of head h.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_dq_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* dsum, int T_, int NH,
                        int NKV, int HS, float scale) {
  using Cf = FlashCfg<DMAX>;
  constexpr int R = Cf::R, BR = Cf::BR, DJ = Cf::DJ;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int ld = ldp4(HS), W = hs_pad4(HS), ldp = kKeys + 1;
  float* Qs = smem;              // BR x ld
  float* dOs = Qs + BR * ld;     // BR x ld
  float* Ks = dOs + BR * ld;     // kKeys x ld
  float* Vs = Ks + kKeys * ld;   // kKeys x ld
  float* dSs = Vs + kKeys * ld;  // BR x ldp
  const ThreadPos tp = thread_pos();
  const int h = blockIdx.x % NH, b = blockIdx.x / NH;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * BR;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, kvh = h / (NH / NKV);
  const T* seq = qkv + (long long)b * T_ * QKVD;
  const long long lrow = ((long long)b * NH + h) * T_;  // lse / dsum of row t: [lrow + t]

  load_tile(Qs, ld, W, seq + (long long)h * HS, QKVD, q0, BR, T_, HS);
  load_tile(dOs, ld, W, dout + (long long)b * T_ * C + (long long)h * HS, C, q0, BR, T_, HS);
  const int qend = min(q0 + BR, T_);
  const int nkb = (qend + kKeys - 1) / kKeys;

  int row[R];
  float lr[R], dr[R], dq[R][DJ];
#pragma unroll
  for (int i = 0; i < R; i++) {
    const int t = q0 + tp.ty + 16 * i;
    row[i] = min(t, T_ - 1);
    lr[i] = t < T_ ? lse[lrow + t] : 0.f;
    dr[i] = t < T_ ? dsum[lrow + t] : 0.f;
#pragma unroll
    for (int j = 0; j < DJ; j++) dq[i][j] = 0.f;
  }

  for (int kb = 0; kb < nkb; kb++) {
    const int k0 = kb * kKeys;
    __syncthreads();  // the previous block's reads of Ks, dSs are done
    load_tile(Ks, ld, W, seq + C + (long long)kvh * HS, QKVD, k0, kKeys, T_, HS);
    load_tile(Vs, ld, W, seq + C + KVD + (long long)kvh * HS, QKVD, k0, kKeys, T_, HS);
    __syncthreads();

    float s[R][kKJ], dp[R][kKJ];
    dot_tile<R, kKJ>(s, Qs, tp.ty, Ks, tp.tx, HS);
    dot_tile<R, kKJ>(dp, dOs, tp.ty, Vs, tp.tx, HS);
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
      for (int k = 0; k < kKJ; k++) {
        const int c = k0 + tp.tx + 8 * k;
        const float p = c <= row[i] ? expf(s[i][k] * scale - lr[i]) : 0.f;
        dSs[(tp.ty + 16 * i) * ldp + tp.tx + 8 * k] = p * (dp[i][k] - dr[i]) * scale;
      }
    __syncthreads();  // dSs complete

#pragma unroll 4
    for (int c = 0; c < kKeys; c++) {
      float ds[R], kv[DJ];
#pragma unroll
      for (int i = 0; i < R; i++) ds[i] = dSs[(tp.ty + 16 * i) * ldp + c];
#pragma unroll
      for (int j = 0; j < DJ; j++) {
        const int d = tp.tx + 8 * j;
        kv[j] = d < HS ? Ks[c * ld + d] : 0.f;
      }
#pragma unroll
      for (int i = 0; i < R; i++)
#pragma unroll
        for (int j = 0; j < DJ; j++) dq[i][j] = fmaf(ds[i], kv[j], dq[i][j]);
    }
  }

#pragma unroll
  for (int i = 0; i < R; i++) {
    const int t = q0 + tp.ty + 16 * i;
    if (t >= T_) continue;
    T* dst = dqkv + ((long long)b * T_ + t) * QKVD + (long long)h * HS;
#pragma unroll
    for (int j = 0; j < DJ; j++) {
      const int d = tp.tx + 8 * j;
      if (d < HS) dst[d] = from_f<T>(dq[i][j]);
    }
  }
}

template <int DMAX>
size_t dkv_smem_floats(int HS) {
  using Cf = FlashCfg<DMAX>;
  return 2 * (size_t)Cf::BCKV * ldp4(HS) + 2 * (size_t)kRowsKV * ldp4(HS) + 2 * (size_t)kRowsKV * (Cf::BCKV + 1) +
         2 * (size_t)kRowsKV;
}

// grid (B * NKV, ceil(T / BCKV)): dk, dv of BCKV keys of kv head kvh, summed over the
// query heads of its group and the query rows t >= the block's first key.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_dkv_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* dsum, int T_, int NH,
                         int NKV, int HS, float scale) {
  using Cf = FlashCfg<DMAX>;
  constexpr int KC = Cf::KC, BC = Cf::BCKV, KK = Cf::KKV, DJ = Cf::DJ, RI = kRI_KV, BR = kRowsKV;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int ld = ldp4(HS), W = hs_pad4(HS), ldp = BC + 1;
  float* Ks = smem;              // BC x ld
  float* Vs = Ks + BC * ld;      // BC x ld
  float* Qs = Vs + BC * ld;      // BR x ld
  float* dOs = Qs + BR * ld;     // BR x ld
  float* Ps = dOs + BR * ld;     // BR x ldp
  float* dSs = Ps + BR * ldp;    // BR x ldp
  float* Ls = dSs + BR * ldp;    // BR
  float* Ds = Ls + BR;           // BR
  const ThreadPos tp = thread_pos();
  const int kvh = blockIdx.x % NKV, b = blockIdx.x / NKV;
  const int k0 = blockIdx.y * BC;  // the first blocks (most query rows) are launched first
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const T* seq = qkv + (long long)b * T_ * QKVD;

  load_tile(Ks, ld, W, seq + C + (long long)kvh * HS, QKVD, k0, BC, T_, HS);
  load_tile(Vs, ld, W, seq + C + KVD + (long long)kvh * HS, QKVD, k0, BC, T_, HS);

  float dk[KC][DJ], dv[KC][DJ];
#pragma unroll
  for (int i = 0; i < KC; i++)
#pragma unroll
    for (int j = 0; j < DJ; j++) dk[i][j] = dv[i][j] = 0.f;

  for (int h = kvh * group; h < (kvh + 1) * group; h++) {
    const long long lrow = ((long long)b * NH + h) * T_;
    for (int q0 = k0; q0 < T_; q0 += BR) {  // rows before k0 see none of these keys
      __syncthreads();  // the previous step's reads of Qs, dOs, Ps, dSs, Ls, Ds are done
      load_tile(Qs, ld, W, seq + (long long)h * HS, QKVD, q0, BR, T_, HS);
      load_tile(dOs, ld, W, dout + (long long)b * T_ * C + (long long)h * HS, C, q0, BR, T_, HS);
      if (tp.tid < BR) {
        const int t = q0 + tp.tid;
        Ls[tp.tid] = t < T_ ? lse[lrow + t] : 0.f;
        Ds[tp.tid] = t < T_ ? dsum[lrow + t] : 0.f;
      }
      __syncthreads();  // Ks, Vs (first pass), Qs, dOs, Ls, Ds in place

      float s[RI][KK], dp[RI][KK];
      dot_tile<RI, KK>(s, Qs, tp.ty, Ks, tp.tx, HS);
      dot_tile<RI, KK>(dp, dOs, tp.ty, Vs, tp.tx, HS);
#pragma unroll
      for (int i = 0; i < RI; i++) {
        const int r = tp.ty + 16 * i, t = q0 + r;
#pragma unroll
        for (int k = 0; k < KK; k++) {
          const int c = tp.tx + 8 * k;
          // c <= t < T_: the key is visible to a real row (so also c < T_)
          const float p = (t < T_ && k0 + c <= t) ? expf(s[i][k] * scale - Ls[r]) : 0.f;
          Ps[r * ldp + c] = p;
          dSs[r * ldp + c] = p * (dp[i][k] - Ds[r]) * scale;
        }
      }
      __syncthreads();  // Ps, dSs complete

#pragma unroll 2
      for (int r = 0; r < BR; r++) {
        float p[KC], ds[KC], qv[DJ], dov[DJ];
#pragma unroll
        for (int i = 0; i < KC; i++) {
          p[i] = Ps[r * ldp + tp.ty + 16 * i];
          ds[i] = dSs[r * ldp + tp.ty + 16 * i];
        }
#pragma unroll
        for (int j = 0; j < DJ; j++) {
          const int d = tp.tx + 8 * j;
          qv[j] = d < HS ? Qs[r * ld + d] : 0.f;
          dov[j] = d < HS ? dOs[r * ld + d] : 0.f;
        }
#pragma unroll
        for (int i = 0; i < KC; i++)
#pragma unroll
          for (int j = 0; j < DJ; j++) {
            dv[i][j] = fmaf(p[i], dov[j], dv[i][j]);
            dk[i][j] = fmaf(ds[i], qv[j], dk[i][j]);
          }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < KC; i++) {
    const int c = k0 + tp.ty + 16 * i;
    if (c >= T_) continue;
    T* dkr = dqkv + ((long long)b * T_ + c) * QKVD + C + (long long)kvh * HS;
    T* dvr = dkr + KVD;
#pragma unroll
    for (int j = 0; j < DJ; j++) {
      const int d = tp.tx + 8 * j;
      if (d < HS) {
        dkr[d] = from_f<T>(dk[i][j]);
        dvr[d] = from_f<T>(dv[i][j]);
      }
    }
  }
}

// ------------------------------------------------------------------ tensor cores (bf16): dQ, dK/dV
// (the forward kernel and the building blocks: flash_tc.cuh)
size_t tc_dq_smem_bytes(int HS) {
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  return sizeof(bf16) * (2 * (size_t)kTcRows * ld + 4 * (size_t)kTcKeys * ld);  // Q, dO, 2 x (K, V)
}

// grid (B * NH, ceil(T / kTcRows)): dQ of 64 query rows (16 per warp) of head h.
template <int DMAX>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_dq_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, int T_,
                           int NH, int NKV, int HS, float scale, RopeTables rope) {
  constexpr int NT = kTcKeys / 8, DT = DMAX / 8;
  extern __shared__ float4 smem4[];
  bf16* sm = reinterpret_cast<bf16*>(smem4);
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  const int tile = kTcKeys * ld;
  bf16* Qs = sm;                   // kTcRows x ld
  bf16* dOs = Qs + kTcRows * ld;   // kTcRows x ld
  bf16* KVs = dOs + kTcRows * ld;  // buffer i: K at KVs + 2 i tile, V at KVs + (2 i + 1) tile
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int h = blockIdx.x % NH, b = blockIdx.x / NH;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kTcRows;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, kvh = h / (NH / NKV);
  const bf16* seq = qkv + (long long)b * T_ * QKVD;
  const bf16* kseq = seq + C + (long long)kvh * HS;
  const long long lrow = ((long long)b * NH + h) * T_;
  auto load_kv = [&](int kb) {  // key block kb into buffer kb % 2 (cp.async, one group)
    bf16* Kb = KVs + 2 * (kb & 1) * tile;
    load_tile_bf16(Kb, ld, kseq, QKVD, kb * kTcKeys, kTcKeys, T_, HS, HSP);
    load_tile_bf16(Kb + tile, ld, kseq + KVD, QKVD, kb * kTcKeys, kTcKeys, T_, HS, HSP);
    cp_async_commit();
  };

  load_tile_bf16(Qs, ld, seq + (long long)h * HS, QKVD, q0, kTcRows, T_, HS, HSP);
  load_tile_bf16(dOs, ld, dout + (long long)b * T_ * C + (long long)h * HS, C, q0, kTcRows, T_, HS, HSP);
  load_kv(0);  // one group with Q, dO
  const int qend = min(q0 + kTcRows, T_);
  const int nkb = (qend + kTcKeys - 1) / kTcKeys;
  const int t0 = q0 + warp * 16 + g, t1 = t0 + 8;
  const int lim0 = min(t0, T_ - 1), lim1 = min(t1, T_ - 1);
  const float scale2 = scale * kLog2e;  // P = exp2(S scale log2 e - lse log2 e)
  const float L0 = t0 < T_ ? lse[lrow + t0] * kLog2e : 0.f, L1 = t1 < T_ ? lse[lrow + t1] * kLog2e : 0.f;
  const float D0 = t0 < T_ ? dsum[lrow + t0] : 0.f, D1 = t1 < T_ ? dsum[lrow + t1] : 0.f;
  float dq[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.f;
  // HS <= 64: this warp's Q and dO rows stay in registers (HS 128 would spill)
  constexpr bool kRegA = DMAX <= 64;
  uint32_t qf[kRegA ? DMAX / 16 : 1][4], dof[kRegA ? DMAX / 16 : 1][4];

  for (int kb = 0; kb < nkb; kb++) {  // double-buffered K/V as in the forward
    const int k0 = kb * kTcKeys;
    cp_async_wait<0>();
    __syncthreads();
    if (kb + 1 < nkb) load_kv(kb + 1);
    const bf16* Ks = KVs + 2 * (kb & 1) * tile;
    const bf16* Vs = Ks + tile;

    const int kmax = min(q0 + warp * 16 + 15, T_ - 1) - k0;  // as in the forward
    const int nt_hi = min(NT, kmax / 8 + 1);
    float s[NT][4], dp[NT][4];
    if constexpr (kRegA) {
      if (kb == 0) {
        load_a_frags(qf, Qs + warp * 16 * ld, ld, HSP);
        load_a_frags(dof, dOs + warp * 16 * ld, ld, HSP);
      }
      mma_rows_reg<NT>(s, qf, Ks, ld, HSP, 0, nt_hi);
      mma_rows_reg<NT>(dp, dof, Vs, ld, HSP, 0, nt_hi);
    } else {
      mma_rows<NT>(s, Qs + warp * 16 * ld, ld, Ks, ld, HSP, 0, nt_hi);
      mma_rows<NT>(dp, dOs + warp * 16 * ld, ld, Vs, ld, HSP, 0, nt_hi);
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[nt][e] = exp2f(fmaf(s[nt][e], scale2, -(e < 2 ? L0 : L1)));  // P
    if (k0 + kTcKeys - 1 > min(q0 + warp * 16, T_ - 1)) {  // masking as in the forward
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int c = k0 + nt * 8 + 2 * q + e;
          if (c > lim0) s[nt][e] = 0.f;
          if (c > lim1) s[nt][2 + e] = 0.f;
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[nt][e] = s[nt][e] * (dp[nt][e] - (e < 2 ? D0 : D1)) * scale;  // dS
    mma_frag<NT / 2, DT>(dq, s, Ks, ld, HSP, 0, min(NT / 2, kmax / 16 + 1));
  }

#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int t = half ? t1 : t0;
    if (t >= T_) continue;
    if (rope.pos) {
      const long long p = rope.pos[(long long)b * T_ + t] * (long long)(HS / 2);
      rope_inverse_frag(dq, half, q, HS, rope.cos_t + p, rope.sin_t + p);
    }
    bf16* dst = dqkv + ((long long)b * T_ + t) * QKVD + (long long)h * HS;
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int d = dt * 8 + 2 * q + e;
        if (d < HS) dst[d] = from_f<bf16>(dq[dt][2 * half + e]);
      }
  }
}

// grid (B * NKV, ceil(T / kTcKeys)): dK, dV of 64 keys (16 per warp) of kv head kvh, summed
// over the query heads of its group and the query rows >= the block's first key.
// (A variant that also adds dQ with atomics here, dropping the dQ kernel, is in the kernel
// lab: cuda/lab/flash_dq_atomic.cu.)
template <int DMAX>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_dkv_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum,
                            int T_, int NH, int NKV, int HS, float scale, RopeTables rope) {
  constexpr int QT = TcKV<DMAX>::QT, NT = QT / 8, DT = DMAX / 8;
  extern __shared__ float4 smem4[];
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  const int qtile = QT * ld;
  float* Ls = reinterpret_cast<float*>(smem4);  // 2 x QT: lse (natural log) of buffer i at Ls + i QT
  float* Ds = Ls + 2 * QT;                      // 2 x QT: dsum
  bf16* Ks = reinterpret_cast<bf16*>(Ds + 2 * QT);  // kTcKeys x ld
  bf16* Vs = Ks + kTcKeys * ld;                     // kTcKeys x ld
  bf16* QdOs = Vs + kTcKeys * ld;  // buffer i: Q at QdOs + 2 i qtile, dO at QdOs + (2 i + 1) qtile (QT x ld)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int kvh = blockIdx.x % NKV, b = blockIdx.x / NKV;
  const int k0 = blockIdx.y * kTcKeys;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const bf16* seq = qkv + (long long)b * T_ * QKVD;
  const bf16* dseq = dout + (long long)b * T_ * C;
  // steps: (head h of the group, QT query rows from q0 >= k0: rows before k0 see none of
  // these keys), step st = (h - kvh group) nq + (q0 - k0) / QT
  const int nq = (T_ - k0 + QT - 1) / QT, nsteps = group * nq;
  auto load_step = [&](int st) {  // Q, dO, lse, dsum of step st into buffer st % 2 (cp.async, one group)
    const int h = kvh * group + st / nq, q0 = k0 + (st % nq) * QT, buf = st & 1;
    const long long lrow = ((long long)b * NH + h) * T_;
    bf16* Qb = QdOs + 2 * buf * qtile;
    load_tile_bf16(Qb, ld, seq + (long long)h * HS, QKVD, q0, QT, T_, HS, HSP);
    load_tile_bf16(Qb + qtile, ld, dseq + (long long)h * HS, C, q0, QT, T_, HS, HSP);
    if (threadIdx.x < QT) {
      const int t = q0 + threadIdx.x;
      const bool ok = t < T_;  // else 0
      cp_async4(Ls + buf * QT + threadIdx.x, lse + (ok ? lrow + t : 0), ok);
      cp_async4(Ds + buf * QT + threadIdx.x, dsum + (ok ? lrow + t : 0), ok);
    }
    cp_async_commit();
  };

  load_tile_bf16(Ks, ld, seq + C + (long long)kvh * HS, QKVD, k0, kTcKeys, T_, HS, HSP);
  load_tile_bf16(Vs, ld, seq + C + KVD + (long long)kvh * HS, QKVD, k0, kTcKeys, T_, HS, HSP);
  load_step(0);  // one group with K, V
  const int key0 = k0 + warp * 16 + g, key1 = key0 + 8;  // this thread's two keys
  const float scale2 = scale * kLog2e;
  float dk[DT][4], dv[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[dt][e] = dv[dt][e] = 0.f;

  // double-buffered: step + 1 is copied (cp.async) while step is computed
  for (int step = 0; step < nsteps; step++) {
    const int q0 = k0 + (step % nq) * QT, buf = step & 1;
    cp_async_wait<0>();  // this thread's copies of this step (and K, V)
    __syncthreads();     // everyone's; and the previous step (the other buffer) is no longer read
    if (step + 1 < nsteps) load_step(step + 1);
    const bf16* Qs = QdOs + 2 * buf * qtile;
    const bf16* dOs = Qs + qtile;
    const float* Lb = Ls + buf * QT;
    const float* Db = Ds + buf * QT;

    // transposed scores: rows = this warp's 16 keys, columns = the QT query rows
    // query columns before this warp's first key see none of its keys: n-tiles below
    // nt_lo (8 queries each) are wholly masked
    const int nt_lo = max(0, k0 + warp * 16 - q0) / 8;
    float st[NT][4], dpt[NT][4];
    // (K, V fragments kept in registers: 221 instead of 168 registers at HS 64, 2 blocks
    // per SM instead of 3, for 8 of 72 ldmatrix per step: not done)
    mma_rows<NT>(st, Ks + warp * 16 * ld, ld, Qs, ld, HSP, nt_lo, NT);
    mma_rows<NT>(dpt, Vs + warp * 16 * ld, ld, dOs, ld, HSP, nt_lo, NT);
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) st[nt][e] = exp2f(fmaf(st[nt][e], scale2, -Lb[nt * 8 + 2 * q + (e & 1)] * kLog2e));
    // masking only where some query row of the step is before some key of this warp, or
    // past T_
    if (q0 < k0 + warp * 16 + 15 || q0 + QT > T_) {
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int t = q0 + nt * 8 + 2 * q + (e & 1);
          if (t >= T_ || ((e >> 1) ? key1 : key0) > t) st[nt][e] = 0.f;
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const float p = st[nt][e];                                                  // P^T
        dpt[nt][e] = p * (dpt[nt][e] - Db[nt * 8 + 2 * q + (e & 1)]) * scale;  // dS^T
      }
    mma_frag<NT / 2, DT>(dv, st, dOs, ld, HSP, nt_lo / 2, NT / 2);
    mma_frag<NT / 2, DT>(dk, dpt, Qs, ld, HSP, nt_lo / 2, NT / 2);
  }

#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int c = half ? key1 : key0;
    if (c >= T_) continue;
    if (rope.pos) {
      const long long p = rope.pos[(long long)b * T_ + c] * (long long)(HS / 2);
      rope_inverse_frag(dk, half, q, HS, rope.cos_t + p, rope.sin_t + p);
    }
    bf16* dkr = dqkv + ((long long)b * T_ + c) * QKVD + C + (long long)kvh * HS;
    bf16* dvr = dkr + KVD;
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int d = dt * 8 + 2 * q + e;
        if (d < HS) {
          dkr[d] = from_f<bf16>(dk[dt][2 * half + e]);
          dvr[d] = from_f<bf16>(dv[dt][2 * half + e]);
        }
      }
  }
}

// ------------------------------------------------------------------ launchers
// (check_shape, prepare_smem, grid2 and launch_fwd_tc: flash_tc.cuh)
template <typename T, int DMAX>
void launch_fwd(T* out, float* lse, const T* qkv, int B, int T_, int NH, int NKV, int HS, cudaStream_t stream) {
  const size_t bytes = sizeof(float) * fwd_smem_floats<DMAX>(HS);
  prepare_smem(flash_fwd_kernel<T, DMAX>, bytes);
  const dim3 grid = grid2((long long)B * NH, (T_ + FlashCfg<DMAX>::BR - 1) / FlashCfg<DMAX>::BR, "flash attention");
  flash_fwd_kernel<T, DMAX><<<grid, kThreads, bytes, stream>>>(out, lse, qkv, T_, NH, NKV, HS,
                                                               1.0f / sqrtf((float)HS));
  CUDA_CHECK_LAUNCH();
}

// rope: applied in the stores (the caller passes it only for HS % 16 == 0)
template <int DMAX>
void launch_bwd_tc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum, int B, int T_,
                   int NH, int NKV, int HS, cudaStream_t stream, const RopeTables& rope) {
  const float scale = 1.0f / sqrtf((float)HS);
  const dim3 gkv = grid2((long long)B * NKV, (T_ + kTcKeys - 1) / kTcKeys, "flash attention backward");
  const size_t bkv = tc_dkv_smem_bytes<DMAX>(HS);
  prepare_smem(flash_bwd_dkv_tc_kernel<DMAX>, bkv);
  flash_bwd_dkv_tc_kernel<DMAX>
      <<<gkv, kThreads, bkv, stream>>>(dqkv, dout, qkv, lse, dsum, T_, NH, NKV, HS, scale, rope);
  CUDA_CHECK_LAUNCH();
  const size_t bq = tc_dq_smem_bytes(HS);
  prepare_smem(flash_bwd_dq_tc_kernel<DMAX>, bq);
  const dim3 gq = grid2((long long)B * NH, (T_ + kTcRows - 1) / kTcRows, "flash attention backward");
  flash_bwd_dq_tc_kernel<DMAX>
      <<<gq, kThreads, bq, stream>>>(dqkv, dout, qkv, lse, dsum, T_, NH, NKV, HS, scale, rope);
  CUDA_CHECK_LAUNCH();
}

// Tensor cores: bf16, HS <= 128, asked for, a device of compute capability >= 8.0, and
// kernels compiled for it from sm_80+ code (a build for older architectures JIT-compiled
// on a newer GPU would only hold the __trap() stub).
template <typename T>
bool use_tensor_cores(int HS, bool allowed) {
  if (!std::is_same<T, bf16>::value || !allowed || HS > 128) return false;
  int dev = 0, major = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 8) return false;
  cudaFuncAttributes fa;
  CUDA_CHECK(cudaFuncGetAttributes(&fa, flash_fwd_tc_kernel<64, 2>));
  // the virtual architecture the code came from (0 when the binary holds no PTX: then
  // the machine code's architecture, which nvcc compiles from the same virtual one)
  return (fa.ptxVersion > 0 ? fa.ptxVersion : fa.binaryVersion) >= 80;
}

template <typename T, int DMAX>
void launch_bwd(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* dsum, int B, int T_, int NH,
                int NKV, int HS, cudaStream_t stream) {
  using Cf = FlashCfg<DMAX>;
  const float scale = 1.0f / sqrtf((float)HS);
  const size_t bkv = sizeof(float) * dkv_smem_floats<DMAX>(HS);
  prepare_smem(flash_bwd_dkv_kernel<T, DMAX>, bkv);
  const dim3 gkv = grid2((long long)B * NKV, (T_ + Cf::BCKV - 1) / Cf::BCKV, "flash attention backward");
  flash_bwd_dkv_kernel<T, DMAX><<<gkv, kThreads, bkv, stream>>>(dqkv, dout, qkv, lse, dsum, T_, NH, NKV, HS, scale);
  CUDA_CHECK_LAUNCH();
  const size_t bq = sizeof(float) * dq_smem_floats<DMAX>(HS);
  prepare_smem(flash_bwd_dq_kernel<T, DMAX>, bq);
  const dim3 gq = grid2((long long)B * NH, (T_ + Cf::BR - 1) / Cf::BR, "flash attention backward");
  flash_bwd_dq_kernel<T, DMAX><<<gq, kThreads, bq, stream>>>(dqkv, dout, qkv, lse, dsum, T_, NH, NKV, HS, scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool flash_attention_uses_tensor_cores(int HS) { return use_tensor_cores<bf16>(HS, true); }

template <typename T>
void flash_attention_forward(T* out, float* lse, const T* qkv, int B, int T_, int NH, int NKV, int HS,
                             cudaStream_t stream, bool tensor_cores) {
  check_shape(B, T_, NH, NKV, HS, "flash_attention_forward");
  if (B == 0 || T_ == 0) return;
  if constexpr (std::is_same<T, bf16>::value) {
    if (use_tensor_cores<T>(HS, tensor_cores)) {
      if (HS <= 64)
        launch_fwd_tc<64, 2>(out, lse, qkv, B, T_, NH, NKV, HS, stream);
      else
        launch_fwd_tc<128, 1>(out, lse, qkv, B, T_, NH, NKV, HS, stream);
      return;
    }
  }
  if (HS <= 64)
    launch_fwd<T, 64>(out, lse, qkv, B, T_, NH, NKV, HS, stream);
  else if (HS <= 128)
    launch_fwd<T, 128>(out, lse, qkv, B, T_, NH, NKV, HS, stream);
  else
    launch_fwd<T, 256>(out, lse, qkv, B, T_, NH, NKV, HS, stream);
}

template <typename T>
void flash_attention_backward(T* dqkv, float* dsum, const T* dout, const T* out, const T* qkv, const float* lse,
                              int B, int T_, int NH, int NKV, int HS, cudaStream_t stream, bool tensor_cores,
                              const RopeTables& rope) {
  check_shape(B, T_, NH, NKV, HS, "flash_attention_backward");
  if (B == 0 || T_ == 0) return;
  PYLLAMA_CHECK(!rope.pos || (rope.cos_t && rope.sin_t), ValueError,
                "flash_attention_backward: RoPE positions without cos/sin tables");
  const long long rows = (long long)B * T_ * NH;
  const long long blocks = (rows + kThreads / 32 - 1) / (kThreads / 32);
  PYLLAMA_CHECK(blocks <= 0x7fffffffLL, ValueError, "flash_attention_backward: too many rows " << rows);
  flash_bwd_dsum_kernel<T><<<(unsigned)blocks, kThreads, 0, stream>>>(dsum, dout, out, B, T_, NH, HS);
  CUDA_CHECK_LAUNCH();
  bool rope_done = false;  // the tensor-core kernels rotate in their stores when HS % 16 == 0
  bool done = false;
  if constexpr (std::is_same<T, bf16>::value) {
    if (use_tensor_cores<T>(HS, tensor_cores)) {
      rope_done = HS % 16 == 0;  // both columns of each RoPE pair in one thread
      const RopeTables fused = rope_done ? rope : RopeTables();
      if (HS <= 64)
        launch_bwd_tc<64>(dqkv, dout, qkv, lse, dsum, B, T_, NH, NKV, HS, stream, fused);
      else
        launch_bwd_tc<128>(dqkv, dout, qkv, lse, dsum, B, T_, NH, NKV, HS, stream, fused);
      done = true;
    }
  }
  if (!done) {
    if (HS <= 64)
      launch_bwd<T, 64>(dqkv, dout, qkv, lse, dsum, B, T_, NH, NKV, HS, stream);
    else if (HS <= 128)
      launch_bwd<T, 128>(dqkv, dout, qkv, lse, dsum, B, T_, NH, NKV, HS, stream);
    else
      launch_bwd<T, 256>(dqkv, dout, qkv, lse, dsum, B, T_, NH, NKV, HS, stream);
  }
  if (rope.pos && !rope_done)  // dq and dk (adjacent heads in a row)
    rope_apply<T>(dqkv, NH * HS + 2 * NKV * HS, rope.pos, rope.cos_t, rope.sin_t, B * T_, NH + NKV, HS, true, stream);
}

#define PYLLAMA_FLASH_INSTANTIATE(T)                                                                      \
  template void flash_attention_forward<T>(T*, float*, const T*, int, int, int, int, int, cudaStream_t, bool);      \
  template void flash_attention_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int, int, int, \
                                            int, int, cudaStream_t, bool, const RopeTables&);
PYLLAMA_FLASH_INSTANTIATE(float)
PYLLAMA_FLASH_INSTANTIATE(bf16)

}  // namespace gpu
}  // namespace pyllama