// test_norm.cpp — cuda/norm.cu: rmsnorm_forward (out, rstd) and rmsnorm_backward (dinp
// added into; dw from per-block partial sums, added in a fixed order), double references;
// the backward again with the blocks run in the other order gives the same bits.
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void case_(int N, int C) {
  Rng r(N * 5 + C);
  const float eps = 1e-5f;
  auto x = randn<T>((size_t)N * C, r), w = randn<T>(C, r), dy = randn<T>((size_t)N * C, r);
  auto dinp = randn<T>((size_t)N * C, r);  // the residual stream's gradient: added into
  std::vector<float> dw(C);
  for (auto& v : dw) v = (float)r.normal();
  std::vector<double> ro((size_t)N * C), rr(N), rdx = to_d(dinp), rdw = to_d(dw);
  for (int n = 0; n < N; n++) {
    double ss = 0;
    for (int i = 0; i < C; i++) ss += f(x[(size_t)n * C + i]) * f(x[(size_t)n * C + i]);
    const double rs = 1.0 / std::sqrt(ss / C + eps);
    rr[n] = rs;
    double dot = 0;
    for (int i = 0; i < C; i++) {
      const size_t k = (size_t)n * C + i;
      ro[k] = f(x[k]) * rs * f(w[i]);
      dot += f(w[i]) * f(dy[k]) * f(x[k]);
    }
    for (int i = 0; i < C; i++) {
      const size_t k = (size_t)n * C + i;
      rdx[k] += rs * f(w[i]) * f(dy[k]) - rs * rs * rs * dot / C * f(x[k]);
      rdw[i] += f(dy[k]) * f(x[k]) * rs;
    }
  }
  auto out = nans<T>((size_t)N * C);
  auto rstd = nans<float>(N);
  rmsnorm_forward<T>(out.data(), rstd.data(), x.data(), w.data(), N, C, eps, nullptr);
  CUDA_CHECK_LAUNCH();
  auto part = nans<float>(rmsnorm_backward_partial_floats(C));  // scratch: every entry read is written first
  const auto dinp0 = dinp;
  const auto dw0 = dw;
  rmsnorm_backward<T>(dinp.data(), dw.data(), part.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C, nullptr);
  CUDA_CHECK_LAUNCH();
  {  // one launch in between: the emulator runs blocks in reverse order on odd launches
    auto o2 = nans<T>((size_t)N * C);
    auto r2 = nans<float>(N);
    rmsnorm_forward<T>(o2.data(), r2.data(), x.data(), w.data(), N, C, eps, nullptr);
    auto dinp2 = dinp0;
    auto dw2 = dw0;
    rmsnorm_backward<T>(dinp2.data(), dw2.data(), part.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C,
                        nullptr);
    CUDA_CHECK_LAUNCH();
    bool same = true;
    for (size_t i = 0; i < dw.size(); i++) same = same && bits_of(dw2[i]) == bits_of(dw[i]);
    for (size_t i = 0; i < dinp.size(); i++) same = same && bits_of(dinp2[i]) == bits_of(dinp[i]);
    report_exact(fmt("rmsnorm %s N=%d C=%d backward: same bits with the blocks in the other order", tname<T>(), N, C),
                 same);
  }
  const std::string wh = fmt("rmsnorm %s N=%d C=%d", tname<T>(), N, C);
  report(wh + " out", rel_err(out, ro), tol_of<T>(2e-6));
  report(wh + " rstd", rel_err(rstd, rr), 2e-6);
  report(wh + " dinp", rel_err(dinp, rdx), tol_of<T>(1e-5));
  report(wh + " dw", rel_err(dw, rdw), 1e-5);
}

}  // namespace

SIM_TEST(norm) {
  case_<float>(1, 1);
  case_<float>(13, 70);
  case_<float>(300, 33);  // two row chunks of the dw kernel
  case_<bf16>(9, 256);
  case_<bf16>(520, 5);
  case_<float>(7, 96);    // 128-bit packs: 3 per lane-row pass, float
  case_<bf16>(3, 264);    // bf16 packs, the last pass partly filled
  // 128-bit packs and C <= 1024: dinp and dw in one kernel (dw from registers, one atomic
  // per column a block); 4500 rows > 4 blocks x 132 SMs x 8 warps, so warps take 2 rows
  case_<bf16>(4500, 24);
  case_<float>(6, 1024);  // every lane's 8 packs
  case_<bf16>(5, 1040);   // above 1024: the two kernels
}
