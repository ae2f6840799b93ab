// test_crossentropy.cpp — cuda/crossentropy.cu: crossentropy_forward (lse, per-row loss
// in double, ignored rows (-100), the fixed-order total) and crossentropy_backward
// (separate output and in place over the logits).
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void case_(int N, int V, bool in_place, bool masked = false) {
  Rng r(N * 11 + V);
  auto logits = randn<T>((size_t)N * V, r, 3.0);
  std::vector<int32_t> tg(N);
  for (int n = 0; n < N; n++) tg[n] = n % 3 == 2 ? -100 : r.integer(0, V - 1);
  if (N > 1) tg[1] = V - 1;
  if (masked)  // -inf logits (a masked vocabulary): some at the start of threads' strides, never the target
    for (int n = 0; n < N; n++)
      for (int i = 0; i < V; i++)
        if ((i < 40 || i % 7 == 3) && i != tg[n] && i != V - 2) logits[(size_t)n * V + i] = from<T>(-INFINITY);
  const float dloss = 0.37f;
  std::vector<double> rl(N), rrow(N), rd((size_t)N * V, 0.0);
  double rtot = 0;
  for (int n = 0; n < N; n++) {
    double mx = -1e300, s = 0;
    for (int i = 0; i < V; i++) mx = std::max(mx, f(logits[(size_t)n * V + i]));
    for (int i = 0; i < V; i++) s += std::exp(f(logits[(size_t)n * V + i]) - mx);
    rl[n] = mx + std::log(s);
    rrow[n] = tg[n] == -100 ? 0.0 : rl[n] - f(logits[(size_t)n * V + tg[n]]);
    rtot += rrow[n];
    if (tg[n] != -100)
      for (int i = 0; i < V; i++)
        rd[(size_t)n * V + i] = dloss * (std::exp(f(logits[(size_t)n * V + i]) - rl[n]) - (i == tg[n]));
  }
  auto lse = nans<float>(N);
  auto row = nans<double>(N);
  std::vector<double> total(1, NAN);
  crossentropy_forward<T>(lse.data(), row.data(), total.data(), logits.data(), tg.data(), N, V, nullptr);
  CUDA_CHECK_LAUNCH();
  auto d = nans<T>((size_t)N * V);
  T* dl = in_place ? logits.data() : d.data();
  crossentropy_backward<T>(dl, logits.data(), lse.data(), tg.data(), dloss, N, V, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string w = fmt("crossentropy %s N=%d V=%d%s%s", tname<T>(), N, V, in_place ? " in place" : "",
                            masked ? " -inf logits" : "");
  report(w + " lse", rel_err(lse, rl), 2e-6);
  report(w + " row_loss", rel_err(row, rrow), 1e-5);
  report(w + " total", rel_err(total, {rtot}), 1e-5);
  report(w + " dlogits", rel_err(in_place ? logits : d, rd), tol_of<T>(2e-6));
}

}  // namespace

SIM_TEST(crossentropy) {
  case_<float>(5, 37, false);
  case_<float>(4, 1000, true);
  case_<bf16>(6, 300, false);
  case_<bf16>(3, 2, true);
  case_<float>(1100, 3, false);  // more rows than the 1024 threads of the sum
  case_<float>(4, 300, false, true);
  case_<bf16>(3, 1000, true, true);
  case_<bf16>(5, 2048, false);       // 128-bit packs, one pass per thread
  case_<bf16>(2, 4104, true, true);  // packs, in place, masked, a partial last pass
}
