// norm.cu — RMSNorm forward and backward (see rmsnorm_* in csrc/ops.h).
// One warp per row for the row-wise parts; the weight gradient reduces columns
// over chunks of rows and adds each chunk's sum with one float atomic per column.
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kRowsPerBlock = 8;  // warps per block in the row kernels

template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* inp, const T* w, int N, int C, float eps) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;  // whole warp leaves together
  const T* x = inp + (long long)n * C;
  T* o = out + (long long)n * C;
  float ss = 0.f;
  for (int i = lane; i < C; i += 32) {
    float v = to_f(x[i]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / C + eps);
  if (lane == 0) rstd[n] = r;
  for (int i = lane; i < C; i += 32) o[i] = from_f<T>(to_f(w[i]) * (to_f(x[i]) * r));
}

template <typename T>
__global__ void rmsnorm_backward_dinp_kernel(T* dinp, const T* dout, const T* inp, const T* w, const float* rstd, int N,
                                             int C) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const T* x = inp + (long long)n * C;
  const T* dy = dout + (long long)n * C;
  T* dx = dinp + (long long)n * C;
  const float r = rstd[n];
  float dot = 0.f;  // sum_j w_j dy_j x_j
  for (int i = lane; i < C; i += 32) dot += to_f(w[i]) * to_f(dy[i]) * to_f(x[i]);
  dot = warp_sum(dot);
  const float k = r * r * r * dot / C;
  for (int i = lane; i < C; i += 32)
    dx[i] = from_f<T>(to_f(dx[i]) + (r * to_f(w[i]) * to_f(dy[i]) - k * to_f(x[i])));
}

// grid (ceil(C/32), ceil(N/kChunk)), block (32, 8): column c = blockIdx.x*32 + threadIdx.x.
constexpr int kChunk = 256;
template <typename T>
__global__ void rmsnorm_backward_dw_kernel(float* dw, const T* dout, const T* inp, const float* rstd, int N, int C) {
  __shared__ float part[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int n0 = blockIdx.y * kChunk, n1 = min(N, n0 + kChunk);
  float acc = 0.f;
  if (c < C)
    for (int n = n0 + threadIdx.y; n < n1; n += 8)
      acc += to_f(dout[(long long)n * C + c]) * to_f(inp[(long long)n * C + c]) * rstd[n];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float s = 0.f;
    for (int j = 0; j < 8; j++) s += part[j][threadIdx.x];
    atomicAdd(dw + c, s);
  }
}

}  // namespace

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int N, int C, float eps, cudaStream_t stream) {
  if (N <= 0) return;
  const unsigned blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  rmsnorm_forward_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(out, rstd, inp, w, N, C, eps);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void rmsnorm_backward(T* dinp, float* dw, const T* dout, const T* inp, const T* w, const float* rstd, int N, int C,
                      cudaStream_t stream) {
  if (N <= 0) return;
  const unsigned blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  rmsnorm_backward_dinp_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(dinp, dout, inp, w, rstd, N, C);
  CUDA_CHECK_LAUNCH();
  dim3 grid((C + 31) / 32, (N + kChunk - 1) / kChunk), block(32, 8);
  rmsnorm_backward_dw_kernel<T><<<grid, block, 0, stream>>>(dw, dout, inp, rstd, N, C);
  CUDA_CHECK_LAUNCH();
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int, int, float, cudaStream_t);
template void rmsnorm_forward<bf16>(bf16*, float*, const bf16*, const bf16*, int, int, float, cudaStream_t);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*, int, int,
                                      cudaStream_t);
template void rmsnorm_backward<bf16>(bf16*, float*, const bf16*, const bf16*, const bf16*, const float*, int, int,
                                     cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
