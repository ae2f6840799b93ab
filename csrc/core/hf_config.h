// hf_config.h — the one reader of a Hugging Face Llama config.json. It decides, for
// every field that changes the model's math, whether pyllama honours it or refuses it
// (docs/CHECKPOINTS.md lists them); fields that do not change the math are ignored.
// Python's LlamaConfig.from_dict and the C++ load_config both go through it.
//
//   pyllama::Json raw = pyllama::Json::parse(text);
//   pyllama::Json cfg = pyllama::normalize_hf_config(raw);   // throws ValueError naming the field
//   cfg["rope_theta"].as_number();                            // from either spelling
//   pyllama::LlamaConfig c = pyllama::llama_config_from_hf(raw);
//
// RoPE settings come in two spellings: transformers 4 writes `rope_scaling` (with `type` or
// `rope_type`) beside a top-level `rope_theta`; transformers 5 writes `rope_parameters`
// (`rope_type`, `rope_theta` and the type's own keys). Both are read; where they overlap they
// must agree. rope_type default, linear, dynamic, yarn and llama3 are implemented (rope.h);
// longrope and unknown types are refused by name.
#pragma once
#include "json.h"
#include "llama_config.h"

namespace pyllama {

// A JSON object holding exactly LlamaConfig's fields (Hugging Face names, canonical spelling:
// rope_theta at the top level, num_key_value_heads and head_dim filled in, rope_scaling null or
// {"rope_type": ..., the type's keys with their values}), plus bos_token_id / eos_token_id passed
// through when present. Throws ValueError naming the field for anything refused.
Json normalize_hf_config(const Json& raw);
// rope_scaling in that canonical form (null for the default), and back (checked as config.json's).
Json rope_scaling_json(const RopeScaling& r);
RopeScaling rope_scaling_from_json(const Json& j, int max_position_embeddings);
LlamaConfig llama_config_from_hf(const Json& raw);

}  // namespace pyllama
