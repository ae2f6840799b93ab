// adamw_cpu.cpp — AdamW over flat host buffers and the global-norm gradient clip (CPU).
#include "adamw_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace pyllama {

namespace {

// Reductions are summed block by block in a fixed order, so the result does not
// depend on the number of threads (exact resume needs bit-identical norms).
constexpr int64_t kBlock = 1 << 14;

}  // namespace

void adamw_step(float* params, float* m, float* v, const float* grads, int64_t n,
                const AdamWSegment* segs, size_t nseg, const AdamWHyper& h, int64_t step) {
  adamw_check_hyper(h, step);
  adamw_check_segments(segs, nseg, n);
  // Scalars in double, as torch computes them from Python floats.
  const double bc1 = 1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(step));
  const float step_size = static_cast<float>(static_cast<double>(h.lr) / bc1);
  const float inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
  const float one_minus_b1 = 1.f - h.beta1;
  const float one_minus_b2 = 1.f - h.beta2;
  const float b2 = h.beta2;
  const float eps = h.eps;
  const float decay_factor = static_cast<float>(1.0 - static_cast<double>(h.lr) * h.weight_decay);

#pragma omp parallel
  {
    for (size_t s = 0; s < nseg; s++) {
      const int64_t off = segs[s].offset;
      const int64_t cnt = segs[s].numel;
      const float dec = segs[s].decay ? decay_factor : 1.f;
      float* p = params + off;
      float* ms = m + off;
      float* vs = v + off;
      const float* g = grads + off;
#pragma omp for simd schedule(static) nowait
      for (int64_t i = 0; i < cnt; i++) {
        float gi = g[i];
        float pi = p[i] * dec;
        float mi = ms[i] + one_minus_b1 * (gi - ms[i]);  // lerp(m, g, 1-b1), as torch
        float vi = vs[i] * b2 + one_minus_b2 * gi * gi;
        float denom = std::sqrt(vi) * inv_bc2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        ms[i] = mi;
        vs[i] = vi;
      }
    }
  }
}

double sum_squares(const float* x, int64_t n) {
  PYLLAMA_CHECK(n >= 0, ValueError, "sum_squares: negative length " << n);
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(nblocks), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblocks; b++) {
    const int64_t lo = b * kBlock;
    const int64_t hi = std::min(n, lo + kBlock);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; i++) acc += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    partial[static_cast<size_t>(b)] = acc;
  }
  double total = 0.0;
  for (double p : partial) total += p;  // fixed order: deterministic
  return total;
}

double grad_global_norm(const float* grads, int64_t n) { return std::sqrt(sum_squares(grads, n)); }

double clip_grad_norm(float* grads, int64_t n, double max_norm) {
  PYLLAMA_CHECK(max_norm > 0.0, ValueError, "clip_grad_norm: max_norm must be > 0, got " << max_norm);
  const double norm = grad_global_norm(grads, n);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0 || !std::isfinite(norm)) {
    const float c = static_cast<float>(coef);
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) grads[i] *= c;
  }
  return norm;
}

}  // namespace pyllama
