// AdamW and the gradient clip against a plain double-precision reference;
// bad input throws (never aborts).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "adamw_cpu.h"
#include "common.h"
#include "test_util.h"

using namespace pyllama;

// The textbook AdamW update, element by element, in double.
static void adamw_reference(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                            const std::vector<float>& g, const std::vector<AdamWSegment>& segs,
                            const AdamWHyper& h, int64_t t) {
  for (const AdamWSegment& s : segs) {
    for (int64_t i = s.offset; i < s.offset + s.numel; i++) {
      if (s.decay) p[i] *= 1.0 - (double)h.lr * h.weight_decay;
      m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
      v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * (double)g[i] * g[i];
      double mhat = m[i] / (1.0 - std::pow((double)h.beta1, (double)t));
      double vhat = v[i] / (1.0 - std::pow((double)h.beta2, (double)t));
      p[i] -= h.lr * mhat / (std::sqrt(vhat) + h.eps);
    }
  }
}

int main() {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 1.f);

  // three segments: a matrix, a norm weight, another matrix
  std::vector<AdamWSegment> segs = {{0, 600, true}, {600, 20, false}, {620, 380, true}};
  const int64_t n = 1000;
  std::vector<float> p(n), g(n), m(n, 0.f), v(n, 0.f);
  for (auto& x : p) x = normal(rng);
  std::vector<double> pr(p.begin(), p.end()), mr(n, 0.0), vr(n, 0.0);
  AdamWHyper h;
  h.lr = 1e-2f;
  h.weight_decay = 0.1f;
  for (int64_t t = 1; t <= 5; t++) {
    for (auto& x : g) x = 0.1f * normal(rng);
    adamw_step(p.data(), m.data(), v.data(), g.data(), n, segs.data(), segs.size(), h, t);
    adamw_reference(pr, mr, vr, g, segs, h, t);
  }
  std::vector<float> prf(pr.begin(), pr.end());
  allclose(p.data(), prf.data(), n, 1e-6f, 1e-5f, "adamw params after 5 steps");

  // no decay on the norm segment: with zero gradients only decay moves weights
  {
    std::vector<float> q(n, 1.f), z(n, 0.f), qm(n, 0.f), qv(n, 0.f);
    AdamWHyper hd;
    hd.lr = 0.5f;
    hd.weight_decay = 0.1f;
    adamw_step(q.data(), qm.data(), qv.data(), z.data(), n, segs.data(), segs.size(), hd, 1);
    CHECK(std::fabs(q[0] - 0.95f) < 1e-7f);
    CHECK(q[600] == 1.f && q[619] == 1.f);
    CHECK(std::fabs(q[999] - 0.95f) < 1e-7f);
  }

  // global norm: matches a double loop; deterministic; clip returns the norm before clipping
  {
    std::vector<float> big(100003);
    for (auto& x : big) x = normal(rng);
    double ref = 0;
    for (float x : big) ref += (double)x * x;
    ref = std::sqrt(ref);
    double nrm = grad_global_norm(big.data(), (int64_t)big.size());
    CHECK(std::fabs(nrm - ref) <= 1e-9 * ref);
    CHECK(grad_global_norm(big.data(), (int64_t)big.size()) == nrm);
    double before = clip_grad_norm(big.data(), (int64_t)big.size(), 1.0);
    CHECK(before == nrm);
    double after = grad_global_norm(big.data(), (int64_t)big.size());
    CHECK(std::fabs(after - 1.0) < 1e-5);
    // below the limit: untouched
    std::vector<float> small = {0.3f, 0.4f};
    double s = clip_grad_norm(small.data(), 2, 1.0);
    CHECK(std::fabs(s - 0.5) < 1e-7);
    CHECK(small[0] == 0.3f && small[1] == 0.4f);
  }

  // bad input throws ValueError
  {
    AdamWHyper bad;
    bad.lr = -1.f;
    CHECK_THROWS(adamw_step(p.data(), m.data(), v.data(), g.data(), n, segs.data(), segs.size(), bad, 1), ValueError);
    AdamWHyper badb;
    badb.beta1 = 1.f;
    CHECK_THROWS(adamw_check_hyper(badb, 1), ValueError);
    CHECK_THROWS(adamw_check_hyper(h, 0), ValueError);
    std::vector<AdamWSegment> gap = {{0, 500, true}, {600, 400, true}};
    CHECK_THROWS(adamw_step(p.data(), m.data(), v.data(), g.data(), n, gap.data(), gap.size(), h, 1), ValueError);
    std::vector<AdamWSegment> short_ = {{0, 999, true}};
    CHECK_THROWS(adamw_check_segments(short_.data(), short_.size(), n), ValueError);
    CHECK_THROWS(clip_grad_norm(g.data(), n, 0.0), ValueError);
  }
  return test_summary("test_adamw");
}
