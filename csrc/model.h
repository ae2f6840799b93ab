// model.h — the LLaMA model: configuration, weights in one flat buffer, the
// training forward/backward pass and the KV-cache inference steps.
//
//   pyllama::LlamaConfig cfg;            // fields as in transformers.LlamaConfig
//   cfg.vocab_size = 256; cfg.hidden_size = 64; cfg.intermediate_size = 172;
//   cfg.num_hidden_layers = 2; cfg.num_attention_heads = 4; cfg.num_key_value_heads = 2;
//   pyllama::LlamaModel model(cfg);
//   model.init_weights(/*seed=*/0);
//   float loss = model.forward(tokens, labels, B, T);   // labels HF-aligned, -100 ignored
//   model.backward(1.0f);                               // grads += d loss / d params
//
// Layouts. Parameters, gradients (and the optimizer's moments) share one flat
// layout, in this order, with Hugging Face names:
//   model.embed_tokens.weight                    (V, C)
//   per layer l: model.layers.l.input_layernorm.weight (C)
//                ...self_attn.q_proj.weight (NH*HS, C), k_proj (NKV*HS, C), v_proj (NKV*HS, C)
//                ...self_attn.o_proj.weight (C, NH*HS)
//                ...post_attention_layernorm.weight (C)
//                ...mlp.gate_proj.weight (I, C), up_proj (I, C), down_proj (C, I)
//   model.norm.weight (C)
//   lm_head.weight (V, C)                        (absent when tie_word_embeddings)
// q, k, v are adjacent, so one (QKVD, C) matmul computes all three; gate and up
// likewise form one (2I, C) matmul. Weights are (out, in), row-major.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace pyllama {

struct LlamaConfig {
  int vocab_size = 32000;             // V
  int hidden_size = 4096;             // C
  int intermediate_size = 11008;      // I
  int num_hidden_layers = 32;         // L
  int num_attention_heads = 32;       // NH
  int num_key_value_heads = 32;       // NKV (divides NH)
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.f;
  bool tie_word_embeddings = false;

  int head_dim() const { return hidden_size / num_attention_heads; }  // HS
  void validate() const;  // throws ValueError naming the field
};

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in floats, into the flat buffer
  size_t numel = 0;
};

class LlamaModel {
 public:
  explicit LlamaModel(const LlamaConfig& cfg);

  const LlamaConfig& config() const { return cfg_; }
  const std::vector<ParamInfo>& param_infos() const { return infos_; }
  const ParamInfo& param_info(const std::string& name) const;  // throws ValueError on unknown names
  size_t num_parameters() const { return params_.size(); }
  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }

  // Normal(0, 0.02) for matrices, o_proj and down_proj scaled by 1/sqrt(2L), norms 1.
  void init_weights(uint64_t seed);

  // Training forward over tokens (B, T). labels (B, LT) are aligned with tokens
  // (position t is trained to predict labels[t+1]; -100 ignored) or nullptr. LT is T
  // (Hugging Face's convention: the last position has no target) or T+1 (a window of
  // T+1 tokens: every position has one); labels_T < 0 means T.
  // Returns the mean loss over counted targets (NaN without labels or with none counted).
  float forward(const int32_t* tokens, const int32_t* labels, int B, int T, int labels_T = -1);
  const float* logits() const { return logits_ptr_; }  // (B, T, V) of the last forward
  int last_B() const { return B_; }
  int last_T() const { return T_; }
  // grads += scale * d(last loss)/d(params). Needs a forward with labels just before.
  void backward(float scale);
  void zero_grad();

  // ---- inference over a KV cache (see DESIGN: ragged batches)
  void kv_reset(int n_slots, int max_len);
  // Weights the KV-cache steps read: float32 (default) or bfloat16. With bfloat16, kv_reset
  // takes a bf16 copy of the weight matrices (so it always reflects the current weights)
  // and single-token steps (B <= 4 rows) stream those, half the bytes; prefill stays float32.
  void set_inference_dtype(bool bfloat16) { infer_bf16_ = bfloat16; }
  bool inference_bf16() const { return infer_bf16_; }
  // T new tokens for each of B sequences; sequence b lives in cache slot slots[b]
  // at positions start_pos[b] .. start_pos[b]+T-1. Returns logits (B, V) when
  // last_only, else (B, T, V); valid until the next call.
  const float* kv_forward(const int32_t* tokens, int B, int T, const int32_t* slots, const int32_t* start_pos,
                          bool last_only);
  // Slot i takes the old content of slot src[i] (n == number of slots).
  void kv_reorder(const int32_t* src, int n);
  int kv_slots() const { return kv_slots_; }
  int kv_max_len() const { return kv_len_; }

  // Matmul + attention FLOPs of one forward+backward per token at length T.
  double flops_per_token(int T) const;

 private:
  struct LayerPtrs {
    float *ln1, *wqkv, *wo, *ln2, *wgu, *wd;
  };
  LayerPtrs layer(float* base, int l) const;
  float* wte(float* base) const { return base; }
  float* lnf(float* base) const { return base + lnf_off_; }
  float* wout(float* base) const { return base + wout_off_; }
  void ensure_acts(int B, int T);
  void check_tokens(const int32_t* tokens, long n, const char* what) const;

  LlamaConfig cfg_;
  int C_, HS_, NH_, NKV_, KVD_, QKVD_, I_, V_, L_;
  std::vector<ParamInfo> infos_;
  std::vector<float> params_, grads_;
  size_t layer_off_ = 0, layer_size_ = 0, lnf_off_ = 0, wout_off_ = 0;
  std::vector<float> rope_cos_, rope_sin_;  // (max_pos, HS/2)

  // training activations, sized from (B, T)
  int B_ = 0, T_ = 0;
  bool have_targets_ = false;
  float loss_ = 0.f;
  int count_ = 0;
  std::vector<float> acts_;
  std::vector<int32_t> tokens_, targets_, pos_;
  float* logits_ptr_ = nullptr;
  size_t acts_capacity_ = 0;

  // KV cache
  int kv_slots_ = 0, kv_len_ = 0;
  std::vector<float> kcache_, vcache_, kv_tmp_;  // (L, S, NKV, len, HS)
  std::vector<float> inf_;                      // inference scratch
  std::vector<int32_t> inf_pos_;
  bool infer_bf16_ = false;
  std::vector<uint16_t> params_bf16_;  // same layout as params_, filled by kv_reset when infer_bf16_
  // y (N, OUT) = x W^T in the KV-cache path: bf16 weights for small N when enabled.
  void infer_linear(float* y, const float* x, const float* w, int N, int IN, int OUT);
};

}  // namespace pyllama
