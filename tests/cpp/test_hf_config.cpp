// config.json as transformers 4 and 5 write it, read by the core's one reader (hf_config.h).
// The same rules are tested against transformers itself in tests/test_config_hf.py.
#include <string>

#include "hf_config.h"
#include "test_util.h"

using namespace pyllama;

static std::string cfg(const std::string& extra) {
  return R"({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
             "num_attention_heads": 4, "model_type": "llama", "hidden_act": "silu")" +
         (extra.empty() ? std::string() : ", " + extra) + "}";
}

static LlamaConfig read(const std::string& text) { return llama_config_from_hf(Json::parse(text)); }

int main() {
  // transformers 5: rope_theta inside rope_parameters; transformers 4: top level
  CHECK(read(cfg(R"("rope_parameters": {"rope_type": "default", "rope_theta": 500000.0})")).rope_theta == 500000.f);
  CHECK(read(cfg(R"("rope_theta": 250000, "rope_scaling": null)")).rope_theta == 250000.f);
  CHECK(read(cfg("")).rope_theta == 10000.f);
  CHECK(read(cfg("")).num_key_value_heads == 4);
  CHECK(read(cfg(R"("head_dim": 8, "attention_bias": false, "mlp_bias": false, "pretraining_tp": 2)")).hidden_size == 32);
  // scaling read in either spelling (transformers' own files: tests/test_config_hf.py)
  {
    LlamaConfig c = read(cfg(R"("rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "rope_theta": 5e5}, "max_position_embeddings": 128)"));
    CHECK(c.rope_scaling.type == "llama3" && c.rope_scaling.factor == 8.0 && c.rope_theta == 5e5f);
    CHECK(c.rope_scaling.original_max_position_embeddings == 128);  // defaults to max_position_embeddings
    LlamaConfig d = read(cfg(R"("rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 64)"));
    CHECK(d.rope_scaling.type == "dynamic" && d.max_positions() == 128);
    CHECK(read(cfg(R"("rope_scaling": {"type": "linear", "factor": 2.0})")).rope_scaling.type == "linear");
  }
  CHECK_THROWS(read(cfg(R"("rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4})")),
               ValueError);  // llama3 without low/high_freq_factor
  CHECK_THROWS(read(cfg(R"("rope_scaling": {"type": "longrope", "short_factor": [1], "long_factor": [1]})")),
               ValueError);
  CHECK_THROWS(read(cfg(R"("rope_parameters": {"rope_type": "default", "unknown_key": 1})")), ValueError);
  CHECK_THROWS(read(cfg(R"("rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5})")),
               ValueError);
  // other math fields
  CHECK(read(cfg(R"("head_dim": 16)")).head_dim() == 16);
  CHECK(read(cfg(R"("attention_bias": true, "mlp_bias": true)")).attention_bias);
  CHECK_THROWS(read(cfg(R"("head_dim": 7)")), ValueError);
  CHECK_THROWS(read(R"({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "hidden_act": "gelu"})"), ValueError);
  // wrong JSON types name the field
  std::string msg;
  try {
    read(cfg(R"("rms_norm_eps": true)"));
  } catch (const ValueError& e) {
    msg = e.what();
  }
  CHECK(msg.find("rms_norm_eps") != std::string::npos);
  CHECK_THROWS(read("[1, 2]"), ValueError);
  CHECK_THROWS(read(R"({"vocab_size": 1e12, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                        "num_attention_heads": 4})"), ValueError);
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
