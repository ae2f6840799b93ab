#include "hf_config.h"

#include <algorithm>
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

// The keys each implemented type takes beside rope_type/type/rope_theta/partial_rotary_factor
// (transformers' _validate_*_rope_parameters); the first `required` of them must be present.
struct RopeTypeKeys {
  std::vector<std::string> keys;
  size_t required;
};
const RopeTypeKeys* rope_type_keys(const std::string& type) {
  static const RopeTypeKeys def{{}, 0}, linear{{"factor"}, 1}, dynamic{{"factor"}, 1},
      llama3{{"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}, 3},
      yarn{{"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
            "mscale_all_dim", "truncate"},
           1};
  if (type == "default") return &def;
  if (type == "linear") return &linear;
  if (type == "dynamic") return &dynamic;
  if (type == "llama3") return &llama3;
  if (type == "yarn") return &yarn;
  return nullptr;
}

double finite_number(const Json& j, const std::string& where, const std::string& key) {
  const Json& v = j[key];
  PYLLAMA_CHECK(v.kind() == Json::Kind::number && std::isfinite(v.as_number()), ValueError,
                "config.json: " << where << key << " must be a finite number, got " << v.dump());
  return v.as_number();
}

// One RoPE block (rope_scaling or rope_parameters): its scaling, and its rope_theta or NaN.
RopeScaling check_rope_block(const Json& block, const std::string& name, double* theta_out) {
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
  PYLLAMA_CHECK(type != "longrope", ValueError,
                "config.json: " << name << " asks for RoPE scaling rope_type 'longrope', which pyllama does not "
                                           "implement (it does default, linear, dynamic, yarn and llama3); loading "
                                           "it would give logits that differ from transformers'");
  const RopeTypeKeys* keys = rope_type_keys(type);
  PYLLAMA_CHECK(keys, ValueError,
                "config.json: " << name << " has an unknown rope_type '" << type
                                << "' (transformers knows default, linear, dynamic, yarn, longrope, llama3)");
  for (const std::string& k : extra)
    PYLLAMA_CHECK(std::find(keys->keys.begin(), keys->keys.end(), k) != keys->keys.end(), ValueError,
                  "config.json: " << name << " sets '" << k << "', which rope_type '" << type
                                  << "' does not take; remove it");
  for (size_t i = 0; i < keys->required; i++)
    PYLLAMA_CHECK(field(block, keys->keys[i]), ValueError,
                  "config.json: " << name << " has rope_type '" << type << "' but no '" << keys->keys[i]
                                  << "'; transformers requires it");
  require_neutral_number(block, name + ".", "partial_rotary_factor", 1.0, "a partial rotary embedding");
  RopeScaling r;
  r.type = type;
  const std::string where = name + ".";
  if (field(block, "factor")) {
    r.factor = finite_number(block, where, "factor");
    PYLLAMA_CHECK(r.factor >= 1.0, ValueError,
                  "config.json: " << where << "factor must be >= 1 (a context extension), got " << r.factor);
  }
  if (field(block, "original_max_position_embeddings"))
    r.original_max_position_embeddings = (int)positive_int(block, "original_max_position_embeddings", false, 0);
  if (field(block, "low_freq_factor")) r.low_freq_factor = finite_number(block, where, "low_freq_factor");
  if (field(block, "high_freq_factor")) r.high_freq_factor = finite_number(block, where, "high_freq_factor");
  if (type == "llama3")
    PYLLAMA_CHECK(r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor, ValueError,
                  "config.json: " << name << " needs 0 < low_freq_factor < high_freq_factor, got "
                                  << r.low_freq_factor << " and " << r.high_freq_factor);
  if (field(block, "attention_factor")) {
    r.attention_factor = finite_number(block, where, "attention_factor");
    PYLLAMA_CHECK(r.attention_factor > 0, ValueError, "config.json: " << where << "attention_factor must be > 0");
  }
  // transformers reads `beta_fast or 32`, `mscale and mscale_all_dim`: 0 means unset
  if (field(block, "beta_fast")) r.beta_fast = finite_number(block, where, "beta_fast");
  if (field(block, "beta_slow")) r.beta_slow = finite_number(block, where, "beta_slow");
  if (r.beta_fast == 0) r.beta_fast = 32;
  if (r.beta_slow == 0) r.beta_slow = 1;
  PYLLAMA_CHECK(r.beta_fast > 0 && r.beta_slow > 0, ValueError,
                "config.json: " << where << "beta_fast and beta_slow must be > 0");
  if (field(block, "mscale")) r.mscale = finite_number(block, where, "mscale");
  if (field(block, "mscale_all_dim")) r.mscale_all_dim = finite_number(block, where, "mscale_all_dim");
  if (field(block, "truncate")) r.truncate = boolean(block, "truncate", true);
  const Json* theta = field(block, "rope_theta");
  *theta_out = theta ? positive_number(block, "rope_theta", 0) : NAN;
  return r;
}

bool same_scaling(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor &&
         a.original_max_position_embeddings == b.original_max_position_embeddings &&
         a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
         a.attention_factor == b.attention_factor && a.beta_fast == b.beta_fast && a.beta_slow == b.beta_slow &&
         a.mscale == b.mscale && a.mscale_all_dim == b.mscale_all_dim && a.truncate == b.truncate;
}

}  // namespace

Json rope_scaling_json(const RopeScaling& r) {
  if (r.is_default()) return Json();
  Json o = Json::object();
  o.set("rope_type", Json::str(r.type));
  o.set("factor", Json::number(r.factor));
  if (r.type == "llama3" || r.type == "yarn")
    o.set("original_max_position_embeddings", Json::number((double)r.original_max_position_embeddings));
  if (r.type == "llama3") {
    o.set("low_freq_factor", Json::number(r.low_freq_factor));
    o.set("high_freq_factor", Json::number(r.high_freq_factor));
  }
  if (r.type == "yarn") {
    if (r.attention_factor > 0) o.set("attention_factor", Json::number(r.attention_factor));
    o.set("beta_fast", Json::number(r.beta_fast));
    o.set("beta_slow", Json::number(r.beta_slow));
    if (r.mscale != 0) o.set("mscale", Json::number(r.mscale));
    if (r.mscale_all_dim != 0) o.set("mscale_all_dim", Json::number(r.mscale_all_dim));
    o.set("truncate", Json::boolean(r.truncate));
  }
  return o;
}

RopeScaling rope_scaling_from_json(const Json& j, int max_position_embeddings) {
  if (j.is_null()) return RopeScaling();
  double theta = NAN;
  RopeScaling r = check_rope_block(j, "rope_scaling", &theta);
  PYLLAMA_CHECK(std::isnan(theta), ValueError,
                "rope_scaling must not carry rope_theta here: LlamaConfig.rope_theta holds it");
  if ((r.type == "llama3" || r.type == "yarn") && r.original_max_position_embeddings == 0)
    r.original_max_position_embeddings = max_position_embeddings;
  return r;
}

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
  // transformers: `getattr(config, "head_dim", None) or hidden_size // num_attention_heads`
  int64_t HD = field(raw, "head_dim") ? positive_int(raw, "head_dim", false, 0) : 0;
  if (HD == 0) {
    PYLLAMA_CHECK(C % NH == 0, ValueError,
                  "config.json: hidden_size (" << C << ") is not divisible by num_attention_heads (" << NH
                                               << ") and there is no head_dim");
    HD = C / NH;
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
  RopeScaling scaling;
  std::string scaling_from;
  for (const char* block : {"rope_scaling", "rope_parameters"})
    if (const Json* b = field(raw, block)) {
      double t = NAN;
      RopeScaling r = check_rope_block(*b, block, &t);
      take_theta(t, std::string(block) + ".rope_theta");
      if (r.is_default()) continue;
      PYLLAMA_CHECK(scaling.is_default() || same_scaling(scaling, r), ValueError,
                    "config.json: " << scaling_from << " and " << block << " describe different RoPE scalings; "
                                    << "keep one");
      scaling = r;
      scaling_from = block;
    }
  if (std::isnan(theta)) theta = 10000.0;
  if (scaling.type == "llama3" || scaling.type == "yarn") {
    // transformers' standardize_rope_params: a top-level original_max_position_embeddings wins,
    // else the block's, else max_position_embeddings
    if (field(raw, "original_max_position_embeddings"))
      scaling.original_max_position_embeddings = (int)positive_int(raw, "original_max_position_embeddings", false, 0);
    if (scaling.original_max_position_embeddings == 0) scaling.original_max_position_embeddings = (int)P;
  }

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
  out.set("head_dim", Json::number((double)HD));
  out.set("attention_bias", Json::boolean(boolean(raw, "attention_bias", false)));
  out.set("mlp_bias", Json::boolean(boolean(raw, "mlp_bias", false)));
  out.set("rope_scaling", rope_scaling_json(scaling));
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
  c.head_dim_explicit = (int)j["head_dim"].as_int();
  c.attention_bias = j["attention_bias"].as_bool();
  c.mlp_bias = j["mlp_bias"].as_bool();
  c.rope_scaling = rope_scaling_from_json(j["rope_scaling"], c.max_position_embeddings);
  c.validate();
  return c;
}

}  // namespace pyllama
