// backend.h — the one model interface. Each backend implements it: the CPU model
// (cpu: LlamaModel, model.h) and the CUDA model (cuda: LlamaModelCuda, cuda/model_cuda.h).
// The binding wraps this class once; Python's Llama holds one Model whatever the device.
//
//   pyllama::register_backends();                      // all/backends.h: every backend of this build
//   std::unique_ptr<pyllama::Model> m = pyllama::make_model(cfg, "cpu", pyllama::DType::float32);
//   m->init_weights(0);
//   Tensor ids = Tensor::wrap(tok.data(), {B, T}, DType::int32, nullptr);   // int32 (B, T), any device
//   float loss = m->forward(ids, ids);                 // labels HF-aligned, -100 ignored
//   m->backward(1.0f);                                 // grads += d loss / d params
//   double norm = m->clip_grad_norm(1.0);
//   m->adamw_step(segs.data(), segs.size(), hyper, /*step=*/1);   // moments owned by the model
//   auto gpu = pyllama::move_model(*m, "cuda:0", pyllama::DType::bfloat16);  // params, grads, moments
//
// Contracts (the same on every device):
// - Callers speak Tensors (tensor.h): token ids, slots and positions in, logits and ids out,
//   parameters, gradients and moments both ways, on any device. The public methods check the
//   inputs once for every backend; backends implement the protected *_impl hooks on raw host
//   pointers.
// - Parameters, gradients and the AdamW moments are float32 flat buffers in param_layout(config())
//   order. parameters() / gradients() view the live buffers (device memory on the GPU);
//   set_* copy whole buffers in from any device.
// - Results (logits, greedy ids, moments) are new host tensors, owned by the caller.
// - Errors throw the core's exception types (common.h); a backend never exits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "adamw.h"
#include "llama_config.h"
#include "tensor.h"  // DType

namespace pyllama {

class Model {
 public:
  virtual ~Model() = default;

  // ---- description
  virtual const LlamaConfig& config() const = 0;
  const std::vector<ParamInfo>& param_infos() const { return infos_; }
  const ParamInfo& param_info(const std::string& name) const { return find_param(infos_, name); }
  size_t num_parameters() const { return n_params_; }
  virtual std::string device() const = 0;  // "cpu" or "cuda:N"
  virtual DType dtype() const = 0;         // compute dtype (float32, or bfloat16 on the GPU)
  double flops_per_token(int T) const { return pyllama::flops_per_token(config(), T); }
  // Normal(0, 0.02) for matrices, o_proj and down_proj scaled by 1/sqrt(2L), norms 1 (the
  // same values on every device: drawn on the host).
  void init_weights(uint64_t seed);

  // ---- the Tensor interface: what every caller uses (the binding, the C API, native apps).
  // Inputs are core Tensors on any device (token ids int32; flat buffers float32) and are checked
  // here, once for every backend: dtypes, shapes, id ranges, slots and cache positions, each
  // refused with a ValueError/TypeError naming it. Results are new host tensors unless said.

  // Training forward over tokens (B, T). labels (B, LT) are aligned with tokens (position t is
  // trained to predict labels[t+1]; -100 ignored), LT = T or T + 1, or an undefined Tensor (no
  // loss). Returns the mean loss over counted targets (NaN without labels, with none counted,
  // or while losses are deferred).
  float forward(const Tensor& tokens, const Tensor& labels = Tensor());
  virtual int last_B() const = 0;
  virtual int last_T() const = 0;
  virtual bool has_logits() const = 0;  // false before a forward and after backward
  Tensor logits() const;                // float32 (B, T, V) of the last forward, a new host tensor
  void logits_into(Tensor& dst) const;  // ... into a caller's float32 (B, T, V) host tensor
  virtual void backward(float scale) = 0;  // grads += scale * d(last loss)/d(params)
  virtual void zero_grad() = 0;

  // ---- optimizer (moments allocated and zeroed on first use, owned by the model)
  virtual void adamw_step(const AdamWSegment* segs, size_t n_segs, const AdamWHyper& h, int64_t step) = 0;
  virtual double grad_norm() = 0;                    // global L2 norm (double accumulation)
  virtual double clip_grad_norm(double max_norm) = 0;  // torch's clip_grad_norm_; returns the norm before
  // A training step with one wait: after set_defer_loss(true), forward keeps its loss (returns
  // NaN); norm_and_losses(max_norm) computes the gradient norm (clipping when max_norm > 0) and
  // returns it with the losses of the forwards since then. At most 256 forwards between reads.
  virtual void set_defer_loss(bool on) = 0;
  virtual std::pair<double, std::vector<double>> norm_and_losses(double max_norm) = 0;

  // ---- inference over a KV cache (ragged batches: sequence b in slot slots[b] at start_pos[b];
  // tokens int32 (B, T), slots and start_pos int32 (B))
  virtual void kv_reset(int n_slots, int max_len) = 0;
  // float32 logits (B, V) when last_only, else (B, T, V): a new host tensor on every device.
  Tensor kv_forward(const Tensor& tokens, const Tensor& slots, const Tensor& start_pos, bool last_only = true);
  // kv_forward(last_only) and each row's argmax (first index on ties; a NaN wins, as numpy): int32 (B).
  Tensor kv_forward_greedy(const Tensor& tokens, const Tensor& slots, const Tensor& start_pos);
  // n greedy steps in a row from tokens (B, 1), each fed the argmax of the one before: int32
  // (n, B), n in [1, greedy_chain_max()]; greedy_chain_max() is 0 where the backend has no
  // chained path (the CPU).
  Tensor kv_greedy_chain(const Tensor& tokens, const Tensor& slots, const Tensor& start_pos, int n);
  void kv_reorder(const Tensor& src);  // int32 (kv_slots()): slot i takes slot src[i]
  virtual int kv_slots() const = 0;
  virtual int kv_max_len() const = 0;
  // True where kv_forward_greedy saves work over kv_forward + an argmax on the host (the GPU
  // takes the argmax there and sends back B ids instead of B x V logits).
  virtual bool greedy_on_device() const { return false; }
  virtual int greedy_chain_max() const { return 0; }
  // The weights single-token steps read: float32, or a bfloat16 copy (CPU). The CUDA model
  // computes in the dtype it was moved with and refuses a different one here.
  virtual void set_inference_dtype(DType dt) = 0;
  virtual DType inference_dtype() const = 0;

  // ---- parameters, gradients and moments: float32 (num_parameters()) in param_layout order
  // The live buffers in the model's memory (a cuda tensor on the GPU), no copy: valid while the
  // model lives. After writing parameters through the view, call params_written().
  Tensor parameters();
  Tensor gradients();
  // Host copies of them (new float32 host tensors).
  Tensor parameters_copy() const;
  Tensor gradients_copy() const;
  // Copies of the AdamW moments (exp_avg, exp_avg_sq) as host tensors: zeros before the first step.
  std::pair<Tensor, Tensor> moments() const;
  virtual bool has_moments() const = 0;
  // Replace from a tensor on any device (float32, num_parameters() elements).
  void set_parameters(const Tensor& src);
  void set_gradients(const Tensor& src);
  void set_moments(const Tensor& exp_avg, const Tensor& exp_avg_sq);
  virtual void reset_moments() = 0;  // back to "no step taken"
  virtual float* host_params() { return nullptr; }  // the live buffers where they are host memory
  virtual float* host_grads() { return nullptr; }

  // ---- what collectives need: the flat buffers in the backend's memory and its stream
  virtual float* params_device() = 0;
  virtual float* grads_device() = 0;
  virtual void* stream() const { return nullptr; }  // cudaStream_t on the GPU
  virtual void params_written() {}                   // after writing through params_device()
  virtual void synchronize() const {}

 protected:
  // ---- what a backend implements behind the Tensor interface: raw host pointers, inputs
  // already checked by the public methods above (shapes, id ranges, slots, positions).
  // targets (B, T): the labels shifted by one (targets[b, t] = labels[b, t + 1], -100 where
  // ignored or past the end), or nullptr without labels.
  virtual float forward_impl(const int32_t* tokens, const int32_t* targets, int B, int T) = 0;
  virtual void logits_impl(float* dst) const = 0;  // (B, T, V) float32 of the last forward
  // Host logits (B, V) when last_only, else (B, T, V); valid until the next kv_* call.
  virtual const float* kv_forward_impl(const int32_t* tokens, int B, int T, const int32_t* slots,
                                       const int32_t* start_pos, bool last_only) = 0;
  // Defaults: kv_forward_impl + a host argmax; kv_forward_greedy_impl step by step.
  virtual const int32_t* kv_forward_greedy_impl(const int32_t* tokens, int B, int T, const int32_t* slots,
                                                const int32_t* start_pos);
  virtual const int32_t* kv_greedy_chain_impl(const int32_t* tokens, int B, const int32_t* slots,
                                              const int32_t* start_pos, int n);
  virtual void kv_reorder_impl(const int32_t* src, int n) = 0;
  virtual void params_to_host(float* dst) const = 0;
  virtual void grads_to_host(float* dst) const = 0;
  virtual void params_from_host(const float* src) = 0;
  virtual void grads_from_host(const float* src) = 0;
  virtual void moments_to_host(float* m, float* v) const = 0;  // zeros before the first adamw_step
  virtual void moments_from_host(const float* m, const float* v) = 0;

 protected:
  explicit Model(const LlamaConfig& cfg);
  friend std::unique_ptr<Model> move_model(const Model&, const std::string&, DType, const struct BackendOptions&);
  std::vector<ParamInfo> infos_;
  size_t n_params_ = 0;

 private:
  std::vector<int32_t> greedy_, chain_;
};

// Settings a backend reads when a model is made: typed, passed in (the library reads no
// environment variable; the CLI and the benchmarks translate theirs into these). The CPU
// backend has none of its own; the CUDA backend reads every field. Python: pyllama.BackendOptions.
// Kernel variants that no GPU measurement has shown faster are not options: they live in the
// kernel lab (cuda/lab/README.md), where they build, are checked and can be timed.
struct BackendOptions {
  std::string matmul;              // CUDA matmuls: "cublaslt", "cublas", "tiled"; "" = cublaslt where
                                   // cuBLAS was found at build time, else tiled
  std::string attention = "flash"; // CUDA training attention: "flash" (tensor cores for bf16 where they
                                   // apply), "simt" (flash without tensor cores), "naive" (the reference)
  bool decode_fast_path = true;    // T = 1 decode steps on fixed buffers with an on-device argmax
  bool cuda_graphs = true;         // ... replayed from one CUDA graph per batch size
  bool decode_gemv = true;         // ... matmuls of <= 4 rows by a bandwidth-bound GEMV kernel
  bool decode_fused = true;        // ... norms, RoPE, SwiGLU, residual adds folded into those kernels
  bool pdl = true;                 // ... launched as programmatic dependent launches (sm_90+)
  void validate() const;           // ValueError naming the field
};

// A backend constructor: a model of cfg with zero parameters and gradients on device index `index`.
using BackendFactory = std::unique_ptr<Model> (*)(const LlamaConfig& cfg, int index, DType dtype,
                                                  const BackendOptions& options);
struct BackendInfo {
  BackendFactory make = nullptr;
  int (*device_count)() = nullptr;  // usable devices now (never throws); nullptr: one (the host)
  std::string archs;                // what the kernels were compiled for ("80,90", "sim", "avx2", ...)
};
// Backends register by name ("cpu", "cuda") at start-up; the core links none of them.
// pyllama::register_backends() (all/backends.h) registers every backend the build has; the
// Python module calls it when it loads.
void register_backend(const std::string& name, const BackendInfo& info);
bool backend_available(const std::string& name);
int backend_device_count(const std::string& name);  // 0 when the backend is not registered
std::string backend_archs(const std::string& name);  // "" when the backend is not registered

// "cpu", "cuda", "cuda:N" → (backend name, index). ValueError naming the device otherwise.
std::pair<std::string, int> parse_device(const std::string& device);
std::unique_ptr<Model> make_model(const LlamaConfig& cfg, const std::string& device, DType dtype = DType::float32,
                                  const BackendOptions& options = BackendOptions());
// A model on `device` holding src's parameters, gradients and (when it has them) moments.
std::unique_ptr<Model> move_model(const Model& src, const std::string& device, DType dtype = DType::float32,
                                  const BackendOptions& options = BackendOptions());

}  // namespace pyllama
