#include "backend.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <sstream>


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

const int32_t* Model::kv_forward_greedy_impl(const int32_t* tokens, int B, int T, const int32_t* slots,
                                             const int32_t* start_pos) {
  const float* logits = kv_forward_impl(tokens, B, T, slots, start_pos, true);
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

const int32_t* Model::kv_greedy_chain_impl(const int32_t* tokens, int B, const int32_t* slots,
                                           const int32_t* start_pos, int n) {
  chain_.resize((size_t)n * B);
  std::vector<int32_t> toks(tokens, tokens + B), pos(start_pos, start_pos + B);
  for (int i = 0; i < n; i++) {
    const int32_t* ids = kv_forward_greedy_impl(toks.data(), B, 1, slots, pos.data());
    std::copy(ids, ids + B, chain_.begin() + (size_t)i * B);
    std::copy(ids, ids + B, toks.begin());
    for (auto& p : pos) p++;
  }
  return chain_.data();
}

// ---------------------------------------------------------------- the Tensor interface

namespace {
std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < t.ndim(); i++) os << (i ? ", " : "") << t.shape()[(size_t)i];
  os << (t.ndim() == 1 ? ",)" : ")");
  return os.str();
}

// An int32 tensor of ndim dimensions, on the host (a device tensor is copied there: the
// backends read ids on the host).
Tensor host_ids(const Tensor& t, int ndim, const char* what, const char* dims) {
  PYLLAMA_CHECK(t.raw() != nullptr || t.ndim() > 0, ValueError, what << " is missing");
  PYLLAMA_CHECK(t.dtype() == DType::int32, TypeError,
                what << " must be an int32 tensor, got " << dtype_name(t.dtype()));
  PYLLAMA_CHECK(t.ndim() == ndim, ValueError,
                what << " must be " << ndim << "-D " << dims << ", got " << t.ndim() << "-D");
  return t.device() == Device::cpu ? t : t.to(Device::cpu);
}

void check_ids(const int32_t* ids, int64_t n, int V, const char* what) {
  for (int64_t i = 0; i < n; i++)
    PYLLAMA_CHECK(ids[i] >= 0 && ids[i] < V, ValueError,
                  what << " id " << ids[i] << " at flat position " << i << " is out of range [0, " << V
                       << "): the model's vocab_size is " << V);
}

// A float32 tensor of n elements (any shape), on the host.
Tensor host_flat(const Tensor& t, size_t n, const char* what) {
  PYLLAMA_CHECK(t.dtype() == DType::float32, TypeError, what << " must be float32, got " << dtype_name(t.dtype()));
  PYLLAMA_CHECK((size_t)t.numel() == n, ValueError,
                what << " must have " << n << " elements (the flat parameter layout), got " << t.numel());
  return t.device() == Device::cpu ? t : t.to(Device::cpu);
}

// What kv_forward, kv_forward_greedy and kv_greedy_chain check: ids, one slot and start
// position per row, each row's positions inside the cache.
struct KvArgs {
  Tensor tokens, slots, start_pos;
  int B = 0, T = 0;
};
}  // namespace

float Model::forward(const Tensor& tokens, const Tensor& labels) {
  const Tensor ids = host_ids(tokens, 2, "input_ids", "(batch, seq_len)");
  const int64_t B = ids.size(0), T = ids.size(1);
  PYLLAMA_CHECK(B >= 1 && T >= 1, ValueError, "forward: batch and sequence length must be >= 1, got B=" << B << " T=" << T);
  const LlamaConfig& cfg = config();
  PYLLAMA_CHECK(T <= cfg.max_positions(), ValueError,
                "sequence length " << T << " exceeds "
                                   << (cfg.max_positions() == cfg.max_position_embeddings
                                           ? "max_position_embeddings="
                                           : "max_position_embeddings * rope_scaling factor = ")
                                   << cfg.max_positions());
  const int V = cfg.vocab_size;
  check_ids(ids.data<int32_t>(), B * T, V, "input token");
  Tensor lab;
  if (labels.raw() != nullptr || labels.ndim() > 0) {
    lab = host_ids(labels, 2, "labels", "(batch, seq_len)");
    PYLLAMA_CHECK(lab.size(0) == B && (lab.size(1) == T || lab.size(1) == T + 1), ValueError,
                  "labels shape " << shape_str(lab) << " must be input_ids shape " << shape_str(ids)
                                  << " or have one more column");
    const int32_t* l = lab.data<int32_t>();
    for (int64_t i = 0; i < lab.numel(); i++)
      PYLLAMA_CHECK(l[i] == -100 || (l[i] >= 0 && l[i] < V), ValueError,
                    "label " << l[i] << " at flat position " << i << " is out of range: use ids in [0, " << V
                             << ") or -100 to ignore a position");
  }
  // the label shift, for every backend: position t is trained to predict labels[t + 1]
  std::vector<int32_t> targets;
  if (lab.ndim()) {
    const int64_t LT = lab.size(1);
    const int32_t* l = lab.data<int32_t>();
    targets.resize((size_t)(B * T));
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < T; t++) targets[(size_t)(b * T + t)] = t + 1 < LT ? l[b * LT + t + 1] : -100;
  }
  return forward_impl(ids.data<int32_t>(), lab.ndim() ? targets.data() : nullptr, (int)B, (int)T);
}

void Model::logits_into(Tensor& dst) const {
  PYLLAMA_CHECK(has_logits(), ValueError, "no logits: run forward first (backward overwrites them)");
  const int64_t B = last_B(), T = last_T(), V = config().vocab_size;
  PYLLAMA_CHECK(dst.dtype() == DType::float32 && dst.device() == Device::cpu && dst.numel() == B * T * V,
                ValueError, "logits_into: dst must be a float32 host tensor of " << B << " x " << T << " x " << V
                                                                                 << " elements");
  logits_impl(dst.data<float>());
}

Tensor Model::logits() const {
  PYLLAMA_CHECK(has_logits(), ValueError, "no logits: run forward first (backward overwrites them)");
  Tensor out = Tensor::empty({last_B(), last_T(), (int64_t)config().vocab_size}, DType::float32);
  logits_into(out);
  return out;
}

namespace {
KvArgs kv_args(const Model& m, const Tensor& tokens, const Tensor& slots, const Tensor& start_pos) {
  KvArgs k;
  k.tokens = host_ids(tokens, 2, "tokens", "(batch, seq_len)");
  k.B = (int)k.tokens.size(0);
  k.T = (int)k.tokens.size(1);
  k.slots = host_ids(slots, 1, "slots", "(one entry per row)");
  k.start_pos = host_ids(start_pos, 1, "start_pos", "(one entry per row)");
  PYLLAMA_CHECK(k.slots.size(0) == k.B, ValueError, "slots must be 1-D with one entry per row");
  PYLLAMA_CHECK(k.start_pos.size(0) == k.B, ValueError, "start_pos must be 1-D with one entry per row");
  const int n_slots = m.kv_slots(), len = m.kv_max_len();
  PYLLAMA_CHECK(n_slots > 0, ValueError, "kv_forward: call kv_reset(n_slots, max_len) first");
  PYLLAMA_CHECK(k.B >= 1 && k.T >= 1, ValueError, "kv_forward: B and T must be >= 1");
  check_ids(k.tokens.data<int32_t>(), (int64_t)k.B * k.T, m.config().vocab_size, "input token");
  const int32_t* s = k.slots.data<int32_t>();
  const int32_t* p = k.start_pos.data<int32_t>();
  for (int b = 0; b < k.B; b++) {
    PYLLAMA_CHECK(s[b] >= 0 && s[b] < n_slots, ValueError,
                  "kv_forward: slot " << s[b] << " out of range [0, " << n_slots << ")");
    PYLLAMA_CHECK(p[b] >= 0 && (int64_t)p[b] + k.T <= len, ValueError,
                  "kv_forward: positions " << p[b] << ".." << (int64_t)p[b] + k.T - 1
                                           << " do not fit the cache length " << len);
  }
  return k;
}

template <typename T>
Tensor host_copy(const T* src, const std::vector<int64_t>& shape, DType dt) {
  Tensor out = Tensor::empty(shape, dt);
  std::copy(src, src + out.numel(), out.data<T>());
  return out;
}
}  // namespace

Tensor Model::kv_forward(const Tensor& tokens, const Tensor& slots, const Tensor& start_pos, bool last_only) {
  const KvArgs k = kv_args(*this, tokens, slots, start_pos);
  const float* out = kv_forward_impl(k.tokens.data<int32_t>(), k.B, k.T, k.slots.data<int32_t>(),
                                     k.start_pos.data<int32_t>(), last_only);
  const int64_t V = config().vocab_size;
  return last_only ? host_copy(out, {k.B, V}, DType::float32) : host_copy(out, {k.B, k.T, V}, DType::float32);
}

Tensor Model::kv_forward_greedy(const Tensor& tokens, const Tensor& slots, const Tensor& start_pos) {
  const KvArgs k = kv_args(*this, tokens, slots, start_pos);
  const int32_t* out = kv_forward_greedy_impl(k.tokens.data<int32_t>(), k.B, k.T, k.slots.data<int32_t>(),
                                              k.start_pos.data<int32_t>());
  return host_copy(out, {k.B}, DType::int32);
}

Tensor Model::kv_greedy_chain(const Tensor& tokens, const Tensor& slots, const Tensor& start_pos, int n) {
  const KvArgs k = kv_args(*this, tokens, slots, start_pos);
  PYLLAMA_CHECK(k.T == 1, ValueError,
                "kv_greedy_chain: tokens must be (B, 1), one token per row (got T = " << k.T << ")");
  PYLLAMA_CHECK(n >= 1 && n <= greedy_chain_max(), ValueError,
                "kv_greedy_chain: n must be in [1, " << greedy_chain_max() << "] on " << device() << ", got " << n);
  const int32_t* p = k.start_pos.data<int32_t>();
  for (int b = 0; b < k.B; b++)
    PYLLAMA_CHECK((int64_t)p[b] + n <= kv_max_len(), ValueError,
                  "kv_greedy_chain: " << n << " steps from position " << p[b] << " do not fit the cache length "
                                      << kv_max_len() << " (kv_reset with a longer max_len, or fewer steps)");
  const int32_t* out =
      kv_greedy_chain_impl(k.tokens.data<int32_t>(), k.B, k.slots.data<int32_t>(), p, n);
  return host_copy(out, {(int64_t)n, (int64_t)k.B}, DType::int32);
}

void Model::kv_reorder(const Tensor& src) {
  const Tensor s = host_ids(src, 1, "kv_reorder's src", "(one source slot per slot)");
  const int n = (int)s.size(0), n_slots = kv_slots();
  PYLLAMA_CHECK(n == n_slots, ValueError, "kv_reorder: expected " << n_slots << " source slots, got " << n);
  const int32_t* p = s.data<int32_t>();
  for (int i = 0; i < n; i++)
    PYLLAMA_CHECK(p[i] >= 0 && p[i] < n_slots, ValueError, "kv_reorder: source slot " << p[i] << " out of range");
  kv_reorder_impl(p, n);
}

namespace {
Device device_of(const Model& m, int* index) {
  auto [name, idx] = parse_device(m.device());
  *index = idx;
  return name == "cpu" ? Device::cpu : Device::cuda;
}
}  // namespace

Tensor Model::parameters() {
  int index = 0;
  const Device d = device_of(*this, &index);
  return Tensor::wrap(params_device(), {(int64_t)n_params_}, DType::float32, nullptr, d, index);
}

Tensor Model::gradients() {
  int index = 0;
  const Device d = device_of(*this, &index);
  return Tensor::wrap(grads_device(), {(int64_t)n_params_}, DType::float32, nullptr, d, index);
}

Tensor Model::parameters_copy() const {
  Tensor out = Tensor::empty({(int64_t)n_params_}, DType::float32);
  params_to_host(out.data<float>());
  return out;
}

Tensor Model::gradients_copy() const {
  Tensor out = Tensor::empty({(int64_t)n_params_}, DType::float32);
  grads_to_host(out.data<float>());
  return out;
}

std::pair<Tensor, Tensor> Model::moments() const {
  Tensor m = Tensor::empty({(int64_t)n_params_}, DType::float32), v = Tensor::empty({(int64_t)n_params_}, DType::float32);
  moments_to_host(m.data<float>(), v.data<float>());
  return {m, v};
}

void Model::set_parameters(const Tensor& src) {
  const Tensor h = host_flat(src, n_params_, "parameters");
  params_from_host(h.data<float>());
}

void Model::set_gradients(const Tensor& src) {
  const Tensor h = host_flat(src, n_params_, "gradients");
  grads_from_host(h.data<float>());
}

void Model::set_moments(const Tensor& exp_avg, const Tensor& exp_avg_sq) {
  const Tensor m = host_flat(exp_avg, n_params_, "exp_avg"), v = host_flat(exp_avg_sq, n_params_, "exp_avg_sq");
  moments_from_host(m.data<float>(), v.data<float>());
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
