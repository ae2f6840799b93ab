// model.cpp — LLaMA forward/backward on the CPU and KV-cache inference.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "adamw_cpu.h"
#include "matmul.h"
#include "ops.h"
#include "rope.h"
#include "runtime.h"
#include "tensor.h"
#ifdef PYLLAMA_HAVE_OPENMP
#include <omp.h>
#endif

namespace pyllama {

LlamaModel::LlamaModel(const LlamaConfig& cfg) : Model(cfg), cfg_(cfg) {
  C_ = cfg.hidden_size;
  NH_ = cfg.num_attention_heads;
  NKV_ = cfg.num_key_value_heads;
  HS_ = cfg.head_dim();
  QD_ = NH_ * HS_;  // = C unless config.json sets another head_dim
  KVD_ = NKV_ * HS_;
  QKVD_ = QD_ + 2 * KVD_;
  I_ = cfg.intermediate_size;
  V_ = cfg.vocab_size;
  L_ = cfg.num_hidden_layers;

  // offsets of the layer stack in the flat layout (param_layout, llama_config.cpp)
  layer_off_ = param_info("model.layers.0.input_layernorm.weight").offset;
  layer_size_ = L_ > 1 ? param_info("model.layers.1.input_layernorm.weight").offset - layer_off_
                       : param_info("model.norm.weight").offset - layer_off_;
  lnf_off_ = param_info("model.norm.weight").offset;
  wout_off_ = cfg.tie_word_embeddings ? 0 : param_info("lm_head.weight").offset;  // tied: the embedding
  const size_t off = num_parameters();
  params_.resize(off);  // zero, untouched until written (host_alloc.h)
  rope_ = RopeTables(cfg);
}

LlamaModel::LayerPtrs LlamaModel::layer(float* base, int l) const {
  float* p = base + layer_off_ + (size_t)l * layer_size_;
  // the order of param_layout (llama_config.cpp)
  const bool ab = cfg_.attention_bias, mb = cfg_.mlp_bias;
  LayerPtrs w;
  w.ln1 = p;
  p += C_;
  w.wqkv = p;
  p += (size_t)QKVD_ * C_;
  w.bqkv = ab ? p : nullptr;
  p += ab ? QKVD_ : 0;
  w.wo = p;
  p += (size_t)C_ * QD_;
  w.bo = ab ? p : nullptr;
  p += ab ? C_ : 0;
  w.ln2 = p;
  p += C_;
  w.wgu = p;
  p += (size_t)2 * I_ * C_;
  w.bgu = mb ? p : nullptr;
  p += mb ? 2 * I_ : 0;
  w.wd = p;
  p += (size_t)C_ * I_;
  w.bd = mb ? p : nullptr;
  return w;
}

void LlamaModel::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.f); }  // nothing to do before first use

// ---------------------------------------------------------------- activations

namespace {
// Training activations, carved out of one buffer. N = B*T.
struct Acts {
  float* x0;  // (N, C) embedding output
  struct Layer {
    float *ln1, *rstd1, *qkv, *lse, *atty, *res1, *ln2, *rstd2, *gu, *h, *res2;
  };
  std::vector<Layer> layers;
  float *lnf, *rstdf, *logits, *lse;
  // backward scratch
  float *dres, *dln, *dqkv, *datty, *dgu, *dh, *att_scratch;
};

size_t carve_acts(Acts* a, float* base, int B, int T, int C, int QD, int QKVD, int NH, int I, int V, int L) {
  size_t off = 0, N = (size_t)B * T;
  auto take = [&](size_t n) {
    float* p = base ? base + off : nullptr;
    off += (n + 15) & ~size_t(15);  // keep every array 64-byte aligned
    return p;
  };
  a->x0 = take(N * C);
  a->layers.resize(L);
  for (int l = 0; l < L; l++) {
    auto& y = a->layers[l];
    y.ln1 = take(N * C);
    y.rstd1 = take(N);
    y.qkv = take(N * QKVD);
    y.lse = take((size_t)B * NH * T);  // attention row log-sum-exps
    y.atty = take(N * QD);
    y.res1 = take(N * C);
    y.ln2 = take(N * C);
    y.rstd2 = take(N);
    y.gu = take(N * 2 * I);
    y.h = take(N * I);
    y.res2 = take(N * C);
  }
  a->lnf = take(N * C);
  a->rstdf = take(N);
  a->logits = take(N * V);
  a->lse = take(N);
  a->dres = take(N * C);
  a->dln = take(N * C);
  a->dqkv = take(N * QKVD);
  a->datty = take(N * QD);
  a->dgu = take(N * 2 * I);
  a->dh = take(N * I);
  a->att_scratch = take((size_t)attention_scratch_floats(T));
  return off;
}
}  // namespace

void LlamaModel::ensure_acts(int B, int T) {
  Acts a;
  size_t need = carve_acts(&a, nullptr, B, T, C_, QD_, QKVD_, NH_, I_, V_, L_);
  if (need > acts_capacity_) {
    acts_.clear();
    acts_.shrink_to_fit();
    acts_.resize(need + 16);
    acts_capacity_ = need;
  }
  size_t n = (size_t)B * T;
  if (tokens_.size() < n) {
    tokens_.resize(n);
    targets_.resize(n);
    pos_.resize(n);
  }
}

static float* aligned64(HostVector<float>& v) {
  uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}


// ---------------------------------------------------------------- forward

namespace {
// y (N, OUT) += b (OUT) on every row
void bias_forward(float* y, const float* b, long N, int OUT) {
#pragma omp parallel for schedule(static) if (N * OUT > (1 << 15))
  for (long n = 0; n < N; n++) {
    float* row = y + (size_t)n * OUT;
#pragma omp simd
    for (int j = 0; j < OUT; j++) row[j] += b[j];
  }
}
// db (OUT) += the column sums of dy (N, OUT)
void bias_backward(float* db, const float* dy, long N, int OUT) {
  const int block = 64;
#pragma omp parallel for schedule(static) if (N * OUT > (1 << 15))
  for (int j0 = 0; j0 < OUT; j0 += block) {
    const int j1 = std::min(OUT, j0 + block);
    float acc[64] = {0};
    for (long n = 0; n < N; n++) {
      const float* row = dy + (size_t)n * OUT;
      for (int j = j0; j < j1; j++) acc[j - j0] += row[j];
    }
    for (int j = j0; j < j1; j++) db[j] += acc[j - j0];
  }
}
}  // namespace

template <class Linear, class Attend>
void LlamaModel::layer_forward(const LayerPtrs& w, const LayerBufs& y, const float* x, long N, const int32_t* pos,
                               Linear&& linear, Attend&& attend) {
  const float eps = cfg_.rms_norm_eps;
  rmsnorm_forward(y.ln1, y.rstd1, x, w.ln1, N, C_, eps);
  linear(y.qkv, y.ln1, w.wqkv, (int)N, C_, QKVD_);
  if (w.bqkv) bias_forward(y.qkv, w.bqkv, N, QKVD_);
  rope_apply(y.qkv, QKVD_, pos, rope_.cos(), rope_.sin(), N, NH_, HS_, false);
  rope_apply(y.qkv + QD_, QKVD_, pos, rope_.cos(), rope_.sin(), N, NKV_, HS_, false);
  attend(y.qkv, y.atty);
  linear(y.o, y.atty, w.wo, (int)N, QD_, C_);
  if (w.bo) bias_forward(y.o, w.bo, N, C_);
  residual_forward(y.res1, y.o, x, N * C_);
  rmsnorm_forward(y.ln2, y.rstd2, y.res1, w.ln2, N, C_, eps);
  linear(y.gu, y.ln2, w.wgu, (int)N, C_, 2 * I_);
  if (w.bgu) bias_forward(y.gu, w.bgu, N, 2 * I_);
  swiglu_forward(y.h, y.gu, N, I_);
  linear(y.d, y.h, w.wd, (int)N, I_, C_);
  if (w.bd) bias_forward(y.d, w.bd, N, C_);
  residual_forward(y.res2, y.d, y.res1, N * C_);
}

float LlamaModel::forward_impl(const int32_t* tokens, const int32_t* targets, int B, int T) {
  const long N = (long)B * T;
  ensure_acts(B, T);
  B_ = B;
  T_ = T;
  Acts a;
  carve_acts(&a, aligned64(acts_), B, T, C_, QD_, QKVD_, NH_, I_, V_, L_);
  std::memcpy(tokens_.data(), tokens, sizeof(int32_t) * N);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      pos_[(size_t)b * T + t] = t;
      targets_[(size_t)b * T + t] = targets ? targets[(size_t)b * T + t] : -100;
    }
  have_targets_ = targets != nullptr;
  rope_.update(T);  // dynamic RoPE scaling: this pass's frequencies (transformers' rule)
  float* P = params_.data();

  embedding_forward(a.x0, tokens_.data(), wte(P), N, C_);
  const float* x = a.x0;
  for (int l = 0; l < L_; l++) {
    auto& y = a.layers[l];
    // the projections write straight into res1 / res2, which the residual adds then complete
    const LayerBufs bufs{y.ln1, y.rstd1, y.qkv, y.atty, y.res1, y.res1, y.ln2, y.rstd2, y.gu, y.h, y.res2, y.res2};
    layer_forward(layer(P, l), bufs, x, N, pos_.data(), linear_forward, [&](const float* qkv, float* atty) {
      attention_forward_flash(atty, y.lse, a.att_scratch, qkv, B, T, NH_, NKV_, HS_);
    });
    x = y.res2;
  }
  rmsnorm_forward(a.lnf, a.rstdf, x, lnf(P), N, C_, cfg_.rms_norm_eps);
  linear_forward(a.logits, a.lnf, wout(P), N, C_, V_);
  logits_ptr_ = a.logits;
  int count = 0;
  double total = crossentropy_forward(a.lse, a.logits, targets_.data(), N, V_, &count);
  count_ = count;
  loss_ = (have_targets_ && count > 0) ? (float)(total / count) : NAN;
  if (defer_loss_ && have_targets_) {
    PYLLAMA_CHECK(deferred_.size() < 256, ValueError,
                  "more than 256 forwards with deferred losses: call norm_and_losses to read them");
    deferred_.push_back((double)loss_);
    return NAN;
  }
  return loss_;
}

// ---------------------------------------------------------------- backward

void LlamaModel::backward(float scale) {
  PYLLAMA_CHECK(B_ > 0 && logits_ptr_, ValueError, "backward() needs a forward pass with labels first");
  PYLLAMA_CHECK(have_targets_, ValueError, "backward() needs the last forward pass to have labels");
  const int B = B_, T = T_;
  const long N = (long)B * T;
  Acts a;
  carve_acts(&a, aligned64(acts_), B, T, C_, QD_, QKVD_, NH_, I_, V_, L_);
  if (count_ == 0) return;  // no counted targets: the loss does not depend on the parameters
  float* P = params_.data();
  float* G = ensure_grads();

  // logits -> dlogits in place (the caller already has its copy of the logits)
  crossentropy_backward(a.logits, a.logits, a.lse, targets_.data(), scale / count_, N, V_);
  logits_ptr_ = nullptr;  // overwritten
  linear_backward(a.dln, wout(G), a.logits, a.lnf, wout(P), N, C_, V_);
  std::memset(a.dres, 0, sizeof(float) * N * C_);
  const float* xL = L_ > 0 ? a.layers[L_ - 1].res2 : a.x0;
  rmsnorm_backward(a.dres, lnf(G), a.dln, xL, lnf(P), a.rstdf, N, C_);

  for (int l = L_ - 1; l >= 0; l--) {
    LayerPtrs w = layer(P, l), g = layer(G, l);
    auto& y = a.layers[l];
    const float* x = l > 0 ? a.layers[l - 1].res2 : a.x0;
    // feed-forward: res2 = res1 + down(swiglu(gate_up(ln2)))
    if (g.bd) bias_backward(g.bd, a.dres, N, C_);
    linear_backward(a.dh, g.wd, a.dres, y.h, w.wd, N, I_, C_);
    swiglu_backward(a.dgu, a.dh, y.gu, N, I_);
    if (g.bgu) bias_backward(g.bgu, a.dgu, N, 2 * I_);
    linear_backward(a.dln, g.wgu, a.dgu, y.ln2, w.wgu, N, C_, 2 * I_);
    rmsnorm_backward(a.dres, g.ln2, a.dln, y.res1, w.ln2, y.rstd2, N, C_);
    // attention: res1 = x + o(attn(rope(qkv(ln1))))
    if (g.bo) bias_backward(g.bo, a.dres, N, C_);
    linear_backward(a.datty, g.wo, a.dres, y.atty, w.wo, N, QD_, C_);
    attention_backward_flash(a.dqkv, a.att_scratch, a.datty, y.qkv, y.lse, B, T, NH_, NKV_, HS_);
    rope_apply(a.dqkv, QKVD_, pos_.data(), rope_.cos(), rope_.sin(), N, NH_, HS_, true);
    rope_apply(a.dqkv + QD_, QKVD_, pos_.data(), rope_.cos(), rope_.sin(), N, NKV_, HS_, true);
    if (g.bqkv) bias_backward(g.bqkv, a.dqkv, N, QKVD_);
    // qkv must be un-rotated for the weight gradient: dW = dqkv^T ln1 uses ln1, not q/k, so no change needed
    linear_backward(a.dln, g.wqkv, a.dqkv, y.ln1, w.wqkv, N, C_, QKVD_);
    rmsnorm_backward(a.dres, g.ln1, a.dln, x, w.ln1, y.rstd1, N, C_);
  }
  embedding_backward(wte(G), a.dres, tokens_.data(), N, C_, V_);
}

// ---------------------------------------------------------------- KV cache

void LlamaModel::kv_reset(int n_slots, int max_len) {
  PYLLAMA_CHECK(n_slots >= 1, ValueError, "kv cache needs at least one slot, got " << n_slots);
  PYLLAMA_CHECK(max_len >= 1 && max_len <= cfg_.max_positions(), ValueError,
                "kv cache length " << max_len << " must be in [1, "
                                   << (cfg_.max_positions() == cfg_.max_position_embeddings
                                           ? "max_position_embeddings="
                                           : "max_position_embeddings * rope_scaling factor = ")
                                   << cfg_.max_positions() << "]");
  size_t n = (size_t)L_ * n_slots * NKV_ * max_len * HS_;
  kcache_.assign(n, 0.f);
  vcache_.assign(n, 0.f);
  kv_tmp_.clear();
  kv_slots_ = n_slots;
  kv_len_ = max_len;
  if (infer_bf16_) {
    params_bf16_.resize(params_.size());
    const float* src = params_.data();
    uint16_t* dst = params_bf16_.data();
    const long n = (long)params_.size();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) dst[i] = float_to_bf16(src[i]);
  } else {
    params_bf16_.clear();
    params_bf16_.shrink_to_fit();
  }
}

void LlamaModel::infer_linear(float* y, const float* x, const float* w, int N, int IN, int OUT) {
  if (infer_bf16_ && !params_bf16_.empty() && N <= 4) {
    const uint16_t* wb = params_bf16_.data() + (w - params_.data());
    sgemm_bf16_nt(N, OUT, IN, x, IN, wb, IN, y, OUT);
  } else {
    linear_forward(y, x, w, N, IN, OUT);
  }
}

const float* LlamaModel::kv_forward_impl(const int32_t* tokens, int B, int T, const int32_t* slots,
                                         const int32_t* start_pos, bool last_only) {
  const long N = (long)B * T;
  const int R = last_only ? B : (int)N;  // rows that get logits
  const int nth = std::max(num_threads(), 1);
  // scratch: x, ln, rstd, qkv, atty, tmp, gu, h, logits, att
  // A prefill from position 0 is plain causal self-attention over the new tokens: it takes
  // the blocked (flash) kernel instead of the per-query loop over the cache.
  bool fresh = T > 1;
  for (int b = 0; b < B; b++) fresh = fresh && start_pos[b] == 0;
  const size_t flash_floats = fresh ? (size_t)B * NH_ * T + (size_t)attention_scratch_floats(T) + 32 : 0;
  size_t need = N * (size_t)(3 * C_ + QD_ + 1 + QKVD_ + 3 * I_) + (size_t)R * V_ + (size_t)nth * kv_len_ + flash_floats +
                64 * 12;
  if (inf_.size() < need) inf_.resize(need);
  if (inf_pos_.size() < (size_t)N) inf_pos_.resize(N);
  float* base = aligned64(inf_);
  size_t off = 0;
  auto take = [&](size_t n) {
    float* p = base + off;
    off += (n + 15) & ~size_t(15);
    return p;
  };
  float *x = take(N * C_), *ln = take(N * C_), *rstd = take(N), *qkv = take(N * QKVD_), *atty = take(N * QD_),
        *tmp = take(N * C_), *gu = take(N * 2 * I_), *h = take(N * I_), *logits = take((size_t)R * V_),
        *attbuf = take((size_t)nth * kv_len_);
  float* flash_lse = fresh ? take((size_t)B * NH_ * T) : nullptr;
  float* flash_scratch = fresh ? take((size_t)attention_scratch_floats(T)) : nullptr;
  int32_t* pos = inf_pos_.data();
  int seq_len = 0;
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) pos[(size_t)b * T + t] = start_pos[b] + t;
    seq_len = std::max(seq_len, start_pos[b] + T);
  }
  rope_.update(seq_len);  // dynamic RoPE scaling: transformers' rule on max(position_ids) + 1

  float* P = params_.data();
  const size_t layer_stride = (size_t)kv_slots_ * NKV_ * kv_len_ * HS_;
  embedding_forward(x, tokens, wte(P), N, C_);
  // one set of buffers for every layer; x is the residual stream, added into in place
  const LayerBufs bufs{ln, rstd, qkv, atty, tmp, x, ln, rstd, gu, h, tmp, x};
  auto linear = [this](float* y, const float* in, const float* w, int n, int IN, int OUT) {
    infer_linear(y, in, w, n, IN, OUT);
  };
  for (int l = 0; l < L_; l++) {
    layer_forward(layer(P, l), bufs, x, N, pos, linear, [&](const float* q_rows, float* out) {
      float* kc = kcache_.data() + (size_t)l * layer_stride;
      float* vc = vcache_.data() + (size_t)l * layer_stride;
      kv_store(kc, vc, q_rows, slots, pos, B, T, NH_, NKV_, HS_, kv_len_);
      if (fresh)  // causal self-attention over the new tokens alone: the blocked kernel
        attention_forward_flash(out, flash_lse, flash_scratch, q_rows, B, T, NH_, NKV_, HS_);
      else
        attention_kv_forward(out, attbuf, q_rows, kc, vc, slots, pos, B, T, NH_, NKV_, HS_, kv_len_);
    });
  }
  if (last_only) {
    for (int b = 0; b < B; b++) std::memcpy(tmp + (size_t)b * C_, x + ((size_t)b * T + T - 1) * C_, sizeof(float) * C_);
    x = tmp;
  }
  rmsnorm_forward(ln, rstd, x, lnf(P), R, C_, cfg_.rms_norm_eps);
  infer_linear(logits, ln, wout(P), R, C_, V_);
  return logits;
}

void LlamaModel::kv_reorder_impl(const int32_t* src, int n) {
  const size_t slot = (size_t)NKV_ * kv_len_ * HS_;
  if (kv_tmp_.size() != kcache_.size()) kv_tmp_.resize(kcache_.size());
  for (HostVector<float>* cache : {&kcache_, &vcache_}) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int l = 0; l < L_; l++)
      for (int i = 0; i < n; i++)
        std::memcpy(kv_tmp_.data() + ((size_t)l * n + i) * slot, cache->data() + ((size_t)l * n + src[i]) * slot,
                    sizeof(float) * slot);
    cache->swap(kv_tmp_);
  }
}

// ---------------------------------------------------------------- the backend's registration

namespace {
std::unique_ptr<Model> make_cpu(const LlamaConfig& cfg, int index, DType dtype, const BackendOptions&) {
  PYLLAMA_CHECK(dtype == DType::float32, ValueError,
                "the CPU model computes in float32; dtype=" << dtype_name(dtype) << " applies to 'cuda' only");
  return std::make_unique<LlamaModel>(cfg);
}
}  // namespace

void register_cpu_backend() {
  static const char* names[] = {"generic", "avx2", "avx512"};
  BackendInfo info;
  info.make = &make_cpu;
  info.archs = names[simd_level()];
  register_backend("cpu", info);
}

// ---------------------------------------------------------------- the rest of the interface

void LlamaModel::logits_impl(float* dst) const {
  PYLLAMA_CHECK(logits_ptr_, ValueError, "no logits: run forward first (backward overwrites them)");
  std::memcpy(dst, logits_ptr_, sizeof(float) * (size_t)B_ * T_ * V_);
}

void LlamaModel::set_inference_dtype(DType dt) {
  PYLLAMA_CHECK(dt == DType::float32 || dt == DType::bfloat16, ValueError,
                "inference dtype must be float32 or bfloat16, got " << dtype_name(dt));
  infer_bf16_ = dt == DType::bfloat16;
}

void LlamaModel::adamw_step(const AdamWSegment* segs, size_t n_segs, const AdamWHyper& h, int64_t step) {
  if (m_.empty()) reset_moments();  // the kernel checks the hyper-parameters and segments
  pyllama::adamw_step(params_.data(), m_.data(), v_.data(), ensure_grads(), (int64_t)num_parameters(), segs, n_segs,
                      h, step);
}

double LlamaModel::grad_norm() { return grad_global_norm(ensure_grads(), (int64_t)grads_.size()); }

double LlamaModel::clip_grad_norm(double max_norm) {
  return pyllama::clip_grad_norm(ensure_grads(), (int64_t)grads_.size(), max_norm);
}

void LlamaModel::set_defer_loss(bool on) {
  defer_loss_ = on;
  if (on) deferred_.clear();
}

std::pair<double, std::vector<double>> LlamaModel::norm_and_losses(double max_norm) {
  double norm = max_norm > 0 ? clip_grad_norm(max_norm) : grad_norm();
  std::vector<double> losses;
  losses.swap(deferred_);
  return {norm, losses};
}

void LlamaModel::reset_moments() {
  m_.assign(num_parameters(), 0.f);
  v_.assign(num_parameters(), 0.f);
}

void LlamaModel::moments_to_host(float* m, float* v) const {
  if (m_.empty()) {
    std::fill(m, m + num_parameters(), 0.f);
    std::fill(v, v + num_parameters(), 0.f);
    return;
  }
  std::memcpy(m, m_.data(), sizeof(float) * m_.size());
  std::memcpy(v, v_.data(), sizeof(float) * v_.size());
}

void LlamaModel::moments_from_host(const float* m, const float* v) {
  if (m_.empty()) reset_moments();
  std::memcpy(m_.data(), m, sizeof(float) * m_.size());
  std::memcpy(v_.data(), v, sizeof(float) * v_.size());
}

void LlamaModel::params_to_host(float* dst) const { std::memcpy(dst, params_.data(), sizeof(float) * params_.size()); }
void LlamaModel::grads_to_host(float* dst) const {
  if (grads_.empty())
    std::fill(dst, dst + params_.size(), 0.f);
  else
    std::memcpy(dst, grads_.data(), sizeof(float) * grads_.size());
}
void LlamaModel::params_from_host(const float* src) {
  if (src != params_.data()) std::memcpy(params_.data(), src, sizeof(float) * params_.size());
}
void LlamaModel::grads_from_host(const float* src) {
  float* g = ensure_grads();
  if (src != g) std::memcpy(g, src, sizeof(float) * grads_.size());
}

}  // namespace pyllama
