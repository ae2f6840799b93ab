// adamw_cpu.h — AdamW over flat host buffers and the global-L2-norm gradient clip
// (the CPU backend's kernels; the update rule and the segments are in core/adamw.h).
//
//   float norm = pyllama::clip_grad_norm(grads, N, 1.0f);   // norm before clipping
//   pyllama::adamw_step(params, m, v, grads, N, segs.data(), segs.size(), h, /*step=*/1);
#pragma once
#include <cstddef>
#include <cstdint>

#include "adamw.h"

namespace pyllama {

// One fused AdamW update of every element. `step` is the 1-based step count t
// used for bias correction. params, m, v are updated in place; grads is read.
//   params, m, v, grads: (n,)
void adamw_step(float* params, float* m, float* v, const float* grads, int64_t n,
                const AdamWSegment* segs, size_t nseg, const AdamWHyper& h, int64_t step);

// Sum of squares of x, accumulated in double.
double sum_squares(const float* x, int64_t n);

// Global L2 norm of the gradient buffer (accumulated in double).
double grad_global_norm(const float* grads, int64_t n);

// As torch.nn.utils.clip_grad_norm_: computes the global L2 norm, then scales
// every gradient by min(1, max_norm / (norm + 1e-6)). Returns the norm before
// clipping. max_norm must be > 0 (ValueError otherwise). A non-finite norm is
// returned as is and the gradients are scaled by a non-finite factor, as torch does.
double clip_grad_norm(float* grads, int64_t n, double max_norm);

}  // namespace pyllama
