// sim_cublas.cpp — the cuBLAS calls of cuda/matmul.cu on the CPU (include/cublas_v2.h):
// column-major C = alpha op(A) op(B) + beta C per batch entry, float / bf16 in, float
// accumulation, beta 0 never reading C (as cuBLAS). The call is checked as cuBLAS does
// (sizes, leading dimensions, types) and, beyond it, every matrix must lie inside one
// device allocation; the product runs as work on the handle's stream (sim_host.cpp).
#include <cublas_v2.h>

#include <vector>

struct cublasContext {
  cudaStream_t stream = nullptr;
  bool tf32 = false;
};

namespace {

size_t elem_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }
float load(const void* p, cudaDataType_t t, long long i) {
  if (t == CUDA_R_32F) return static_cast<const float*>(p)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
void store(void* p, cudaDataType_t t, long long i, float v) {
  if (t == CUDA_R_32F)
    static_cast<float*>(p)[i] = v;
  else
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
}
cublasStatus_t bad(const char* what) {
  std::fprintf(stderr, "sim cuBLAS: %s\n", what);
  return CUBLAS_STATUS_INVALID_VALUE;
}
// bytes spanned by a column-major rows x cols matrix with leading dimension ld
size_t span(int rows, int cols, int ld, cudaDataType_t t) {
  if (rows <= 0 || cols <= 0) return 0;
  return ((size_t)(cols - 1) * ld + rows) * elem_bytes(t);
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void* ws, size_t bytes) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes && !sim::is_device(ws, bytes)) return bad("cublasSetWorkspace: the workspace is not device memory");
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->tf32 = mode == CUBLAS_TF32_TENSOR_OP_MATH;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusName(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char* cublasGetStatusString(cublasStatus_t st) { return cublasGetStatusName(st); }

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType_t at, int lda,
                                          long long strideA, const void* B, cudaDataType_t bt, int ldb,
                                          long long strideB, const void* beta, void* C, cudaDataType_t ct, int ldc,
                                          long long strideC, int batch, cublasComputeType_t compute,
                                          cublasGemmAlgo_t) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0 || batch < 0) return bad("negative size");
  if (ta == CUBLAS_OP_C || tb == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (at != bt || (at != CUDA_R_32F && at != CUDA_R_16BF) || (ct != CUDA_R_32F && ct != at))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32) return CUBLAS_STATUS_NOT_SUPPORTED;
  const int arows = ta == CUBLAS_OP_N ? m : k, acols = ta == CUBLAS_OP_N ? k : m;
  const int brows = tb == CUBLAS_OP_N ? k : n, bcols = tb == CUBLAS_OP_N ? n : k;
  if (lda < std::max(1, arows) || ldb < std::max(1, brows) || ldc < std::max(1, m)) return bad("leading dimension too small");
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);  // host pointer mode
  const auto whole = [&](const void* p, int rows, int cols, int ld, long long stride, cudaDataType_t t) {
    const size_t one = span(rows, cols, ld, t);
    return one == 0 || sim::is_device(p, one + (size_t)(batch - 1) * stride * elem_bytes(t));
  };
  if (!whole(A, arows, acols, lda, strideA, at)) return bad("A is not inside one device allocation");
  if (!whole(B, brows, bcols, ldb, strideB, bt)) return bad("B is not inside one device allocation");
  if (!whole(C, m, n, ldc, strideC, ct)) return bad("C is not inside one device allocation");
  const cudaError_t e = sim::enqueue(h->stream, "cublasGemmEx", [=] {
    std::vector<float> arow(k);
    for (int q = 0; q < batch; q++) {
      const long long oa = q * strideA, ob = q * strideB, oc = q * strideC;
      for (int i = 0; i < m; i++) {
        for (int l = 0; l < k; l++)
          arow[l] = load(A, at, oa + (ta == CUBLAS_OP_N ? i + (long long)l * lda : l + (long long)i * lda));
        for (int j = 0; j < n; j++) {
          float acc = 0.f;
          for (int l = 0; l < k; l++)
            acc += arow[l] * load(B, bt, ob + (tb == CUBLAS_OP_N ? l + (long long)j * ldb : j + (long long)l * ldb));
          const long long ci = oc + i + (long long)j * ldc;
          store(C, ct, ci, b == 0.f ? a * acc : a * acc + b * load(C, ct, ci));
        }
      }
    }
  });
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B,
                            cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
                                    compute, algo);
}
