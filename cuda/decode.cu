// decode.cu — the kernels only the T = 1 decode step uses (see decode.cuh): RoPE fused
// with the KV-cache store, flash-decoding attention over a long cache, and a row argmax
// for greedy decoding on the device. Positions, slots and the cache base pointers are
// read from device memory so a captured CUDA graph stays valid from step to step.
#include <algorithm>
#include <climits>

#include "decode.cuh"
#include "kernels.cuh"  // kMaxHeadSize

namespace pyllama {
namespace gpu {

namespace {

// Programmatic dependent launch (sm_90 and later; decode.cuh): a kernel launched with
// pdl may start while the kernel before it finishes; pdl_wait() blocks until that kernel
// has completed and its writes are visible, so everything before it may only read what no
// earlier kernel writes (the weights). pdl_launch_dependents() lets the next kernel start.
// Both are no-ops for a kernel launched without the attribute, and on older GPUs.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#ifndef PYLLAMA_CUDA_SIM
template <typename... P, typename... A>
void launch_pdl(bool pdl, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                A... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, args...);
  if (err != cudaSuccess && pdl) {  // a driver without programmatic launches: a plain one
    (void)cudaGetLastError();
    cfg.numAttrs = 0;
    err = cudaLaunchKernelEx(&cfg, kernel, args...);
  }
  CUDA_CHECK(err);
}
#endif

constexpr int kDecWarps = 4;
constexpr int kDecThreads = 32 * kDecWarps;
constexpr int kPerLane = kMaxHeadSize / 32;  // most head elements one lane holds (8)

// ---------------------------------------------------------------- RoPE + cache store
template <typename T>
__global__ void rope_store_kernel(T* qkv, void* const* kvp, long long layer_off, const int32_t* slots,
                                  const int32_t* pos, const float* cos_t, const float* sin_t, int B, int NH, int NKV,
                                  int HS, int max_len) {
  const int half = HS / 2, heads = NH + 2 * NKV, QKVD = heads * HS;
  const long long total = (long long)B * heads * half;
  T* kc = static_cast<T*>(kvp[0]) + layer_off;
  T* vc = static_cast<T*>(kvp[1]) + layer_off;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const int i = (int)(idx % half);
    const long long bh = idx / half;
    const int hh = (int)(bh % heads);  // 0..NH-1 query, then NKV key, then NKV value heads
    const int b = (int)(bh / heads);
    const long long p = pos[b];
    T* x = qkv + (long long)b * QKVD + (long long)hh * HS;
    if (hh >= NH + NKV) {  // value: stored as is
      T* dst = vc + (((long long)slots[b] * NKV + (hh - NH - NKV)) * max_len + p) * HS;
      dst[i] = x[i];
      dst[i + half] = x[i + half];
      continue;
    }
    // the arithmetic of rope_kernel (rope.cu), so both paths round alike
    const float c = cos_t[p * half + i];
    const float si = sin_t[p * half + i];
    const float a = to_f(x[i]), bb = to_f(x[i + half]);
    const T r0 = from_f<T>(a * c - bb * si);
    const T r1 = from_f<T>(bb * c + a * si);
    if (hh < NH) {
      x[i] = r0;
      x[i + half] = r1;
    } else {
      T* dst = kc + (((long long)slots[b] * NKV + (hh - NH)) * max_len + p) * HS;
      dst[i] = r0;
      dst[i + half] = r1;
    }
  }
}

// ---------------------------------------------------------------- attention
// VEC consecutive elements as float; VEC == 16 / sizeof(T) is one 128-bit load (the
// caller guarantees 16-byte alignment: HS is a multiple of VEC and rows start at
// multiples of HS elements of 256-byte aligned buffers).
template <int VEC, typename T>
__device__ __forceinline__ void load_vec(const T* p, float* o) {
  if constexpr (VEC == kPack<T>) {
    load_pack(p, o);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; k++) o[k] = to_f(p[k]);
  }
}

// Merges the splits of one (head, row): o = sum_s w_s acc_s / sum_s w_s l_s, w_s = exp(m_s -
// max m), from part (splits x (m, l, acc[HS])) written by other blocks: read through L2 (__ldcg).
template <typename T>
__device__ void merge_splits(T* o, const float* part, int HS, int splits, int tid, int nthreads) {
  const long long stride = HS + 2;
  float M = -INFINITY;
  for (int s = 0; s < splits; s++) M = fmaxf(M, __ldcg(part + s * stride));
  float L = 0.f;
  for (int s = 0; s < splits; s++) {
    const float ms = __ldcg(part + s * stride);
    if (ms != -INFINITY) L += __ldcg(part + s * stride + 1) * expf(ms - M);
  }
  const float inv = 1.f / L;
  for (int i = tid; i < HS; i += nthreads) {
    float a = 0.f;
    for (int s = 0; s < splits; s++) {
      const float ms = __ldcg(part + s * stride);
      if (ms != -INFINITY) a += expf(ms - M) * __ldcg(part + s * stride + 2 + i);
    }
    o[i] = from_f<T>(a * inv);
  }
}

// Block (split sp, head h, row b) covers keys [sp*chunk, min(nk, (sp+1)*chunk)). A group of
// G lanes (a power of two) takes one key: lane g holds the VEC-wide chunks g, g+G, ... of the
// head; a warp takes 32/G keys at a time, the block 4x that. Each group keeps an online
// softmax (running max m, sum l, unnormalised output acc); the groups are merged through
// shared memory; the block writes (m, l, acc[HS]) for the merge kernel, or, when it is the
// only split, the normalised output directly.
template <typename T, int VEC>
__global__ void __launch_bounds__(kDecThreads)
    decode_attn_kernel(T* out, float* scratch, int* counters, const T* qkv, void* const* kvp, long long layer_off,
                       const int32_t* slots, const int32_t* pos, int NH, int NKV, int HS, int max_len, int chunk,
                       int G, float scale) {
  extern __shared__ float sm[];  // NG * HS acc, then NG m, NG l, NG weights
  constexpr int MAXC = kPerLane / VEC;
  const int splits = gridDim.x, sp = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gpw = 32 / G, NG = kDecWarps * gpw;
  const int g = lane % G, gid = warp * gpw + lane / G;
  const int nchunks = HS / VEC;
  const int kvh = h / (NH / NKV);
  const int QKVD = (NH + 2 * NKV) * HS;
  pdl_wait();  // q, the new key and value: written by the kernel before
  const int nk = pos[b] + 1;
  const int s0 = sp * chunk, s1 = min(nk, s0 + chunk);

  float q[MAXC * VEC], acc[MAXC * VEC];
  const T* qr = qkv + (long long)b * QKVD + (long long)h * HS;
#pragma unroll
  for (int j = 0; j < MAXC; j++) {
    const int c = g + j * G;
    if (c < nchunks) {
      load_vec<VEC>(qr + c * VEC, q + j * VEC);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; k++) q[j * VEC + k] = 0.f;
    }
#pragma unroll
    for (int k = 0; k < VEC; k++) acc[j * VEC + k] = 0.f;
  }
  const long long head_off = layer_off + ((long long)slots[b] * NKV + kvh) * max_len * HS;
  const T* kb = static_cast<const T*>(kvp[0]) + head_off;
  const T* vb = static_cast<const T*>(kvp[1]) + head_off;

  float m = -INFINITY, l = 0.f;
  for (int base = s0 + warp * gpw; base < s1; base += NG) {  // warp-uniform trip count (shuffles below)
    const int s = base + lane / G;
    const bool valid = s < s1;
    float d = 0.f;
    if (valid) {
      const T* kr = kb + (long long)s * HS;
#pragma unroll
      for (int j = 0; j < MAXC; j++) {
        const int c = g + j * G;
        if (c < nchunks) {
          float kv[VEC];
          load_vec<VEC>(kr + c * VEC, kv);
#pragma unroll
          for (int k = 0; k < VEC; k++) d += q[j * VEC + k] * kv[k];
        }
      }
    }
    for (int o = G >> 1; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);  // within the group
    if (valid) {
      d *= scale;
      const float mn = fmaxf(m, d);
      const float corr = expf(m - mn);  // 0 while m is -inf
      const float e = expf(d - mn);
      l = l * corr + e;
      const T* vr = vb + (long long)s * HS;
#pragma unroll
      for (int j = 0; j < MAXC; j++) {
        const int c = g + j * G;
        if (c < nchunks) {
          float vv[VEC];
          load_vec<VEC>(vr + c * VEC, vv);
#pragma unroll
          for (int k = 0; k < VEC; k++) acc[j * VEC + k] = acc[j * VEC + k] * corr + e * vv[k];
        }
      }
      m = mn;
    }
  }
  pdl_launch_dependents();

  float* sm_acc = sm;
  float* sm_m = sm + (size_t)NG * HS;
  float* sm_l = sm_m + NG;
  float* sm_w = sm_l + NG;
#pragma unroll
  for (int j = 0; j < MAXC; j++) {
    const int c = g + j * G;
    if (c < nchunks) {
#pragma unroll
      for (int k = 0; k < VEC; k++) sm_acc[(size_t)gid * HS + c * VEC + k] = acc[j * VEC + k];
    }
  }
  if (g == 0) {
    sm_m[gid] = m;
    sm_l[gid] = l;
  }
  __syncthreads();
  float M = -INFINITY;
  for (int j = 0; j < NG; j++) M = fmaxf(M, sm_m[j]);
  float* part = scratch + (((long long)b * NH + h) * splits + sp) * (HS + 2);
  if (M != -INFINITY) {  // M == -inf: no key in this range (a later split of a short sequence)
    if (tid < NG) sm_w[tid] = sm_m[tid] == -INFINITY ? 0.f : expf(sm_m[tid] - M);
    __syncthreads();
    float L = 0.f;
    for (int j = 0; j < NG; j++) L += sm_w[j] * sm_l[j];
    if (splits == 1) {
      const float inv = 1.f / L;
      T* o = out + (long long)b * NH * HS + (long long)h * HS;
      for (int i = tid; i < HS; i += kDecThreads) {
        float a = 0.f;
        for (int j = 0; j < NG; j++) a += sm_w[j] * sm_acc[(size_t)j * HS + i];
        o[i] = from_f<T>(a * inv);
      }
      return;  // uniform over the block (splits is)
    }
    if (tid == 0) {
      part[0] = M;
      part[1] = L;
    }
    for (int i = tid; i < HS; i += kDecThreads) {
      float a = 0.f;
      for (int j = 0; j < NG; j++) a += sm_w[j] * sm_acc[(size_t)j * HS + i];
      part[2 + i] = a;
    }
  } else if (tid == 0) {
    part[0] = -INFINITY;
    part[1] = 0.f;
  }
  if (splits == 1) return;  // a split of one range always has a key (position 0)
  // The last block of (head h, row b) to finish merges the splits (no second kernel):
  // publish this block's part, count it, and let the block that counts `splits` read all.
  __shared__ int is_last;
  __threadfence();
  __syncthreads();
  if (tid == 0) is_last = atomicAdd(&counters[b * NH + h], 1) == splits - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  merge_splits<T>(out + (long long)b * NH * HS + (long long)h * HS,
                  scratch + ((long long)b * NH + h) * splits * (HS + 2), HS, splits, tid, kDecThreads);
  if (tid == 0) counters[b * NH + h] = 0;  // ready for the next step (graph replays)
}

// ---------------------------------------------------------------- skinny matmul
// y (NB, OUT) = x (NB, IN) W^T for a handful of rows: one warp per output feature streams
// that row of W once with 128-bit loads (8 bf16 / 4 float per lane and load) and keeps NB
// float accumulators; x (tiny) is re-read from L1/L2. Bandwidth-bound, as decoding is.
constexpr int kGemvThreads = 256;

template <typename T, int NB>
__global__ void __launch_bounds__(kGemvThreads) skinny_gemv_kernel(T* y, const T* x, const T* W, int IN, int OUT) {
  constexpr int VEC = 16 / (int)sizeof(T);
  const long long row = ((long long)blockIdx.x * kGemvThreads + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= OUT) return;  // whole warp
  const T* w = W + row * IN;
  float acc[NB];
#pragma unroll
  for (int b = 0; b < NB; b++) acc[b] = 0.f;
#pragma unroll 4
  for (int k = lane * VEC; k < IN; k += 32 * VEC) {
    float wv[VEC];
    load_vec<VEC>(w + k, wv);
#pragma unroll
    for (int b = 0; b < NB; b++) {
      float xv[VEC];
      load_vec<VEC>(x + (long long)b * IN + k, xv);
#pragma unroll
      for (int e = 0; e < VEC; e++) acc[b] += wv[e] * xv[e];
    }
  }
#pragma unroll
  for (int b = 0; b < NB; b++) acc[b] = warp_sum(acc[b]);
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < NB; b++) y[(long long)b * OUT + row] = from_f<T>(acc[b]);
  }
}

// ---------------------------------------------------------------- greedy feed
// Row b of a greedy step that feeds itself (DecodeFeed): the argmax becomes the next input.
__device__ __forceinline__ void feed_row(const DecodeFeed& f, int b, int B, int32_t tok) {
  f.tok[b] = tok;
  f.pos[b] += 1;
  const int st = *f.step;
  if (st < f.ring_cap) f.ring[(long long)st * B + b] = tok;
}

__global__ void decode_advance_kernel(DecodeFeed f, const int32_t* argmax, int B) {
  for (int b = threadIdx.x; b < B; b += blockDim.x) feed_row(f, b, B, argmax[b]);
  __syncthreads();  // every row has read the step before it moves on
  if (threadIdx.x == 0) *f.step += 1;
}

// ---------------------------------------------------------------- fused layer matmuls
// The skinny GEMV with its neighbours folded in (decode.cuh, FusedGemv): an RMSNorm of the
// input in the prologue (every block normalises the NB input rows into shared memory, with
// the arithmetic of residual_rmsnorm_kernel), and in the epilogue a plain store (with a
// float copy and a partial argmax), a residual add, SwiGLU, or RoPE with the KV-cache store.
// Each warp takes one work unit of R weight rows: the dot products use the accumulation
// order of skinny_gemv_kernel, and each rounding to T happens where the unfused kernels
// round, so both paths give the same bits.
constexpr int kFusedThreads = 256;
constexpr int kFusedWarps = kFusedThreads / 32;
constexpr int kFusedPrefetch = 4;  // 128-bit weight loads per row and lane issued before the prologue

// numpy's argmax order (arg_better below); declared here for the argmax epilogue
__device__ __forceinline__ bool arg_better(float v, int i, float bv, int bi) {
  const bool vn = isnan(v), bn = isnan(bv);
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}
// (bv, bi) = the better of the warp's lanes' pairs, in every lane (full mask).
__device__ __forceinline__ void warp_argmax(float& bv, int& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (arg_better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
}
// (bv, bi) = the better of the block's threads' pairs; every thread must call it and gets
// the result. sv, si: 32 entries of shared memory each.
__device__ __forceinline__ void block_argmax(float& bv, int& bi, float* sv, int* si) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  warp_argmax(bv, bi);
  __syncthreads();  // sv/si may still be read by a previous call
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  bv = lane < nwarps ? sv[lane] : -INFINITY;
  bi = lane < nwarps ? si[lane] : INT_MAX;
  warp_argmax(bv, bi);
}

// acc[r][b] += (weight row r) . (input row b) over the 128-bit chunk c, in the order of
// skinny_gemv_kernel; wload(r, wv) puts row r's chunk (as floats) in wv.
template <typename T, int NB, int R, typename WLoad>
__device__ __forceinline__ void accumulate_chunk(float (&acc)[R][NB], const T* xin, int IN, int c, WLoad wload) {
  constexpr int VEC = 16 / (int)sizeof(T);
  float xv[NB][VEC];
#pragma unroll
  for (int b = 0; b < NB; b++) load_vec<VEC>(xin + (long long)b * IN + (long long)c * VEC, xv[b]);
#pragma unroll
  for (int r = 0; r < R; r++) {
    float wv[VEC];
    wload(r, wv);
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
      for (int e = 0; e < VEC; e++) acc[r][b] += wv[e] * xv[b][e];
  }
}

template <typename T, int NB, bool NORM, int EPI>
__global__ void __launch_bounds__(kFusedThreads, 2) fused_gemv_kernel(FusedGemv<T> a) {
  constexpr int VEC = 16 / (int)sizeof(T);
  constexpr int R = (EPI == kEpiSwiGLU || EPI == kEpiRope) ? 2 : 1;
  constexpr int PF = kFusedPrefetch;
  __shared__ float red[32];
  __shared__ int red_i[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int IN = a.IN, nch = IN / VEC;
  const int half = a.HS / 2;
  const int u0 = blockIdx.x * kFusedWarps + warp;
  const int ustride = gridDim.x * kFusedWarps;  // grid-stride over units: one prologue per block

  auto rows_of = [&](int u, long long* row) {
    if constexpr (EPI == kEpiRope) {
      const int hh = u / half, i = u - hh * half;
      row[0] = (long long)hh * a.HS + i;
      row[R - 1] = row[0] + half;
    } else {
      row[0] = u;
      if constexpr (R == 2) row[R - 1] = (long long)a.OUT + u;  // SwiGLU: the up row after the I gate rows
    }
  };

  // The first PF weight chunks of a unit are loaded one unit ahead: the first unit's before
  // the wait and the prologue, so their latency overlaps them (and, launched with pdl, the
  // previous kernel's tail); the next unit's while this one computes.
  auto prefetch = [&](int u, uint4 (&dst)[R][PF]) {
    if (u >= a.units) return;
    long long row[R];
    rows_of(u, row);
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int j = 0; j < PF; j++) {
        const int c = lane + 32 * j;
        if (c < nch) dst[r][j] = *reinterpret_cast<const uint4*>(a.W + row[r] * IN + (long long)c * VEC);
      }
  };
  uint4 pf[R][PF];
  prefetch(u0, pf);

  pdl_wait();  // x (and the caches, counters): written by earlier kernels
  const T* xin = a.x;
  if constexpr (NORM) {
    extern __shared__ float4 fused_smem[];  // the NB normalised rows (T); float4: 16-byte aligned
    T* xs = reinterpret_cast<T*>(fused_smem);
#pragma unroll
    for (int b = 0; b < NB; b++) {
      const T* xr = a.x + (long long)b * IN;
      float ss = 0.f;
      for (int i = tid; i < IN; i += kFusedThreads) {
        const float f = to_f(xr[i]);
        ss += f * f;
      }
      ss = block_sum(ss, red);
      const float rs = 1.0f / sqrtf(ss / IN + a.eps);
      for (int i = tid; i < IN; i += kFusedThreads) xs[b * IN + i] = from_f<T>(to_f(a.nw[i]) * (to_f(xr[i]) * rs));
    }
    __syncthreads();
    xin = xs;
  }

  float best_v[NB];  // store with argmax: this warp's best logit of each batch row so far
  int best_i[NB];
#pragma unroll
  for (int b = 0; b < NB; b++) {
    best_v[b] = -INFINITY;
    best_i[b] = INT_MAX;
  }

  for (int u = u0; u < a.units; u += ustride) {  // warp-uniform: no block barrier inside
    uint4 nx[R][PF];
    prefetch(u + ustride, nx);
    long long row[R];
    rows_of(u, row);
    float acc[R][NB];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int b = 0; b < NB; b++) acc[r][b] = 0.f;
#pragma unroll
    for (int j = 0; j < PF; j++) {
      const int c = lane + 32 * j;
      if (c < nch) accumulate_chunk<T, NB, R>(acc, xin, IN, c, [&](int r, float* wv) { unpack<T>(pf[r][j], wv); });
    }
#pragma unroll 4
    for (int c = lane + 32 * PF; c < nch; c += 32)
      accumulate_chunk<T, NB, R>(acc, xin, IN, c,
                                 [&](int r, float* wv) { load_vec<VEC>(a.W + row[r] * IN + (long long)c * VEC, wv); });
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int b = 0; b < NB; b++) acc[r][b] = warp_sum(acc[r][b]);  // every lane holds the sums

    if constexpr (EPI == kEpiStore) {
#pragma unroll
      for (int b = 0; b < NB; b++) {
        const T v = from_f<T>(acc[0][b]);
        if (lane == 0) {
          a.y[(long long)b * a.OUT + u] = v;
          if (a.yf) a.yf[(long long)b * a.OUT + u] = to_f(v);
        }
        if (arg_better(to_f(v), u, best_v[b], best_i[b])) {
          best_v[b] = to_f(v);
          best_i[b] = u;
        }
      }
    } else if constexpr (EPI == kEpiResidual) {
      if (lane == 0) {
#pragma unroll
        for (int b = 0; b < NB; b++) {
          T* xr = a.y + (long long)b * a.OUT + u;
          *xr = from_f<T>(to_f(*xr) + to_f(from_f<T>(acc[0][b])));
        }
      }
    } else if constexpr (EPI == kEpiSwiGLU) {
      if (lane == 0) {
#pragma unroll
        for (int b = 0; b < NB; b++) {
          const float g = to_f(from_f<T>(acc[0][b])), up = to_f(from_f<T>(acc[R - 1][b]));
          a.y[(long long)b * a.OUT + u] = from_f<T>(g / (1.f + expf(-g)) * up);
        }
      }
    } else {  // kEpiRope: rows i and i + half of head hh; the arithmetic of rope_store_kernel
      if (lane == 0) {
        const int NH = a.NH, NKV = a.NKV, HS = a.HS;
        const int hh = u / half, i = u - hh * half;
        T* kc = static_cast<T*>(a.kvp[0]) + a.layer_off;
        T* vc = static_cast<T*>(a.kvp[1]) + a.layer_off;
#pragma unroll
        for (int b = 0; b < NB; b++) {
          const long long p = a.pos[b];
          const T x0 = from_f<T>(acc[0][b]), x1 = from_f<T>(acc[R - 1][b]);
          if (hh >= NH + NKV) {
            T* dst = vc + (((long long)a.slots[b] * NKV + (hh - NH - NKV)) * a.max_len + p) * HS;
            dst[i] = x0;
            dst[i + half] = x1;
            continue;
          }
          const float c = a.cos_t[p * half + i], si = a.sin_t[p * half + i];
          const float f0 = to_f(x0), f1 = to_f(x1);
          const T r0 = from_f<T>(f0 * c - f1 * si);
          const T r1 = from_f<T>(f1 * c + f0 * si);
          T* dst = hh < NH ? a.y + (long long)b * a.OUT + (long long)hh * HS
                           : kc + (((long long)a.slots[b] * NKV + (hh - NH)) * a.max_len + p) * HS;
          dst[i] = r0;
          dst[i + half] = r1;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int j = 0; j < PF; j++) pf[r][j] = nx[r][j];
  }
  pdl_launch_dependents();

  if constexpr (EPI == kEpiStore) {
    if (a.argmax) {
      // per batch row: this block's best, then the last block to finish picks among the blocks'
      float* part_v = a.part;
      int* part_i = reinterpret_cast<int*>(a.part + (long long)gridDim.x * NB);
#pragma unroll
      for (int b = 0; b < NB; b++) {
        float bv = best_v[b];
        int bi = best_i[b];
        block_argmax(bv, bi, red, red_i);
        if (tid == 0) {
          part_v[(long long)blockIdx.x * NB + b] = bv;
          part_i[(long long)blockIdx.x * NB + b] = bi;
        }
      }
      __shared__ int is_last;
      __threadfence();
      __syncthreads();
      if (tid == 0) is_last = atomicAdd(a.counter, 1) == (int)gridDim.x - 1;
      __syncthreads();
      if (!is_last) return;
      __threadfence();
#pragma unroll
      for (int b = 0; b < NB; b++) {
        float bv = -INFINITY;
        int bi = INT_MAX;
        for (int k = tid; k < (int)gridDim.x; k += kFusedThreads) {
          const float v = __ldcg(part_v + (long long)k * NB + b);
          const int i = __ldcg(part_i + (long long)k * NB + b);
          if (arg_better(v, i, bv, bi)) {
            bv = v;
            bi = i;
          }
        }
        block_argmax(bv, bi, red, red_i);
        if (tid == 0) {
          a.argmax[b] = bi;
          if (a.feed.tok) feed_row(a.feed, b, NB, bi);
        }
      }
      if (tid == 0) {
        if (a.feed.tok) *a.feed.step += 1;
        *a.counter = 0;  // ready for the next step (graph replays)
      }
    }
  }
}

// ---------------------------------------------------------------- residual + RMSNorm
// Block per row: x = x + add (rounded to T, as residual_forward), then out = rmsnorm(x) * w
// with the arithmetic of rmsnorm_forward_kernel (norm.cu) on the rounded x.
constexpr int kNormThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    residual_rmsnorm_kernel(T* x, const T* add, T* out, float* rstd, const T* w, int C, float eps) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  T* xr = x + row * C;
  const T* ar = add + row * C;
  T* o = out + row * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const T v = from_f<T>(to_f(xr[i]) + to_f(ar[i]));
    xr[i] = v;  // read back below by this same thread only
    const float f = to_f(v);
    ss += f * f;
  }
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(ss / C + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = from_f<T>(to_f(w[i]) * (to_f(xr[i]) * r));
}

// ---------------------------------------------------------------- argmax
// arg_better (above): numpy's order, NaN above everything (first NaN wins), then larger values, then
// smaller indices.

constexpr int kArgmaxThreads = 1024;

__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(int32_t* out, const float* x, int V) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* row = x + (long long)blockIdx.x * V;
  float bv = -INFINITY;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = row[i];
    if (arg_better(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
  block_argmax(bv, bi, sv, si);
  if (threadIdx.x == 0) out[blockIdx.x] = bi;
}

}  // namespace

template <typename T>
void decode_rope_store(T* qkv, void* const* kvp, long long layer_off, const int32_t* slots, const int32_t* pos,
                       const float* cos_t, const float* sin_t, int B, int NH, int NKV, int HS, int max_len,
                       cudaStream_t stream) {
  const long long total = (long long)B * (NH + 2 * NKV) * (HS / 2);
  if (total <= 0) return;
  rope_store_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(qkv, kvp, layer_off, slots, pos, cos_t, sin_t, B, NH,
                                                                 NKV, HS, max_len);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void decode_residual_rmsnorm(T* x, const T* add, T* out, float* rstd, const T* w, int B, int C, float eps,
                             cudaStream_t stream) {
  if (B <= 0) return;
  residual_rmsnorm_kernel<T><<<(unsigned)B, kNormThreads, 0, stream>>>(x, add, out, rstd, w, C, eps);
  CUDA_CHECK_LAUNCH();
}

bool skinny_gemv_fits(const void* x, const void* w, int B, int IN, int elem_bytes) {
  const int vec = 16 / elem_bytes;
  return B >= 1 && B <= kSkinnyMaxRows && IN % vec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

template <typename T>
void decode_linear(Gemm& g, bool skinny, T* y, const T* x, const T* w, int B, int IN, int OUT, cudaStream_t stream) {
  if (!skinny || !skinny_gemv_fits(x, w, B, IN, (int)sizeof(T))) {
    linear_forward<T>(g, y, x, w, B, IN, OUT, stream);
    return;
  }
  const unsigned blocks = (unsigned)(((long long)OUT * 32 + kGemvThreads - 1) / kGemvThreads);
  switch (B) {
    case 1: skinny_gemv_kernel<T, 1><<<blocks, kGemvThreads, 0, stream>>>(y, x, w, IN, OUT); break;
    case 2: skinny_gemv_kernel<T, 2><<<blocks, kGemvThreads, 0, stream>>>(y, x, w, IN, OUT); break;
    case 3: skinny_gemv_kernel<T, 3><<<blocks, kGemvThreads, 0, stream>>>(y, x, w, IN, OUT); break;
    default: skinny_gemv_kernel<T, 4><<<blocks, kGemvThreads, 0, stream>>>(y, x, w, IN, OUT); break;
  }
  CUDA_CHECK_LAUNCH();
}

bool fused_gemv_fits(int B, int IN, int elem_bytes, bool norm) {
  const int vec = 16 / elem_bytes;
  // the normalised rows (dynamic shared memory) and the kernel's static shared memory
  // (reduction scratch, under 1 KiB) within the 48 KiB a block gets without opting in
  return B >= 1 && B <= kSkinnyMaxRows && IN > 0 && IN % vec == 0 &&
         (!norm || (size_t)B * IN * elem_bytes <= (size_t(48) << 10) - 1024);
}

int fused_argmax_blocks(int OUT, int max_blocks) {
  const int b = (OUT + kFusedWarps - 1) / kFusedWarps;
  return max_blocks > 0 ? std::min(b, max_blocks) : b;
}

namespace {
template <typename T, int NB>
void fused_gemv_nb(int epi, const FusedGemv<T>& a, bool pdl, cudaStream_t stream) {
  long long want = (a.units + kFusedWarps - 1) / kFusedWarps;
  if (a.max_blocks > 0) want = std::min<long long>(want, a.max_blocks);
  const unsigned blocks = (unsigned)want;
  const bool norm = a.nw != nullptr;
  const size_t smem = norm ? (size_t)NB * a.IN * sizeof(T) : 0;
#ifdef PYLLAMA_CUDA_SIM  // one block after another: nothing to overlap
#define PYLLAMA_FUSED_LAUNCH(NORM, EPI) \
  fused_gemv_kernel<T, NB, NORM, EPI><<<blocks, kFusedThreads, smem, stream>>>(a)
#else
#define PYLLAMA_FUSED_LAUNCH(NORM, EPI) \
  launch_pdl(pdl, fused_gemv_kernel<T, NB, NORM, EPI>, dim3(blocks), dim3(kFusedThreads), smem, stream, a)
#endif
  if (norm) {
    switch (epi) {
      case kEpiStore: PYLLAMA_FUSED_LAUNCH(true, kEpiStore); break;
      case kEpiResidual: PYLLAMA_FUSED_LAUNCH(true, kEpiResidual); break;
      case kEpiSwiGLU: PYLLAMA_FUSED_LAUNCH(true, kEpiSwiGLU); break;
      default: PYLLAMA_FUSED_LAUNCH(true, kEpiRope); break;
    }
  } else {
    switch (epi) {
      case kEpiStore: PYLLAMA_FUSED_LAUNCH(false, kEpiStore); break;
      case kEpiResidual: PYLLAMA_FUSED_LAUNCH(false, kEpiResidual); break;
      case kEpiSwiGLU: PYLLAMA_FUSED_LAUNCH(false, kEpiSwiGLU); break;
      default: PYLLAMA_FUSED_LAUNCH(false, kEpiRope); break;
    }
  }
#undef PYLLAMA_FUSED_LAUNCH
  CUDA_CHECK_LAUNCH();
}
}  // namespace

template <typename T>
void fused_gemv(int epi, const FusedGemv<T>& a, int B, bool pdl, cudaStream_t stream) {
  if (a.units <= 0) return;
  switch (B) {
    case 1: fused_gemv_nb<T, 1>(epi, a, pdl, stream); break;
    case 2: fused_gemv_nb<T, 2>(epi, a, pdl, stream); break;
    case 3: fused_gemv_nb<T, 3>(epi, a, pdl, stream); break;
    default: fused_gemv_nb<T, 4>(epi, a, pdl, stream); break;
  }
}

int decode_attention_splits(int B, int NH, int max_len, int num_sms) {
  const long long rows = std::max(1LL, (long long)B * NH);
  const long long want = (2LL * std::max(num_sms, 1) + rows - 1) / rows;  // about two blocks per SM
  // at least kMinKeys keys per split (two passes of a block's 16 key groups at HS 64): the
  // merge runs in the last block, so more splits cost no extra kernel
  constexpr long long kMinKeys = 32;
  const long long cap = std::min(64LL, ((long long)max_len + kMinKeys - 1) / kMinKeys);
  return (int)std::max(1LL, std::min(want, cap));
}

long long decode_attention_scratch(int B, int NH, int HS, int splits) {
  return (long long)B * NH * splits * (HS + 2);
}

template <typename T>
void decode_attention(T* out, float* scratch, int* counters, const T* qkv, void* const* kvp, long long layer_off,
                      const int32_t* slots, const int32_t* pos, int B, int NH, int NKV, int HS, int max_len,
                      int splits, bool pdl, cudaStream_t stream) {
  if (B <= 0 || NH <= 0) return;
  constexpr int VW = 16 / (int)sizeof(T);  // elements per 128-bit load
  const bool wide = HS % VW == 0;
  const int nchunks = wide ? HS / VW : HS;
  int G = 1;
  while (G < nchunks && G < 32) G <<= 1;
  const int NG = kDecWarps * (32 / G);
  const size_t smem = sizeof(float) * (size_t)NG * (HS + 3);
  const int chunk = (max_len + splits - 1) / splits;
  const dim3 grid((unsigned)splits, (unsigned)NH, (unsigned)B);
  const float scale = 1.0f / sqrtf((float)HS);
#ifdef PYLLAMA_CUDA_SIM
  (void)pdl;
  if (wide)
    decode_attn_kernel<T, VW><<<grid, kDecThreads, smem, stream>>>(out, scratch, counters, qkv, kvp, layer_off, slots,
                                                                   pos, NH, NKV, HS, max_len, chunk, G, scale);
  else
    decode_attn_kernel<T, 1><<<grid, kDecThreads, smem, stream>>>(out, scratch, counters, qkv, kvp, layer_off, slots,
                                                                  pos, NH, NKV, HS, max_len, chunk, G, scale);
#else
  launch_pdl(pdl, wide ? decode_attn_kernel<T, VW> : decode_attn_kernel<T, 1>, grid, dim3(kDecThreads), smem, stream,
             out, scratch, counters, qkv, kvp, layer_off, slots, pos, NH, NKV, HS, max_len, chunk, G, scale);
#endif
  CUDA_CHECK_LAUNCH();
}

void decode_advance(const DecodeFeed& f, const int32_t* argmax, int B, cudaStream_t stream) {
  if (B <= 0 || !f.tok) return;
  decode_advance_kernel<<<1, 128, 0, stream>>>(f, argmax, B);
  CUDA_CHECK_LAUNCH();
}

void argmax_rows(int32_t* out, const float* x, int R, int V, cudaStream_t stream) {
  if (R <= 0) return;
  argmax_kernel<<<(unsigned)R, kArgmaxThreads, 0, stream>>>(out, x, V);
  CUDA_CHECK_LAUNCH();
}

#define PYLLAMA_DECODE_INSTANTIATE(T)                                                                              \
  template void decode_rope_store<T>(T*, void* const*, long long, const int32_t*, const int32_t*, const float*,   \
                                     const float*, int, int, int, int, int, cudaStream_t);                         \
  template void decode_attention<T>(T*, float*, int*, const T*, void* const*, long long, const int32_t*,         \
                                    const int32_t*, int, int, int, int, int, int, bool, cudaStream_t);           \
  template void decode_residual_rmsnorm<T>(T*, const T*, T*, float*, const T*, int, int, float, cudaStream_t);  \
  template void decode_linear<T>(Gemm&, bool, T*, const T*, const T*, int, int, int, cudaStream_t);            \
  template void fused_gemv<T>(int, const FusedGemv<T>&, int, bool, cudaStream_t);
PYLLAMA_DECODE_INSTANTIATE(float)
PYLLAMA_DECODE_INSTANTIATE(bf16)

}  // namespace gpu
}  // namespace pyllama
