// pytorch_model.bin from C++ (no Python): load_pretrained finds pytorch_model.bin or its shards
// after the safetensors forms and loads them through the restricted unpickler (torch_bin.h).
// The files are written here the way torch.save lays them out (a stored zip holding data.pkl and
// data/<key>), with tensors sharing one storage at offsets and a transposed (strided) weight;
// a pickle that names os.system is refused before anything could run it.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "backends.h"
#include "checkpoint.h"
#include "common.h"
#include "test_util.h"
#include "torch_bin.h"

using namespace pyllama;

static void le(std::string& o, uint64_t v, int n) {
  for (int k = 0; k < n; k++) o += (char)((v >> (8 * k)) & 0xff);
}

// A zip of stored entries: local headers, central directory, end record.
static std::string zip_stored(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out, cd;
  for (const auto& e : entries) {
    const uint64_t at = out.size();
    le(out, 0x04034b50, 4), le(out, 20, 2), le(out, 0, 2), le(out, 0, 2), le(out, 0, 4), le(out, 0, 4);
    le(out, e.second.size(), 4), le(out, e.second.size(), 4), le(out, e.first.size(), 2), le(out, 0, 2);
    out += e.first + e.second;
    le(cd, 0x02014b50, 4), le(cd, 20, 2), le(cd, 20, 2), le(cd, 0, 2), le(cd, 0, 2), le(cd, 0, 4), le(cd, 0, 4);
    le(cd, e.second.size(), 4), le(cd, e.second.size(), 4), le(cd, e.first.size(), 2), le(cd, 0, 2), le(cd, 0, 2);
    le(cd, 0, 2), le(cd, 0, 2), le(cd, 0, 4), le(cd, at, 4);
    cd += e.first;
  }
  const uint64_t cd_at = out.size();
  out += cd;
  le(out, 0x06054b50, 4), le(out, 0, 2), le(out, 0, 2), le(out, entries.size(), 2), le(out, entries.size(), 2);
  le(out, cd.size(), 4), le(out, cd_at, 4), le(out, 0, 2);
  return out;
}

// Protocol-2 pickle opcodes, as torch.save writes them.
struct Pickle {
  std::string b = "\x80\x02";
  void str(const std::string& s) { b += 'X', le(b, s.size(), 4), b += s; }
  void global(const std::string& m, const std::string& n) { b += 'c' + m + "\n" + n + "\n"; }
  void integer(int64_t v) { b += 'J', le(b, (uint64_t)v, 4); }
  void ints(const std::vector<int64_t>& v) {
    b += '(';
    for (int64_t x : v) integer(x);
    b += 't';
  }
  // name -> _rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), offset, size, stride, False, OrderedDict())
  void tensor(const std::string& name, const std::string& key, int64_t numel, int64_t offset,
              const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
    str(name);
    global("torch._utils", "_rebuild_tensor_v2");
    b += "((";
    str("storage"), global("torch", "FloatStorage"), str(key), str("cpu"), integer(numel);
    b += "tQ";
    integer(offset), ints(size), ints(stride);
    b += '\x89';
    global("collections", "OrderedDict");
    b += ")RtR";
  }
};

static std::string floats(const float* p, size_t n) { return std::string(reinterpret_cast<const char*>(p), n * 4); }

static void write(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

// A .bin of the parameters [lo, hi): all in storage "0" (the flat buffer, each at its offset), except
// the first 2-D one, which is stored transposed in storage "1" with column-major strides.
static std::string bin_of(const Model& m, const std::vector<float>& flat, size_t lo, size_t hi) {
  const auto& infos = m.param_infos();
  Pickle p;
  p.b += "}(";
  std::string transposed;
  for (size_t i = lo; i < hi; i++) {
    const ParamInfo& info = infos[i];
    if (info.shape.size() == 2 && transposed.empty()) {
      const int64_t R = info.shape[0], C = info.shape[1];
      std::vector<float> t((size_t)(R * C));
      for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) t[(size_t)(c * R + r)] = flat[info.offset + (size_t)(r * C + c)];
      transposed = floats(t.data(), t.size());
      p.tensor(info.name, "1", R * C, 0, {R, C}, {1, R});
    } else {
      std::vector<int64_t> stride(info.shape.size(), 1);
      for (size_t d = info.shape.size(); d-- > 1;) stride[d - 1] = stride[d] * info.shape[d];
      p.tensor(info.name, "0", (int64_t)flat.size(), (int64_t)info.offset, info.shape, stride);
    }
  }
  p.b += "u.";
  return zip_stored({{"archive/data.pkl", p.b},
                     {"archive/byteorder", "little"},
                     {"archive/data/0", floats(flat.data(), flat.size())},
                     {"archive/data/1", transposed},
                     {"archive/version", "3\n"}});
}

int main() {
  register_backends();
  LlamaConfig c;
  c.vocab_size = 61, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 64;
  auto m = make_model(c, "cpu");
  m->init_weights(7);
  const Tensor flat_t = m->parameters_copy();
  std::vector<float> flat(flat_t.data<float>(), flat_t.data<float>() + flat_t.numel());
  const std::string dir = "pyllama_test_torch_bin";
  save_pretrained(*m, dir);  // config.json (+ model.safetensors, removed: the .bin forms come after it)
  std::remove((dir + "/model.safetensors").c_str());
  const size_t n = m->param_infos().size();

  auto check_loads = [&](const char* what) {
    auto loaded = load_pretrained(dir);
    const Tensor back = loaded->parameters_copy();
    CHECK((size_t)back.numel() == flat.size());
    CHECK(std::memcmp(back.raw(), flat.data(), flat.size() * 4) == 0);
    std::printf("%s: loaded, weights equal\n", what);
  };

  // one file
  write(dir + "/pytorch_model.bin", bin_of(*m, flat, 0, n));
  CHECK(checkpoint_weight_files(dir) == std::vector<std::string>{dir + "/pytorch_model.bin"});
  check_loads("pytorch_model.bin");
  const TorchBinFile f(dir + "/pytorch_model.bin");
  CHECK(f.entries().size() == n);
  for (const auto& info : m->param_infos())  // the first 2-D weight went in transposed
    if (info.shape.size() == 2) {
      CHECK(f.find(info.name)->stride == (std::vector<int64_t>{1, info.shape[0]}));
      break;
    }
  CHECK(f.find(m->param_infos()[2].name)->offset == m->param_infos()[2].offset);  // shared storage "0"

  // two shards and their index
  std::remove((dir + "/pytorch_model.bin").c_str());
  std::string index = "{\"metadata\": {}, \"weight_map\": {";
  for (size_t i = 0; i < n; i++)
    index += std::string(i ? ", " : "") + "\"" + m->param_infos()[i].name + "\": \"pytorch_model-0000" +
             (i < n / 2 ? "1" : "2") + "-of-00002.bin\"";
  write(dir + "/pytorch_model.bin.index.json", index + "}}");
  write(dir + "/pytorch_model-00001-of-00002.bin", bin_of(*m, flat, 0, n / 2));
  write(dir + "/pytorch_model-00002-of-00002.bin", bin_of(*m, flat, n / 2, n));
  CHECK(checkpoint_weight_files(dir).size() == 2);
  check_loads("pytorch_model.bin.index.json + 2 shards");

  // a shard whose pickle calls os.system: refused by name, nothing runs
  Pickle evil;
  evil.b += "}(";
  evil.str(m->param_infos()[0].name);
  evil.global("posix", "system");
  evil.str("touch " + dir + "/pwned");
  evil.b += "\x85RuR.";
  write(dir + "/pytorch_model-00002-of-00002.bin", zip_stored({{"archive/data.pkl", evil.b}}));
  bool refused = false;
  try {
    load_pretrained(dir);
  } catch (const ValueError& e) {
    refused = std::strstr(e.what(), "'posix.system'") && std::strstr(e.what(), "00002-of-00002.bin");
    std::printf("os.system payload -> %s\n", e.what());
  }
  CHECK(refused);
  std::ifstream pwned(dir + "/pwned");
  CHECK(!pwned.good());

  // a truncated shard: a ValueError naming it
  write(dir + "/pytorch_model-00002-of-00002.bin", bin_of(*m, flat, n / 2, n).substr(0, 300));
  CHECK_THROWS(load_pretrained(dir), ValueError);
  return test_summary("test_torch_bin");
}
