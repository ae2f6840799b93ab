// matmul.cu — row-major GEMM for the linear layers: cuBLAS (cublasGemmEx, float
// accumulation, no TF32) when it was found at build time, else a portable tiled
// kernel. PYLLAMA_CUDA_MATMUL=tiled forces the tiled kernel at run time.
//
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so cuBLAS gets
// B and A swapped, each with its own transpose flag, and (N, M, K) as (m, n, k).
#include <cstdlib>
#include <cstring>

#include "common.h"  // PYLLAMA_CHECK, ValueError
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;  // 16x16 threads, 4x4 outputs each

template <typename TA, typename TC>
__global__ void __launch_bounds__(kThreads)
    gemm_tiled_kernel(bool transA, bool transB, int M, int N, int K, float alpha, const TA* A, int lda, long long sA,
                      const TA* B, int ldb, long long sB, float beta, TC* C, int ldc, long long sC) {
  A += blockIdx.z * sA;  // batch entry z
  B += blockIdx.z * sB;
  C += blockIdx.z * sC;
  __shared__ float As[kBK][kBM + 1];  // As[k][m] = op(A)(m0 + m, k0 + k)
  __shared__ float Bs[kBK][kBN + 1];  // Bs[k][n] = op(B)(k0 + k, n0 + n)
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.f;

  for (int k0 = 0; k0 < K; k0 += kBK) {
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
      // walk memory contiguously: along m when A is stored (K, M), along k when (M, K)
      const int mm = transA ? e % kBM : e / kBK;
      const int kk = transA ? e / kBM : e % kBK;
      const int gm = m0 + mm, gk = k0 + kk;
      float val = 0.f;
      if (gm < M && gk < K) val = to_f(transA ? A[(long long)gk * lda + gm] : A[(long long)gm * lda + gk]);
      As[kk][mm] = val;
    }
    for (int e = threadIdx.x; e < kBK * kBN; e += kThreads) {
      // along k when B is stored (N, K), along n when (K, N)
      const int kk = transB ? e % kBK : e / kBN;
      const int nn = transB ? e / kBK : e % kBN;
      const int gn = n0 + nn, gk = k0 + kk;
      float val = 0.f;
      if (gn < N && gk < K) val = to_f(transB ? B[(long long)gn * ldb + gk] : B[(long long)gk * ldb + gn]);
      Bs[kk][nn] = val;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int gm = m0 + ty + 16 * i, gn = n0 + tx + 16 * j;
      if (gm < M && gn < N) {
        const long long o = (long long)gm * ldc + gn;
        float r = alpha * acc[i][j];
        if (beta != 0.f) r += beta * to_f(C[o]);  // beta 0: C may hold garbage (even NaN)
        C[o] = from_f<TC>(r);
      }
    }
}

#ifdef PYLLAMA_HAVE_CUBLAS
template <typename X>
struct CudaType;
template <>
struct CudaType<float> {
  static constexpr cudaDataType_t value = CUDA_R_32F;
};
template <>
struct CudaType<bf16> {
  static constexpr cudaDataType_t value = CUDA_R_16BF;
};
#endif

bool tiled_forced() {
  const char* env = std::getenv("PYLLAMA_CUDA_MATMUL");
  return env && std::strcmp(env, "tiled") == 0;
}

}  // namespace

Gemm::Gemm() {
#ifdef PYLLAMA_HAVE_CUBLAS
  if (!tiled_forced()) {
    CUBLAS_CHECK(cublasCreate(&handle_));
    CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));  // float compute stays float (no TF32)
    use_cublas_ = true;
  }
#endif
}

Gemm::~Gemm() {
#ifdef PYLLAMA_HAVE_CUBLAS
  if (handle_) cublasDestroy(handle_);  // no throwing from a destructor
#endif
}

template <typename TA, typename TC>
void Gemm::run(bool transA, bool transB, int M, int N, int K, const TA* A, int lda, const TA* B, int ldb, float beta,
               TC* C, int ldc, cudaStream_t stream) {
  run_batched<TA, TC>(transA, transB, M, N, K, 1.f, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, stream);
}

template <typename TA, typename TC>
void Gemm::run_batched(bool transA, bool transB, int M, int N, int K, float alpha, const TA* A, int lda,
                       long long strideA, const TA* B, int ldb, long long strideB, float beta, TC* C, int ldc,
                       long long strideC, int batch, cudaStream_t stream) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
#ifdef PYLLAMA_HAVE_CUBLAS
  if (use_cublas_) {
    CUBLAS_CHECK(cublasSetStream(handle_, stream));
    if (ws_) CUBLAS_CHECK(cublasSetWorkspace(handle_, ws_, ws_bytes_));
    const cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N, opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1) {
      CUBLAS_CHECK(cublasGemmEx(handle_, opB, opA, N, M, K, &alpha, B, CudaType<TA>::value, ldb, A,
                                CudaType<TA>::value, lda, &beta, C, CudaType<TC>::value, ldc, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    } else {
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle_, opB, opA, N, M, K, &alpha, B, CudaType<TA>::value, ldb,
                                              strideB, A, CudaType<TA>::value, lda, strideA, &beta, C,
                                              CudaType<TC>::value, ldc, strideC, batch, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
    }
    return;
  }
#endif
  PYLLAMA_CHECK(batch <= 65535, ValueError, "Gemm::run_batched: at most 65535 batch entries, got " << batch);
  dim3 grid((N + kBN - 1) / kBN, (M + kBM - 1) / kBM, batch);
  gemm_tiled_kernel<TA, TC><<<grid, kThreads, 0, stream>>>(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb,
                                                           strideB, beta, C, ldc, strideC);
  CUDA_CHECK_LAUNCH();
}

#define PYLLAMA_GEMM_INSTANTIATE(TA, TC)                                                                          \
  template void Gemm::run<TA, TC>(bool, bool, int, int, int, const TA*, int, const TA*, int, float, TC*, int,      \
                                  cudaStream_t);                                                                  \
  template void Gemm::run_batched<TA, TC>(bool, bool, int, int, int, float, const TA*, int, long long, const TA*, \
                                          int, long long, float, TC*, int, long long, int, cudaStream_t);
PYLLAMA_GEMM_INSTANTIATE(float, float)
PYLLAMA_GEMM_INSTANTIATE(bf16, bf16)
PYLLAMA_GEMM_INSTANTIATE(bf16, float)
#undef PYLLAMA_GEMM_INSTANTIATE

template <typename T>
void linear_forward(Gemm& g, T* y, const T* x, const T* w, int N, int IN, int OUT, cudaStream_t stream) {
  g.run<T, T>(false, true, N, OUT, IN, x, IN, w, IN, 0.f, y, OUT, stream);
}

template <typename T>
void linear_backward(Gemm& g, T* dx, float* dw, const T* dy, const T* x, const T* w, int N, int IN, int OUT,
                     cudaStream_t stream) {
  if (dx) g.run<T, T>(false, false, N, IN, OUT, dy, OUT, w, IN, 0.f, dx, IN, stream);
  g.run<T, float>(true, false, OUT, IN, N, dy, OUT, x, IN, 1.f, dw, IN, stream);
}

template void linear_forward<float>(Gemm&, float*, const float*, const float*, int, int, int, cudaStream_t);
template void linear_forward<bf16>(Gemm&, bf16*, const bf16*, const bf16*, int, int, int, cudaStream_t);
template void linear_backward<float>(Gemm&, float*, float*, const float*, const float*, const float*, int, int, int,
                                     cudaStream_t);
template void linear_backward<bf16>(Gemm&, bf16*, float*, const bf16*, const bf16*, const bf16*, int, int, int,
                                    cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
