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
  // scaling refused in either spelling
  CHECK_THROWS(read(cfg(R"("rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4})")), ValueError);
  CHECK_THROWS(read(cfg(R"("rope_scaling": {"type": "linear", "factor": 2.0})")), ValueError);
  CHECK_THROWS(read(cfg(R"("rope_parameters": {"rope_type": "default", "unknown_key": 1})")), ValueError);
  CHECK_THROWS(read(cfg(R"("rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5})")),
               ValueError);
  // other math fields
  CHECK_THROWS(read(cfg(R"("head_dim": 16)")), ValueError);
  CHECK_THROWS(read(cfg(R"("attention_bias": true)")), ValueError);
  CHECK_THROWS(read(cfg(R"("mlp_bias": true)")), ValueError);
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
