#include "checkpoint.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "hf_config.h"
#include "json.h"
#include "tensor.h"

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

static float f16_to_float(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp((float)mant, -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp((float)(mant | 0x400), (int)exp - 25);
  return sign ? -v : v;
}

std::unique_ptr<Model> load_pretrained(const std::string& dir, const std::string& device) {
  LlamaConfig cfg = load_config(dir + "/config.json");
  auto model = make_model(cfg, device);
  std::vector<float> host(model->num_parameters());
  std::string path = dir + "/model.safetensors";
  std::string blob = read_file(path);
  PYLLAMA_CHECK(blob.size() >= 8, ValueError, "'" << path << "' is too short to be a safetensors file");
  uint64_t hlen = 0;
  for (int k = 7; k >= 0; k--) hlen = (hlen << 8) | (unsigned char)blob[k];
  PYLLAMA_CHECK(hlen <= blob.size() - 8, ValueError, "'" << path << "': header length exceeds the file size");
  Json header = Json::parse(blob.substr(8, hlen));
  const char* data = blob.data() + 8 + hlen;
  size_t data_size = blob.size() - 8 - hlen;
  size_t loaded = 0;
  for (const auto& info : model->param_infos()) {
    PYLLAMA_CHECK(header.has(info.name), ValueError, "'" << path << "' lacks tensor '" << info.name << "'");
    const Json& t = header[info.name];
    const Json& shape = t["shape"];
    PYLLAMA_CHECK(shape.size() == info.shape.size(), ValueError, "tensor '" << info.name << "' has the wrong rank");
    for (size_t d = 0; d < info.shape.size(); d++)
      PYLLAMA_CHECK(shape.at(d).as_int() == info.shape[d], ValueError,
                    "tensor '" << info.name << "' has the wrong shape for config.json");
    uint64_t b = (uint64_t)t["data_offsets"].at(0).as_int(), e = (uint64_t)t["data_offsets"].at(1).as_int();
    const std::string& dt = t["dtype"].as_string();
    size_t elt = dt == "F32" ? 4 : (dt == "BF16" || dt == "F16") ? 2 : 0;
    PYLLAMA_CHECK(elt, ValueError, "tensor '" << info.name << "' has unsupported dtype " << dt);
    PYLLAMA_CHECK(e <= data_size && b <= e && e - b == info.numel * elt, ValueError,
                  "tensor '" << info.name << "' has bad data offsets");
    float* dst = host.data() + info.offset;
    const char* src = data + b;
    for (size_t i = 0; i < info.numel; i++) {
      if (elt == 4) std::memcpy(dst + i, src + 4 * i, 4);
      else {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = dt == "BF16" ? bf16_to_float(h) : f16_to_float(h);
      }
    }
    loaded++;
  }
  model->params_from_host(host.data());
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
  std::vector<float> host(model.num_parameters());
  model.params_to_host(host.data());
  for (const auto& info : model.param_infos())
    blob.append(reinterpret_cast<const char*>(host.data() + info.offset), info.numel * 4);
  write_atomic(dir + "/model.safetensors", blob);
  write_atomic(dir + "/config.json", cfg.dump() + "\n");
}

}  // namespace pyllama
