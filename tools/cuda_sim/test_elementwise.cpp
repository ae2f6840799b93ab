// test_elementwise.cpp — cuda/elementwise.cu: residual_forward (also aliased), convert
// (float <-> bf16, float copy), gather_last_rows.
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void residual_case(long long n, bool alias) {
  Rng r((unsigned)n + alias);
  auto a = randn<T>(n, r), b = randn<T>(n, r);
  std::vector<double> ref(n);
  for (long long i = 0; i < n; i++) ref[i] = f(from<T>(f(a[i]) + f(b[i])));
  auto out = nans<T>(n);
  T* o = alias ? a.data() : out.data();
  residual_forward<T>(o, a.data(), b.data(), n, nullptr);
  CUDA_CHECK_LAUNCH();
  report(fmt("residual_forward %s n=%lld%s", tname<T>(), n, alias ? " out=a" : ""), rel_err(alias ? a : out, ref), 0);
}

template <typename TD, typename TS>
void convert_case(long long n) {
  Rng r((unsigned)n * 3);
  auto src = randn<TS>(n, r);
  std::vector<double> ref(n);
  for (long long i = 0; i < n; i++) ref[i] = f(from<TD>(f(src[i])));
  auto dst = nans<TD>(n);
  convert<TD, TS>(dst.data(), src.data(), n, nullptr);
  CUDA_CHECK_LAUNCH();
  report(fmt("convert %s <- %s n=%lld", tname<TD>(), tname<TS>(), n), rel_err(dst, ref), 0);
}

template <typename T>
void gather_case(int B, int T_, int C) {
  Rng r(B + T_ + C);
  auto x = randn<T>((size_t)B * T_ * C, r);
  std::vector<double> ref((size_t)B * C);
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++) ref[(size_t)b * C + c] = f(x[((size_t)b * T_ + T_ - 1) * C + c]);
  auto rows = nans<T>((size_t)B * C);
  gather_last_rows<T>(rows.data(), x.data(), B, T_, C, nullptr);
  CUDA_CHECK_LAUNCH();
  report(fmt("gather_last_rows %s B=%d T=%d C=%d", tname<T>(), B, T_, C), rel_err(rows, ref), 0);
}

}  // namespace

SIM_TEST(elementwise) {
  residual_case<float>(1000, false);
  residual_case<bf16>(257, true);
  residual_case<bf16>(264, true);   // 128-bit packs (n a multiple of 8), aliased
  residual_case<bf16>(1024, false);
  residual_case<float>(12, true);    // float packs
  convert_case<float, bf16>(300);
  convert_case<bf16, float>(1);
  convert_case<float, float>(513);
  gather_case<float>(3, 5, 70);
  gather_case<bf16>(2, 1, 300);
}
