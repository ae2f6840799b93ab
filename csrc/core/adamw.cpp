// adamw.cpp — the optimizer's argument checks, shared by every backend.
#include "adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace pyllama {

void adamw_check_hyper(const AdamWHyper& h, int64_t step) {
  PYLLAMA_CHECK(std::isfinite(h.lr) && h.lr >= 0.f, ValueError, "AdamW: lr must be a finite number >= 0, got " << h.lr);
  PYLLAMA_CHECK(h.beta1 >= 0.f && h.beta1 < 1.f, ValueError, "AdamW: beta1 must be in [0, 1), got " << h.beta1);
  PYLLAMA_CHECK(h.beta2 >= 0.f && h.beta2 < 1.f, ValueError, "AdamW: beta2 must be in [0, 1), got " << h.beta2);
  PYLLAMA_CHECK(std::isfinite(h.eps) && h.eps >= 0.f, ValueError, "AdamW: eps must be >= 0, got " << h.eps);
  PYLLAMA_CHECK(std::isfinite(h.weight_decay) && h.weight_decay >= 0.f, ValueError,
                "AdamW: weight_decay must be >= 0, got " << h.weight_decay);
  PYLLAMA_CHECK(step >= 1, ValueError, "AdamW: step count must be >= 1 (1-based, for bias correction), got " << step);
}

void adamw_check_segments(const AdamWSegment* segs, size_t nseg, int64_t n) {
  PYLLAMA_CHECK(n >= 0, ValueError, "AdamW: negative buffer length " << n);
  int64_t expect = 0;
  for (size_t s = 0; s < nseg; s++) {
    PYLLAMA_CHECK(segs[s].offset == expect, ValueError,
                  "AdamW: segment " << s << " starts at " << segs[s].offset << ", expected " << expect
                                    << " (segments must tile the flat buffer in order)");
    PYLLAMA_CHECK(segs[s].numel >= 0, ValueError, "AdamW: segment " << s << " has negative size " << segs[s].numel);
    expect += segs[s].numel;
  }
  PYLLAMA_CHECK(expect == n, ValueError,
                "AdamW: segments cover " << expect << " elements but the buffers hold " << n);
}

}  // namespace pyllama
