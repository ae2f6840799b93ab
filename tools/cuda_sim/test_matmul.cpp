// test_matmul.cpp — cuda/matmul.cu's tiled kernel (no cuBLAS in the emulator): Gemm::run
// for every transpose pair, beta 0 (C holds NaN garbage) and 1, Gemm::run_batched with
// alpha and strides, the (bf16, float) instantiation, linear_forward / linear_backward.
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

// C (M x N, ldc) = beta C + alpha op(A) op(B), `batch` entries at the given strides
template <typename TA, typename TC>
void gemm_case(bool ta, bool tb, int M, int N, int K, float alpha, float beta, int batch) {
  Rng r(M * 7 + N * 3 + K + ta * 2 + tb + batch * 11);
  const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
  const long long sA = (long long)(ta ? K : M) * lda + 5, sB = (long long)(tb ? N : K) * ldb, sC = (long long)M * ldc + 7;
  auto A = randn<TA>(sA * batch, r), B = randn<TA>(sB * batch, r);
  std::vector<TC> C = beta != 0.f ? randn<TC>(sC * batch, r) : nans<TC>(sC * batch);
  std::vector<double> ref = to_d(C);
  for (int z = 0; z < batch; z++)
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        double d = 0;
        for (int k = 0; k < K; k++) {
          const double a = f(ta ? A[z * sA + (size_t)k * lda + i] : A[z * sA + (size_t)i * lda + k]);
          const double b = f(tb ? B[z * sB + (size_t)j * ldb + k] : B[z * sB + (size_t)k * ldb + j]);
          d += a * b;
        }
        const size_t o = z * sC + (size_t)i * ldc + j;
        ref[o] = alpha * d + (beta != 0.f ? beta * ref[o] : 0.0);
      }
  Gemm g;
  if (batch == 1 && alpha == 1.f)
    g.run<TA, TC>(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, C.data(), ldc, nullptr);
  else
    g.run_batched<TA, TC>(ta, tb, M, N, K, alpha, A.data(), lda, sA, B.data(), ldb, sB, beta, C.data(), ldc, sC, batch,
                          nullptr);
  CUDA_CHECK_LAUNCH();
  // entries outside the M x N blocks keep their values (NaN for beta 0): compare those too
  const double tol = std::is_same_v<TC, bf16> ? 1e-2 : 2e-6;
  report(fmt("gemm tiled %s->%s %c%c M=%d N=%d K=%d alpha=%g beta=%g batch=%d", tname<TA>(), tname<TC>(),
             ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, beta, batch),
         rel_err(C, ref), tol);
}

template <typename T>
void linear_case(int N, int IN, int OUT, bool with_dx) {
  Rng r(N + IN * 3 + OUT * 5);
  auto x = randn<T>((size_t)N * IN, r), w = randn<T>((size_t)OUT * IN, r), dy = randn<T>((size_t)N * OUT, r);
  std::vector<float> dw((size_t)OUT * IN);
  for (auto& v : dw) v = (float)r.normal();
  std::vector<double> ry((size_t)N * OUT), rdx((size_t)N * IN), rdw = to_d(dw);
  for (int n = 0; n < N; n++)
    for (int o = 0; o < OUT; o++) {
      double d = 0;
      for (int i = 0; i < IN; i++) d += f(x[(size_t)n * IN + i]) * f(w[(size_t)o * IN + i]);
      ry[(size_t)n * OUT + o] = d;
      for (int i = 0; i < IN; i++) {
        rdx[(size_t)n * IN + i] += f(dy[(size_t)n * OUT + o]) * f(w[(size_t)o * IN + i]);
        rdw[(size_t)o * IN + i] += f(dy[(size_t)n * OUT + o]) * f(x[(size_t)n * IN + i]);
      }
    }
  auto y = nans<T>((size_t)N * OUT), dx = nans<T>((size_t)N * IN);
  Gemm g;
  linear_forward<T>(g, y.data(), x.data(), w.data(), N, IN, OUT, nullptr);
  linear_backward<T>(g, with_dx ? dx.data() : nullptr, dw.data(), dy.data(), x.data(), w.data(), N, IN, OUT, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string wh = fmt("linear %s N=%d IN=%d OUT=%d", tname<T>(), N, IN, OUT);
  report(wh + " y", rel_err(y, ry), tol_of<T>(2e-6));
  if (with_dx) report(wh + " dx", rel_err(dx, rdx), tol_of<T>(2e-6));
  report(wh + " dw", rel_err(dw, rdw), 2e-6);
}

}  // namespace

SIM_TEST(matmul) {
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) gemm_case<float, float>(ta, tb, 70, 33, 19, 1.f, 0.f, 1);
  gemm_case<float, float>(false, true, 1, 1, 1, 1.f, 1.f, 1);
  gemm_case<float, float>(true, false, 65, 130, 40, 1.f, 1.f, 1);
  gemm_case<float, float>(false, true, 20, 17, 33, 0.25f, 0.f, 3);
  gemm_case<float, float>(true, true, 9, 70, 16, -1.5f, 1.f, 2);
  gemm_case<bf16, bf16>(false, false, 64, 64, 64, 1.f, 0.f, 1);
  gemm_case<bf16, bf16>(true, false, 30, 5, 70, 0.5f, 1.f, 2);
  gemm_case<bf16, float>(true, false, 17, 66, 9, 1.f, 1.f, 1);
  linear_case<float>(5, 24, 70, true);
  linear_case<bf16>(67, 40, 9, false);
}
