// adamw.cu — the fused AdamW pass over the flat buffers, the global gradient
// norm (double, fixed-order partial sums: deterministic) and the clip.
// Semantics as the CPU optimizer (torch.optim.AdamW): decoupled decay first,
// then the bias-corrected Adam step; m is updated as lerp(m, g, 1 - beta1).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

// The index of the last run whose start is <= idx (binary search over the n_runs starts).
__device__ __forceinline__ int run_of(const int64_t* run_start, int n_runs, long long idx) {
  int lo = 0, hi = n_runs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (run_start[mid] <= idx)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ float adamw_one(float& p, float& m, float& v, float g, float dec, const AdamWScalars& s) {
  p *= dec;
  m = m + s.one_minus_b1 * (g - m);
  v = v * s.beta2 + s.one_minus_b2 * g * g;
  const float denom = sqrtf(v) * s.inv_bc2_sqrt + s.eps;
  p = p - s.step_size * (m / denom);
  return p;
}

// Packs of 4 elements: with PACK (the four buffers 16-byte aligned, as cudaMalloc'd flat
// buffers are) float4 loads and stores, one run lookup per pack and more only when a run
// starts inside it; without PACK, and for the last partial pack, element by element.
template <typename T, bool PACK>
__global__ void adamw_kernel(float* params, float* m, float* v, const float* grads, T* wc, long long n,
                             const int64_t* run_start, const int32_t* run_decay, int n_runs, AdamWScalars s) {
  const long long npack = (n + 3) / 4;
  for (long long pk = blockIdx.x * (long long)blockDim.x + threadIdx.x; pk < npack;
       pk += (long long)gridDim.x * blockDim.x) {
    const long long i0 = pk * 4;
    if (PACK && i0 + 4 <= n) {
      const int r = run_of(run_start, n_runs, i0);
      const bool one_run = r + 1 >= n_runs || run_start[r + 1] >= i0 + 4;
      float4 p4 = *reinterpret_cast<const float4*>(params + i0);
      float4 m4 = *reinterpret_cast<const float4*>(m + i0);
      float4 v4 = *reinterpret_cast<const float4*>(v + i0);
      const float4 g4 = *reinterpret_cast<const float4*>(grads + i0);
      float pv[4] = {p4.x, p4.y, p4.z, p4.w}, mv[4] = {m4.x, m4.y, m4.z, m4.w}, vv[4] = {v4.x, v4.y, v4.z, v4.w};
      const float gv[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
      for (int k = 0; k < 4; k++) {
        const int rk = one_run ? r : run_of(run_start, n_runs, i0 + k);
        adamw_one(pv[k], mv[k], vv[k], gv[k], run_decay[rk] ? s.decay_factor : 1.f, s);
      }
      *reinterpret_cast<float4*>(params + i0) = make_float4(pv[0], pv[1], pv[2], pv[3]);
      *reinterpret_cast<float4*>(m + i0) = make_float4(mv[0], mv[1], mv[2], mv[3]);
      *reinterpret_cast<float4*>(v + i0) = make_float4(vv[0], vv[1], vv[2], vv[3]);
      if (wc)
#pragma unroll
        for (int k = 0; k < 4; k++) wc[i0 + k] = from_f<T>(pv[k]);
    } else {
      for (long long idx = i0; idx < n && idx < i0 + 4; idx++) {
        const int rk = run_of(run_start, n_runs, idx);
        float pi = params[idx], mi = m[idx], vi = v[idx];
        adamw_one(pi, mi, vi, grads[idx], run_decay[rk] ? s.decay_factor : 1.f, s);
        params[idx] = pi;
        m[idx] = mi;
        v[idx] = vi;
        if (wc) wc[idx] = from_f<T>(pi);
      }
    }
  }
}

constexpr int kNormThreads = 256;

__global__ void sumsq_partial_kernel(double* partials, const float* g, long long n) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const double x = g[i];
    acc += x * x;
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void norm_final_kernel(double* norm, const double* partials, int np) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < np; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) *norm = sqrt(acc);
}

__global__ void clip_kernel(float* g, const double* norm, double max_norm, long long n) {
  const double nv = *norm;
  const double coef = max_norm / (nv + 1e-6);
  if (!(coef < 1.0 || !isfinite(nv))) return;  // uniform across the grid
  const float c = (float)coef;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    g[i] *= c;
}

}  // namespace

template <typename T>
void adamw_update(float* params, float* m, float* v, const float* grads, T* wc, long long n, const int64_t* run_start,
                  const int32_t* run_decay, int n_runs, const AdamWScalars& s, cudaStream_t stream) {
  if (n <= 0 || n_runs <= 0) return;
  const unsigned blocks = grid_for((n + 3) / 4, 256);
  if (aligned16(params) && aligned16(m) && aligned16(v) && aligned16(grads))
    adamw_kernel<T, true><<<blocks, 256, 0, stream>>>(params, m, v, grads, wc, n, run_start, run_decay, n_runs, s);
  else
    adamw_kernel<T, false><<<blocks, 256, 0, stream>>>(params, m, v, grads, wc, n, run_start, run_decay, n_runs, s);
  CUDA_CHECK_LAUNCH();
}

void global_norm(double* norm, double* partials, const float* g, long long n, cudaStream_t stream) {
  sumsq_partial_kernel<<<kNormBlocks, kNormThreads, 0, stream>>>(partials, g, n);
  CUDA_CHECK_LAUNCH();
  norm_final_kernel<<<1, 1024, 0, stream>>>(norm, partials, kNormBlocks);
  CUDA_CHECK_LAUNCH();
}

void clip_by_norm(float* g, const double* norm, double max_norm, long long n, cudaStream_t stream) {
  if (n <= 0) return;
  clip_kernel<<<grid_for(n, 256), 256, 0, stream>>>(g, norm, max_norm, n);
  CUDA_CHECK_LAUNCH();
}

template void adamw_update<float>(float*, float*, float*, const float*, float*, long long, const int64_t*,
                                  const int32_t*, int, const AdamWScalars&, cudaStream_t);
template void adamw_update<bf16>(float*, float*, float*, const float*, bf16*, long long, const int64_t*,
                                 const int32_t*, int, const AdamWScalars&, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
