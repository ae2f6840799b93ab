// test_rope.cpp — cuda/rope.cu: rope_apply in place on the first heads of strided rows
// (q and k of qkv rows), forward and inverse, against double references.
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void case_(int N, int NH, int NKV, int HS, int max_T, bool inverse) {
  Rng r(N + NH * 3 + HS * 7 + inverse);
  const int ld = (NH + 2 * NKV) * HS, half = HS / 2, nheads = NH + NKV;
  auto x = randn<T>((size_t)N * ld, r);
  std::vector<int32_t> pos(N);
  for (auto& p : pos) p = r.integer(0, max_T - 1);
  std::vector<float> ct((size_t)max_T * half), st(ct.size());
  for (int p = 0; p < max_T; p++)
    for (int i = 0; i < half; i++) {
      const double a = p * std::pow(10000.0, -2.0 * i / HS);
      ct[(size_t)p * half + i] = (float)std::cos(a);
      st[(size_t)p * half + i] = (float)std::sin(a);
    }
  auto ref = to_d(x);
  const double sg = inverse ? -1 : 1;
  for (int n = 0; n < N; n++)
    for (int h = 0; h < nheads; h++)
      for (int i = 0; i < half; i++) {
        const size_t k = (size_t)n * ld + (size_t)h * HS + i;
        const double c = ct[(size_t)pos[n] * half + i], s = sg * st[(size_t)pos[n] * half + i];
        const double a = f(x[k]), b = f(x[k + half]);
        ref[k] = a * c - b * s;
        ref[k + half] = b * c + a * s;
      }
  rope_apply<T>(x.data(), ld, pos.data(), ct.data(), st.data(), N, nheads, HS, inverse, nullptr);
  CUDA_CHECK_LAUNCH();
  report(fmt("rope %s N=%d heads=%d of %d HS=%d%s", tname<T>(), N, nheads, NH + 2 * NKV, HS, inverse ? " inverse" : ""),
         rel_err(x, ref), tol_of<T>(1e-6));
}

}  // namespace

SIM_TEST(rope) {
  case_<float>(5, 4, 2, 12, 30, false);
  case_<float>(3, 2, 1, 128, 9, true);
  case_<bf16>(7, 3, 1, 64, 100, false);
  case_<bf16>(1, 1, 1, 2, 4, true);
  case_<float>(300, 2, 2, 6, 500, false);
}
