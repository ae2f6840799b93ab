// adamw.h — the optimizer's description, shared by every backend: the segments of the
// flat layout, the hyper-parameters and their checks. The CPU kernels are in
// cpu/adamw_cpu.h; the CUDA ones in cuda/adamw.cu; both run behind Model::adamw_step.
//
// Parameters, gradients and the two moment buffers share one flat layout
// (float32, N elements). The layout is cut into segments, one per parameter
// tensor; a segment's `decay` flag says whether decoupled weight decay applies
// (2-D weight matrices: yes; RMSNorm weights: no).
//
//   std::vector<AdamWSegment> segs = {{0, 4096, true}, {4096, 64, false}};
//   AdamWHyper h;  h.lr = 1e-3f;  h.weight_decay = 0.1f;
//   float norm = clip_grad_norm(grads, N, 1.0f);   // norm before clipping
//   adamw_step(params, m, v, grads, N, segs.data(), segs.size(), h, /*step=*/1);
//
// The update follows torch.optim.AdamW (decoupled decay first, then the
// bias-corrected Adam step):
//   p *= 1 - lr*wd                       (decay segments only)
//   m  = b1*m + (1-b1)*g
//   v  = b2*v + (1-b2)*g*g
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
#pragma once
#include <cstddef>
#include <cstdint>

namespace pyllama {

struct AdamWSegment {
  int64_t offset = 0;  // first element in the flat buffers
  int64_t numel = 0;   // number of elements
  bool decay = true;   // apply decoupled weight decay to this segment
};

struct AdamWHyper {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
};

// Throws ValueError on bad hyper-parameters (lr < 0, betas outside [0, 1),
// eps < 0, weight_decay < 0) or a step count < 1.
void adamw_check_hyper(const AdamWHyper& h, int64_t step);

// Throws ValueError unless the segments tile [0, n) in order, without gaps or overlaps.
void adamw_check_segments(const AdamWSegment* segs, size_t nseg, int64_t n);

}  // namespace pyllama
