// embedding.cu — token embedding lookup and its scatter-add gradient
// (see embedding_* in csrc/ops.h).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

// grid (column blocks, row blocks): rows n stride over gridDim.y, columns c over x.
template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* wte, int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int n = blockIdx.y; n < N; n += gridDim.y) out[(long long)n * C + c] = wte[(long long)tokens[n] * C + c];
}

template <typename T>
__global__ void embedding_backward_kernel(float* dwte, const T* dout, const int32_t* tokens, int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int n = blockIdx.y; n < N; n += gridDim.y)
    atomicAdd(dwte + (long long)tokens[n] * C + c, to_f(dout[(long long)n * C + c]));
}

dim3 rows_grid(int N, int C) { return dim3((unsigned)((C + 255) / 256), (unsigned)(N < 65535 ? N : 65535)); }

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, int N, int C, cudaStream_t stream) {
  const long long total = (long long)N * C;
  if (total <= 0) return;
  embedding_forward_kernel<T><<<rows_grid(N, C), 256, 0, stream>>>(out, tokens, wte, N, C);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void embedding_backward(float* dwte, const T* dout, const int32_t* tokens, int N, int C, cudaStream_t stream) {
  const long long total = (long long)N * C;
  if (total <= 0) return;
  embedding_backward_kernel<T><<<rows_grid(N, C), 256, 0, stream>>>(dwte, dout, tokens, N, C);
  CUDA_CHECK_LAUNCH();
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int, int, cudaStream_t);
template void embedding_forward<bf16>(bf16*, const int32_t*, const bf16*, int, int, cudaStream_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int, int, cudaStream_t);
template void embedding_backward<bf16>(float*, const bf16*, const int32_t*, int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
