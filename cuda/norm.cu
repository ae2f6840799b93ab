// norm.cu — RMSNorm forward and backward (see rmsnorm_* in csrc/ops.h).
// One warp per row for the row-wise parts (128-bit packs when the rows allow). The weight
// gradient, without atomics (deterministic): with packs and C <= 1024 each block takes its
// rows' share in the same pass as dinp (each warp's share in registers); otherwise a second
// kernel sums columns over chunks of rows. Either writes one partial row per block, and a
// last kernel adds the partial rows into dw in a fixed order.
#include <algorithm>

#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kRowsPerBlock = 8;  // warps per block in the row kernels

// PACK: each lane moves 128-bit packs (C a multiple of kPack<T>, 16-byte aligned rows);
// otherwise one element at a time.
template <typename T, bool PACK>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* inp, const T* w, int N, int C, float eps) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;  // whole warp leaves together
  const T* x = inp + (long long)n * C;
  T* o = out + (long long)n * C;
  float ss = 0.f;
  if constexpr (PACK) {
    constexpr int P = kPack<T>;
    for (int i = lane * P; i < C; i += 32 * P) {
      float v[P];
      load_pack(x + i, v);
#pragma unroll
      for (int k = 0; k < P; k++) ss += v[k] * v[k];
    }
  } else {
    for (int i = lane; i < C; i += 32) {
      float v = to_f(x[i]);
      ss += v * v;
    }
  }
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / C + eps);
  if (lane == 0) rstd[n] = r;
  if constexpr (PACK) {
    constexpr int P = kPack<T>;
    for (int i = lane * P; i < C; i += 32 * P) {
      float v[P], wv[P];
      load_pack(x + i, v);
      load_pack(w + i, wv);
#pragma unroll
      for (int k = 0; k < P; k++) v[k] = wv[k] * (v[k] * r);
      store_pack(o + i, v);
    }
  } else {
    for (int i = lane; i < C; i += 32) o[i] = from_f<T>(to_f(w[i]) * (to_f(x[i]) * r));
  }
}

// Scalar (any C and alignment): dinp only; dw by rmsnorm_backward_dw_kernel.
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
  const float k3 = r * r * r * dot / C;
  for (int i = lane; i < C; i += 32)
    dx[i] = from_f<T>(to_f(dx[i]) + (r * to_f(w[i]) * to_f(dy[i]) - k3 * to_f(x[i])));
}

// Column sums of a (32, R) thread block in a fixed order: thread (x, y) puts its `acc` into
// part[y][x]; thread (x, 0) returns part[0][x] + ... + part[R - 1][x] (others: 0).
template <int R>
__device__ __forceinline__ float sum_over_y(float acc, float (&part)[R][33]) {
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  float sum = 0.f;
  if (threadIdx.y == 0)
    for (int j = 0; j < R; j++) sum += part[j][threadIdx.x];
  return sum;
}

// grid (ceil(C/32), nb), block (32, 8): column c = blockIdx.x*32 + threadIdx.x; block row y
// sums the chunks of kChunk rows y, y + nb, ... into partial[y * C + c].
constexpr int kChunk = 256;
template <typename T>
__global__ void rmsnorm_backward_dw_kernel(float* partial, const T* dout, const T* inp, const float* rstd, int N,
                                           int C) {
  __shared__ float part[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (c < C)
    for (int n0 = blockIdx.y * kChunk; n0 < N; n0 += gridDim.y * kChunk)
      for (int n = n0 + threadIdx.y; n < min(N, n0 + kChunk); n += 8)
        acc += to_f(dout[(long long)n * C + c]) * to_f(inp[(long long)n * C + c]) * rstd[n];
  const float sum = sum_over_y(acc, part);
  if (threadIdx.y == 0 && c < C) partial[(long long)blockIdx.y * C + c] = sum;
}

// grid ceil(C/32), block (32, 32): dw[c] += the nb partial rows' column c, in a fixed order
// (thread y sums rows y, y + 32, ...; then y = 0 adds the 32 sums in order).
__global__ void rmsnorm_dw_reduce_kernel(float* dw, const float* partial, int nb, int C) {
  __shared__ float part[32][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (c < C)
    for (int b = threadIdx.y; b < nb; b += 32) acc += partial[(long long)b * C + c];
  const float sum = sum_over_y(acc, part);
  if (threadIdx.y == 0 && c < C) dw[c] += sum;
}

// 128-bit packs (C a multiple of kPack<T>, 16-byte aligned rows): warp w of the block takes
// rows n = 8 blockIdx.x + w, + 8 gridDim.x, ...; lane l the columns P (32 k + l) .. + P - 1.
// K > 0 (C <= 32 P K): dw in the same pass, saving the dw kernel's second read of dout and
// inp: the warp keeps its rows' share of dw (sum_n dout x rstd) in registers, the block adds
// its 8 warps' shares in shared memory (kRowsPerBlock x C floats), in order, into its
// partial row partial[blockIdx.x * C ...]. K == 0 (any C): dinp only.
constexpr int kFusedMaxC = 1024;
constexpr int kMaxPartials = 1024;  // partial rows of dw at most (the scratch: kMaxPartials x C floats)
template <typename T>
constexpr int kFusedPacks = kFusedMaxC / (32 * kPack<T>);  // 4 (bf16) or 8 (float): 32 floats a lane

template <typename T, int K>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
    rmsnorm_backward_packed_kernel(T* dinp, float* partial, const T* dout, const T* inp, const T* w,
                                   const float* rstd, int N, int C) {
  constexpr int P = kPack<T>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float acc[K > 0 ? K : 1][P];
#pragma unroll
  for (int k = 0; k < (K > 0 ? K : 1); k++)
#pragma unroll
    for (int j = 0; j < P; j++) acc[k][j] = 0.f;
  for (int n = blockIdx.x * kRowsPerBlock + warp; n < N; n += gridDim.x * kRowsPerBlock) {
    const T* x = inp + (long long)n * C;
    const T* dy = dout + (long long)n * C;
    T* dx = dinp + (long long)n * C;
    const float r = rstd[n];
    float dot = 0.f;  // sum_j w_j dy_j x_j
#pragma unroll
    for (int k = 0; K > 0 ? k < K : (k * 32 + lane) * P < C; k++) {
      const int i = (k * 32 + lane) * P;
      if (i < C) {
        float wv[P], dv[P], xv[P];
        load_pack(w + i, wv);
        load_pack(dy + i, dv);
        load_pack(x + i, xv);
#pragma unroll
        for (int j = 0; j < P; j++) dot += wv[j] * dv[j] * xv[j];
      }
    }
    dot = warp_sum(dot);
    const float k3 = r * r * r * dot / C;
#pragma unroll
    for (int k = 0; K > 0 ? k < K : (k * 32 + lane) * P < C; k++) {
      const int i = (k * 32 + lane) * P;
      if (i < C) {
        float wv[P], dv[P], xv[P], d[P];
        load_pack(w + i, wv);
        load_pack(dy + i, dv);
        load_pack(x + i, xv);
        load_pack(dx + i, d);
#pragma unroll
        for (int j = 0; j < P; j++) {
          d[j] = d[j] + (r * wv[j] * dv[j] - k3 * xv[j]);
          if constexpr (K > 0) acc[k][j] += dv[j] * xv[j] * r;
        }
        store_pack(dx + i, d);
      }
    }
  }
  if constexpr (K > 0) {
    extern __shared__ float part[];  // kRowsPerBlock x C
#pragma unroll
    for (int k = 0; k < K; k++) {
      const int i = (k * 32 + lane) * P;
      if (i < C)
#pragma unroll
        for (int j = 0; j < P; j++) part[warp * C + i + j] = acc[k][j];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float sum = 0.f;
#pragma unroll
      for (int v = 0; v < kRowsPerBlock; v++) sum += part[v * C + c];
      partial[(long long)blockIdx.x * C + c] = sum;
    }
  }
}

}  // namespace

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int N, int C, float eps, cudaStream_t stream) {
  if (N <= 0) return;
  const unsigned blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  if (C % kPack<T> == 0 && aligned16(out) && aligned16(inp) && aligned16(w))
    rmsnorm_forward_kernel<T, true><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(out, rstd, inp, w, N, C, eps);
  else
    rmsnorm_forward_kernel<T, false><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(out, rstd, inp, w, N, C, eps);
  CUDA_CHECK_LAUNCH();
}

size_t rmsnorm_backward_partial_floats(int C) { return (size_t)kMaxPartials * (size_t)(C > 0 ? C : 0); }

template <typename T>
void rmsnorm_backward(T* dinp, float* dw, float* partial, const T* dout, const T* inp, const T* w, const float* rstd,
                      int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  PYLLAMA_CHECK(partial != nullptr, ValueError, "rmsnorm_backward: needs a partial-sum scratch buffer");
  const unsigned blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  const bool pack = C % kPack<T> == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(w);
  int nb = 0;  // partial rows of dw
  if (pack && C <= kFusedMaxC) {  // dinp and dw in one pass
    // about 4 blocks of 8 warps an SM (each warp a few rows), fewer for small N
    int dev = 0, sms = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    nb = (int)std::min<long long>({(long long)blocks, 4LL * std::max(1, sms), (long long)kMaxPartials});
    rmsnorm_backward_packed_kernel<T, kFusedPacks<T>>
        <<<nb, 32 * kRowsPerBlock, sizeof(float) * kRowsPerBlock * C, stream>>>(dinp, partial, dout, inp, w, rstd, N,
                                                                                C);
    CUDA_CHECK_LAUNCH();
  } else {
    if (pack)
      rmsnorm_backward_packed_kernel<T, 0><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(dinp, nullptr, dout, inp, w,
                                                                                      rstd, N, C);
    else
      rmsnorm_backward_dinp_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(dinp, dout, inp, w, rstd, N, C);
    CUDA_CHECK_LAUNCH();
    nb = (int)std::min<long long>((N + kChunk - 1) / kChunk, kMaxPartials);
    rmsnorm_backward_dw_kernel<T><<<dim3((C + 31) / 32, nb), dim3(32, 8), 0, stream>>>(partial, dout, inp, rstd, N, C);
    CUDA_CHECK_LAUNCH();
  }
  rmsnorm_dw_reduce_kernel<<<(C + 31) / 32, dim3(32, 32), 0, stream>>>(dw, partial, nb, C);
  CUDA_CHECK_LAUNCH();
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int, int, float, cudaStream_t);
template void rmsnorm_forward<bf16>(bf16*, float*, const bf16*, const bf16*, int, int, float, cudaStream_t);
template void rmsnorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*,
                                      int, int, cudaStream_t);
template void rmsnorm_backward<bf16>(bf16*, float*, float*, const bf16*, const bf16*, const bf16*, const float*, int,
                                     int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
