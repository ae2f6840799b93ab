// embedding.cu — token embedding lookup and its scatter-add gradient
// (see embedding_* in csrc/ops.h).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* wte, int N, int C) {
  const long long total = (long long)N * C;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long n = idx / C, c = idx % C;
    out[idx] = wte[(long long)tokens[n] * C + c];
  }
}

template <typename T>
__global__ void embedding_backward_kernel(float* dwte, const T* dout, const int32_t* tokens, int N, int C) {
  const long long total = (long long)N * C;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long n = idx / C, c = idx % C;
    atomicAdd(dwte + (long long)tokens[n] * C + c, to_f(dout[idx]));
  }
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, int N, int C, cudaStream_t stream) {
  const long long total = (long long)N * C;
  if (total <= 0) return;
  embedding_forward_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(out, tokens, wte, N, C);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void embedding_backward(float* dwte, const T* dout, const int32_t* tokens, int N, int C, cudaStream_t stream) {
  const long long total = (long long)N * C;
  if (total <= 0) return;
  embedding_backward_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(dwte, dout, tokens, N, C);
  CUDA_CHECK_LAUNCH();
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int, int, cudaStream_t);
template void embedding_forward<bf16>(bf16*, const int32_t*, const bf16*, int, int, cudaStream_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int, int, cudaStream_t);
template void embedding_backward<bf16>(float*, const bf16*, const int32_t*, int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
