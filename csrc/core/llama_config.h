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
//                [attention_bias: ...self_attn.q_proj.bias (NH*HS), k_proj.bias, v_proj.bias (NKV*HS)]
//                ...self_attn.o_proj.weight (C, NH*HS)   [attention_bias: o_proj.bias (C)]
//                ...post_attention_layernorm.weight (C)
//                ...mlp.gate_proj.weight (I, C), up_proj (I, C)   [mlp_bias: gate_proj.bias, up_proj.bias (I)]
//                ...mlp.down_proj.weight (C, I)                    [mlp_bias: down_proj.bias (C)]
//   model.norm.weight (C)
//   lm_head.weight (V, C)                        (absent when tie_word_embeddings)
// q, k, v are adjacent, so one (QKVD, C) matmul computes all three; gate and up
// likewise form one (2I, C) matmul (and their biases one vector). Weights are (out, in), row-major.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace pyllama {

// RoPE scaling as transformers computes it (modeling_rope_utils.py): the rotary frequencies
// of rope_type "default" changed by one of four schemes. Read from config.json's rope_scaling
// (transformers 4) or rope_parameters (transformers 5) by hf_config.cpp.
struct RopeScaling {
  std::string type = "default";  // default, linear, dynamic, yarn, llama3
  double factor = 1.0;           // linear, dynamic, yarn, llama3
  int original_max_position_embeddings = 0;        // yarn, llama3 (0: max_position_embeddings)
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double attention_factor = 0.0;                   // yarn: scales cos and sin (0: derived from factor)
  double beta_fast = 32.0, beta_slow = 1.0;        // yarn's ramp between the two frequency sets
  double mscale = 0.0, mscale_all_dim = 0.0;       // yarn: attention_factor from these when both set
  bool truncate = true;                            // yarn: round the ramp's ends to whole dims
  bool is_default() const { return type == "default"; }
};

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
  int head_dim_explicit = 0;    // config.json's head_dim when it differs from C/NH (0: C/NH)
  bool attention_bias = false;  // q/k/v/o projections have biases
  bool mlp_bias = false;        // gate/up/down projections have biases
  RopeScaling rope_scaling;

  int head_dim() const { return head_dim_explicit > 0 ? head_dim_explicit : hidden_size / num_attention_heads; }  // HS
  int q_dim() const { return num_attention_heads * head_dim(); }     // NH*HS: q rows, o_proj's input
  int kv_dim() const { return num_key_value_heads * head_dim(); }    // NKV*HS
  // The longest sequence (and KV cache) the model takes: max_position_embeddings, or for
  // dynamic RoPE scaling, which exists to go past it, max_position_embeddings * factor.
  int max_positions() const;
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
