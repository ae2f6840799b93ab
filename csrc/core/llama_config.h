// llama_config.h — device-neutral model description: the configuration, its validation
// and the flat parameter layout that every backend (cpu, cuda) and the checkpoint files share.
//
//   pyllama::LlamaConfig cfg;   // fields as in transformers.LlamaConfig
//   cfg.validate();             // ValueError naming the field
//   for (const pyllama::ParamInfo& p : pyllama::param_layout(cfg)) ...
//
// Layout (floats, in this order, Hugging Face names):
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
#include <cstddef>
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

// Every parameter of cfg in flat-buffer order (validates cfg first).
std::vector<ParamInfo> param_layout(const LlamaConfig& cfg);
// The entry named `name`; ValueError on unknown names.
const ParamInfo& find_param(const std::vector<ParamInfo>& layout, const std::string& name);
// Matmul + attention FLOPs of one forward+backward per token at sequence length T.
double flops_per_token(const LlamaConfig& cfg, int T);

}  // namespace pyllama
