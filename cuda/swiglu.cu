// swiglu.cu — h = silu(gate) * up over [gate | up] rows (see swiglu_* in csrc/ops.h).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

template <typename T>
__global__ void swiglu_forward_kernel(T* h, const T* gu, int N, int I) {
  const long long total = (long long)N * I;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long n = idx / I, i = idx % I;
    const float g = to_f(gu[n * 2 * I + i]);
    const float u = to_f(gu[n * 2 * I + I + i]);
    h[idx] = from_f<T>(g / (1.f + expf(-g)) * u);
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgu, const T* dh, const T* gu, int N, int I) {
  const long long total = (long long)N * I;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long n = idx / I, i = idx % I;
    const float g = to_f(gu[n * 2 * I + i]);
    const float u = to_f(gu[n * 2 * I + I + i]);
    const float d = to_f(dh[idx]);
    const float sig = 1.f / (1.f + expf(-g));
    const float silu = g * sig;
    dgu[n * 2 * I + I + i] = from_f<T>(d * silu);
    dgu[n * 2 * I + i] = from_f<T>(d * u * sig * (1.f + g * (1.f - sig)));
  }
}

}  // namespace

template <typename T>
void swiglu_forward(T* h, const T* gu, int N, int I, cudaStream_t stream) {
  const long long total = (long long)N * I;
  if (total <= 0) return;
  swiglu_forward_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(h, gu, N, I);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int N, int I, cudaStream_t stream) {
  const long long total = (long long)N * I;
  if (total <= 0) return;
  swiglu_backward_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(dgu, dh, gu, N, I);
  CUDA_CHECK_LAUNCH();
}

template void swiglu_forward<float>(float*, const float*, int, int, cudaStream_t);
template void swiglu_forward<bf16>(bf16*, const bf16*, int, int, cudaStream_t);
template void swiglu_backward<float>(float*, const float*, const float*, int, int, cudaStream_t);
template void swiglu_backward<bf16>(bf16*, const bf16*, const bf16*, int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
