#include "checkpoint.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/stat.h>

#include "hf_config.h"
#include "json.h"
#include "safetensors.h"
#include "tensor.h"
#include "torch_bin.h"

namespace pyllama {

static std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  PYLLAMA_CHECK(f.good(), IOError, "cannot open '" << path << "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

LlamaConfig load_config(const std::string& path) {
  try {
    return llama_config_from_hf(Json::parse(read_file(path)));
  } catch (const ValueError& e) {
    throw ValueError("'" + path + "': " + e.what());
  }
}

// The shard files an index (model.safetensors.index.json, pytorch_model.bin.index.json) names in
// its weight_map: each once, in name order, inside `dir`.
static std::vector<std::string> index_shards(const std::string& dir, const std::string& index) {
  Json j;
  try {
    j = Json::parse(read_file(index));
  } catch (const ValueError& e) {
    throw ValueError("'" + index + "' is not valid JSON: " + e.what());
  }
  PYLLAMA_CHECK(j.kind() == Json::Kind::object && j.has("weight_map") && j["weight_map"].kind() == Json::Kind::object,
                ValueError, "'" << index << "' has no weight_map object");
  std::map<std::string, bool> names;
  for (const auto& kv : j["weight_map"].items()) {
    PYLLAMA_CHECK(kv.second.kind() == Json::Kind::string, ValueError,
                  "'" << index << "': weight_map['" << kv.first << "'] must be a file name");
    const std::string& f = kv.second.as_string();
    PYLLAMA_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..", ValueError,
                  "'" << index << "': weight_map names '" << f << "', not a file of the folder");
    names[f] = true;
  }
  std::vector<std::string> out;
  for (const auto& kv : names) out.push_back(dir + "/" + kv.first);
  return out;
}

static bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// The safetensors files of a Hugging Face folder: model.safetensors, else the shards that
// model.safetensors.index.json's weight_map names (each once, in name order).
std::vector<std::string> safetensors_files(const std::string& dir) {
  if (is_file(dir + "/model.safetensors")) return {dir + "/model.safetensors"};
  const std::string index = dir + "/model.safetensors.index.json";
  PYLLAMA_CHECK(is_file(index), IOError,
                "'" << dir << "' has no model.safetensors (nor a sharded model.safetensors.index.json)");
  return index_shards(dir, index);
}

// The weight files of a Hugging Face folder, first found of: model.safetensors, the shards of
// model.safetensors.index.json, pytorch_model.bin, the shards of pytorch_model.bin.index.json.
std::vector<std::string> checkpoint_weight_files(const std::string& dir) {
  if (is_file(dir + "/model.safetensors") || is_file(dir + "/model.safetensors.index.json"))
    return safetensors_files(dir);
  if (is_file(dir + "/pytorch_model.bin")) return {dir + "/pytorch_model.bin"};
  const std::string index = dir + "/pytorch_model.bin.index.json";
  PYLLAMA_CHECK(is_file(index), IOError,
                "'" << dir << "' has no model.safetensors nor pytorch_model.bin (nor a sharded index of either)");
  return index_shards(dir, index);
}

static bool is_torch_bin(const std::string& path) {
  for (const char* ext : {".bin", ".pt", ".pth"}) {
    const size_t n = std::strlen(ext);
    if (path.size() >= n && path.compare(path.size() - n, n, ext) == 0) return true;
  }
  return false;
}

void load_weight_files(const std::vector<std::string>& files, const std::vector<ParamInfo>& infos, bool tied,
                       float* dst, bool check_finite) {
  WeightMatcher match(infos, tied);
  for (const auto& path : files) {
    auto load = [&](const auto& f) {
      for (const auto& e : f.entries()) {
        if (const ParamInfo* p = match.take(e.name, e.shape, path))
          f.read_float32(e, dst + p->offset, check_finite);
        else if (float* h = match.tied_head(e.name, e.shape))  // checked against the embedding by finish
          f.read_float32(e, h, false);
      }
    };
    if (is_torch_bin(path))
      load(TorchBinFile(path));  // no pickled code runs: torch_bin.h
    else
      load(SafetensorsFile(path));
  }
  match.finish(dst);
}

std::unique_ptr<Model> load_pretrained(const std::string& dir, const std::string& device) {
  LlamaConfig cfg = load_config(dir + "/config.json");
  auto model = make_model(cfg, device);
  std::vector<float> staging;
  float* dst = model->host_params();  // the CPU: straight into the model
  if (!dst) {
    staging.resize(model->num_parameters());
    dst = staging.data();
  }
  load_weight_files(checkpoint_weight_files(dir), model->param_infos(), cfg.tie_word_embeddings, dst,
                    /*check_finite=*/true);
  if (!staging.empty()) model->set_parameters(Tensor::wrap(dst, {(int64_t)staging.size()}, DType::float32, nullptr));
  return model;
}

static void write_atomic(const std::string& path, const std::string& bytes) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    PYLLAMA_CHECK(f.good(), IOError, "cannot write '" << tmp << "'");
    f.write(bytes.data(), (std::streamsize)bytes.size());
    f.flush();
    PYLLAMA_CHECK(f.good(), IOError, "writing '" << tmp << "' failed (disk full?)");
  }
  PYLLAMA_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, IOError, "cannot rename '" << tmp << "' to '" << path << "'");
}

void save_pretrained(const Model& model, const std::string& dir) {
  ::mkdir(dir.c_str(), 0755);
  const LlamaConfig& c = model.config();
  Json cfg = Json::object();
  cfg.set("architectures", [] { Json a = Json::array(); a.push(Json::str("LlamaForCausalLM")); return a; }());
  cfg.set("model_type", Json::str("llama"));
  cfg.set("hidden_act", Json::str("silu"));
  cfg.set("vocab_size", Json::number(c.vocab_size));
  cfg.set("hidden_size", Json::number(c.hidden_size));
  cfg.set("intermediate_size", Json::number(c.intermediate_size));
  cfg.set("num_hidden_layers", Json::number(c.num_hidden_layers));
  cfg.set("num_attention_heads", Json::number(c.num_attention_heads));
  cfg.set("num_key_value_heads", Json::number(c.num_key_value_heads));
  cfg.set("max_position_embeddings", Json::number(c.max_position_embeddings));
  cfg.set("rms_norm_eps", Json::number(c.rms_norm_eps));
  cfg.set("rope_theta", Json::number(c.rope_theta));
  cfg.set("tie_word_embeddings", Json::boolean(c.tie_word_embeddings));
  cfg.set("head_dim", Json::number(c.head_dim()));
  cfg.set("attention_bias", Json::boolean(c.attention_bias));
  cfg.set("mlp_bias", Json::boolean(c.mlp_bias));
  cfg.set("rope_scaling", rope_scaling_json(c.rope_scaling));
  cfg.set("torch_dtype", Json::str("float32"));

  Json header = Json::object();
  size_t off = 0;
  for (const auto& info : model.param_infos()) {
    Json t = Json::object();
    t.set("dtype", Json::str("F32"));
    Json shape = Json::array();
    for (auto s : info.shape) shape.push(Json::number((double)s));
    t.set("shape", shape);
    Json offs = Json::array();
    offs.push(Json::number((double)off));
    offs.push(Json::number((double)(off + info.numel * 4)));
    t.set("data_offsets", offs);
    header.set(info.name, t);
    off += info.numel * 4;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8) h += ' ';
  std::string blob(8, '\0');
  uint64_t n = h.size();
  for (int k = 0; k < 8; k++) blob[k] = (char)((n >> (8 * k)) & 0xff);
  blob += h;
  const Tensor host = model.parameters_copy();
  for (const auto& info : model.param_infos())
    blob.append(reinterpret_cast<const char*>(host.data<float>() + info.offset), info.numel * 4);
  write_atomic(dir + "/model.safetensors", blob);
  write_atomic(dir + "/config.json", cfg.dump() + "\n");
}

}  // namespace pyllama
