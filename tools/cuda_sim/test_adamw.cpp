// test_adamw.cpp — cuda/adamw.cu: adamw_update over runs with and without decay (an empty
// run included; with and without the bf16/float compute copy), global_norm (fixed-order
// double partials) and clip_by_norm (clipped, not clipped, non-finite norm).
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void adamw_case(long long n, bool with_wc) {
  Rng r((unsigned)n + with_wc);
  std::vector<float> p(n), m(n), v(n), g(n);
  for (long long i = 0; i < n; i++) {
    p[i] = (float)r.normal();
    m[i] = (float)r.normal(0.1);
    v[i] = (float)std::fabs(r.normal(0.01));
    g[i] = (float)r.normal();
  }
  const std::vector<int64_t> starts = {0, 3, 3, n / 2, n - 1, n};  // run 1 is empty
  const std::vector<int32_t> decay = {1, 0, 1, 0, 1};
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  const int step = 3;
  AdamWScalars s;
  s.step_size = (float)(lr / (1 - std::pow(b1, step)));
  s.inv_bc2_sqrt = (float)(1 / std::sqrt(1 - std::pow(b2, step)));
  s.one_minus_b1 = (float)(1 - b1);
  s.one_minus_b2 = (float)(1 - b2);
  s.beta2 = (float)b2;
  s.eps = (float)eps;
  s.decay_factor = (float)(1 - lr * wd);
  std::vector<double> rp(n), rm(n), rv(n);
  for (size_t k = 0; k + 1 < starts.size(); k++)
    for (long long i = starts[k]; i < starts[k + 1]; i++) {
      const double pi = p[i] * (decay[k] ? 1 - lr * wd : 1.0);
      rm[i] = b1 * m[i] + (1 - b1) * g[i];
      rv[i] = b2 * v[i] + (1 - b2) * (double)g[i] * g[i];
      const double denom = std::sqrt(rv[i]) / std::sqrt(1 - std::pow(b2, step)) + eps;
      rp[i] = pi - lr / (1 - std::pow(b1, step)) * rm[i] / denom;
    }
  auto wc = nans<T>(n);
  adamw_update<T>(p.data(), m.data(), v.data(), g.data(), with_wc ? wc.data() : nullptr, n, starts.data(),
                  decay.data(), (int)decay.size(), s, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string w = fmt("adamw %s n=%lld%s", tname<T>(), n, with_wc ? " +copy" : "");
  report(w + " params", rel_err(p, rp), 1e-6);
  report(w + " m", rel_err(m, rm), 1e-6);
  report(w + " v", rel_err(v, rv), 1e-6);
  if (with_wc) {
    std::vector<double> rw(n);
    for (long long i = 0; i < n; i++) rw[i] = f(from<T>(p[i]));
    report(w + " copy", rel_err(wc, rw), 0);
  } else {
    bool untouched = true;
    for (auto& x : wc) untouched &= std::isnan(f(x));
    report_exact(w + " no copy written", untouched);
  }
}

void norm_case(long long n, double max_norm, bool poison) {
  Rng r((unsigned)n * 7);
  std::vector<float> g(n);
  for (auto& x : g) x = (float)r.normal();
  if (poison) g[n / 2] = INFINITY;
  double ss = 0;
  for (auto x : g) ss += (double)x * x;
  const double rn = std::sqrt(ss);
  std::vector<double> partials(kNormBlocks, NAN), norm(1, NAN);
  global_norm(norm.data(), partials.data(), g.data(), n, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string w = fmt("global_norm n=%lld%s", n, poison ? " with inf" : "");
  if (poison) report_exact(w, std::isinf(norm[0]));
  else report(w, rel_err(norm, {rn}), 1e-12);
  std::vector<double> rg(n);
  const double coef = max_norm / (rn + 1e-6);
  for (long long i = 0; i < n; i++) rg[i] = (coef < 1 || !std::isfinite(rn)) ? (double)(float)coef * g[i] : g[i];
  clip_by_norm(g.data(), norm.data(), max_norm, n, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string wc = fmt("clip_by_norm n=%lld max_norm=%g%s", n, max_norm, poison ? " with inf" : "");
  if (poison) {
    bool ok = true;  // factor 0: finite entries become 0, the inf becomes NaN (as torch)
    for (long long i = 0; i < n; i++) ok &= i == n / 2 ? std::isnan(g[i]) : g[i] == 0.f;
    report_exact(wc, ok);
  } else {
    report(wc, rel_err(g, rg), 1e-7);
  }
}

}  // namespace

SIM_TEST(adamw) {
  adamw_case<float>(1000, true);
  adamw_case<bf16>(777, true);
  adamw_case<bf16>(10, false);
  norm_case(5000, 1.0, false);     // clipped
  norm_case(300000, 1e6, false);   // grid-stride over the 1024 blocks, not clipped
  norm_case(100, 1.0, true);
}
