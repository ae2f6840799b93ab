// swiglu.cu — h = silu(gate) * up over [gate | up] rows (see swiglu_* in csrc/ops.h).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

// grid (column blocks, row blocks): rows n stride over gridDim.y, columns over x (no 64-bit
// division per element). PACK: each thread takes kPack<T> consecutive columns with 128-bit
// loads and stores (I a multiple of kPack<T>, 16-byte aligned buffers).
template <typename T, bool PACK>
__global__ void swiglu_forward_kernel(T* h, const T* gu, int N, int I) {
  constexpr int P = PACK ? kPack<T> : 1;
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) * P;
  if (i >= I) return;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const T* row = gu + (long long)n * 2 * I;
    T* hr = h + (long long)n * I;
    if constexpr (PACK) {
      float g[P], u[P];
      load_pack(row + i, g);
      load_pack(row + I + i, u);
#pragma unroll
      for (int k = 0; k < P; k++) g[k] = g[k] / (1.f + expf(-g[k])) * u[k];
      store_pack(hr + i, g);
    } else {
      const float g = to_f(row[i]);
      const float u = to_f(row[I + i]);
      hr[i] = from_f<T>(g / (1.f + expf(-g)) * u);
    }
  }
}

template <typename T, bool PACK>
__global__ void swiglu_backward_kernel(T* dgu, const T* dh, const T* gu, int N, int I) {
  constexpr int P = PACK ? kPack<T> : 1;
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) * P;
  if (i >= I) return;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const long long r2 = (long long)n * 2 * I;
    float g[P], u[P], d[P], dg[P], du[P];
    if constexpr (PACK) {
      load_pack(gu + r2 + i, g);
      load_pack(gu + r2 + I + i, u);
      load_pack(dh + (long long)n * I + i, d);
    } else {
      g[0] = to_f(gu[r2 + i]);
      u[0] = to_f(gu[r2 + I + i]);
      d[0] = to_f(dh[(long long)n * I + i]);
    }
#pragma unroll
    for (int k = 0; k < P; k++) {
      const float sig = 1.f / (1.f + expf(-g[k]));
      du[k] = d[k] * g[k] * sig;
      dg[k] = d[k] * u[k] * sig * (1.f + g[k] * (1.f - sig));
    }
    if constexpr (PACK) {
      store_pack(dgu + r2 + I + i, du);
      store_pack(dgu + r2 + i, dg);
    } else {
      dgu[r2 + I + i] = from_f<T>(du[0]);
      dgu[r2 + i] = from_f<T>(dg[0]);
    }
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
  if (I % kPack<T> == 0 && aligned16(h) && aligned16(gu))
    swiglu_forward_kernel<T, true><<<rows_grid(N, I / kPack<T>, 256), 256, 0, stream>>>(h, gu, N, I);
  else
    swiglu_forward_kernel<T, false><<<rows_grid(N, I, 256), 256, 0, stream>>>(h, gu, N, I);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int N, int I, cudaStream_t stream) {
  const long long total = (long long)N * I;
  if (total <= 0) return;
  if (I % kPack<T> == 0 && aligned16(dgu) && aligned16(dh) && aligned16(gu))
    swiglu_backward_kernel<T, true><<<rows_grid(N, I / kPack<T>, 256), 256, 0, stream>>>(dgu, dh, gu, N, I);
  else
    swiglu_backward_kernel<T, false><<<rows_grid(N, I, 256), 256, 0, stream>>>(dgu, dh, gu, N, I);
  CUDA_CHECK_LAUNCH();
}

template void swiglu_forward<float>(float*, const float*, int, int, cudaStream_t);
template void swiglu_forward<bf16>(bf16*, const bf16*, int, int, cudaStream_t);
template void swiglu_backward<float>(float*, const float*, const float*, int, int, cudaStream_t);
template void swiglu_backward<bf16>(bf16*, const bf16*, const bf16*, int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
