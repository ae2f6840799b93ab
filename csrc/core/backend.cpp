#include "backend.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>


namespace pyllama {

Model::Model(const LlamaConfig& cfg) : infos_(param_layout(cfg)) {
  n_params_ = infos_.empty() ? 0 : infos_.back().offset + infos_.back().numel;
}

namespace {
struct Rng {  // splitmix64 + Box-Muller: the same numbers on every platform
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return ((next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)
  void normal(float* out, size_t n, double std) {
    for (size_t i = 0; i < n; i += 2) {
      double u1 = uniform(), u2 = uniform();
      double r = std::sqrt(-2.0 * std::log(u1));
      out[i] = (float)(std * r * std::cos(2 * M_PI * u2));
      if (i + 1 < n) out[i + 1] = (float)(std * r * std::sin(2 * M_PI * u2));
    }
  }
};
}  // namespace

void Model::init_weights(uint64_t seed) {
  std::vector<float> staging;
  float* P = host_params();
  if (!P) {
    staging.resize(n_params_);
    P = staging.data();
  }
  Rng rng{seed * 0x2545F4914F6CDD1Dull + 1};
  const double std = 0.02, proj_std = 0.02 / std::sqrt(2.0 * config().num_hidden_layers);
  for (const auto& p : infos_) {
    float* w = P + p.offset;
    if (p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0) {
      std::fill(w, w + p.numel, 0.0f);  // projection biases start at zero (as transformers' nn.Linear init)
    } else if (p.shape.size() == 1) {
      std::fill(w, w + p.numel, 1.0f);
    } else {
      bool proj = p.name.find("o_proj") != std::string::npos || p.name.find("down_proj") != std::string::npos;
      rng.normal(w, p.numel, proj ? proj_std : std);
    }
  }
  if (!staging.empty()) params_from_host(P);
}

const int32_t* Model::kv_forward_greedy(const int32_t* tokens, int B, int T, const int32_t* slots,
                                        const int32_t* start_pos) {
  const float* logits = kv_forward(tokens, B, T, slots, start_pos, true);
  const int V = config().vocab_size;
  greedy_.resize((size_t)B);
  for (int b = 0; b < B; b++) {
    const float* row = logits + (size_t)b * V;
    int best = 0;
    for (int j = 1; j < V && !std::isnan(row[best]); j++)
      if (row[j] > row[best] || std::isnan(row[j])) best = j;
    greedy_[(size_t)b] = best;
  }
  return greedy_.data();
}

const int32_t* Model::kv_greedy_chain(const int32_t* tokens, int B, const int32_t* slots, const int32_t* start_pos,
                                      int n) {
  PYLLAMA_CHECK(n >= 1 && n <= greedy_chain_max(), ValueError,
                "kv_greedy_chain: n must be in [1, " << greedy_chain_max() << "] on " << device() << ", got " << n);
  chain_.resize((size_t)n * B);
  std::vector<int32_t> toks(tokens, tokens + B), pos(start_pos, start_pos + B);
  for (int i = 0; i < n; i++) {
    const int32_t* ids = kv_forward_greedy(toks.data(), B, 1, slots, pos.data());
    std::copy(ids, ids + B, chain_.begin() + (size_t)i * B);
    std::copy(ids, ids + B, toks.begin());
    for (auto& p : pos) p++;
  }
  return chain_.data();
}

// ---------------------------------------------------------------- backends by name

namespace {
std::mutex g_backends_mu;
std::map<std::string, BackendInfo>& backends() {
  static std::map<std::string, BackendInfo> m;
  return m;
}
bool find_backend(const std::string& name, BackendInfo* out) {
  std::lock_guard<std::mutex> lock(g_backends_mu);
  auto it = backends().find(name);
  if (it == backends().end()) return false;
  *out = it->second;
  return true;
}
}  // namespace

void register_backend(const std::string& name, const BackendInfo& info) {
  PYLLAMA_CHECK(info.make, ValueError, "register_backend('" << name << "'): no factory");
  std::lock_guard<std::mutex> lock(g_backends_mu);
  backends()[name] = info;
}

bool backend_available(const std::string& name) {
  BackendInfo info;
  return find_backend(name, &info);
}

int backend_device_count(const std::string& name) {
  BackendInfo info;
  if (!find_backend(name, &info)) return 0;
  return info.device_count ? info.device_count() : 1;
}

std::string backend_archs(const std::string& name) {
  BackendInfo info;
  return find_backend(name, &info) ? info.archs : std::string();
}

std::pair<std::string, int> parse_device(const std::string& device) {
  if (device == "cpu") return {"cpu", 0};
  if (device == "cuda") return {"cuda", 0};
  if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.size() < 12 &&
      std::all_of(device.begin() + 5, device.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return {"cuda", std::stoi(device.substr(5))};
  throw ValueError("unknown device '" + device + "': expected 'cpu', 'cuda' or 'cuda:N'");
}

void BackendOptions::validate() const {
  PYLLAMA_CHECK(matmul.empty() || matmul == "cublaslt" || matmul == "cublas" || matmul == "tiled", ValueError,
                "BackendOptions.matmul='" << matmul << "': use cublaslt, cublas or tiled (the matmul back end)");
  PYLLAMA_CHECK(attention == "flash" || attention == "simt" || attention == "naive", ValueError,
                "BackendOptions.attention='" << attention << "': use flash, simt or naive"
                                             << (attention == "gemm" ? "; the GEMM attention is in the kernel lab now "
                                                                       "(cuda/lab/attention_gemm.cu)"
                                                                     : ""));
}

std::unique_ptr<Model> make_model(const LlamaConfig& cfg, const std::string& device, DType dtype,
                                  const BackendOptions& options) {
  options.validate();
  auto [name, index] = parse_device(device);
  PYLLAMA_CHECK(dtype == DType::float32 || dtype == DType::bfloat16, ValueError,
                "model dtype must be float32 or bfloat16, got " << dtype_name(dtype));
  BackendInfo info;
  if (!find_backend(name, &info)) {
    if (name == "cpu")
      throw BackendUnavailable("no cpu backend is registered: call pyllama::register_backends() (all/backends.h) "
                               "at start-up");
    throw BackendUnavailable("this pyllama build has no " + name +
                             " backend (build_info()['cuda'] is False); reinstall with nvcc available and "
                             "PYLLAMA_CUDA=ON");
  }
  return info.make(cfg, index, dtype, options);
}

std::unique_ptr<Model> move_model(const Model& src, const std::string& device, DType dtype,
                                  const BackendOptions& options) {
  std::unique_ptr<Model> dst = make_model(src.config(), device, dtype, options);
  const size_t P = src.num_parameters();
  std::vector<float> a(P), b(P);
  src.params_to_host(a.data());
  dst->params_from_host(a.data());
  src.grads_to_host(a.data());
  dst->grads_from_host(a.data());
  if (src.has_moments()) {
    src.moments_to_host(a.data(), b.data());
    dst->moments_from_host(a.data(), b.data());
  }
  return dst;
}

}  // namespace pyllama
