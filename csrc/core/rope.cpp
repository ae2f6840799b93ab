#include "rope.h"

#include <cmath>
#include <cstddef>

namespace pyllama {

void rope_table(float* cos_t, float* sin_t, int max_T, int HS, float theta) {
  int half = HS / 2;
  for (int i = 0; i < half; i++) {
    // as transformers: inv_freq = 1 / theta^(2i/HS) in float32, angle = pos * inv_freq in float32
    float inv_freq = 1.0f / std::pow(theta, (float)(2 * i) / (float)HS);
    for (int p = 0; p < max_T; p++) {
      float ang = (float)p * inv_freq;
      cos_t[(size_t)p * half + i] = std::cos(ang);
      sin_t[(size_t)p * half + i] = std::sin(ang);
    }
  }
}

}  // namespace pyllama
