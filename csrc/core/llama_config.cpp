#include "llama_config.h"

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
  PYLLAMA_CHECK(hidden_size % num_attention_heads == 0, ValueError,
                "LlamaConfig.hidden_size (" << hidden_size << ") must be divisible by num_attention_heads ("
                                            << num_attention_heads << ")");
  PYLLAMA_CHECK(head_dim() % 2 == 0, ValueError, "LlamaConfig: head_dim " << head_dim() << " must be even for RoPE");
  PYLLAMA_CHECK(num_attention_heads % num_key_value_heads == 0, ValueError,
                "LlamaConfig.num_key_value_heads (" << num_key_value_heads << ") must divide num_attention_heads ("
                                                    << num_attention_heads << ")");
  PYLLAMA_CHECK(rms_norm_eps > 0, ValueError, "LlamaConfig.rms_norm_eps must be > 0");
  PYLLAMA_CHECK(rope_theta > 0, ValueError, "LlamaConfig.rope_theta must be > 0");
}

std::vector<ParamInfo> param_layout(const LlamaConfig& cfg) {
  cfg.validate();
  const int64_t C = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
  const int64_t KVD = (int64_t)cfg.num_key_value_heads * cfg.head_dim();
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
    add(pre + "self_attn.q_proj.weight", {C, C});
    add(pre + "self_attn.k_proj.weight", {KVD, C});
    add(pre + "self_attn.v_proj.weight", {KVD, C});
    add(pre + "self_attn.o_proj.weight", {C, C});
    add(pre + "post_attention_layernorm.weight", {C});
    add(pre + "mlp.gate_proj.weight", {I, C});
    add(pre + "mlp.up_proj.weight", {I, C});
    add(pre + "mlp.down_proj.weight", {C, I});
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
  const double QKVD = C + 2.0 * cfg.num_key_value_heads * cfg.head_dim();
  double matmul_params = L * (QKVD * C + C * C + 3.0 * I * C) + V * C;
  return 6.0 * matmul_params + 6.0 * L * C * (double)T;
}

}  // namespace pyllama
