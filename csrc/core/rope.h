// rope.h — the rotary-embedding tables every backend uses (device-neutral: computed on the
// host, uploaded by the CUDA backend).
//
//   std::vector<float> c(max_T * HS / 2), s(max_T * HS / 2);
//   pyllama::rope_table(c.data(), s.data(), max_T, HS, cfg.rope_theta);
#pragma once

namespace pyllama {

// cos/sin (max_T, HS/2) as Hugging Face computes them in float32:
// inv_freq = 1 / theta^(2i/HS), angle = pos * inv_freq.
void rope_table(float* cos_t, float* sin_t, int max_T, int HS, float theta);

}  // namespace pyllama
