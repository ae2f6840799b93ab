// rope.cu — rotary position embedding, in place (see rope_apply in csrc/ops.h).
// One thread per (row, head, pair i < HS/2): dimension i pairs with i + HS/2.
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

template <typename T>
__global__ void rope_kernel(T* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads,
                            int HS, float sgn) {
  const int half = HS / 2;
  const long long total = (long long)N * nheads * half;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const int i = (int)(idx % half);
    const long long rh = idx / half;
    const int h = (int)(rh % nheads);
    const long long n = rh / nheads;
    const long long p = pos[n];
    const float c = cos_t[p * half + i];
    const float si = sgn * sin_t[p * half + i];
    T* v = x + n * ld + (long long)h * HS;
    const float a = to_f(v[i]), b = to_f(v[i + half]);
    v[i] = from_f<T>(a * c - b * si);
    v[i + half] = from_f<T>(b * c + a * si);
  }
}

}  // namespace

template <typename T>
void rope_apply(T* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads, int HS,
                bool inverse, cudaStream_t stream) {
  const long long total = (long long)N * nheads * (HS / 2);
  if (total <= 0) return;
  rope_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(x, ld, pos, cos_t, sin_t, N, nheads, HS,
                                                           inverse ? -1.f : 1.f);
  CUDA_CHECK_LAUNCH();
}

template void rope_apply<float>(float*, int, const int32_t*, const float*, const float*, int, int, int, bool,
                                cudaStream_t);
template void rope_apply<bf16>(bf16*, int, const int32_t*, const float*, const float*, int, int, int, bool,
                               cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
