// elementwise.cu — residual add, bias add and its gradient, dtype conversion, last-row gather.
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

template <typename T>
__global__ void residual_kernel(T* out, const T* a, const T* b, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

// np packs of kPack<T> elements (out may alias a or b: each pack is read before it is written).
template <typename T>
__global__ void residual_pack_kernel(T* out, const T* a, const T* b, long long np) {
  constexpr int P = kPack<T>;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < np;
       i += (long long)gridDim.x * blockDim.x) {
    float x[P], y[P];
    load_pack(a + i * P, x);
    load_pack(b + i * P, y);
#pragma unroll
    for (int k = 0; k < P; k++) x[k] += y[k];
    store_pack(out + i * P, x);
  }
}

template <typename TD, typename TS>
__global__ void convert_kernel(TD* dst, const TS* src, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    dst[i] = from_f<TD>(to_f(src[i]));
}

template <typename T>
__global__ void gather_last_kernel(T* rows, const T* x, int B, int T_, int C) {
  const long long n = (long long)B * C;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const long long b = i / C, c = i % C;
    rows[i] = x[(b * T_ + (T_ - 1)) * C + c];
  }
}

template <typename T>
__global__ void bias_add_kernel(T* y, const T* b, long long n, int OUT) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    y[i] = from_f<T>(to_f(y[i]) + to_f(b[i % OUT]));
}

// One thread per column, the rows in order: deterministic, float accumulation.
template <typename T>
__global__ void bias_backward_kernel(float* db, const T* dy, long long N, int OUT) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= OUT) return;
  float acc = 0.f;
  for (long long n = 0; n < N; n++) acc += to_f(dy[n * OUT + j]);
  db[j] += acc;
}

}  // namespace

template <typename T>
void bias_add(T* y, const T* b, long long N, int OUT, cudaStream_t stream) {
  const long long n = N * OUT;
  if (n <= 0) return;
  bias_add_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(y, b, n, OUT);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void bias_backward(float* db, const T* dy, long long N, int OUT, cudaStream_t stream) {
  if (N <= 0 || OUT <= 0) return;
  bias_backward_kernel<T><<<(OUT + 127) / 128, 128, 0, stream>>>(db, dy, N, OUT);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void residual_forward(T* out, const T* a, const T* b, long long n, cudaStream_t stream) {
  if (n <= 0) return;
  if (n % kPack<T> == 0 && aligned16(out) && aligned16(a) && aligned16(b)) {
    const long long np = n / kPack<T>;
    residual_pack_kernel<T><<<grid_for(np, 256), 256, 0, stream>>>(out, a, b, np);
  } else {
    residual_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(out, a, b, n);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename TD, typename TS>
void convert(TD* dst, const TS* src, long long n, cudaStream_t stream) {
  if (n <= 0) return;
  convert_kernel<TD, TS><<<grid_for(n, 256), 256, 0, stream>>>(dst, src, n);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void gather_last_rows(T* rows, const T* x, int B, int T_, int C, cudaStream_t stream) {
  gather_last_kernel<T><<<grid_for((long long)B * C, 256), 256, 0, stream>>>(rows, x, B, T_, C);
  CUDA_CHECK_LAUNCH();
}

template void bias_add<float>(float*, const float*, long long, int, cudaStream_t);
template void bias_add<bf16>(bf16*, const bf16*, long long, int, cudaStream_t);
template void bias_backward<float>(float*, const float*, long long, int, cudaStream_t);
template void bias_backward<bf16>(float*, const bf16*, long long, int, cudaStream_t);
template void residual_forward<float>(float*, const float*, const float*, long long, cudaStream_t);
template void residual_forward<bf16>(bf16*, const bf16*, const bf16*, long long, cudaStream_t);
template void convert<float, bf16>(float*, const bf16*, long long, cudaStream_t);
template void convert<bf16, float>(bf16*, const float*, long long, cudaStream_t);
template void convert<float, float>(float*, const float*, long long, cudaStream_t);
template void gather_last_rows<float>(float*, const float*, int, int, int, cudaStream_t);
template void gather_last_rows<bf16>(bf16*, const bf16*, int, int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
