// sim_cublas.cpp — the cuBLAS and cuBLASLt calls of cuda/matmul.cu on the CPU
// (include/cublas_v2.h, include/cublasLt.h): column-major D = alpha op(A) op(B) + beta C per
// batch entry, float / bf16 in, float accumulation, beta 0 never reading C (as cuBLAS); for
// cublasGemmEx D is C. Calls are checked as cuBLAS does (sizes, leading dimensions, types,
// attribute sizes) and, beyond it, every matrix must lie inside one device allocation, and a
// cuBLASLt algorithm runs only on the problem it was chosen for, with pointers as aligned as
// the preference promised and the workspace it asked for; the product runs as work on the
// stream (sim_host.cpp).
#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstring>
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

// D = a op(A) op(B) + b C for each batch entry, queued on stream st; C is read (only when
// b != 0) before the same element of D is written, so C may be D
cublasStatus_t enqueue_gemm(cudaStream_t st, const char* what, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, float a, const void* A, cudaDataType_t at, int lda, long long strideA,
                            const void* B, cudaDataType_t bt, int ldb, long long strideB, float b, const void* C,
                            void* D, cudaDataType_t ct, int ldc, long long strideC, int batch) {
  const cudaError_t e = sim::enqueue(st, what, [=] {
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
          store(D, ct, ci, b == 0.f ? a * acc : a * acc + b * load(C, ct, ci));
        }
      }
    }
  });
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
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
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
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
  return enqueue_gemm(h->stream, "cublasGemmEx", ta, tb, m, n, k, a, A, at, lda, strideA, B, bt, ldb, strideB, b, C,
                      C, ct, ldc, strideC, batch);
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B,
                            cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo) {
  return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
                                    compute, algo);
}

// ------------------------------------------------------------------ cuBLASLt

struct cublasLtContext {
  int alive = 1;
};
struct cublasLtMatmulDescOpaque {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  int32_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
};
struct cublasLtMatrixLayoutOpaque {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
  int32_t batch = 1;
  int64_t stride = 0;
};
struct cublasLtMatmulPreferenceOpaque {
  uint64_t workspace = 0;
  uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D
};

namespace {

constexpr uint64_t kAlgoMagic = 0x73696d4c74414c47ull;
constexpr size_t kAlgoWorkspace = size_t(1) << 20;  // what an algorithm asks for when offered that much

// the opaque objects behind cuBLASLt's handles and descriptors
template <typename X, typename... Args>
cublasStatus_t make(X** out, Args... args) {
  *out = new X{args...};
  return CUBLAS_STATUS_SUCCESS;
}
template <typename X>
cublasStatus_t drop(X* p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}

template <typename X>
cublasStatus_t set_exact(X* field, const void* buf, size_t size, const char* what) {
  if (!buf || size != sizeof(X)) {
    std::fprintf(stderr, "sim cuBLASLt: attribute %s takes %zu bytes, got %zu\n", what, sizeof(X), size);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  std::memcpy(field, buf, sizeof(X));
  return CUBLAS_STATUS_SUCCESS;
}

// a fingerprint of the problem an algorithm was chosen for
uint64_t problem_hash(const cublasLtMatmulDescOpaque* op, const cublasLtMatrixLayoutOpaque* const* l) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix((uint64_t)op->ta), mix((uint64_t)op->tb), mix((uint64_t)op->compute);
  for (int i = 0; i < 4; i++)
    mix((uint64_t)l[i]->type), mix(l[i]->rows), mix(l[i]->cols), mix((uint64_t)l[i]->ld),
        mix((uint64_t)l[i]->batch), mix((uint64_t)l[i]->stride);
  return h;
}

// the problem's consistency (as cuBLASLt checks it); m, n, k out
cublasStatus_t check_problem(const cublasLtMatmulDescOpaque* op, const cublasLtMatrixLayoutOpaque* A,
                             const cublasLtMatrixLayoutOpaque* B, const cublasLtMatrixLayoutOpaque* C,
                             const cublasLtMatrixLayoutOpaque* D, int* m, int* n, int* k) {
  if (!op || !A || !B || !C || !D) return bad("cuBLASLt: a null descriptor");
  if (op->compute != CUBLAS_COMPUTE_32F || op->scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (A->type != B->type || (A->type != CUDA_R_32F && A->type != CUDA_R_16BF)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (C->type != D->type || (D->type != CUDA_R_32F && D->type != A->type)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (op->ta == CUBLAS_OP_C || op->tb == CUBLAS_OP_C) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (C->rows != D->rows || C->cols != D->cols || C->ld != D->ld || C->batch != D->batch || C->stride != D->stride)
    return bad("cuBLASLt: C and D layouts differ");
  *m = (int)D->rows, *n = (int)D->cols;
  const uint64_t am = op->ta == CUBLAS_OP_N ? A->rows : A->cols, ak = op->ta == CUBLAS_OP_N ? A->cols : A->rows;
  const uint64_t bk = op->tb == CUBLAS_OP_N ? B->rows : B->cols, bn = op->tb == CUBLAS_OP_N ? B->cols : B->rows;
  if (am != D->rows || bn != D->cols || ak != bk) return bad("cuBLASLt: operand shapes do not chain (m, n, k)");
  *k = (int)ak;
  for (const auto* l : {A, B, D})
    if (l->ld < (int64_t)std::max<uint64_t>(1, l->rows)) return bad("cuBLASLt: leading dimension below the rows");
  if (A->batch != D->batch || B->batch != D->batch || D->batch < 1) return bad("cuBLASLt: batch counts differ");
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) { return make(h); }
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) { return drop(h); }
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  return make(d, compute, scale);
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { return drop(d); }
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  if (!d) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (attr == CUBLASLT_MATMUL_DESC_TRANSA) return set_exact(&d->ta, buf, size, "TRANSA");
  if (attr == CUBLASLT_MATMUL_DESC_TRANSB) return set_exact(&d->tb, buf, size, "TRANSB");
  return CUBLAS_STATUS_NOT_SUPPORTED;  // not emulated
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType_t type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  return make(l, type, rows, cols, ld);
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { return drop(l); }
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, size_t size) {
  if (!l) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (attr == CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT) return set_exact(&l->batch, buf, size, "BATCH_COUNT");
  if (attr == CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET)
    return set_exact(&l->stride, buf, size, "STRIDED_BATCH_OFFSET");
  return CUBLAS_STATUS_NOT_SUPPORTED;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) { return make(p); }
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { return drop(p); }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t size) {
  if (!p) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) return set_exact(&p->workspace, buf, size, "MAX_WORKSPACE");
  if (attr >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES && attr <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES) {
    uint32_t v = 0;
    if (cublasStatus_t st = set_exact(&v, buf, size, "MIN_ALIGNMENT")) return st;
    if (v == 0 || (v & (v - 1))) return bad("cuBLASLt: an alignment must be a power of two");
    p->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = v;
    return CUBLAS_STATUS_SUCCESS;
  }
  return CUBLAS_STATUS_NOT_SUPPORTED;
}

// One algorithm: vectorised (16-byte alignment of every pointer) when the preference allows
// it, else element-wise; it asks for 1 MiB of workspace when offered that much.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t A,
                                              cublasLtMatrixLayout_t B, cublasLtMatrixLayout_t C,
                                              cublasLtMatrixLayout_t D, cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  if (!h || !pref) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (requested <= 0) return CUBLAS_STATUS_INVALID_VALUE;
  int m, n, k;
  if (cublasStatus_t st = check_problem(op, A, B, C, D, &m, &n, &k)) return st;
  const cublasLtMatrixLayoutOpaque* ls[4] = {A, B, C, D};
  bool vec = true;
  for (int i = 0; i < 4; i++) vec = vec && pref->align[i] >= 16;
  cublasLtMatmulHeuristicResult_t r{};
  r.algo.data[0] = kAlgoMagic;
  for (int i = 0; i < 4; i++) r.algo.data[1 + i] = vec ? 16 : elem_bytes(ls[i]->type);
  r.algo.data[5] = pref->workspace >= kAlgoWorkspace ? kAlgoWorkspace : 0;
  r.algo.data[6] = problem_hash(op, ls);
  r.workspaceSize = r.algo.data[5];
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.f;
  // up to 3 candidates (as the real heuristic offers several, best first), told apart by
  // data[7]; they compute the same, so tuning (the kernel lab's cuda/lab/matmul_tune.cu) has a choice to make
  const int count = requested < 3 ? requested : 3;
  for (int i = 0; i < count; i++) {
    results[i] = r;
    results[i].algo.data[7] = (uint64_t)i;
  }
  *returned = count;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  int m, n, k;
  if (cublasStatus_t st = check_problem(op, Adesc, Bdesc, Cdesc, Ddesc, &m, &n, &k)) return st;
  const cublasLtMatrixLayoutOpaque* ls[4] = {Adesc, Bdesc, Cdesc, Ddesc};
  if (!algo || algo->data[0] != kAlgoMagic || algo->data[6] != problem_hash(op, ls))
    return bad("cublasLtMatmul: the algorithm was not chosen for this problem");
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  const void* ptrs[4] = {A, B, b != 0.f ? C : D, D};
  for (int i = 0; i < 4; i++) {
    const uint64_t need = algo->data[1 + i];
    const uint64_t stride_bytes = (uint64_t)ls[i]->stride * elem_bytes(ls[i]->type);
    if ((uint64_t)(uintptr_t)ptrs[i] % need || (ls[i]->batch > 1 && stride_bytes % need)) {
      std::fprintf(stderr, "sim cuBLASLt: matrix %c is not %llu-byte aligned as the algorithm's preference promised\n",
                   "ABCD"[i], (unsigned long long)need);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    const size_t one = span((int)ls[i]->rows, (int)ls[i]->cols, (int)ls[i]->ld, ls[i]->type);
    if (one && !sim::is_device(ptrs[i], one + (size_t)(ls[i]->batch - 1) * stride_bytes))
      return bad("cublasLtMatmul: a matrix is not inside one device allocation");
  }
  if (algo->data[5] && (workspace_bytes < algo->data[5] || !sim::is_device(workspace, algo->data[5])))
    return bad("cublasLtMatmul: the algorithm needs more device workspace than it was given");
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  return enqueue_gemm(stream, "cublasLtMatmul", (cublasOperation_t)op->ta, (cublasOperation_t)op->tb, m, n, k, a, A,
                      Adesc->type, (int)Adesc->ld, Adesc->stride, B, Bdesc->type, (int)Bdesc->ld, Bdesc->stride, b,
                      ptrs[2], D, Ddesc->type, (int)Ddesc->ld, Ddesc->stride, Ddesc->batch);
}
