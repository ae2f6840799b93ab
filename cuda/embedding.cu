// embedding.cu — token embedding lookup and its scatter-add gradient
// (see embedding_* in csrc/ops.h), deterministic: rows grouped by token on the host.
#include <algorithm>
#include <cstdint>
#include <vector>

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

// grid (U, ceil(C / 256)): block u sums the rows of token uniq[u] in position order and adds
// the sum to dwte. A thread's loads are independent (only the adds are in order): unrolled
// by 8, so a frequent token's block keeps 8 loads in flight.
template <typename T>
__global__ void embedding_backward_kernel(float* dwte, const T* dout, const int32_t* order, const int32_t* starts,
                                          const int32_t* uniq, int C) {
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int u = blockIdx.x, s = starts[u], e = starts[u + 1];
  float acc = 0.f;
#pragma unroll 8
  for (int i = s; i < e; i++) acc += to_f(dout[(long long)order[i] * C + c]);
  dwte[(long long)uniq[u] * C + c] += acc;
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

int group_tokens(const int32_t* tokens, int N, std::vector<int32_t>* packed) {
  std::vector<uint64_t> keys((size_t)std::max(N, 0));  // (token, position): sorted, positions ascend per token
  for (int n = 0; n < N; n++) keys[n] = ((uint64_t)(uint32_t)tokens[n] << 32) | (uint32_t)n;
  std::sort(keys.begin(), keys.end());
  int U = 0;
  for (int n = 0; n < N; n++) U += n == 0 || (keys[n] >> 32) != (keys[n - 1] >> 32);
  packed->assign((size_t)N + 2 * (size_t)U + 1, 0);
  int32_t* order = packed->data();
  int32_t* starts = order + N;
  int32_t* uniq = starts + U + 1;
  int u = -1;
  for (int n = 0; n < N; n++) {
    if (n == 0 || (keys[n] >> 32) != (keys[n - 1] >> 32)) {
      starts[++u] = n;
      uniq[u] = (int32_t)(keys[n] >> 32);
    }
    order[n] = (int32_t)(keys[n] & 0xffffffffu);
  }
  starts[U] = N;
  return U;
}

template <typename T>
void embedding_backward(float* dwte, const T* dout, const int32_t* groups, int N, int U, int C, cudaStream_t stream) {
  if (N <= 0 || U <= 0 || C <= 0) return;
  const dim3 grid((unsigned)U, (unsigned)((C + 255) / 256));
  PYLLAMA_CHECK(grid.y <= 65535, ValueError, "embedding_backward: hidden size " << C << " too large");
  embedding_backward_kernel<T><<<grid, 256, 0, stream>>>(dwte, dout, groups, groups + N, groups + N + U + 1, C);
  CUDA_CHECK_LAUNCH();
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int, int, cudaStream_t);
template void embedding_forward<bf16>(bf16*, const int32_t*, const bf16*, int, int, cudaStream_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int, int, int, cudaStream_t);
template void embedding_backward<bf16>(float*, const bf16*, const int32_t*, int, int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
