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
// the same three passes on tensor cores instead: see "tensor cores (bf16)" below.
// tools/cuda_sim/run.sh runs every kernel here on the CPU (no GPU needed).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "common.h"  // PYLLAMA_CHECK, ValueError
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kThreads = 128;  // 16 x 8 threads, see above
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
// Rows of 16-byte vectors: HS and the row stride a multiple of 16 / sizeof(T), src aligned.
// (Shared tiles filled this way need ld and their base 16-byte aligned: every tile here is.)
// The same for the whole block (every thread takes the same branch).
template <typename T>
__device__ __forceinline__ bool vec16_ok(const T* src, long long src_ld, int HS) {
  constexpr int VE = 16 / sizeof(T);
  return HS % VE == 0 && src_ld % VE == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0;
}

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

// acc[dt] += A (16 x 16 KT) Bk with A given transposed in shared memory: At row-major with
// rows = the k index (stride lda) and this warp's 16 m columns first; A fragments by
// ldmatrix.x4.trans (lane l gives row k = l % 8 + 8 (l / 16) at column m = 8 ((l / 8) % 2):
// matrices = a[0..3] as mma_rows loads them untransposed); Bk as in mma_frag. Whole warp.
template <int KT, int DT>
__device__ __forceinline__ void mma_at(float (&acc)[DT][4], const bf16* At, int lda, const bf16* Bk, int ldb,
                                       int HSP) {
  static_assert(DT % 2 == 0, "head-dim tiles go in pairs");
  const int lane = threadIdx.x & 31;
  const bf16* pa = At + ((lane & 7) + 8 * (lane >> 4)) * lda + 8 * ((lane >> 3) & 1);
  const bf16* pb = Bk + (lane & 15) * ldb + 8 * (lane >> 4);
#pragma unroll
  for (int kk = 0; kk < KT; kk++) {
    uint32_t a[4];
    ldsm_x4_t(a, pa + kk * 16 * lda);
#pragma unroll
    for (int dp = 0; dp < DT / 2; dp++) {
      if (dp * 16 >= HSP) break;  // the same for every lane
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
// m-tile's arithmetic is its own, so both give the same bits. HS <= 64 takes MT = 2 unless
// BackendOptions.flash_fwd_rows = 64; larger heads MT = 1.
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

size_t tc_dq_smem_bytes(int HS) {
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  return sizeof(bf16) * (2 * (size_t)kTcRows * ld + 4 * (size_t)kTcKeys * ld);  // Q, dO, 2 x (K, V)
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

template <int DMAX>
struct TcKV {
  static constexpr int QT = DMAX <= 64 ? 64 : 32;  // query rows per step (registers: dK, dV take DMAX)
};

// dS^T tile of the atomic-dQ variant (kTcKeys x QT bf16): row stride
template <int DMAX>
__host__ __device__ constexpr int tc_ds_ld() {
  return TcKV<DMAX>::QT + 8;
}

template <int DMAX, bool kDQ>
size_t tc_dkv_smem_bytes(int HS) {
  constexpr int QT = TcKV<DMAX>::QT;
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  // K, V, 2 x (Q, dO, lse, dsum) (, dS^T)
  return sizeof(bf16) * (2 * (size_t)kTcKeys * ld + 4 * (size_t)QT * ld) + 4 * sizeof(float) * QT +
         (kDQ ? sizeof(bf16) * (size_t)kTcKeys * tc_ds_ld<DMAX>() : 0);
}

// grid (B * NKV, ceil(T / kTcKeys)): dK, dV of 64 keys (16 per warp) of kv head kvh, summed
// over the query heads of its group and the query rows >= the block's first key.
// kDQ (HS <= 64: QT = 64, a warp per 16 query rows): each step also adds dS K, its 64 keys'
// share of dQ, into dq_acc (B, T, NH, HS) float with atomicAdd (FlashAttention-2's way: no
// dQ kernel recomputing S and dP, but the order of the adds, and so dQ's last bits, varies).
template <int DMAX, bool kDQ>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_dkv_tc_kernel(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse,
                            const float* dsum, int T_, int NH, int NKV, int HS, float scale, RopeTables rope) {
  constexpr int QT = TcKV<DMAX>::QT, NT = QT / 8, DT = DMAX / 8;
  static_assert(!kDQ || QT == 4 * 16, "atomic dQ: a warp per 16 query rows of a step");
  extern __shared__ float4 smem4[];
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  const int qtile = QT * ld;
  float* Ls = reinterpret_cast<float*>(smem4);  // 2 x QT: lse (natural log) of buffer i at Ls + i QT
  float* Ds = Ls + 2 * QT;                      // 2 x QT: dsum
  bf16* Ks = reinterpret_cast<bf16*>(Ds + 2 * QT);  // kTcKeys x ld
  bf16* Vs = Ks + kTcKeys * ld;                     // kTcKeys x ld
  bf16* QdOs = Vs + kTcKeys * ld;  // buffer i: Q at QdOs + 2 i qtile, dO at QdOs + (2 i + 1) qtile (QT x ld)
  bf16* dSs = QdOs + 4 * qtile;    // kDQ: dS^T, kTcKeys x QT (row stride tc_ds_ld)
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
    if constexpr (kDQ) {
      // dS^T of the block's keys to shared memory (bf16, as the products round it; the
      // masked entries are 0), then warp w: dQ rows q0 + 16 w .. += dS K over the 64 keys
      constexpr int lds = tc_ds_ld<DMAX>();
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++)
          dSs[(warp * 16 + g + 8 * (e >> 1)) * lds + nt * 8 + 2 * q + (e & 1)] = from_f<bf16>(dpt[nt][e]);
      __syncthreads();  // (the next step's first __syncthreads keeps the tile until all have read it)
      float dq[DT][4];
#pragma unroll
      for (int dt = 0; dt < DT; dt++) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.f;
      mma_at<kTcKeys / 16, DT>(dq, dSs + warp * 16, lds, Ks, ld, HSP);
      const int h = kvh * group + step / nq;
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const int t = q0 + warp * 16 + g + 8 * half;
        if (t >= T_) continue;
        float* dst = dq_acc + (((long long)b * T_ + t) * NH + h) * HS;
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
#pragma unroll
          for (int e = 0; e < 2; e++) {
            const int d = dt * 8 + 2 * q + e;
            if (d < HS) atomicAdd(dst + d, dq[dt][2 * half + e]);
          }
      }
    }
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

__global__ void zero_kernel(float* p, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    p[i] = 0.f;
}

// dqkv's q part (B, T, QKVD: the first NH * HS of a row) = dq_acc (B, T, NH * HS) in bf16
__global__ void dq_store_kernel(bf16* dqkv, const float* dq_acc, long long n, int C, int QKVD) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const long long row = i / C;
    dqkv[row * QKVD + (i - row * C)] = from_f<bf16>(dq_acc[i]);
  }
}

// The same with the inverse RoPE (rope_apply's): one thread per pair (i, i + HS / 2) of a
// head, n = B * T * NH * (HS / 2) pairs.
__global__ void dq_store_rope_kernel(bf16* dqkv, const float* dq_acc, long long n, int NH, int HS, int QKVD,
                                     RopeTables rope) {
  const int half = HS / 2, rowp = NH * half;
  for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n; j += (long long)gridDim.x * blockDim.x) {
    const long long row = j / rowp;
    const int r = (int)(j - row * rowp), h = r / half, i = r - h * half;
    const long long p = rope.pos[row] * (long long)half;
    const float c = rope.cos_t[p + i], sn = rope.sin_t[p + i];
    const float* src = dq_acc + row * NH * HS + (long long)h * HS;
    const float a = src[i], b = src[i + half];
    bf16* dst = dqkv + row * QKVD + (long long)h * HS;
    dst[i] = from_f<bf16>(a * c + b * sn);
    dst[i + half] = from_f<bf16>(b * c - a * sn);
  }
}

// ------------------------------------------------------------------ launchers
void check_shape(int B, int T_, int NH, int NKV, int HS, const char* who) {
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

dim3 grid2(long long x, long long y, const char* who) {
  PYLLAMA_CHECK(x <= 0x7fffffffLL && y <= 65535, ValueError,
                who << ": grid (" << x << ", " << y << ") too large (sequence length or batch x heads)");
  return dim3((unsigned)x, (unsigned)y);
}

template <typename T, int DMAX>
void launch_fwd(T* out, float* lse, const T* qkv, int B, int T_, int NH, int NKV, int HS, cudaStream_t stream) {
  const size_t bytes = sizeof(float) * fwd_smem_floats<DMAX>(HS);
  prepare_smem(flash_fwd_kernel<T, DMAX>, bytes);
  const dim3 grid = grid2((long long)B * NH, (T_ + FlashCfg<DMAX>::BR - 1) / FlashCfg<DMAX>::BR, "flash attention");
  flash_fwd_kernel<T, DMAX><<<grid, kThreads, bytes, stream>>>(out, lse, qkv, T_, NH, NKV, HS,
                                                               1.0f / sqrtf((float)HS));
  CUDA_CHECK_LAUNCH();
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

// rope: applied in the stores (the caller passes it only for HS % 16 == 0)
template <int DMAX>
void launch_bwd_tc(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse, const float* dsum,
                   int B, int T_, int NH, int NKV, int HS, cudaStream_t stream, const RopeTables& rope) {
  const float scale = 1.0f / sqrtf((float)HS);
  const dim3 gkv = grid2((long long)B * NKV, (T_ + kTcKeys - 1) / kTcKeys, "flash attention backward");
  if constexpr (DMAX <= 64) {
    if (dq_acc) {  // dQ by atomics in the dK/dV kernel (no dQ kernel)
      const long long n = (long long)B * T_ * NH * HS;
      const unsigned blocks = (unsigned)std::min<long long>((n + 255) / 256, 4096);
      zero_kernel<<<blocks, 256, 0, stream>>>(dq_acc, n);
      CUDA_CHECK_LAUNCH();
      const size_t bytes = tc_dkv_smem_bytes<DMAX, true>(HS);
      prepare_smem(flash_bwd_dkv_tc_kernel<DMAX, true>, bytes);
      flash_bwd_dkv_tc_kernel<DMAX, true>
          <<<gkv, kThreads, bytes, stream>>>(dqkv, dq_acc, dout, qkv, lse, dsum, T_, NH, NKV, HS, scale, rope);
      CUDA_CHECK_LAUNCH();
      const int C = NH * HS, QKVD = C + 2 * NKV * HS;
      if (rope.pos)
        dq_store_rope_kernel<<<blocks, 256, 0, stream>>>(dqkv, dq_acc, n / 2, NH, HS, QKVD, rope);
      else
        dq_store_kernel<<<blocks, 256, 0, stream>>>(dqkv, dq_acc, n, C, QKVD);
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  const size_t bkv = tc_dkv_smem_bytes<DMAX, false>(HS);
  prepare_smem(flash_bwd_dkv_tc_kernel<DMAX, false>, bkv);
  flash_bwd_dkv_tc_kernel<DMAX, false>
      <<<gkv, kThreads, bkv, stream>>>(dqkv, nullptr, dout, qkv, lse, dsum, T_, NH, NKV, HS, scale, rope);
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
                             cudaStream_t stream, bool tensor_cores, int fwd_rows) {
  check_shape(B, T_, NH, NKV, HS, "flash_attention_forward");
  if (B == 0 || T_ == 0) return;
  if constexpr (std::is_same<T, bf16>::value) {
    if (use_tensor_cores<T>(HS, tensor_cores)) {
      if (HS <= 64 && fwd_rows != 64)
        launch_fwd_tc<64, 2>(out, lse, qkv, B, T_, NH, NKV, HS, stream);
      else if (HS <= 64)
        launch_fwd_tc<64, 1>(out, lse, qkv, B, T_, NH, NKV, HS, stream);
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
                              float* dq_acc, const RopeTables& rope) {
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
        launch_bwd_tc<64>(dqkv, dq_acc, dout, qkv, lse, dsum, B, T_, NH, NKV, HS, stream, fused);
      else
        launch_bwd_tc<128>(dqkv, nullptr, dout, qkv, lse, dsum, B, T_, NH, NKV, HS, stream, fused);
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
  template void flash_attention_forward<T>(T*, float*, const T*, int, int, int, int, int, cudaStream_t, bool, int); \
  template void flash_attention_backward<T>(T*, float*, const T*, const T*, const T*, const float*, int, int, int, \
                                            int, int, cudaStream_t, bool, float*, const RopeTables&);
PYLLAMA_FLASH_INSTANTIATE(float)
PYLLAMA_FLASH_INSTANTIATE(bf16)

}  // namespace gpu
}  // namespace pyllama
