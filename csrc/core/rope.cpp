#include "rope.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace pyllama {

namespace {

// 1 / theta^(2i/dim) for i < dim/2, as torch computes `1.0 / (base ** (arange(0, dim, 2).float() / dim))`
// (float32 exponent and power).
std::vector<float> default_inv_freq(float theta, int dim) {
  std::vector<float> f(dim / 2);
  for (int i = 0; i < dim / 2; i++) f[i] = 1.0f / std::pow(theta, (float)(2 * i) / (float)dim);
  return f;
}

double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

}  // namespace

void rope_table(float* cos_t, float* sin_t, int max_T, int HS, float theta) {
  std::vector<float> inv = default_inv_freq(theta, HS);
  const int half = HS / 2;
  for (int i = 0; i < half; i++)
    for (int p = 0; p < max_T; p++) {
      float ang = (float)p * inv[i];  // as transformers: angle = pos * inv_freq in float32
      cos_t[(size_t)p * half + i] = std::cos(ang);
      sin_t[(size_t)p * half + i] = std::sin(ang);
    }
}

std::vector<float> rope_inv_freq(const LlamaConfig& cfg, int seq_len, float* attention_factor) {
  const RopeScaling& r = cfg.rope_scaling;
  const int dim = cfg.head_dim();
  const float theta = cfg.rope_theta;
  *attention_factor = 1.0f;
  const int orig = r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings
                                                          : cfg.max_position_embeddings;
  if (r.type == "linear") {
    std::vector<float> f = default_inv_freq(theta, dim);
    for (float& x : f) x /= (float)r.factor;
    return f;
  }
  if (r.type == "dynamic") {
    const int P = cfg.max_position_embeddings;
    if (seq_len <= P) return default_inv_freq(theta, dim);  // (factor*P/P - (factor-1)) = 1: the default base
    // float32 as transformers' tensor arithmetic on seq_len
    const float fac = (float)r.factor;
    float ratio = fac * (float)seq_len / (float)P - (fac - 1.0f);
    float base = theta * std::pow(ratio, (float)dim / (float)(dim - 2));
    return default_inv_freq(base, dim);
  }
  if (r.type == "llama3") {
    std::vector<float> f = default_inv_freq(theta, dim);
    const float factor = (float)r.factor, lo = (float)r.low_freq_factor, hi = (float)r.high_freq_factor;
    const double low_wavelen = (double)orig / r.low_freq_factor, high_wavelen = (double)orig / r.high_freq_factor;
    const float two_pi = (float)(2 * M_PI);
    for (float& x : f) {
      float wavelen = two_pi / x;
      float llama = wavelen > (float)low_wavelen ? x / factor : x;
      bool medium = !(wavelen < (float)high_wavelen) && !(wavelen > (float)low_wavelen);
      if (medium) {
        float smooth = ((float)orig / wavelen - lo) / (hi - lo);
        llama = (1.0f - smooth) * llama / factor + smooth * llama;
      }
      x = llama;
    }
    return f;
  }
  if (r.type == "yarn") {
    const double factor = r.factor, base = theta;
    double af = r.attention_factor;
    if (af <= 0)
      af = (r.mscale != 0 && r.mscale_all_dim != 0) ? yarn_mscale(factor, r.mscale) / yarn_mscale(factor, r.mscale_all_dim)
                                                   : yarn_mscale(factor, 1.0);
    *attention_factor = (float)af;
    auto correction_dim = [&](double rotations) {
      return (dim * std::log((double)orig / (rotations * 2 * M_PI))) / (2 * std::log(base));
    };
    double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
    if (r.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, (double)(dim - 1));
    if (low == high) high += 0.001;
    std::vector<float> f(dim / 2);
    for (int i = 0; i < dim / 2; i++) {
      float pos_freq = std::pow(theta, (float)(2 * i) / (float)dim);
      float extrap = 1.0f / pos_freq, interp = 1.0f / ((float)factor * pos_freq);
      float ramp = ((float)i - (float)low) / (float)(high - low);
      ramp = std::min(std::max(ramp, 0.0f), 1.0f);
      float extrap_factor = 1.0f - ramp;
      f[i] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
    }
    return f;
  }
  return default_inv_freq(theta, dim);
}

RopeTables::RopeTables(const LlamaConfig& cfg) : cfg_(cfg) {
  capacity_ = cfg.max_positions();
  const size_t n = (size_t)capacity_ * (cfg.head_dim() / 2);
  cos_.assign(n, 0.f);
  sin_.assign(n, 0.f);
  cached_ = cfg.max_position_embeddings;
  compute(cfg.max_position_embeddings, cfg.rope_scaling.type == "dynamic" ? cfg.max_position_embeddings : capacity_);
}

void RopeTables::compute(int seq_len, int rows) {
  float af = 1.0f;
  std::vector<float> inv = rope_inv_freq(cfg_, seq_len, &af);
  const int half = (int)inv.size();
  for (int p = 0; p < rows; p++)
    for (int i = 0; i < half; i++) {
      float ang = (float)p * inv[i];
      cos_[(size_t)p * half + i] = std::cos(ang) * af;
      sin_[(size_t)p * half + i] = std::sin(ang) * af;
    }
  rows_ = rows;
}

bool RopeTables::update(int seq_len) {
  if (cfg_.rope_scaling.type != "dynamic") return false;
  const int orig = cfg_.max_position_embeddings;
  if (seq_len > cached_) {  // growth: the frequencies of this length, rows up to it
    cached_ = seq_len;
    compute(seq_len, seq_len);
    return true;
  }
  if (seq_len < orig && cached_ > orig) {  // back within the original length: the default frequencies
    cached_ = orig;
    compute(orig, orig);
    return true;
  }
  return false;
}

}  // namespace pyllama
