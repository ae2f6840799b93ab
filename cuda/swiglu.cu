// swiglu.cu — h = silu(gate) * up over [gate | up] rows (see swiglu_* in csrc/ops.h).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

// grid (column blocks, row blocks): rows n stride over gridDim.y, columns i over x (no
// 64-bit division per element).
template <typename T>
__global__ void swiglu_forward_kernel(T* h, const T* gu, int N, int I) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= I) return;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const T* row = gu + (long long)n * 2 * I;
    const float g = to_f(row[i]);
    const float u = to_f(row[I + i]);
    h[(long long)n * I + i] = from_f<T>(g / (1.f + expf(-g)) * u);
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dgu, const T* dh, const T* gu, int N, int I) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= I) return;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const long long r2 = (long long)n * 2 * I;
    const float g = to_f(gu[r2 + i]);
    const float u = to_f(gu[r2 + I + i]);
    const float d = to_f(dh[(long long)n * I + i]);
    const float sig = 1.f / (1.f + expf(-g));
    const float silu = g * sig;
    dgu[r2 + I + i] = from_f<T>(d * silu);
    dgu[r2 + i] = from_f<T>(d * u * sig * (1.f + g * (1.f - sig)));
  }
}

dim3 rows_grid(int N, int width, int threads) {
  return dim3((unsigned)((width + threads - 1) / threads), (unsigned)(N < 65535 ? N : 65535));
}

}  // namespace

template <typename T>
void swiglu_forward(T* h, const T* gu, int N, int I, cudaStream_t stream) {
  const long long total = (long long)N * I;
  if (total <= 0) return;
  swiglu_forward_kernel<T><<<rows_grid(N, I, 256), 256, 0, stream>>>(h, gu, N, I);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int N, int I, cudaStream_t stream) {
  const long long total = (long long)N * I;
  if (total <= 0) return;
  swiglu_backward_kernel<T><<<rows_grid(N, I, 256), 256, 0, stream>>>(dgu, dh, gu, N, I);
  CUDA_CHECK_LAUNCH();
}

template void swiglu_forward<float>(float*, const float*, int, int, cudaStream_t);
template void swiglu_forward<bf16>(bf16*, const bf16*, int, int, cudaStream_t);
template void swiglu_backward<float>(float*, const float*, const float*, int, int, cudaStream_t);
template void swiglu_backward<bf16>(bf16*, const bf16*, const bf16*, int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
