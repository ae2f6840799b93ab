// model_cuda.h — the LLaMA model on an NVIDIA GPU. Plain C++ (no CUDA headers),
// so the binding file and C++ programs can include it.
//
// The CUDA backend of the model interface (backend.h). Made through it:
//   pyllama::register_cuda_backend();                        // once, at start-up
//   auto gpu = pyllama::move_model(cpu_model, "cuda:0", pyllama::DType::bfloat16);
//   float loss = gpu->forward(ids, labels);                  // int32 Tensors; syncs once, for the loss
//   gpu->backward(1.0f);                                     // grads += d loss / d params
//   double norm = gpu->clip_grad_norm(1.0);
//   gpu->adamw_step(segs, n_segs, hyper, /*step=*/1);
//   pyllama::Tensor host = gpu->parameters().to(pyllama::Device::cpu);   // copy back
//
// Layouts are param_layout(cfg)'s (llama_config.h): parameters, gradients and the AdamW
// moments are float32 flat buffers in the same order, so offsets from
// param_infos() address all of them. Activations and the KV cache
// have the CPU layouts too, in the compute dtype.
//
// dtype float32: everything float32, matmuls in float32 (no TF32): matches the CPU
// core to rounding. dtype bfloat16: weights and activations in bf16 for compute
// (a bf16 copy of the float32 master weights, refreshed by every adamw_step and
// params_from_host), float accumulation everywhere; gradients, moments and master
// weights stay float32. Attention probabilities, RMSNorm rstd and log-sum-exps are
// float32 in both modes.
//
// Every method runs on the model's own CUDA stream and returns without waiting for
// the GPU, except those that hand a value to the host: forward with labels (the
// loss), logits, kv_forward (logits), the host copies, grad_norm,
// clip_grad_norm. Errors throw: ValueError for bad arguments (as the CPU model),
// CudaError (a std::runtime_error) for CUDA/cuBLAS failures, with file and line.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "cuda_device.h"  // CudaError, cuda_runtime_device_count
#include "tensor.h"

namespace pyllama {




// Registers "cuda" with make_model / move_model (backend.h).
void register_cuda_backend();

class LlamaModelCuda : public Model {
 public:
  // A model of cfg on GPU `device` with zero parameters and gradients.
  // dtype: DType::float32 or DType::bfloat16 (compute dtype; master weights stay float32).
  // options: the kernels and decode paths (backend.h BackendOptions).
  LlamaModelCuda(const LlamaConfig& cfg, DType dtype = DType::float32, int device = 0,
                 const BackendOptions& options = BackendOptions());
  ~LlamaModelCuda() override;
  LlamaModelCuda(const LlamaModelCuda&) = delete;
  LlamaModelCuda& operator=(const LlamaModelCuda&) = delete;

  const LlamaConfig& config() const override;
  DType dtype() const override;
  std::string device() const override;  // "cuda:N"
  int device_index() const;
  bool uses_cublas() const;  // false: the tiled fallback matmul
  // The matmul back end ("cublaslt", "cublas" or "tiled": BackendOptions.matmul) and its counts:
  // cuBLASLt plans made so far, products cuBLASLt refused (run by cublasGemmEx instead).
  std::string matmul_backend() const;
  struct MatmulStats {
    long long lt_plans = 0, lt_fallbacks = 0;
  };
  MatmulStats matmul_stats() const;
  bool uses_flash_attention() const;  // false: attention "naive" (T x T probabilities)
  // The training attention, from BackendOptions.attention: "flash" (default; tensor cores for bf16
  // where they apply), "flash-simt" or "naive".
  std::string attention_kernels() const;

  // The training forward, logits, KV-cache steps and host copies are Model's Tensor methods
  // (backend.h); this class implements their hooks (protected, below).
  int last_B() const override;
  int last_T() const override;
  bool has_logits() const override;
  void backward(float scale) override;
  void zero_grad() override;

  void kv_reset(int n_slots, int max_len) override;
  int kv_slots() const override;
  int kv_max_len() const override;
  void set_inference_dtype(DType dt) override;  // only the dtype the model computes in
  DType inference_dtype() const override { return dtype(); }
  bool greedy_on_device() const override { return true; }
  int greedy_chain_max() const override { return chain_max(); }
  static int chain_max();

  // The T = 1 decode step (docs/CUDA.md "Decoding"): fast_path (BackendOptions.decode_fast_path)
  // runs it on fixed device buffers with pinned staging and an on-device argmax; cuda_graphs
  // (cuda_graphs) replays it from one CUDA graph per batch size;
  // skinny_gemv (decode_gemv) runs the matmuls of B <= 4 rows with
  // a bandwidth-bound 128-bit-load kernel instead of cuBLAS; fused (decode_fused,
  // default on, with skinny_gemv) folds the RMSNorms, RoPE and the cache store, SwiGLU, the
  // residual adds and the argmax into those matmul kernels (five kernels a layer); pdl
  // (pdl, default on where the GPU has it: sm_90+) launches the fused kernels as
  // programmatic dependent launches, each starting while the one before finishes. Off: the
  // general kv_forward path / eager launches / cuBLAS / separate kernels / plain launches.
  // Setting drops captured graphs.
  void set_decode_options(bool fast_path, bool cuda_graphs, bool skinny_gemv = true, bool fused = true,
                          bool pdl = true);
  struct DecodeStats {
    bool fast_path, cuda_graphs;  // cuda_graphs turns false when a capture failed (graph_error says why)
    bool skinny_gemv, fused, pdl;  // pdl: false on GPUs before sm_90 whatever was asked
    long long captures, replays, eager_steps, general_steps;  // T = 1 fast steps: replays + eager_steps
    std::string graph_error;
  };
  DecodeStats decode_stats() const;

  // Per-region GPU timings (docs/CUDA.md "Profiling"): while on, the training forward and
  // backward, AdamW and eager decode steps record a CUDA event after each op and wait for
  // the stream at the end of each pass (so profiled runs are slower and the one-wait
  // training step waits more); profile() returns the time of each named region summed
  // over the passes since set_profiling(true). Graph replays are not profiled.
  void set_profiling(bool on);
  struct ProfileEntry {
    std::string name;
    double ms;
    long long count;
  };
  std::vector<ProfileEntry> profile() const;

  // Device bytes this model's buffers hold (params, grads, moments, activations, KV cache,
  // decode buffers, cuBLAS workspace); see also cuda_bytes_allocated() (cuda_device.h).
  size_t bytes_allocated() const;

  // AdamW over the flat buffers (moments allocated, zeroed, on first use); same semantics as the
  // CPU optimizer (torch.optim.AdamW).
  void adamw_step(const AdamWSegment* segs, size_t n_segs, const AdamWHyper& h, int64_t step) override;
  double grad_norm() override;                       // global L2 norm of the gradients (double accumulation)
  double clip_grad_norm(double max_norm) override;   // as torch.nn.utils.clip_grad_norm_; returns the norm before

  // The Trainer's step with one host wait: after set_defer_loss(true), forward returns NaN and
  // keeps its loss on the GPU (no wait); norm_and_losses(max_norm) computes the gradient norm
  // (clipping to max_norm when > 0, as clip_grad_norm), and reads it and the losses of the
  // forwards since then (NaN for one without counted targets) back with one wait. At most 256
  // forwards between two reads; set_defer_loss(true) drops losses not read.
  void set_defer_loss(bool on) override;
  std::pair<double, std::vector<double>> norm_and_losses(double max_norm) override;

  bool has_moments() const override;
  void reset_moments() override;

  void synchronize() const override;  // wait for the model's stream
  void* stream() const override;      // the cudaStream_t every launch of this model is queued on

  // Device addresses of the float32 flat parameter and gradient buffers
  // (num_parameters() floats each), for collectives queued on stream() (cuda/nccl.cu).
  // After writing the parameters through params_device(), call params_written()
  // (refreshes the bf16 compute copy; queued on stream(), returns at once).
  float* params_device() override;
  float* grads_device() override;
  void params_written() override;

 protected:
  // ---- Model's hooks (inputs checked by Model's Tensor methods; host arrays in and out)
  // The training forward: returns the loss (one sync), or NaN without labels (no sync).
  float forward_impl(const int32_t* tokens, const int32_t* targets, int B, int T) override;
  void logits_impl(float* dst) const override;
  // Host float32 logits, (B, V) or (B, T, V), valid until the next kv_* call.
  const float* kv_forward_impl(const int32_t* tokens, int B, int T, const int32_t* slots, const int32_t* start_pos,
                               bool last_only) override;
  // As kv_forward with last_only, but the greedy choice (argmax of each row's logits, numpy
  // semantics) as B host int32s. T = 1 steps compute it on the GPU, so only B int32s come back.
  const int32_t* kv_forward_greedy_impl(const int32_t* tokens, int B, int T, const int32_t* slots,
                                        const int32_t* start_pos) override;
  // n greedy steps in a row from tokens (B, one each) at start_pos: step i's input is step
  // i - 1's argmax at start_pos + i, fed on the device (one upload, n graph replays, one
  // download, one wait). Returns n * B int32, step-major.
  const int32_t* kv_greedy_chain_impl(const int32_t* tokens, int B, const int32_t* slots, const int32_t* start_pos,
                                      int n) override;
  void kv_reorder_impl(const int32_t* src, int n) override;
  // Host copies (num_parameters() floats each).
  void params_to_host(float* dst) const override;
  void grads_to_host(float* dst) const override;
  void params_from_host(const float* src) override;
  void grads_from_host(const float* src) override;
  void moments_to_host(float* m, float* v) const override;  // zeros before the first adamw_step
  void moments_from_host(const float* m, const float* v) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyllama
