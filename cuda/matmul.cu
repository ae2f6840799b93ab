// matmul.cu — row-major GEMM for the linear layers (Gemm in kernels.cuh): cuBLASLt
// (plans cached per shape, residual adds folded in as D = op(A) op(B) + R), cublasGemmEx,
// or a portable tiled kernel; float accumulation everywhere, no TF32.
//
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so cuBLAS gets
// B and A swapped, each with its own transpose flag, and (N, M, K) as (m, n, k).
#include <array>
#include <map>
#include <string>

#ifdef PYLLAMA_HAVE_CUBLAS
#include <cublasLt.h>
#endif

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

// The largest power of two (at most 256) dividing the address and the batch stride: what
// cuBLASLt may assume of every batch entry's pointer (its default assumption is 256).
uint32_t alignment_of(const void* p, long long stride_bytes) {
  const uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)stride_bytes | 256u;
  return (uint32_t)(v & (~v + 1));
}
#endif

const char* const kBackendNames[] = {"tiled", "cublas", "cublaslt"};

}  // namespace

// cuBLASLt: one handle and a plan per product seen (the heuristic runs once per plan).
struct Gemm::Lt {
#ifdef PYLLAMA_HAVE_CUBLAS
  struct Plan {
    bool ok = false;  // false: cuBLASLt has no algorithm for it (the product runs on cublasGemmEx)
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, cd = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // (transA, transB, M, N, K, lda, ldb, ldc, strideA, strideB, strideC, batch, A/B type, C type,
  //  four alignments, workspace bytes)
  using Key = std::array<long long, 19>;
  static constexpr size_t kMaxPlans = 1024;  // past it the cache starts over (prefill lengths vary)
  cublasLtHandle_t handle = nullptr;
  std::map<Key, Plan> plans;

  Lt() { CUBLAS_CHECK(cublasLtCreate(&handle)); }
  ~Lt() {  // no throwing from a destructor
    clear();
    if (handle) cublasLtDestroy(handle);
  }
  static void release(Plan& p) {
    if (p.op) cublasLtMatmulDescDestroy(p.op);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.cd) cublasLtMatrixLayoutDestroy(p.cd);
    p = Plan{};
  }
  void clear() {
    for (auto& kv : plans) release(kv.second);
    plans.clear();
  }
  static cublasLtMatrixLayout_t layout(cudaDataType_t t, int rows, int cols, int ld, int batch, long long stride) {
    cublasLtMatrixLayout_t l = nullptr;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, (uint64_t)rows, (uint64_t)cols, (int64_t)ld));
    if (batch > 1) {
      const int32_t n = batch;
      const int64_t st = stride;
      CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof(n)));
      CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof(st)));
    }
    return l;
  }

  // One cuBLASLt call of plan p with `algo` (the operands swapped into the column-major view).
  cublasStatus_t launch(const Plan& p, const cublasLtMatmulAlgo_t& algo, float alpha, const void* A, const void* B,
                        float beta, const void* C, void* D, void* ws, size_t ws_bytes, cudaStream_t stream) {
    return cublasLtMatmul(handle, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.cd, D, p.cd, &algo, ws, ws_bytes, stream);
  }

  // D = alpha op(A) op(B) + beta C (row-major, as Gemm::run_batched) through cuBLASLt; C is
  // read only when beta != 0 and may be D. False when cuBLASLt refuses the product.
  bool run(bool transA, bool transB, int M, int N, int K, float alpha, const void* A, int lda, long long sA,
           const void* B, int ldb, long long sB, float beta, const void* C, void* D, int ldc, long long sC, int batch,
           cudaDataType_t tab, cudaDataType_t tcd, void* ws, size_t ws_bytes, cudaStream_t stream) {
    const size_t eab = tab == CUDA_R_32F ? 4 : 2, ecd = tcd == CUDA_R_32F ? 4 : 2;
    // Column-major view, as for cublasGemmEx: D^T (N x M) = op(B)^T op(A)^T, so cuBLASLt's
    // first operand is our B and its second our A.
    const uint32_t al_b = alignment_of(B, sB * (long long)eab), al_a = alignment_of(A, sA * (long long)eab);
    const uint32_t al_c = alignment_of(C, sC * (long long)ecd), al_d = alignment_of(D, sC * (long long)ecd);
    const Key key = {transA, transB, M, N, K, lda, ldb, ldc, batch > 1 ? sA : 0, batch > 1 ? sB : 0,
                     batch > 1 ? sC : 0, batch, (long long)tab, (long long)tcd, al_b, al_a, al_c, al_d,
                     (long long)ws_bytes};
    auto it = plans.find(key);
    if (it == plans.end()) {
      if (plans.size() >= kMaxPlans) clear();
      it = plans.emplace(key, Plan{}).first;
      Plan& p = it->second;
      try {
        CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const int32_t op1 = transB ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)));
        // stored shapes (column-major): our B is (K x N) or, transposed, (N x K) row-major
        p.a = layout(tab, transB ? K : N, transB ? N : K, ldb, batch, sB);
        p.b = layout(tab, transA ? M : K, transA ? K : M, lda, batch, sA);
        p.cd = layout(tcd, N, M, ldc, batch, sC);
        cublasLtMatmulPreference_t pref = nullptr;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        const uint64_t wsb = ws_bytes;
        cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb,
                                                                 sizeof(wsb));
        const uint32_t als[4] = {al_b, al_a, al_c, al_d};
        const cublasLtMatmulPreferenceAttributes_t which[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; i++)
          st = cublasLtMatmulPreferenceSetAttribute(pref, which[i], &als[i], sizeof(als[i]));
        // the heuristic's first choice (timing its other candidates instead, never shown
        // faster on a GPU: the kernel lab's cuda/lab/matmul_tune.cu)
        cublasLtMatmulHeuristicResult_t res[1] = {};
        int found = 0;
        if (st == CUBLAS_STATUS_SUCCESS)
          st = cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.cd, p.cd, pref, 1, res, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        int n = 0;  // usable candidates, in the heuristic's order
        for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found; i++)
          if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= ws_bytes) res[n++] = res[i];
        if (n > 0) {
          p.algo = res[0].algo;
          p.ok = true;
        } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED &&
                   st != CUBLAS_STATUS_INVALID_VALUE) {
          CUBLAS_CHECK(st);
        }
      } catch (...) {
        release(p);
        plans.erase(it);
        throw;
      }
    }
    Plan& p = it->second;
    if (!p.ok) return false;
    const cublasStatus_t st = launch(p, p.algo, alpha, A, B, beta, beta != 0.f ? C : D, D, ws, ws_bytes, stream);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE || st == CUBLAS_STATUS_ARCH_MISMATCH) {
      p.ok = false;  // refused at run time: this product goes to cublasGemmEx from now on
      return false;
    }
    CUBLAS_CHECK(st);
    return true;
  }
#endif
};

Gemm::Gemm(const std::string& backend) {
#ifdef PYLLAMA_HAVE_CUBLAS
  const bool have_cublas = true;
#else
  const bool have_cublas = false;
#endif
  const std::string want = !backend.empty() ? backend : have_cublas ? "cublaslt" : "tiled";
  PYLLAMA_CHECK(want == "tiled" || want == "cublas" || want == "cublaslt", ValueError,
                "BackendOptions.matmul='" << want << "': use cublaslt, cublas or tiled (the matmul back end)");
  PYLLAMA_CHECK(want == "tiled" || have_cublas, ValueError,
                "BackendOptions.matmul='" << want << "': this build has no cuBLAS (it was not found when pyllama was "
                                          << "built); use tiled, or rebuild with the nvidia-cublas wheel installed");
  backend_ = want == "tiled" ? kTiled : want == "cublas" ? kCublas : kCublasLt;
#ifdef PYLLAMA_HAVE_CUBLAS
  if (backend_ != kTiled) {
    CUBLAS_CHECK(cublasCreate(&handle_));
    CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));  // float compute stays float (no TF32)
  }
  if (backend_ == kCublasLt) {
    try {
      lt_ = new Lt;
    } catch (...) {
      cublasDestroy(handle_);
      throw;
    }
  }
#endif
}

Gemm::~Gemm() {
  delete lt_;
#ifdef PYLLAMA_HAVE_CUBLAS
  if (handle_) cublasDestroy(handle_);  // no throwing from a destructor
#endif
}

const char* Gemm::backend() const { return kBackendNames[backend_]; }

Gemm::LtStats Gemm::lt_stats() const {
  LtStats st;
  st.fallbacks = lt_fallbacks_;
#ifdef PYLLAMA_HAVE_CUBLAS
  if (lt_) st.plans = (long long)lt_->plans.size();
#endif
  return st;
}

void Gemm::set_workspace(void* p, size_t bytes) {
  ws_ = p;
  ws_bytes_ = p ? bytes : 0;
}

template <typename TA, typename TC>
void Gemm::product(bool transA, bool transB, int M, int N, int K, float alpha, const TA* A, int lda,
                   long long strideA, const TA* B, int ldb, long long strideB, float beta, const TC* R, TC* D, int ldc,
                   long long strideC, int batch, cudaStream_t stream) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
  PYLLAMA_CHECK(!R || batch == 1, ValueError, "Gemm: an added matrix R needs batch 1, got " << batch);
  if (R) beta = 1.f;
#ifdef PYLLAMA_HAVE_CUBLAS
  if (backend_ == kCublasLt && K > 0) {
    if (lt_->run(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, R ? R : D, D, ldc, strideC,
                 batch, CudaType<TA>::value, CudaType<TC>::value, ws_, ws_bytes_, stream))
      return;
    lt_fallbacks_++;
  }
#endif
  if (R && R != D)  // D = R, then D += op(A) op(B)
    CUDA_CHECK(cudaMemcpy2DAsync(D, (size_t)ldc * sizeof(TC), R, (size_t)ldc * sizeof(TC), (size_t)N * sizeof(TC),
                                 (size_t)M, cudaMemcpyDeviceToDevice, stream));
#ifdef PYLLAMA_HAVE_CUBLAS
  if (backend_ != kTiled) {
    CUBLAS_CHECK(cublasSetStream(handle_, stream));
    if (ws_) CUBLAS_CHECK(cublasSetWorkspace(handle_, ws_, ws_bytes_));
    const cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N, opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (batch == 1) {
      CUBLAS_CHECK(cublasGemmEx(handle_, opB, opA, N, M, K, &alpha, B, CudaType<TA>::value, ldb, A,
                                CudaType<TA>::value, lda, &beta, D, CudaType<TC>::value, ldc, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    } else {
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle_, opB, opA, N, M, K, &alpha, B, CudaType<TA>::value, ldb,
                                              strideB, A, CudaType<TA>::value, lda, strideA, &beta, D,
                                              CudaType<TC>::value, ldc, strideC, batch, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
    }
    return;
  }
#endif
  PYLLAMA_CHECK(batch <= 65535, ValueError, "Gemm::run_batched: at most 65535 batch entries, got " << batch);
  dim3 grid((N + kBN - 1) / kBN, (M + kBM - 1) / kBM, batch);
  gemm_tiled_kernel<TA, TC><<<grid, kThreads, 0, stream>>>(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb,
                                                           strideB, beta, D, ldc, strideC);
  CUDA_CHECK_LAUNCH();
}

template <typename TA, typename TC>
void Gemm::run(bool transA, bool transB, int M, int N, int K, const TA* A, int lda, const TA* B, int ldb, float beta,
               TC* C, int ldc, cudaStream_t stream) {
  product<TA, TC>(transA, transB, M, N, K, 1.f, A, lda, 0, B, ldb, 0, beta, nullptr, C, ldc, 0, 1, stream);
}

template <typename TA, typename TC>
void Gemm::run_add(bool transA, bool transB, int M, int N, int K, const TA* A, int lda, const TA* B, int ldb,
                   const TC* R, TC* D, int ldc, cudaStream_t stream) {
  product<TA, TC>(transA, transB, M, N, K, 1.f, A, lda, 0, B, ldb, 0, 1.f, R, D, ldc, 0, 1, stream);
}

template <typename TA, typename TC>
void Gemm::run_batched(bool transA, bool transB, int M, int N, int K, float alpha, const TA* A, int lda,
                       long long strideA, const TA* B, int ldb, long long strideB, float beta, TC* C, int ldc,
                       long long strideC, int batch, cudaStream_t stream) {
  product<TA, TC>(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, nullptr, C, ldc, strideC,
                  batch, stream);
}

#define PYLLAMA_GEMM_INSTANTIATE(TA, TC)                                                                          \
  template void Gemm::run<TA, TC>(bool, bool, int, int, int, const TA*, int, const TA*, int, float, TC*, int,      \
                                  cudaStream_t);                                                                  \
  template void Gemm::run_add<TA, TC>(bool, bool, int, int, int, const TA*, int, const TA*, int, const TC*, TC*, \
                                      int, cudaStream_t);                                                         \
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
void linear_forward_add(Gemm& g, T* y, const T* x, const T* w, const T* res, int N, int IN, int OUT,
                        cudaStream_t stream) {
  g.run_add<T, T>(false, true, N, OUT, IN, x, IN, w, IN, res, y, OUT, stream);
}

template <typename T>
void linear_backward(Gemm& g, T* dx, float* dw, const T* dy, const T* x, const T* w, int N, int IN, int OUT,
                     cudaStream_t stream) {
  if (dx) g.run<T, T>(false, false, N, IN, OUT, dy, OUT, w, IN, 0.f, dx, IN, stream);
  g.run<T, float>(true, false, OUT, IN, N, dy, OUT, x, IN, 1.f, dw, IN, stream);
}

template void linear_forward<float>(Gemm&, float*, const float*, const float*, int, int, int, cudaStream_t);
template void linear_forward<bf16>(Gemm&, bf16*, const bf16*, const bf16*, int, int, int, cudaStream_t);
template void linear_forward_add<float>(Gemm&, float*, const float*, const float*, const float*, int, int, int,
                                        cudaStream_t);
template void linear_forward_add<bf16>(Gemm&, bf16*, const bf16*, const bf16*, const bf16*, int, int, int,
                                       cudaStream_t);
template void linear_backward<float>(Gemm&, float*, float*, const float*, const float*, const float*, int, int, int,
                                     cudaStream_t);
template void linear_backward<bf16>(Gemm&, bf16*, float*, const bf16*, const bf16*, const bf16*, int, int, int,
                                    cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
