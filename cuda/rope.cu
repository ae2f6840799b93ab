// rope.cu — rotary position embedding, in place (see rope_apply in csrc/ops.h).
// One thread per (row, head, pair i < HS/2): dimension i pairs with i + HS/2.
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

// grid (pair blocks, row blocks): rows n stride over gridDim.y; x covers the nheads * HS/2
// (head, pair) slots of a row with 32-bit index arithmetic (no 64-bit division per element).
template <typename T>
__global__ void rope_kernel(T* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads,
                            int HS, float sgn) {
  const int half = HS / 2;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= nheads * half) return;
  const int h = j / half, i = j - h * half;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const long long p = pos[n];
    const float c = cos_t[p * half + i];
    const float si = sgn * sin_t[p * half + i];
    T* v = x + (long long)n * ld + (long long)h * HS;
    const float a = to_f(v[i]), b = to_f(v[i + half]);
    v[i] = from_f<T>(a * c - b * si);
    v[i + half] = from_f<T>(b * c + a * si);
  }
}

}  // namespace

template <typename T>
void rope_apply(T* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads, int HS,
                bool inverse, cudaStream_t stream) {
  const int slots = nheads * (HS / 2);
  if (N <= 0 || slots <= 0) return;
  const dim3 grid((unsigned)((slots + 255) / 256), (unsigned)(N < 65535 ? N : 65535));
  rope_kernel<T><<<grid, 256, 0, stream>>>(x, ld, pos, cos_t, sin_t, N, nheads, HS, inverse ? -1.f : 1.f);
  CUDA_CHECK_LAUNCH();
}

template void rope_apply<float>(float*, int, const int32_t*, const float*, const float*, int, int, int, bool,
                                cudaStream_t);
template void rope_apply<bf16>(bf16*, int, const int32_t*, const float*, const float*, int, int, int, bool,
                               cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
