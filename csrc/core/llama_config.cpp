#include "llama_config.h"

#include <cmath>

namespace pyllama {

void LlamaConfig::validate() const {
  auto positive = [](int v, const char* name) {
    PYLLAMA_CHECK(v > 0, ValueError, "LlamaConfig." << name << " must be positive, got " << v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(max_position_embeddings, "max_position_embeddings");
  PYLLAMA_CHECK(head_dim_explicit >= 0, ValueError, "LlamaConfig.head_dim must be positive, got " << head_dim_explicit);
  PYLLAMA_CHECK(head_dim_explicit > 0 || hidden_size % num_attention_heads == 0, ValueError,
                "LlamaConfig.hidden_size (" << hidden_size << ") must be divisible by num_attention_heads ("
                                            << num_attention_heads << "), or set head_dim explicitly");
  PYLLAMA_CHECK((int64_t)num_attention_heads * head_dim() <= (1 << 30), ValueError,
                "LlamaConfig: num_attention_heads * head_dim is too large");
  PYLLAMA_CHECK(head_dim() % 2 == 0, ValueError, "LlamaConfig: head_dim " << head_dim() << " must be even for RoPE");
  PYLLAMA_CHECK(num_attention_heads % num_key_value_heads == 0, ValueError,
                "LlamaConfig.num_key_value_heads (" << num_key_value_heads << ") must divide num_attention_heads ("
                                                    << num_attention_heads << ")");
  PYLLAMA_CHECK(rms_norm_eps > 0, ValueError, "LlamaConfig.rms_norm_eps must be > 0");
  PYLLAMA_CHECK(rope_theta > 0, ValueError, "LlamaConfig.rope_theta must be > 0");
  const RopeScaling& r = rope_scaling;
  PYLLAMA_CHECK(r.type == "default" || r.type == "linear" || r.type == "dynamic" || r.type == "yarn" ||
                    r.type == "llama3",
                ValueError,
                "LlamaConfig: rope_scaling type '" << r.type << "' is not one pyllama implements (default, linear, "
                                                   "dynamic, yarn, llama3)");
  if (!r.is_default()) {
    PYLLAMA_CHECK(std::isfinite(r.factor) && r.factor >= 1.0, ValueError,
                  "LlamaConfig: rope_scaling factor must be a number >= 1, got " << r.factor);
    PYLLAMA_CHECK(r.original_max_position_embeddings >= 0, ValueError,
                  "LlamaConfig: rope_scaling original_max_position_embeddings must be positive");
  }
  if (r.type == "llama3")
    PYLLAMA_CHECK(std::isfinite(r.low_freq_factor) && std::isfinite(r.high_freq_factor) && r.low_freq_factor > 0 &&
                      r.high_freq_factor > r.low_freq_factor,
                  ValueError,
                  "LlamaConfig: llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                      << r.low_freq_factor << " and " << r.high_freq_factor);
  if (r.type == "yarn")
    PYLLAMA_CHECK(std::isfinite(r.attention_factor) && r.attention_factor >= 0 && std::isfinite(r.beta_fast) &&
                      std::isfinite(r.beta_slow) && std::isfinite(r.mscale) && std::isfinite(r.mscale_all_dim),
                  ValueError, "LlamaConfig: yarn rope_scaling has a value that is not a finite number");
  PYLLAMA_CHECK((double)max_position_embeddings * (r.type == "dynamic" ? r.factor : 1.0) <= (double)(1 << 24),
                ValueError,
                "LlamaConfig: max_position_embeddings" << (r.type == "dynamic" ? " * rope_scaling factor" : "")
                                                       << " must be at most " << (1 << 24));
}

int LlamaConfig::max_positions() const {
  if (rope_scaling.type == "dynamic") return (int)std::floor((double)max_position_embeddings * rope_scaling.factor);
  return max_position_embeddings;
}

std::vector<ParamInfo> param_layout(const LlamaConfig& cfg) {
  cfg.validate();
  const int64_t C = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
  const int64_t KVD = cfg.kv_dim(), QD = cfg.q_dim();
  std::vector<ParamInfo> out;
  size_t off = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    ParamInfo p;
    p.name = name;
    p.shape = shape;
    p.offset = off;
    p.numel = 1;
    for (auto s : shape) p.numel *= (size_t)s;
    off += p.numel;
    out.push_back(p);
  };
  add("model.embed_tokens.weight", {V, C});
  for (int l = 0; l < cfg.num_hidden_layers; l++) {
    std::string pre = "model.layers." + std::to_string(l) + ".";
    add(pre + "input_layernorm.weight", {C});
    add(pre + "self_attn.q_proj.weight", {QD, C});
    add(pre + "self_attn.k_proj.weight", {KVD, C});
    add(pre + "self_attn.v_proj.weight", {KVD, C});
    if (cfg.attention_bias) {  // adjacent, like the weights: one (QKVD) bias vector
      add(pre + "self_attn.q_proj.bias", {QD});
      add(pre + "self_attn.k_proj.bias", {KVD});
      add(pre + "self_attn.v_proj.bias", {KVD});
    }
    add(pre + "self_attn.o_proj.weight", {C, QD});
    if (cfg.attention_bias) add(pre + "self_attn.o_proj.bias", {C});
    add(pre + "post_attention_layernorm.weight", {C});
    add(pre + "mlp.gate_proj.weight", {I, C});
    add(pre + "mlp.up_proj.weight", {I, C});
    if (cfg.mlp_bias) {
      add(pre + "mlp.gate_proj.bias", {I});
      add(pre + "mlp.up_proj.bias", {I});
    }
    add(pre + "mlp.down_proj.weight", {C, I});
    if (cfg.mlp_bias) add(pre + "mlp.down_proj.bias", {C});
  }
  add("model.norm.weight", {C});
  if (!cfg.tie_word_embeddings) add("lm_head.weight", {V, C});
  return out;
}

const ParamInfo& find_param(const std::vector<ParamInfo>& layout, const std::string& name) {
  for (const auto& p : layout)
    if (p.name == name) return p;
  throw ValueError("unknown parameter name '" + name + "'");
}

double flops_per_token(const LlamaConfig& cfg, int T) {
  // 6 flops per matmul weight per token (forward 2, backward 4); attention QK^T and PV
  // (causal: about T/2 keys per query on average), 6 * 2 * L * C * T/2 forward+backward.
  const double C = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size, L = cfg.num_hidden_layers;
  const double QD = cfg.q_dim(), QKVD = QD + 2.0 * cfg.kv_dim();
  double matmul_params = L * (QKVD * C + QD * C + 3.0 * I * C) + V * C;
  return 6.0 * matmul_params + 6.0 * L * QD * (double)T;
}

}  // namespace pyllama
