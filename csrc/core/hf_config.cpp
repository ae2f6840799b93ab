#include "hf_config.h"

#include <climits>
#include <cmath>
#include <set>
#include <string>
#include <vector>

namespace pyllama {

namespace {

const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::null: return "null";
    case Json::Kind::boolean: return "a boolean";
    case Json::Kind::number: return "a number";
    case Json::Kind::string: return "a string";
    case Json::Kind::array: return "an array";
    case Json::Kind::object: return "an object";
  }
  return "?";
}

// The field when it is present and not null, else nullptr.
const Json* field(const Json& j, const std::string& key) {
  if (!j.has(key)) return nullptr;
  const Json& v = j[key];
  return v.is_null() ? nullptr : &v;
}

int64_t positive_int(const Json& j, const std::string& key, bool required, int64_t dflt) {
  const Json* v = field(j, key);
  if (!v) {
    PYLLAMA_CHECK(!required, ValueError, "config.json lacks the required field " << key);
    return dflt;
  }
  PYLLAMA_CHECK(v->kind() == Json::Kind::number, ValueError,
                "config.json: " << key << " must be a positive integer, got " << kind_name(v->kind()) << " ("
                                << v->dump() << ")");
  double x = v->as_number();
  PYLLAMA_CHECK(std::isfinite(x) && x == std::floor(x) && x >= 1 && x <= (double)INT_MAX, ValueError,
                "config.json: " << key << " must be a positive integer of at most " << INT_MAX << ", got "
                                << v->dump());
  return (int64_t)x;
}

double positive_number(const Json& j, const std::string& key, double dflt) {
  const Json* v = field(j, key);
  if (!v) return dflt;
  PYLLAMA_CHECK(v->kind() == Json::Kind::number, ValueError,
                "config.json: " << key << " must be a number, got " << kind_name(v->kind()) << " (" << v->dump()
                                << ")");
  double x = v->as_number();
  PYLLAMA_CHECK(std::isfinite(x) && x > 0, ValueError,
                "config.json: " << key << " must be a finite number > 0, got " << v->dump());
  return x;
}

bool boolean(const Json& j, const std::string& key, bool dflt) {
  const Json* v = field(j, key);
  if (!v) return dflt;
  PYLLAMA_CHECK(v->kind() == Json::Kind::boolean, ValueError,
                "config.json: " << key << " must be true or false, got " << kind_name(v->kind()) << " ("
                                << v->dump() << ")");
  return v->as_bool();
}

// A field whose only value pyllama computes with is `neutral`: refuse anything else by name.
void require_neutral_number(const Json& j, const std::string& where, const std::string& key, double neutral,
                            const std::string& why) {
  const Json* v = field(j, key);
  if (!v) return;
  PYLLAMA_CHECK(v->kind() == Json::Kind::number, ValueError,
                "config.json: " << where << key << " must be a number, got " << kind_name(v->kind()));
  PYLLAMA_CHECK(v->as_number() == neutral, ValueError,
                "config.json sets " << where << key << " = " << v->dump() << ", which pyllama does not support ("
                                    << why << "); only " << neutral << " is");
}

const std::set<std::string> kRopeKeys = {
    "rope_type",   "type",          "rope_theta",     "factor",          "original_max_position_embeddings",
    "attention_factor", "beta_fast", "beta_slow",     "mscale",          "mscale_all_dim",
    "low_freq_factor",  "high_freq_factor", "short_factor", "long_factor", "truncate",
    "partial_rotary_factor"};
const std::set<std::string> kScalingTypes = {"linear", "dynamic", "yarn", "longrope", "llama3"};

// Checks one RoPE block (rope_scaling or rope_parameters) and returns its rope_theta, or NaN.
double check_rope_block(const Json& block, const std::string& name) {
  PYLLAMA_CHECK(block.kind() == Json::Kind::object, ValueError,
                "config.json: " << name << " must be an object or null, got " << kind_name(block.kind()));
  for (const auto& kv : block.items())
    PYLLAMA_CHECK(kRopeKeys.count(kv.first), ValueError,
                  "config.json: " << name << " has the key '" << kv.first
                                  << "', which pyllama does not know; it may change the rotary embedding, so the "
                                     "file is refused rather than loaded with different logits");
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    const Json* t = field(block, key);
    if (!t) continue;
    PYLLAMA_CHECK(t->kind() == Json::Kind::string, ValueError,
                  "config.json: " << name << "." << key << " must be a string, got " << kind_name(t->kind()));
    PYLLAMA_CHECK(type.empty() || type == t->as_string(), ValueError,
                  "config.json: " << name << " has rope_type '" << type << "' but type '" << t->as_string()
                                  << "'; they must agree");
    type = t->as_string();
  }
  std::vector<std::string> extra;
  for (const auto& kv : block.items())
    if (kv.first != "rope_type" && kv.first != "type" && kv.first != "rope_theta" &&
        kv.first != "partial_rotary_factor" && !kv.second.is_null())
      extra.push_back(kv.first);
  if (type.empty()) {
    PYLLAMA_CHECK(extra.empty(), ValueError,
                  "config.json: " << name << " sets '" << extra[0] << "' but names no rope_type; add \"rope_type\"");
    type = "default";
  }
  PYLLAMA_CHECK(type == "default" || !kScalingTypes.count(type), ValueError,
                "config.json: " << name << " asks for RoPE scaling rope_type '" << type
                                << "', which pyllama does not implement yet (only 'default'); loading it "
                                   "would give logits that differ from transformers'");
  PYLLAMA_CHECK(type == "default", ValueError,
                "config.json: " << name << " has an unknown rope_type '" << type
                                << "' (transformers knows default, linear, dynamic, yarn, longrope, llama3)");
  PYLLAMA_CHECK(extra.empty(), ValueError,
                "config.json: " << name << " sets '" << extra[0]
                                << "', which rope_type 'default' does not take; remove it");
  require_neutral_number(block, name + ".", "partial_rotary_factor", 1.0, "a partial rotary embedding");
  const Json* theta = field(block, "rope_theta");
  if (!theta) return NAN;
  return positive_number(block, "rope_theta", 0);
}

}  // namespace

Json normalize_hf_config(const Json& raw) {
  PYLLAMA_CHECK(raw.kind() == Json::Kind::object, ValueError,
                "config.json must hold a JSON object of settings, got " << kind_name(raw.kind()));
  if (const Json* mt = field(raw, "model_type"))
    PYLLAMA_CHECK(mt->kind() == Json::Kind::string && mt->as_string() == "llama", ValueError,
                  "config.json has model_type=" << mt->dump() << "; pyllama loads 'llama' models");
  if (const Json* act = field(raw, "hidden_act"))
    PYLLAMA_CHECK(act->kind() == Json::Kind::string && (act->as_string() == "silu" || act->as_string() == "swish"),
                  ValueError,
                  "config.json has hidden_act=" << act->dump() << "; pyllama's feed-forward is SwiGLU ('silu')");
  for (const char* key : {"attention_bias", "mlp_bias"})
    PYLLAMA_CHECK(!boolean(raw, key, false), ValueError,
                  "config.json sets " << key << " = true, which pyllama does not support yet (its projections have "
                                      "no bias); loading it would drop the biases");
  PYLLAMA_CHECK(!field(raw, "quantization_config"), ValueError,
                "config.json has a quantization_config; pyllama loads unquantized float32/float16/bfloat16 weights");
  require_neutral_number(raw, "", "attention_dropout", 0.0, "pyllama trains without dropout");
  require_neutral_number(raw, "", "partial_rotary_factor", 1.0, "a partial rotary embedding");

  Json out = Json::object();
  const int64_t V = positive_int(raw, "vocab_size", true, 0);
  const int64_t C = positive_int(raw, "hidden_size", true, 0);
  const int64_t I = positive_int(raw, "intermediate_size", true, 0);
  const int64_t L = positive_int(raw, "num_hidden_layers", true, 0);
  const int64_t NH = positive_int(raw, "num_attention_heads", true, 0);
  const int64_t NKV = positive_int(raw, "num_key_value_heads", false, NH);
  const int64_t P = positive_int(raw, "max_position_embeddings", false, 2048);
  if (field(raw, "head_dim")) {
    int64_t hd = positive_int(raw, "head_dim", false, 0);
    PYLLAMA_CHECK(C % NH == 0 && hd == C / NH, ValueError,
                  "config.json has head_dim=" << hd << " but hidden_size/num_attention_heads = " << C << "/" << NH
                                              << "; pyllama does not support an explicit head_dim yet");
  }

  // RoPE: rope_theta at the top level (transformers 4) or inside rope_parameters (transformers 5),
  // rope_scaling / rope_parameters checked alike; every rope_theta given must agree.
  double theta = NAN;
  std::string theta_from;
  auto take_theta = [&](double t, const std::string& from) {
    if (std::isnan(t)) return;
    PYLLAMA_CHECK(std::isnan(theta) || t == theta, ValueError,
                  "config.json gives rope_theta " << theta << " in " << theta_from << " but " << t << " in " << from
                                                  << "; they must agree");
    theta = t;
    theta_from = from;
  };
  if (field(raw, "rope_theta")) take_theta(positive_number(raw, "rope_theta", 0), "rope_theta");
  for (const char* block : {"rope_scaling", "rope_parameters"})
    if (const Json* b = field(raw, block)) take_theta(check_rope_block(*b, block), std::string(block) + ".rope_theta");
  if (std::isnan(theta)) theta = 10000.0;

  out.set("vocab_size", Json::number((double)V));
  out.set("hidden_size", Json::number((double)C));
  out.set("intermediate_size", Json::number((double)I));
  out.set("num_hidden_layers", Json::number((double)L));
  out.set("num_attention_heads", Json::number((double)NH));
  out.set("num_key_value_heads", Json::number((double)NKV));
  out.set("max_position_embeddings", Json::number((double)P));
  out.set("rms_norm_eps", Json::number(positive_number(raw, "rms_norm_eps", 1e-6)));
  out.set("rope_theta", Json::number(theta));
  out.set("tie_word_embeddings", Json::boolean(boolean(raw, "tie_word_embeddings", false)));
  for (const char* key : {"bos_token_id", "eos_token_id"})
    if (raw.has(key)) out.set(key, raw[key]);
  return out;
}

LlamaConfig llama_config_from_hf(const Json& raw) {
  Json j = normalize_hf_config(raw);
  LlamaConfig c;
  c.vocab_size = (int)j["vocab_size"].as_int();
  c.hidden_size = (int)j["hidden_size"].as_int();
  c.intermediate_size = (int)j["intermediate_size"].as_int();
  c.num_hidden_layers = (int)j["num_hidden_layers"].as_int();
  c.num_attention_heads = (int)j["num_attention_heads"].as_int();
  c.num_key_value_heads = (int)j["num_key_value_heads"].as_int();
  c.max_position_embeddings = (int)j["max_position_embeddings"].as_int();
  c.rms_norm_eps = (float)j["rms_norm_eps"].as_number();
  c.rope_theta = (float)j["rope_theta"].as_number();
  c.tie_word_embeddings = j["tie_word_embeddings"].as_bool();
  c.validate();
  return c;
}

}  // namespace pyllama
