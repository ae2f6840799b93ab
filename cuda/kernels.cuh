// kernels.cuh — the CUDA launchers, one family per file (norm.cu, rope.cu, ...).
// Each mirrors its CPU twin in csrc/ops.h: same arguments (outputs, inputs,
// sizes), same layouts, same gradient rule (parameter gradients accumulate,
// activation gradients are assigned, except dinp of rmsnorm_backward, which adds
// into the residual stream), plus the stream it is queued on. Nothing here
// synchronises with the host.
//
// T is the activation/weight element type: float (exact against the CPU) or
// bf16 (__nv_bfloat16). Arithmetic is float; parameter gradients, RMSNorm rstd,
// log-sum-exps and attention probabilities are always float.
//
// Size letters as in ops.h: N = B*T rows, C channels, NH query heads, NKV
// key/value heads, HS head size (<= kMaxHeadSize), I feed-forward width, V vocabulary.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

#include "common.cuh"
#include "common.h"  // PYLLAMA_CHECK, ValueError

namespace pyllama {
namespace gpu {

constexpr int kMaxHeadSize = 256;  // attention kernels keep HS/32 accumulators per lane

// ---------------------------------------------------------------- elementwise.cu
// out (n) = a + b (out may alias a or b)
template <typename T>
void residual_forward(T* out, const T* a, const T* b, long long n, cudaStream_t stream);
// y (N, OUT) += b (OUT) on every row (the projections' biases)
template <typename T>
void bias_add(T* y, const T* b, long long N, int OUT, cudaStream_t stream);
// db (OUT) += the column sums of dy (N, OUT), in float, rows in order (deterministic)
template <typename T>
void bias_backward(float* db, const T* dy, long long N, int OUT, cudaStream_t stream);
// dst (n) = src converted (float <-> bf16, or a plain copy)
template <typename TD, typename TS>
void convert(TD* dst, const TS* src, long long n, cudaStream_t stream);
// rows (B, C) = x[b, T-1, :] for x (B, T, C): the last position of each sequence
template <typename T>
void gather_last_rows(T* rows, const T* x, int B, int T_, int C, cudaStream_t stream);

// ---------------------------------------------------------------- norm.cu
// out (N, C) = inp * rstd * w;  rstd (N) = 1 / sqrt(mean(inp^2) + eps)
template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* w, int N, int C, float eps, cudaStream_t stream);
// dinp (N, C) += ...;  dw (C) += ... (float), without atomics: per-block partial sums in
// `partial` (rmsnorm_backward_partial_floats(C) floats of scratch), added into dw in a fixed
// order, so dw is the same bits from run to run.
size_t rmsnorm_backward_partial_floats(int C);
template <typename T>
void rmsnorm_backward(T* dinp, float* dw, float* partial, const T* dout, const T* inp, const T* w, const float* rstd,
                      int N, int C, cudaStream_t stream);

// ---------------------------------------------------------------- rope.cu
// In place, the first `nheads` heads of each row of x (row stride ld); rotate-half
// pairing (i with i + HS/2); row r at position pos[r]; inverse rotates by -angle.
// cos_t/sin_t (max_T, HS/2) float, as rope_table in core/rope.h computes them.
template <typename T>
void rope_apply(T* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads, int HS,
                bool inverse, cudaStream_t stream);

// ---------------------------------------------------------------- attention.cu
// Causal grouped-query attention for the training layout: qkv (B, T, QKVD) rows
// (q | k | v), QKVD = (NH + 2 NKV) HS. out (B, T, NH*HS); att (B, NH, T, T) float
// probabilities (entries above the diagonal are not written).
template <typename T>
void attention_forward(T* out, float* att, const T* qkv, int B, int T_, int NH, int NKV, int HS, cudaStream_t stream);
// dqkv (B, T, QKVD) assigned; datt (B, NH, T, T) float scratch.
template <typename T>
void attention_backward(T* dqkv, float* datt, const T* dout, const T* qkv, const float* att, int B, int T_, int NH,
                        int NKV, int HS, cudaStream_t stream);
// Flash attention (what the model trains with): the same inputs and out as
// attention_forward, but only lse (B, NH, T) float, the log-sum-exp of each scaled score
// row (the CPU's attention_forward_flash layout), is kept: no T x T array in global memory.
// (The tensor-core forward takes 128 query rows a block for HS <= 64; the 64-row variant,
// never timed faster, is in the kernel lab: cuda/lab/flash_fwd_rows64.cu.)
template <typename T>
void flash_attention_forward(T* out, float* lse, const T* qkv, int B, int T_, int NH, int NKV, int HS,
                             cudaStream_t stream, bool tensor_cores = true);
// dqkv (B, T, QKVD) assigned, recomputing the probabilities from qkv and lse; out is the
// forward's output; dsum (B, NH, T) float scratch (rowsum(dout * out)). Deterministic: dQ
// has its own kernel (dQ by atomics in the dK/dV kernel, not deterministic and never timed
// faster, is in the kernel lab: cuda/lab/flash_dq_atomic.cu).
// rope (pos set): dq and dk come out with the inverse RoPE applied (rope_apply's tables,
// pos per row b * T + t), as rope_apply(dqkv, ..., NH + NKV heads, inverse) would leave
// them: in the kernels' stores, from the float accumulators, on the tensor-core path with
// HS a multiple of 16 (each thread holds both columns of a pair); else by rope_apply after.
struct RopeTables {
  const int32_t* pos = nullptr;
  const float* cos_t = nullptr;
  const float* sin_t = nullptr;
};
template <typename T>
void flash_attention_backward(T* dqkv, float* dsum, const T* dout, const T* out, const T* qkv, const float* lse,
                              int B, int T_, int NH, int NKV, int HS, cudaStream_t stream, bool tensor_cores = true,
                              const RopeTables& rope = RopeTables());
// tensor_cores: for bf16 with HS <= 128 on sm_80+, the tile products run on tensor cores
// (mma.sync, P and dS rounded to bf16); false, or float, or larger heads: SIMT float.
// BackendOptions.attention tells the modes apart: "naive" trains with attention_forward/
// backward above; "simt" keeps flash attention but without tensor cores.
// Whether bf16 flash attention with this head size runs on tensor cores on the current device.
bool flash_attention_uses_tensor_cores(int HS);
// The KV-cache step: rows n = b*T + t of qkv (B*T, QKVD) hold q (and the new k, v,
// already written into the caches by kv_store). Row n attends to cache positions
// 0..pos[n] of slot slots[b]. Caches (S, NKV, max_len, HS) for one layer.
// out (B*T, NH*HS); scores: float scratch (B*T, NH, max_len).
template <typename T>
void attention_kv_forward(T* out, float* scores, const T* qkv, const T* kcache, const T* vcache,
                          const int32_t* slots, const int32_t* pos, int B, int T_, int NH, int NKV, int HS,
                          int max_len, cudaStream_t stream);
// Writes the k and v parts of qkv rows into the caches at (slots[b], pos[n]).
template <typename T>
void kv_store(T* kcache, T* vcache, const T* qkv, const int32_t* slots, const int32_t* pos, int B, int T_, int NH,
              int NKV, int HS, int max_len, cudaStream_t stream);
// dst slot i = src slot src_slots[i], for `layers` layers of n_slots slots of slot_elems each.
template <typename T>
void kv_gather(T* dst, const T* src, const int32_t* src_slots, int layers, int n_slots, long long slot_elems,
               cudaStream_t stream);

// ---------------------------------------------------------------- swiglu.cu
// gu (N, 2I) = [gate | up];  h (N, I) = silu(gate) * up
template <typename T>
void swiglu_forward(T* h, const T* gu, int N, int I, cudaStream_t stream);
// dgu (N, 2I) assigned
template <typename T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int N, int I, cudaStream_t stream);

// ---------------------------------------------------------------- embedding.cu
// out (N, C) = wte[tokens]
template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* wte, int N, int C, cudaStream_t stream);
// dwte (V, C) += scatter of dout rows, without atomics: each (token, column) sums its rows in
// position order and adds the sum once, so dwte is the same bits from run to run. `groups`
// (device memory) lists the positions grouped by token, as group_tokens packs them on the
// host: [order (N): the positions of uniq[0] ascending, then of uniq[1], ... | starts (U + 1):
// uniq[u]'s positions are order[starts[u] .. starts[u + 1]) | uniq (U): the distinct tokens].
int group_tokens(const int32_t* tokens, int N, std::vector<int32_t>* packed);  // returns U; N + 2U + 1 ints
template <typename T>
void embedding_backward(float* dwte, const T* dout, const int32_t* groups, int N, int U, int C, cudaStream_t stream);

// ---------------------------------------------------------------- crossentropy.cu
// lse (N) = logsumexp of each row of logits (N, V); row_loss (N) = lse - logit[target]
// in double for counted rows, 0 for ignored ones (target -100); total (1) = sum of row_loss
// (fixed order: deterministic). Read *total on the host after a sync.
template <typename T>
void crossentropy_forward(float* lse, double* row_loss, double* total, const T* logits, const int32_t* targets, int N,
                          int V, cudaStream_t stream);
// dlogits (N, V) = dloss * (softmax - onehot) for counted rows, 0 for ignored; may alias logits.
template <typename T>
void crossentropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets, float dloss, int N,
                           int V, cudaStream_t stream);

// ---------------------------------------------------------------- adamw.cu
// One fused AdamW pass (torch.optim.AdamW semantics, see csrc adamw): run r covers
// [run_start[r], run_start[r+1]) (the last run ends at n) and decays when run_decay[r] != 0
// (n_runs starts, ascending, the first 0). When wc is not null it receives the updated parameters converted
// to T (the bf16 compute copy). Scalars (bias corrections) are computed on the host.
struct AdamWScalars {
  float step_size;     // lr / (1 - beta1^t)
  float inv_bc2_sqrt;  // 1 / sqrt(1 - beta2^t)
  float one_minus_b1, one_minus_b2, beta2, eps;
  float decay_factor;  // 1 - lr * weight_decay
  // For step `step` (1-based), the bias corrections in double as the CPU optimizer (and torch).
  static AdamWScalars make(float lr, float beta1, float beta2, float eps, float weight_decay, long long step) {
    const double bc1 = 1.0 - std::pow((double)beta1, (double)step);
    const double bc2 = 1.0 - std::pow((double)beta2, (double)step);
    AdamWScalars s;
    s.step_size = (float)((double)lr / bc1);
    s.inv_bc2_sqrt = (float)(1.0 / std::sqrt(bc2));
    s.one_minus_b1 = 1.f - beta1;
    s.one_minus_b2 = 1.f - beta2;
    s.beta2 = beta2;
    s.eps = eps;
    s.decay_factor = (float)(1.0 - (double)lr * weight_decay);
    return s;
  }
};
template <typename T>
void adamw_update(float* params, float* m, float* v, const float* grads, T* wc, long long n, const int64_t* run_start,
                  const int32_t* run_decay, int n_runs, const AdamWScalars& s, cudaStream_t stream);
// norm (1, double) = sqrt(sum of squares of g) with fixed-order (deterministic) partial sums;
// partials: kNormBlocks doubles of scratch.
constexpr int kNormBlocks = 1024;
void global_norm(double* norm, double* partials, const float* g, long long n, cudaStream_t stream);
// As torch's clip_grad_norm_: g *= max_norm / (norm + 1e-6) when that is < 1 or the norm is not
// finite; reads the norm from device memory (no host round trip).
void clip_by_norm(float* g, const double* norm, double max_norm, long long n, cudaStream_t stream);

// ---------------------------------------------------------------- matmul.cu
// Row-major GEMMs for the linear layers (and, batched, for the kernel lab's GEMM attention,
// cuda/lab/attention_gemm.cu). Three back ends:
//   "cublaslt"  cuBLASLt (the default when cuBLAS was found at build time): one plan per
//               (shape, types, pointer alignments), the heuristic's first algorithm chosen once
//               with the caller's workspace, and out-of-place D = op(A) op(B) + R, which folds the
//               residual adds into the matmuls; a product cuBLASLt refuses runs on "cublas".
//               (Timing the heuristic's candidates instead, never shown faster on a GPU, is in
//               the kernel lab: cuda/lab/matmul_tune.cu.)
//   "cublas"    cublasGemmEx / cublasGemmStridedBatchedEx
//   "tiled"     a portable 64x64 tiled kernel (what a build without cuBLAS has)
// BackendOptions.matmul picks one (when a model is made on the GPU); an unknown name, or a
// cuBLAS back end in a build without cuBLAS, is a ValueError. Every back end accumulates in float (no TF32).
class Gemm {
 public:
  // backend: "cublaslt", "cublas", "tiled", or "" for the default (cublaslt where cuBLAS was
  // found at build time, else tiled).
  explicit Gemm(const std::string& backend = "");
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  bool uses_cublas() const { return backend_ != kTiled; }
  const char* backend() const;  // "cublaslt", "cublas" or "tiled"
  // cuBLASLt: plans made so far, and products it refused that cublasGemmEx ran instead.
  struct LtStats {
    long long plans = 0, fallbacks = 0;
  };
  LtStats lt_stats() const;
  // A caller-owned cuBLAS workspace, applied after every cublasSetStream (which resets it to
  // the default pool) and handed to every cuBLASLt call, so cuBLAS calls can be captured into
  // a CUDA graph without allocating. Ignored by the tiled kernel. The buffer must outlive the
  // Gemm's use, and the Gemm's calls must be ordered on one stream (they share it).
  void set_workspace(void* p, size_t bytes);
  // C (M x N, row-major, ldc) = beta * C + op(A) op(B); op as in csrc/matmul.h; beta 0 or 1.
  // Accumulates in float. TA = type of A and B; TC = type of C.
  template <typename TA, typename TC>
  void run(bool transA, bool transB, int M, int N, int K, const TA* A, int lda, const TA* B, int ldb, float beta,
           TC* C, int ldc, cudaStream_t stream);
  // D (M x N, ldc) = op(A) op(B) + R (R: M x N, ldc; R may be D), rounded to TC once, after
  // the add. cuBLASLt reads R and writes D in one pass; the other back ends copy R into D
  // first (when they differ) and accumulate with beta 1, which rounds the same way.
  template <typename TA, typename TC>
  void run_add(bool transA, bool transB, int M, int N, int K, const TA* A, int lda, const TA* B, int ldb,
               const TC* R, TC* D, int ldc, cudaStream_t stream);
  // `batch` independent products: entry z reads A + z*strideA, B + z*strideB and writes
  // C + z*strideC (element strides); C = beta * C + alpha * op(A) op(B).
  template <typename TA, typename TC>
  void run_batched(bool transA, bool transB, int M, int N, int K, float alpha, const TA* A, int lda,
                   long long strideA, const TA* B, int ldb, long long strideB, float beta, TC* C, int ldc,
                   long long strideC, int batch, cudaStream_t stream);

 private:
  enum Backend { kTiled, kCublas, kCublasLt };
  struct Lt;  // cuBLASLt handle and plan cache (matmul.cu)
  template <typename TA, typename TC>
  void product(bool transA, bool transB, int M, int N, int K, float alpha, const TA* A, int lda, long long strideA,
               const TA* B, int ldb, long long strideB, float beta, const TC* R, TC* D, int ldc, long long strideC,
               int batch, cudaStream_t stream);
  Backend backend_ = kTiled;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  long long lt_fallbacks_ = 0;
  Lt* lt_ = nullptr;
#ifdef PYLLAMA_HAVE_CUBLAS
  cublasHandle_t handle_ = nullptr;
#endif
};

// y (N, OUT) = x (N, IN) W^T (W is (OUT, IN))
template <typename T>
void linear_forward(Gemm& g, T* y, const T* x, const T* w, int N, int IN, int OUT, cudaStream_t stream);
// y (N, OUT) = res (N, OUT) + x W^T, one rounding (Gemm::run_add); res may be y
template <typename T>
void linear_forward_add(Gemm& g, T* y, const T* x, const T* w, const T* res, int N, int IN, int OUT,
                        cudaStream_t stream);
// dx (N, IN) = dy W (assigned; skipped when dx is null);  dw (OUT, IN) += dy^T x (float)
template <typename T>
void linear_backward(Gemm& g, T* dx, float* dw, const T* dy, const T* x, const T* w, int N, int IN, int OUT,
                     cudaStream_t stream);

}  // namespace gpu
}  // namespace pyllama
