// model.h — the LLaMA model: configuration, weights in one flat buffer, the
// training forward/backward pass and the KV-cache inference steps.
//
//   pyllama::LlamaConfig cfg;            // fields as in transformers.LlamaConfig
//   cfg.vocab_size = 256; cfg.hidden_size = 64; cfg.intermediate_size = 172;
//   cfg.num_hidden_layers = 2; cfg.num_attention_heads = 4; cfg.num_key_value_heads = 2;
//   pyllama::LlamaModel model(cfg);
//   model.init_weights(/*seed=*/0);
//   float loss = model.forward(ids, ids);   // int32 Tensors (B, T); labels HF-aligned, -100 ignored
//   model.backward(1.0f);                               // grads += d loss / d params
//
// The CPU backend of the model interface (backend.h): SIMD + OpenMP kernels (ops.h),
// parameters, gradients and the AdamW moments in host memory (flat buffers, param_layout).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend.h"
#include "common.h"
#include "host_alloc.h"
#include "rope.h"

namespace pyllama {

// Registers "cpu" with make_model / move_model (backend.h); all/backends.h calls it.
void register_cpu_backend();

class LlamaModel : public Model {
 public:
  explicit LlamaModel(const LlamaConfig& cfg);

  const LlamaConfig& config() const override { return cfg_; }
  std::string device() const override { return "cpu"; }
  DType dtype() const override { return DType::float32; }
  float* params() { return params_.data(); }
  // Gradients are allocated (zeroed) on first use — a backward, an optimizer step or a read —
  // so a model that only runs inference holds its weights alone.
  float* grads() { return ensure_grads(); }
  float* host_params() override { return params_.data(); }
  float* host_grads() override { return ensure_grads(); }

  // The training forward, logits and KV-cache steps are Model's Tensor methods (backend.h);
  // this class implements their hooks below.
  const float* logits_data() const { return logits_ptr_; }  // (B, T, V) of the last forward
  int last_B() const override { return B_; }
  int last_T() const override { return T_; }
  bool has_logits() const override { return logits_ptr_ != nullptr; }
  // grads += scale * d(last loss)/d(params). Needs a forward with labels just before.
  void backward(float scale) override;
  void zero_grad() override;

  // ---- optimizer: moments in host memory, allocated on first use
  void adamw_step(const AdamWSegment* segs, size_t n_segs, const AdamWHyper& h, int64_t step) override;
  double grad_norm() override;
  double clip_grad_norm(double max_norm) override;
  void set_defer_loss(bool on) override;
  std::pair<double, std::vector<double>> norm_and_losses(double max_norm) override;
  bool has_moments() const override { return !m_.empty(); }
  void reset_moments() override;
  float* host_exp_avg() { return m_.empty() ? nullptr : m_.data(); }
  float* host_exp_avg_sq() { return v_.empty() ? nullptr : v_.data(); }

  float* params_device() override { return params_.data(); }
  float* grads_device() override { return ensure_grads(); }

  // ---- inference over a KV cache (see DESIGN: ragged batches)
  void kv_reset(int n_slots, int max_len) override;
  // Weights the KV-cache steps read: float32 (default) or bfloat16. With bfloat16, kv_reset
  // takes a bf16 copy of the weight matrices (so it always reflects the current weights)
  // and single-token steps (B <= 4 rows) stream those, half the bytes; prefill stays float32.
  void set_inference_dtype(DType dt) override;
  DType inference_dtype() const override { return infer_bf16_ ? DType::bfloat16 : DType::float32; }
  int kv_slots() const override { return kv_slots_; }
  int kv_max_len() const override { return kv_len_; }

 protected:
  // ---- Model's hooks (inputs checked by Model's Tensor methods)
  // Training forward over tokens (B, T); targets (B, T), the labels shifted, or nullptr.
  float forward_impl(const int32_t* tokens, const int32_t* targets, int B, int T) override;
  void logits_impl(float* dst) const override;
  // T new tokens for each of B sequences; sequence b lives in cache slot slots[b]
  // at positions start_pos[b] .. start_pos[b]+T-1. Returns logits (B, V) when
  // last_only, else (B, T, V); valid until the next call.
  const float* kv_forward_impl(const int32_t* tokens, int B, int T, const int32_t* slots, const int32_t* start_pos,
                               bool last_only) override;
  // Slot i takes the old content of slot src[i] (n == number of slots).
  void kv_reorder_impl(const int32_t* src, int n) override;
  void params_to_host(float* dst) const override;
  void grads_to_host(float* dst) const override;
  void params_from_host(const float* src) override;
  void grads_from_host(const float* src) override;
  void moments_to_host(float* m, float* v) const override;
  void moments_from_host(const float* m, const float* v) override;

 private:
  struct LayerPtrs {
    float *ln1, *wqkv, *wo, *ln2, *wgu, *wd;
    float *bqkv, *bo, *bgu, *bd;  // biases (attention_bias, mlp_bias), nullptr without
  };
  LayerPtrs layer(float* base, int l) const;
  // Where one decoder layer's forward writes: the training forward keeps a set per layer for
  // the backward; the KV-cache steps reuse one set and add into x in place (res1 == res2 == x).
  struct LayerBufs {
    float *ln1, *rstd1, *qkv, *atty, *o, *res1, *ln2, *rstd2, *gu, *h, *d, *res2;
  };
  // The one layer stack of this backend, one layer at a time, for training and decoding alike:
  //   res1 = x + o(attend(rope(qkv(ln1(x)))));  res2 = res1 + down(swiglu(gate_up(ln2(res1))))
  // linear(y, x, w, N, IN, OUT) computes y = x W^T; attend(qkv, atty) the attention over the
  // rotated q, k, v (flash over the batch, or over the KV cache).
  template <class Linear, class Attend>
  void layer_forward(const LayerPtrs& w, const LayerBufs& y, const float* x, long N, const int32_t* pos,
                     Linear&& linear, Attend&& attend);
  float* wte(float* base) const { return base; }
  float* lnf(float* base) const { return base + lnf_off_; }
  float* wout(float* base) const { return base + wout_off_; }
  void ensure_acts(int B, int T);

  LlamaConfig cfg_;
  int C_, HS_, NH_, NKV_, QD_, KVD_, QKVD_, I_, V_, L_;
  HostVector<float> params_, grads_;  // grads_ empty until first used
  float* ensure_grads() {
    if (grads_.empty()) grads_.resize(params_.size());  // zero (host_alloc.h)
    return grads_.data();
  }
  HostVector<float> m_, v_;  // AdamW moments, empty before the first step
  bool defer_loss_ = false;
  std::vector<double> deferred_;
  size_t layer_off_ = 0, layer_size_ = 0, lnf_off_ = 0, wout_off_ = 0;
  RopeTables rope_;  // cos/sin (positions, HS/2), RoPE scaling applied

  // training activations, sized from (B, T)
  int B_ = 0, T_ = 0;
  bool have_targets_ = false;
  float loss_ = 0.f;
  int count_ = 0;
  HostVector<float> acts_;
  std::vector<int32_t> tokens_, targets_, pos_;
  float* logits_ptr_ = nullptr;
  size_t acts_capacity_ = 0;

  // KV cache
  int kv_slots_ = 0, kv_len_ = 0;
  HostVector<float> kcache_, vcache_, kv_tmp_;  // (L, S, NKV, len, HS)
  HostVector<float> inf_;                       // inference scratch
  std::vector<int32_t> inf_pos_;
  bool infer_bf16_ = false;
  HostVector<uint16_t> params_bf16_;  // same layout as params_, filled by kv_reset when infer_bf16_
  // y (N, OUT) = x W^T in the KV-cache path: bf16 weights for small N when enabled.
  void infer_linear(float* y, const float* x, const float* w, int N, int IN, int OUT);
};

}  // namespace pyllama
