// test_flash.cpp — cuda/flash_attention.cu: flash_attention_forward / _backward (SIMT for
// float and bf16, tensor cores for bf16 with HS <= 128) against a double-precision causal
// GQA attention (out, lse, dqkv), through the public launchers (DMAX from HS).
#include "check.h"

using namespace chk;

namespace {

void reference(std::vector<double>& out, std::vector<double>& lse, std::vector<double>& dqkv,
               const std::vector<double>& qkv, const std::vector<double>& dy, int B, int T, int NH, int NKV, int HS) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const double scale = 1.0 / std::sqrt((double)HS);
  out.assign((size_t)B * T * C, 0);
  lse.assign((size_t)B * NH * T, 0);
  dqkv.assign((size_t)B * T * QKVD, 0);
  auto at = [&](int b, int t, int off) { return (size_t)(b * T + t) * QKVD + off; };
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      const int kvh = h / group;
      for (int t = 0; t < T; t++) {
        std::vector<double> s(t + 1), dp(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; j++) {
          double d = 0;
          for (int i = 0; i < HS; i++) d += qkv[at(b, t, h * HS + i)] * qkv[at(b, j, C + kvh * HS + i)];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j <= t; j++) sum += std::exp(s[j] - mx);
        lse[(size_t)(b * NH + h) * T + t] = mx + std::log(sum);
        for (int j = 0; j <= t; j++) s[j] = std::exp(s[j] - mx) / sum;  // p
        for (int i = 0; i < HS; i++) {
          double o = 0;
          for (int j = 0; j <= t; j++) o += s[j] * qkv[at(b, j, C + KVD + kvh * HS + i)];
          out[(size_t)(b * T + t) * C + h * HS + i] = o;
        }
        double dot = 0;
        for (int j = 0; j <= t; j++) {
          double d = 0;
          for (int i = 0; i < HS; i++) d += dy[(size_t)(b * T + t) * C + h * HS + i] * qkv[at(b, j, C + KVD + kvh * HS + i)];
          dp[j] = d;
          dot += s[j] * d;
        }
        for (int j = 0; j <= t; j++) {
          const double ds = s[j] * (dp[j] - dot) * scale;
          for (int i = 0; i < HS; i++) {
            dqkv[at(b, t, h * HS + i)] += ds * qkv[at(b, j, C + kvh * HS + i)];
            dqkv[at(b, j, C + kvh * HS + i)] += ds * qkv[at(b, t, h * HS + i)];
            dqkv[at(b, j, C + KVD + kvh * HS + i)] += s[j] * dy[(size_t)(b * T + t) * C + h * HS + i];
          }
        }
      }
    }
}

template <typename T>
void run_case(int B, int T_, int NH, int NKV, int HS, double tol, bool tc = false) {
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T_, NL = (size_t)B * NH * T_;
  Rng r(B * 1000 + T_ * 10 + HS);
  auto qkv = randn<T>(N * QKVD, r), dy = randn<T>(N * C, r);
  std::vector<double> rout, rlse, rdq;
  reference(rout, rlse, rdq, to_d(qkv), to_d(dy), B, T_, NH, NKV, HS);
  auto out = nans<T>(N * C), dq = nans<T>(N * QKVD);
  auto lse = nans<float>(NL), dsum = nans<float>(NL);
  using namespace pyllama::gpu;
  const long long before = sim::launches();
  flash_attention_forward<T>(out.data(), lse.data(), qkv.data(), B, T_, NH, NKV, HS, nullptr, tc);
  CUDA_CHECK_LAUNCH();
  flash_attention_backward<T>(dq.data(), dsum.data(), dy.data(), out.data(), qkv.data(), lse.data(), B, T_, NH, NKV,
                              HS, nullptr, tc);
  CUDA_CHECK_LAUNCH();
  const std::string what = fmt("flash %s%s B=%d T=%d NH=%d NKV=%d HS=%d", tname<T>(), tc ? "-tc" : "", B, T_, NH,
                               NKV, HS);
  report(what + " out", rel_err(out, rout), tol);
  report(what + " lse", rel_err(lse, rlse), 1e-5);
  report(what + " dqkv", rel_err(dq, rdq), tol * 4);
  report_exact(what + " launches (4)", sim::launches() - before == 4);
}

}  // namespace

SIM_TEST(flash_attention) {
  run_case<float>(2, 37, 4, 2, 12, 2e-6);
  run_case<float>(1, 70, 2, 1, 64, 2e-6);
  run_case<float>(3, 1, 4, 1, 64, 2e-6);
  run_case<float>(1, 65, 2, 2, 32, 2e-6);
  run_case<float>(2, 9, 2, 2, 128, 2e-6);
  run_case<float>(1, 100, 3, 3, 80, 2e-6);
  run_case<float>(1, 77, 4, 2, 256, 2e-6);
  run_case<float>(1, 33, 2, 1, 130, 2e-6);
  run_case<float>(2, 3, 3, 1, 5, 2e-6);
  run_case<float>(1, 64, 2, 1, 64, 2e-6);  // T a multiple of every block
  run_case<bf16>(1, 128, 2, 2, 64, 1e-2, true);
  run_case<bf16>(2, 70, 4, 2, 64, 1e-2);
  run_case<bf16>(1, 45, 2, 2, 128, 1e-2);
  run_case<bf16>(2, 70, 4, 2, 64, 1e-2, true);
  run_case<bf16>(1, 130, 2, 1, 12, 1e-2, true);
  run_case<bf16>(3, 1, 4, 1, 32, 1e-2, true);
  run_case<bf16>(1, 45, 2, 2, 128, 1e-2, true);
  run_case<bf16>(1, 100, 3, 3, 80, 1e-2, true);
  run_case<bf16>(1, 200, 3, 1, 64, 1e-2, true);
  run_case<bf16>(1, 7, 2, 1, 100, 1e-2, true);
}
