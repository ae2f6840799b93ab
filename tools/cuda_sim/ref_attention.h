// ref_attention.h — double-precision causal grouped-query attention for the training
// layout (qkv (B, T, QKVD) rows q | k | v): out (B, T, NH*HS), lse (B, NH, T), the
// probabilities p (B, NH, T, T) (zero above the diagonal) and, given dy, dqkv.
#pragma once
#include <cmath>
#include <vector>

namespace chk {

inline void reference(std::vector<double>& out, std::vector<double>& lse, std::vector<double>& dqkv,
               const std::vector<double>& qkv, const std::vector<double>& dy, int B, int T, int NH, int NKV, int HS,
               std::vector<double>* probs = nullptr) {
  if (probs) probs->assign((size_t)B * NH * T * T, 0);
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
        if (probs)
          for (int j = 0; j <= t; j++) (*probs)[((size_t)(b * NH + h) * T + t) * T + j] = s[j];
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

}  // namespace chk
