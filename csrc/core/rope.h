// rope.h — the rotary-embedding tables every backend uses (device-neutral: computed on the
// host, uploaded by the CUDA backend), with RoPE scaling as transformers computes it.
//
//   pyllama::RopeTables rope(cfg);            // cos/sin (rows, HS/2) for cfg's rope_theta and scaling
//   if (rope.update(T)) upload(rope.cos(), rope.sin(), rope.rows());   // dynamic scaling only
//   pyllama::rope_table(c.data(), s.data(), max_T, HS, theta);          // the default table alone
#pragma once
#include <vector>

#include "llama_config.h"

namespace pyllama {

// cos/sin (max_T, HS/2) as Hugging Face computes them in float32:
// inv_freq = 1 / theta^(2i/HS), angle = pos * inv_freq.
void rope_table(float* cos_t, float* sin_t, int max_T, int HS, float theta);

// The HS/2 inverse frequencies of cfg's RoPE (rope_scaling applied) for a pass whose longest
// position is seq_len - 1 (only dynamic scaling reads seq_len), and the factor cos and sin are
// multiplied by (yarn's attention_factor; 1 otherwise). Follows transformers'
// modeling_rope_utils.py, in float32 where it computes in float32.
std::vector<float> rope_inv_freq(const LlamaConfig& cfg, int seq_len, float* attention_factor);

// The tables a model rotates q and k with. Dynamic NTK scaling depends on the sequence: like
// transformers' dynamic_rope_update, the frequencies are recomputed when a pass reaches past
// the longest one seen so far (beyond max_position_embeddings), and go back to the default
// ones when a pass is shorter than max_position_embeddings again. Other types never change.
class RopeTables {
 public:
  RopeTables() = default;
  explicit RopeTables(const LlamaConfig& cfg);
  // Call before a pass whose positions reach seq_len - 1; true when the table changed.
  bool update(int seq_len);
  const float* cos() const { return cos_.data(); }
  const float* sin() const { return sin_.data(); }
  int rows() const { return rows_; }          // positions with valid rows now
  int capacity() const { return capacity_; }  // rows allocated: cfg.max_positions()

 private:
  void compute(int seq_len, int rows);
  LlamaConfig cfg_;
  std::vector<float> cos_, sin_;
  int rows_ = 0, capacity_ = 0, cached_ = 0;
};

}  // namespace pyllama
