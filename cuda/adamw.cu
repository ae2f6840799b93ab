// adamw.cu — the fused AdamW pass over the flat buffers, the global gradient
// norm (double, fixed-order partial sums: deterministic) and the clip.
// Semantics as the CPU optimizer (torch.optim.AdamW): decoupled decay first,
// then the bias-corrected Adam step; m is updated as lerp(m, g, 1 - beta1).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

template <typename T>
__global__ void adamw_kernel(float* params, float* m, float* v, const float* grads, T* wc, long long n,
                             const int64_t* run_start, const int32_t* run_decay, int n_runs, AdamWScalars s) {
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n;
       idx += (long long)gridDim.x * blockDim.x) {
    int lo = 0, hi = n_runs - 1;  // the last run whose start is <= idx
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (run_start[mid] <= idx)
        lo = mid;
      else
        hi = mid - 1;
    }
    const float dec = run_decay[lo] ? s.decay_factor : 1.f;
    const float gi = grads[idx];
    const float pi = params[idx] * dec;
    const float m0 = m[idx];
    const float mi = m0 + s.one_minus_b1 * (gi - m0);
    const float vi = v[idx] * s.beta2 + s.one_minus_b2 * gi * gi;
    const float denom = sqrtf(vi) * s.inv_bc2_sqrt + s.eps;
    const float pn = pi - s.step_size * (mi / denom);
    params[idx] = pn;
    m[idx] = mi;
    v[idx] = vi;
    if (wc) wc[idx] = from_f<T>(pn);
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
  adamw_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(params, m, v, grads, wc, n, run_start, run_decay, n_runs, s);
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
