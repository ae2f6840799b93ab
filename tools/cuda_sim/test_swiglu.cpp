// test_swiglu.cpp — cuda/swiglu.cu: swiglu_forward / swiglu_backward (dgu assigned).
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void case_(int N, int I) {
  Rng r(N * 3 + I);
  auto gu = randn<T>((size_t)N * 2 * I, r, 2.0), dh = randn<T>((size_t)N * I, r);
  std::vector<double> rh((size_t)N * I), rd((size_t)N * 2 * I);
  for (int n = 0; n < N; n++)
    for (int i = 0; i < I; i++) {
      const double g = f(gu[(size_t)n * 2 * I + i]), u = f(gu[(size_t)n * 2 * I + I + i]), d = f(dh[(size_t)n * I + i]);
      const double sg = 1.0 / (1.0 + std::exp(-g));
      rh[(size_t)n * I + i] = g * sg * u;
      rd[(size_t)n * 2 * I + I + i] = d * g * sg;
      rd[(size_t)n * 2 * I + i] = d * u * sg * (1 + g * (1 - sg));
    }
  auto h = nans<T>((size_t)N * I), dgu = nans<T>((size_t)N * 2 * I);
  swiglu_forward<T>(h.data(), gu.data(), N, I, nullptr);
  CUDA_CHECK_LAUNCH();
  swiglu_backward<T>(dgu.data(), dh.data(), gu.data(), N, I, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string w = fmt("swiglu %s N=%d I=%d", tname<T>(), N, I);
  report(w + " h", rel_err(h, rh), tol_of<T>(2e-6));
  report(w + " dgu", rel_err(dgu, rd), tol_of<T>(2e-6));
}

}  // namespace

SIM_TEST(swiglu) {
  case_<float>(3, 300);
  case_<float>(1, 1);
  case_<bf16>(5, 256);
  case_<bf16>(70, 7);
  case_<bf16>(4, 2056);  // packs over more than one block of columns
  case_<float>(2, 12);
}
