// crossentropy.cu — softmax + cross-entropy over the vocabulary (see
// crossentropy_* in csrc/ops.h). One block per row for the log-sum-exp; the
// loss is summed in double by one block in a fixed order (deterministic).
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kThreads = 256;

// Adds v to a running (max m, sum s of exp(x - m)).
__device__ __forceinline__ void online_add(float& m, float& s, float v) {
  if (v > m) {
    s = s * expf(m - v) + 1.f;  // expf(-inf) = 0 on the first element
    m = v;
  } else if (v != -INFINITY) {  // a -inf logit adds 0 (exp(-inf - -inf) would be NaN while m is -inf)
    s += expf(v - m);
  }
}

// One pass over each row: every thread keeps a running (max, sum of exp(x - max)) over its
// strided elements (128-bit packs with PACK: V a multiple of kPack<T>, aligned rows), then
// the block merges the pairs. Grid-stride over rows.
template <typename T, bool PACK>
__global__ void crossentropy_forward_kernel(float* lse, double* row_loss, const T* logits, const int32_t* targets,
                                            int N, int V) {
  __shared__ float sh[32];
  for (int n = blockIdx.x; n < N; n += gridDim.x) {  // uniform across the block
    const T* x = logits + (long long)n * V;
    float m = -INFINITY, s = 0.f;
    if constexpr (PACK) {
      constexpr int P = kPack<T>;
      for (int i = threadIdx.x * P; i < V; i += blockDim.x * P) {
        float v[P];
        load_pack(x + i, v);
#pragma unroll
        for (int k = 0; k < P; k++) online_add(m, s, v[k]);
      }
    } else {
      for (int i = threadIdx.x; i < V; i += blockDim.x) online_add(m, s, to_f(x[i]));
    }
    const float mx = block_max(m, sh);
    s = m == -INFINITY ? 0.f : s * expf(m - mx);  // threads without elements add nothing
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
      const float l = mx + logf(s);
      lse[n] = l;
      const int tgt = targets[n];
      row_loss[n] = tgt != -100 ? (double)l - (double)to_f(x[tgt]) : 0.0;
    }
  }
}

// One block of 1024 threads: total = sum(row_loss).
__global__ void sum_rows_kernel(double* total, const double* row_loss, int N) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int n = threadIdx.x; n < N; n += blockDim.x) acc += row_loss[n];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) *total = acc;
}

// One block per row (grid-stride over rows): no 64-bit division per element; 128-bit packs
// with PACK. dlogits may alias logits (each element is read before it is written).
template <typename T, bool PACK>
__global__ void crossentropy_backward_kernel(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                                             float dloss, int N, int V) {
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const long long base = (long long)n * V;
    const int tgt = targets[n];
    const float l = lse[n];
    if constexpr (PACK) {
      constexpr int P = kPack<T>;
      for (int i = threadIdx.x * P; i < V; i += blockDim.x * P) {
        float d[P];
        if (tgt != -100) {
          load_pack(logits + base + i, d);
#pragma unroll
          for (int k = 0; k < P; k++) d[k] = expf(d[k] - l) * dloss - (i + k == tgt ? dloss : 0.f);
        } else {
#pragma unroll
          for (int k = 0; k < P; k++) d[k] = 0.f;
        }
        store_pack(dlogits + base + i, d);
      }
    } else {
      for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float d = 0.f;
        if (tgt != -100) {
          d = expf(to_f(logits[base + i]) - l) * dloss;
          if (i == tgt) d -= dloss;
        }
        dlogits[base + i] = from_f<T>(d);
      }
    }
  }
}

}  // namespace

template <typename T>
void crossentropy_forward(float* lse, double* row_loss, double* total, const T* logits, const int32_t* targets, int N,
                          int V, cudaStream_t stream) {
  if (N <= 0) return;
  const unsigned blocks = (unsigned)(N < 65535 * 16 ? N : 65535 * 16);
  if (V % kPack<T> == 0 && aligned16(logits))
    crossentropy_forward_kernel<T, true><<<blocks, kThreads, 0, stream>>>(lse, row_loss, logits, targets, N, V);
  else
    crossentropy_forward_kernel<T, false><<<blocks, kThreads, 0, stream>>>(lse, row_loss, logits, targets, N, V);
  CUDA_CHECK_LAUNCH();
  sum_rows_kernel<<<1, 1024, 0, stream>>>(total, row_loss, N);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void crossentropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets, float dloss, int N,
                           int V, cudaStream_t stream) {
  const long long total = (long long)N * V;
  if (total <= 0) return;
  const unsigned blocks = (unsigned)(N < 65535 * 16 ? N : 65535 * 16);
  if (V % kPack<T> == 0 && aligned16(logits) && aligned16(dlogits))
    crossentropy_backward_kernel<T, true><<<blocks, kThreads, 0, stream>>>(dlogits, logits, lse, targets, dloss, N, V);
  else
    crossentropy_backward_kernel<T, false><<<blocks, kThreads, 0, stream>>>(dlogits, logits, lse, targets, dloss, N,
                                                                           V);
  CUDA_CHECK_LAUNCH();
}

template void crossentropy_forward<float>(float*, double*, double*, const float*, const int32_t*, int, int,
                                          cudaStream_t);
template void crossentropy_forward<bf16>(float*, double*, double*, const bf16*, const int32_t*, int, int,
                                         cudaStream_t);
template void crossentropy_backward<float>(float*, const float*, const float*, const int32_t*, float, int, int,
                                           cudaStream_t);
template void crossentropy_backward<bf16>(bf16*, const bf16*, const float*, const int32_t*, float, int, int,
                                          cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
