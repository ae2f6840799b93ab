// matmul_tune.cu — kernel lab (README.md): cuBLASLt's candidate algorithms timed on each
// product, against the heuristic's first choice (what the library runs).
//
//   matmul_tune [--check] [--reps N]
//
// The library (cuda/matmul.cu, Gemm::Lt) asks cuBLASLt's heuristic for one algorithm per
// product (transposes, sizes, leading dimensions, types, the pointers' alignments, the
// workspace) and keeps it. This program asks the same question for up to 8 candidates,
// describing each product exactly as Gemm::Lt::run does (the column-major view with A and B
// swapped, the four alignments, the workspace), runs every candidate that fits the workspace
// on the same inputs, checks each against the library's Gemm and (small shapes) a double
// reference, and times each: "variant / library" is the fastest candidate against the first.
// History: the library's BackendOptions.matmul_tune (PYLLAMA_CUDA_MATMUL_TUNE=1) from commit
// efb40f4 until it moved here: each new plan timed its candidates on its first product and
// kept the fastest. Never timed on a GPU (docs/CUDA.md, "The kernel lab"). On the CPU emulator
// the heuristic offers three candidates that compute the same and time 0.
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "lab.cuh"

namespace {

using pyllama::gpu::bf16;

#define LT_CHECK(expr)                                                                                \
  do {                                                                                                \
    cublasStatus_t lt_st_ = (expr);                                                                   \
    if (lt_st_ != CUBLAS_STATUS_SUCCESS)                                                              \
      throw pyllama::CudaError(std::string("cuBLASLt error ") + std::to_string((int)lt_st_) + " in " + \
                               #expr);                                                                \
  } while (0)

constexpr int kCandidates = 8;
constexpr size_t kWorkspace = 32u << 20;  // the workspace the model gives its Gemm

template <typename X>
cudaDataType_t cuda_type() {
  return std::is_same<X, float>::value ? CUDA_R_32F : CUDA_R_16BF;
}

// As cuda/matmul.cu: the largest power of two (at most 256) dividing the address and the batch
// stride, which cuBLASLt is promised of every operand.
uint32_t alignment_of(const void* p, long long stride_bytes) {
  const uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)stride_bytes | 256u;
  return (uint32_t)(v & (~v + 1));
}

// One row-major product D (M x N, ldc) = op(A) op(B) + beta D (beta 0 or 1), described to
// cuBLASLt as Gemm::Lt::run describes it, with the heuristic's candidates.
struct LtProduct {
  cublasLtHandle_t h = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, cd = nullptr;
  std::vector<cublasLtMatmulHeuristicResult_t> cand;  // usable candidates, in the heuristic's order

  LtProduct(cublasLtHandle_t handle, bool transA, bool transB, int M, int N, int K, int lda, int ldb, int ldc,
            cudaDataType_t tab, cudaDataType_t tcd, const void* A, const void* B, const void* D, size_t ws_bytes)
      : h(handle) {
    LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t op1 = transB ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof(op1)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof(op2)));
    LT_CHECK(cublasLtMatrixLayoutCreate(&a, tab, (uint64_t)(transB ? K : N), (uint64_t)(transB ? N : K), ldb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&b, tab, (uint64_t)(transA ? M : K), (uint64_t)(transA ? K : M), lda));
    LT_CHECK(cublasLtMatrixLayoutCreate(&cd, tcd, (uint64_t)N, (uint64_t)M, ldc));
    cublasLtMatmulPreference_t pref = nullptr;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t wsb = ws_bytes;
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
    const uint32_t als[4] = {alignment_of(B, 0), alignment_of(A, 0), alignment_of(D, 0), alignment_of(D, 0)};
    const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++) LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &als[i], sizeof(als[i])));
    cublasLtMatmulHeuristicResult_t res[kCandidates] = {};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, op, a, b, cd, cd, pref, kCandidates, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) LT_CHECK(st);
    for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found; i++)
      if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= ws_bytes) cand.push_back(res[i]);
  }
  ~LtProduct() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (cd) cublasLtMatrixLayoutDestroy(cd);
  }
  LtProduct(const LtProduct&) = delete;
  LtProduct& operator=(const LtProduct&) = delete;
  // candidate i: D = op(A) op(B) + beta D (C is D, as the library passes it)
  cublasStatus_t run(int i, const void* A, const void* B, float beta, void* D, void* ws, size_t ws_bytes,
                     cudaStream_t stream) const {
    const float alpha = 1.f;
    return cublasLtMatmul(h, op, &alpha, B, a, A, b, &beta, D, cd, D, cd, &cand[(size_t)i].algo, ws, ws_bytes,
                          stream);
  }
};

// A product of the model's linear layers: y = x W^T (forward), dx = dy W, dW += dy^T x (float
// gradient, beta 1), at sizes M, N, K.
struct Case {
  const char* name;
  bool transA, transB;
  int M, N, K;
  float beta;
};

// D (M x N) = op(A) op(B) + beta D0 in double (A stored K x M when transA, B N x K when transB).
template <typename TA>
std::vector<double> reference(const Case& c, const std::vector<TA>& A, const std::vector<TA>& B,
                              const std::vector<double>& D0) {
  std::vector<double> D((size_t)c.M * c.N);
  const int lda = c.transA ? c.M : c.K, ldb = c.transB ? c.K : c.N;
  for (int m = 0; m < c.M; m++)
    for (int n = 0; n < c.N; n++) {
      double s = c.beta != 0.f ? D0[(size_t)m * c.N + n] : 0.0;
      for (int k = 0; k < c.K; k++) {
        const double a = lab::to_d(c.transA ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]);
        const double b = lab::to_d(c.transB ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n]);
        s += a * b;
      }
      D[(size_t)m * c.N + n] = s;
    }
  return D;
}

// Every candidate on the same inputs: against the library's Gemm (bit-equal for the
// heuristic's first when the library runs cuBLASLt: its own choice) and, when small, the
// double reference; timed unless check_only.
template <typename TA, typename TC>
void run_case(cublasLtHandle_t h, pyllama::gpu::Gemm& g, const Case& c, bool check_only, int reps) {
  const size_t nA = (size_t)c.M * c.K, nB = (size_t)c.K * c.N, nD = (size_t)c.M * c.N;
  const unsigned seed = 17u * c.M + 5u * c.N + c.K;
  const bool small = (double)c.M * c.N * c.K <= 2e6;
  const auto A = small ? lab::randn<TA>(nA, seed) : lab::randu<TA>(nA, seed);
  const auto B = small ? lab::randn<TA>(nB, seed + 1) : lab::randu<TA>(nB, seed + 1);
  const auto D0 = small ? lab::randn<TC>(nD, seed + 2) : lab::randu<TC>(nD, seed + 2);
  const int lda = c.transA ? c.M : c.K, ldb = c.transB ? c.K : c.N, ldc = c.N;
  lab::Buf<TA> dA(A), dB(B);
  lab::Buf<TC> dlib(D0), d(D0);
  lab::Buf<char> ws(kWorkspace);
  g.run<TA, TC>(c.transA, c.transB, c.M, c.N, c.K, dA.p, lda, dB.p, ldb, c.beta, dlib.p, ldc, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto lib = dlib.host();
  const std::vector<double> ref = small ? reference(c, A, B, lab::to_d(D0)) : std::vector<double>();
  const bool b16 = std::is_same<TC, bf16>::value;
  const double tol = b16 ? 1e-2 : 1e-4;  // float: K-long sums in another order
  const LtProduct p(h, c.transA, c.transB, c.M, c.N, c.K, lda, ldb, ldc, cuda_type<TA>(), cuda_type<TC>(), dA.p, dB.p,
                    d.p, kWorkspace);
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s %s->%s M=%d N=%d K=%d beta=%g", c.name,
                std::is_same<TA, bf16>::value ? "bf16" : "f32", b16 ? "bf16" : "f32", c.M, c.N, c.K, (double)c.beta);
  const std::string what = buf;
  lab::report(what + ": the heuristic offers candidates", p.cand.empty() ? 1.0 : 0.0, 0.0);
  std::vector<float> ms(p.cand.size(), 0.f);
  for (size_t i = 0; i < p.cand.size(); i++) {
    CUDA_CHECK(cudaMemcpy(d.p, D0.data(), nD * sizeof(TC), cudaMemcpyHostToDevice));
    const cublasStatus_t st = p.run((int)i, dA.p, dB.p, c.beta, d.p, ws.p, kWorkspace, nullptr);
    const std::string w = what + " candidate " + std::to_string(i);
    if (st != CUBLAS_STATUS_SUCCESS) {  // refused at run time: the library would not keep it either
      std::printf("note %s: refused at run time (status %d)\n", w.c_str(), (int)st);
      ms[i] = -1.f;
      continue;
    }
    const auto got = d.host();
    if (i == 0 && std::string(g.backend()) == "cublaslt")
      lab::report_exact(w + " (the heuristic's first) bit-equal to the library's Gemm", lab::same_bits(got, lib));
    else
      lab::report(w + " vs the library's Gemm (" + g.backend() + ")", lab::rel_err(got, lab::to_d(lib)), tol);
    if (small) lab::report(w + " vs double", lab::rel_err(got, ref), tol);
    if (!check_only)  // accumulating products (beta 1) accumulate into the copy: only the time counts
      ms[i] = lab::time_ms([&] { p.run((int)i, dA.p, dB.p, c.beta, d.p, ws.p, kWorkspace, nullptr); }, reps);
  }
  if (check_only || p.cand.empty() || ms[0] < 0.f) return;
  size_t best = 0;
  for (size_t i = 1; i < ms.size(); i++)
    if (ms[i] >= 0.f && ms[i] < ms[best]) best = i;
  std::printf("# %s: %zu candidates:", what.c_str(), ms.size());
  for (float t : ms) std::printf(" %.4f", t);
  std::printf(" ms; the fastest is candidate %zu\n", best);
  lab::print_time("cuBLASLt (heuristic's first -> fastest candidate)", what, ms[0], ms[best]);
}

}  // namespace

int main(int argc, char** argv) {
  const lab::Options opt = lab::parse(argc, argv, "matmul_tune");
  cublasLtHandle_t h = nullptr;
  try {
    lab::print_device();
    LT_CHECK(cublasLtCreate(&h));
    pyllama::gpu::Gemm g;  // the library's default back end (cuBLASLt where cuBLAS was found at build time)
    lab::Buf<char> ws(kWorkspace);
    if (g.uses_cublas()) g.set_workspace(ws.p, kWorkspace);
    // awkward sizes, every transpose pair the model uses, bf16 and float, accumulation (beta 1)
    run_case<bf16, bf16>(h, g, {"forward x W^T", false, true, 37, 29, 45, 0.f}, true, opt.reps);
    run_case<bf16, bf16>(h, g, {"backward dy W", false, false, 37, 45, 29, 0.f}, true, opt.reps);
    run_case<bf16, float>(h, g, {"backward dW += dy^T x", true, false, 29, 45, 37, 1.f}, true, opt.reps);
    run_case<float, float>(h, g, {"forward x W^T", false, true, 33, 17, 50, 0.f}, true, opt.reps);
    run_case<float, float>(h, g, {"backward dW += dy^T x", true, false, 17, 50, 33, 1.f}, true, opt.reps);
    if (!opt.check_only) {
      // the layers of bench/gpu.py's 124M model, bf16 training at 16 x 1024 (16384 rows): C 768,
      // I 2048 (the lm_head's 32000-wide products are left out: their 0.5-1 GB operands would
      // take the time budget of tests/gpu/run.sh)
      const int R = 16384;
      const Case model[] = {
          {"qkv x W^T", false, true, R, 3 * 768, 768, 0.f},   {"o x W^T", false, true, R, 768, 768, 0.f},
          {"gate_up x W^T", false, true, R, 4096, 768, 0.f},  {"down x W^T", false, true, R, 768, 2048, 0.f},
          {"gate_up dy W", false, false, R, 768, 4096, 0.f},  {"down dy W", false, false, R, 2048, 768, 0.f},
      };
      for (const Case& c : model) run_case<bf16, bf16>(h, g, c, false, opt.reps);
      const Case grads[] = {
          {"qkv dW += dy^T x", true, false, 3 * 768, 768, R, 1.f},
          {"gate_up dW += dy^T x", true, false, 4096, 768, R, 1.f},
      };
      for (const Case& c : grads) run_case<bf16, float>(h, g, c, false, opt.reps);
    }
  } catch (const std::exception& e) {
    lab::report(std::string("threw: ") + e.what(), INFINITY, 0);
  }
  if (h) cublasLtDestroy(h);
  return lab::finish("matmul_tune");
}
