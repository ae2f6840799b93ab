// model_cuda.cu — LlamaModelCuda: the CPU model's forward/backward, KV cache and
// optimizer, step for step, on the GPU (see model_cuda.h). The training and
// KV-cache passes below read as their CPU twins in csrc/model.cpp, with each CPU
// op replaced by its launcher from kernels.cuh, all queued on one stream.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "decode.cuh"
#include "kernels.cuh"
#include "model_cuda.h"
#include "rope.h"  // RopeTables: the same float32 tables as the CPU

namespace pyllama {

using gpu::bf16;

namespace {

// Allocation accounting: every DevBuf adds its bytes to the process totals (current and
// peak, cuda_bytes_allocated()) and to the model that owns it (the Impl under construction
// when the DevBuf was constructed: AllocAccount, below, points t_model_bytes at it).
std::atomic<long long> g_dev_bytes{0}, g_dev_peak{0};
thread_local long long* t_model_bytes = nullptr;

void account_bytes(long long* model, long long delta) {
  const long long now = g_dev_bytes.fetch_add(delta) + delta;
  long long peak = g_dev_peak.load();
  while (now > peak && !g_dev_peak.compare_exchange_weak(peak, now)) {
  }
  if (model) *model += delta;
}

// One device allocation, freed on destruction.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  long long* acct = t_model_bytes;  // the owning model's byte count (or none)
  DevBuf() = default;
  ~DevBuf() {
    if (p) {
      account_bytes(acct, -(long long)bytes);
      cudaFree(p);  // no throwing from a destructor
    }
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  // At least n bytes; the old content is dropped when it has to grow.
  void reserve(size_t n) {
    if (p && n <= bytes) return;
    release();
    CUDA_CHECK(cudaMalloc(&p, n ? n : 1));
    bytes = n;
    account_bytes(acct, (long long)bytes);
  }
  void release() {
    if (p) {
      void* q = p;
      account_bytes(acct, -(long long)bytes);
      p = nullptr;
      bytes = 0;
      CUDA_CHECK(cudaFree(q));
    }
  }
  void swap(DevBuf& o) {
    std::swap(p, o.p);
    std::swap(bytes, o.bytes);
  }
  template <typename U>
  U* as() const {
    return static_cast<U*>(p);
  }
};

// Carves typed arrays out of one byte buffer (nullptr base: only measures).
struct Carver {
  char* base;
  size_t off = 0;
  template <typename U>
  U* take(size_t n) {
    U* r = base ? reinterpret_cast<U*>(base + off) : nullptr;
    off += (n * sizeof(U) + 255) & ~size_t(255);  // 256-byte aligned arrays
    return r;
  }
};

// Training activations, as carve_acts in model.cpp; T arrays in the compute dtype.
template <typename T>
struct Acts {
  T* x0;  // (N, C)
  struct Layer {
    T *ln1, *qkv, *atty, *res1, *ln2, *gu, *h, *res2;
    float *rstd1, *rstd2, *att;  // att: lse (B, NH, T) (flash); probabilities (B, NH, T, T) (naive)
  };
  std::vector<Layer> layers;
  T *lnf, *logits;  // logits (N, V): turned into dlogits in place by backward
  float *rstdf, *lse;
  double* row_loss;  // (N)
  // backward scratch
  T *dres, *dln, *dqkv, *datty, *dgu, *dh;
  float* datt;  // flash: rowsum(dout * out) (B, NH, T); naive: (B, NH, T, T)
  float* norm_partial;  // the RMSNorm backward's per-block partial sums of dw (rmsnorm_backward)
};

template <typename T>
size_t carve_acts(Acts<T>* a, char* base, int B, int T_, int C, int QD, int QKVD, int NH, int I, int V, int L,
                  bool dense_att) {
  Carver cv{base};
  const size_t N = (size_t)B * T_, ATT = (size_t)B * NH * T_ * (dense_att ? T_ : 1);
  a->x0 = cv.take<T>(N * C);
  a->layers.resize(L);
  for (int l = 0; l < L; l++) {
    auto& y = a->layers[l];
    y.ln1 = cv.take<T>(N * C);
    y.rstd1 = cv.take<float>(N);
    y.qkv = cv.take<T>(N * QKVD);
    y.att = cv.take<float>(ATT);
    y.atty = cv.take<T>(N * QD);
    y.res1 = cv.take<T>(N * C);
    y.ln2 = cv.take<T>(N * C);
    y.rstd2 = cv.take<float>(N);
    y.gu = cv.take<T>(N * 2 * I);
    y.h = cv.take<T>(N * I);
    y.res2 = cv.take<T>(N * C);
  }
  a->lnf = cv.take<T>(N * C);
  a->rstdf = cv.take<float>(N);
  a->logits = cv.take<T>(N * V);
  a->lse = cv.take<float>(N);
  a->row_loss = cv.take<double>(N);
  a->dres = cv.take<T>(N * C);
  a->dln = cv.take<T>(N * C);
  a->dqkv = cv.take<T>(N * QKVD);
  a->datty = cv.take<T>(N * QD);
  a->dgu = cv.take<T>(N * 2 * I);
  a->dh = cv.take<T>(N * I);
  a->datt = cv.take<float>(ATT);
  a->norm_partial = cv.take<float>(gpu::rmsnorm_backward_partial_floats(C));
  return cv.off;
}

// First base of Impl: constructed before Impl's DevBuf members, so they count into it.
struct AllocAccount {
  long long model_bytes = 0;
  AllocAccount() { t_model_bytes = &model_bytes; }
};

constexpr size_t kCublasWorkspace = size_t(32) << 20;  // cuBLAS's recommendation for Hopper
constexpr int kChainMax = 64;  // most steps of one greedy chain (kv_greedy_chain)

// The arrays of one T = 1 decode step of B rows (kv_decode), carved from one buffer.
template <typename T>
struct DecArrays {
  T *x, *ln, *qkv, *atty, *tmp, *gu, *h, *logits;
  float *rstd, *logits_f, *part;  // logits_f: float copy of bf16 logits; part: attention splits
  float* part_am;                  // fused path: per-block argmax partials of the logits
  int32_t *argmax, *ring;          // ring: kChainMax steps of B argmaxes (the greedy chain)
};

// Per-region timings (LlamaModelCuda::set_profiling): when on, each op of the training
// forward/backward, AdamW and the eager decode step records a CUDA event after it; a
// region's time is the gap since the event before. end() waits for the stream (so
// profiling adds a wait per pass) and adds the gaps up by name. Off: one branch per mark.
struct Prof {
  bool on = false;
  std::vector<cudaEvent_t> pool;
  size_t used = 0;
  std::vector<const char*> names;  // names[i]: the region event i closes (nullptr: the start)
  std::map<std::string, std::pair<double, long long>> acc;  // name -> (ms, times)
  void record(cudaStream_t s, const char* name) {
    if (used == pool.size()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      pool.push_back(e);
    }
    CUDA_CHECK(cudaEventRecord(pool[used++], s));
    names.push_back(name);
  }
  void cancel() {  // drop the open pass, if any (marks outside a pass record nothing)
    used = 0;
    names.clear();
  }
  void begin(cudaStream_t s) {
    if (!on) return;
    cancel();
    record(s, nullptr);
  }
  void mark(cudaStream_t s, const char* name) {
    if (on && used > 0) record(s, name);
  }
  void end(cudaStream_t s) {
    if (!on || used == 0) return;
    CUDA_CHECK(cudaStreamSynchronize(s));
    for (size_t i = 1; i < used; i++) {
      float ms = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, pool[i - 1], pool[i]));
      auto& a = acc[names[i]];
      a.first += ms;
      a.second++;
    }
    cancel();
  }
  void release() {
    for (auto e : pool) cudaEventDestroy(e);
    pool.clear();
    cancel();
  }
};

}  // namespace

struct LlamaModelCuda::Impl : AllocAccount {
  LlamaConfig cfg;
  DType dtype = DType::float32;
  int dev = 0;
  int C = 0, NH = 0, NKV = 0, HS = 0, QD = 0, KVD = 0, QKVD = 0, I = 0, V = 0, L = 0;  // QD = NH*HS
  size_t P = 0;  // parameters
  static constexpr size_t kNoBias = ~size_t(0);
  struct LayerOff {
    size_t ln1, wqkv, wo, ln2, wgu, wd;  // float offsets into the flat buffers
    size_t bqkv = kNoBias, bo = kNoBias, bgu = kNoBias, bd = kNoBias;  // attention_bias, mlp_bias
  };
  bool has_bias = false;
  // y (N, OUT) += the bias at `off` of the compute weights (nothing without biases)
  template <typename T>
  void add_bias(T* y, const T* W, size_t off, long long N, int OUT, cudaStream_t s) const {
    if (off != kNoBias) gpu::bias_add<T>(y, W + off, N, OUT, s);
  }
  // the bias gradient at `off` += column sums of dy
  template <typename T>
  void grad_bias(float* G, size_t off, const T* dy, long long N, int OUT, cudaStream_t s) const {
    if (off != kNoBias) gpu::bias_backward<T>(G + off, dy, N, OUT, s);
  }
  std::vector<LayerOff> layer_off;
  size_t lnf_off = 0, wout_off = 0;

  cudaStream_t stream = nullptr;
  double* pinned = nullptr;  // 2 doubles of page-locked host memory (loss total, norm)
  std::unique_ptr<gpu::Gemm> gemm;
  bool attn_naive = false;  // attention "naive": (B, NH, T, T) probabilities instead of flash
  bool attn_tc = true;      // attention "simt": flash without tensor cores (bf16)

  DevBuf params, grads, m, v;  // float32 (P)
  DevBuf wc;                   // bf16 compute copy of params (P), bfloat16 mode only
  bool have_moments = false;
  DevBuf rope_cos, rope_sin;  // (max_positions, HS/2) float
  RopeTables rope_host;        // the host tables (dynamic scaling changes them per pass: rope_sync)
  DevBuf scalars;             // doubles: [0] loss total, [1] norm, [2 ..] norm partials, then deferred losses
  static constexpr int kMaxDeferredLosses = 256;
  bool defer_loss = false;           // set_defer_loss: forward keeps its loss on the GPU
  std::vector<int> deferred_counts;  // counted targets of each deferred forward, in order
  double* loss_slots() { return scalars.as<double>() + 2 + gpu::kNormBlocks; }

  // training state
  DevBuf acts, tokens_d, targets_d, pos_d, groups_d;
  size_t io_cap = 0;  // int32 elements in tokens_d / targets_d / pos_d (groups_d: 3 io_cap + 1)
  int B_ = 0, T_ = 0, count = 0;
  bool have_targets = false, logits_valid = false, have_forward = false;
  std::vector<int32_t> targets_h, pos_h;
  std::vector<int32_t> tokens_h, groups_h;  // the last forward's tokens; grouped by token (backward)

  // AdamW runs of equal decay, cached from the last segment table
  DevBuf run_start_d, run_decay_d;
  std::vector<int64_t> seg_cache;
  std::vector<int64_t> run_start_h;
  std::vector<int32_t> run_decay_h;

  // KV cache (L, S, NKV, len, HS) in the compute dtype
  int kv_slots = 0, kv_len = 0;
  DevBuf kcache, vcache, kvtmp, inf, inf_io, reorder_src;
  std::vector<float> host_logits;
  std::vector<int32_t> inf_pos_h;
  std::vector<int32_t> greedy_h;
  std::vector<int32_t> chain_h;  // kv_greedy_chain's result on the general path

  // T = 1 decode fast path (kv_decode): fixed device buffers, pinned host staging, one
  // CUDA graph per B (valid until kv_reset or a buffer regrowth). See docs/CUDA.md.
  bool dec_fast = true;    // decode_fast_path off: T = 1 steps take the general kv_forward path
  bool dec_graphs = true;  // cuda_graphs off: the fast path without graphs
  bool dec_gemv = true;    // decode_gemv off: cuBLAS for B <= 4 rows too
  bool dec_fused = true;   // decode_fused off: the skinny GEMV and separate norm/RoPE/SwiGLU kernels
  bool dec_pdl = true;     // pdl off: the fused kernels without programmatic dependent launch
  bool pdl_capable = false;  // compute capability 9.0 or later
  int num_sms = 1;
  DevBuf kvptr_d;  // {kcache.p, vcache.p}: decode kernels read the cache bases here (kv_reorder swaps them)
  DevBuf cublas_ws;
  // dec: scratch for up to dec_rows rows. dec_io: tokens | positions | slots (B each) | the
  // greedy chain's step (1), uploaded each call; then at 3 * dec_rows + 1 the counters the
  // one-kernel reductions keep (zeroed once, left at zero): dec_rows * NH for the attention
  // splits, one for the logits argmax.
  DevBuf dec, dec_io;
  int dec_rows = 0, dec_len = 0;  // rows the buffers hold; cache length their attention scratch was sized for
  int32_t* dec_in_h = nullptr;  // pinned, 3 * dec_rows + 1 int32
  void* dec_out_h = nullptr;    // pinned: dec_rows * V float logits, dec_rows int32 argmaxes, or a chain's ring
  struct DecGraph {
    int B;
    cudaGraphExec_t exec;
  };
  std::vector<DecGraph> dec_graph;
  std::vector<int> dec_seen;  // B values run once eagerly since the last reset (warm-up before a capture)
  long long n_captures = 0, n_replays = 0, n_eager = 0, n_general = 0;
  std::string graph_error;

  Prof prof;

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    prof.release();
    for (auto& g : dec_graph) cudaGraphExecDestroy(g.exec);
    dec_graph.clear();
    gemm.reset();
    if (pinned) cudaFreeHost(pinned);
    if (dec_in_h) cudaFreeHost(dec_in_h);
    if (dec_out_h) cudaFreeHost(dec_out_h);
    if (stream) cudaStreamDestroy(stream);
  }

  void use() const { CUDA_CHECK(cudaSetDevice(dev)); }
  size_t elem() const { return dtype == DType::bfloat16 ? sizeof(bf16) : sizeof(float); }

  template <typename T>
  const T* W() const {  // compute weights
    if constexpr (std::is_same<T, float>::value)
      return params.as<float>();
    else
      return wc.as<bf16>();
  }

  void refresh_compute_copy() {
    if (dtype == DType::bfloat16) gpu::convert<bf16, float>(wc.as<bf16>(), params.as<float>(), (long long)P, stream);
  }

  void sync() const { CUDA_CHECK(cudaStreamSynchronize(stream)); }

  // ------------------------------------------------------------ construction
  void init(const LlamaConfig& config, const std::vector<ParamInfo>& infos, size_t n_params, DType dt, int device,
            const BackendOptions& opt) {
    t_model_bytes = nullptr;  // the members are constructed: later DevBufs belong to no model
    cfg = config;
    PYLLAMA_CHECK(dt == DType::float32 || dt == DType::bfloat16, ValueError,
                  "LlamaModelCuda: dtype must be float32 or bfloat16, got " << dtype_name(dt));
    dtype = dt;
    const int ndev = cuda_runtime_device_count();
    if (ndev == 0)
      throw CudaError("no CUDA device is available (pyllama.build_info()['cuda_available'] is False)");
    PYLLAMA_CHECK(device >= 0 && device < ndev, ValueError,
                  "CUDA device " << device << " does not exist: this machine has " << ndev);
    dev = device;
    C = cfg.hidden_size;
    NH = cfg.num_attention_heads;
    NKV = cfg.num_key_value_heads;
    HS = cfg.head_dim();
    QD = NH * HS;  // = C unless config.json sets another head_dim
    KVD = NKV * HS;
    QKVD = QD + 2 * KVD;
    I = cfg.intermediate_size;
    V = cfg.vocab_size;
    L = cfg.num_hidden_layers;
    PYLLAMA_CHECK(HS <= gpu::kMaxHeadSize, ValueError,
                  "the CUDA backend supports head_dim <= " << gpu::kMaxHeadSize << ", got " << HS);
    P = n_params;

    // Offsets from the one layout table (param_layout), so every backend agrees.
    auto off = [&](const std::string& name) { return find_param(infos, name).offset; };
    for (int l = 0; l < L; l++) {
      const std::string pre = "model.layers." + std::to_string(l) + ".";
      LayerOff o;
      o.ln1 = off(pre + "input_layernorm.weight");
      o.wqkv = off(pre + "self_attn.q_proj.weight");
      o.wo = off(pre + "self_attn.o_proj.weight");
      o.ln2 = off(pre + "post_attention_layernorm.weight");
      o.wgu = off(pre + "mlp.gate_proj.weight");
      o.wd = off(pre + "mlp.down_proj.weight");
      PYLLAMA_CHECK(off(pre + "self_attn.k_proj.weight") == o.wqkv + (size_t)QD * C &&
                        off(pre + "self_attn.v_proj.weight") == o.wqkv + (size_t)(QD + KVD) * C &&
                        off(pre + "mlp.up_proj.weight") == o.wgu + (size_t)I * C,
                    ValueError, "LlamaModelCuda: unexpected parameter layout (q|k|v and gate|up must be adjacent)");
      if (cfg.attention_bias) {
        o.bqkv = off(pre + "self_attn.q_proj.bias");
        o.bo = off(pre + "self_attn.o_proj.bias");
        PYLLAMA_CHECK(off(pre + "self_attn.k_proj.bias") == o.bqkv + QD &&
                          off(pre + "self_attn.v_proj.bias") == o.bqkv + QD + KVD,
                      ValueError, "LlamaModelCuda: unexpected parameter layout (q|k|v biases must be adjacent)");
      }
      if (cfg.mlp_bias) {
        o.bgu = off(pre + "mlp.gate_proj.bias");
        o.bd = off(pre + "mlp.down_proj.bias");
        PYLLAMA_CHECK(off(pre + "mlp.up_proj.bias") == o.bgu + I, ValueError,
                      "LlamaModelCuda: unexpected parameter layout (gate|up biases must be adjacent)");
      }
      layer_off.push_back(o);
    }
    has_bias = cfg.attention_bias || cfg.mlp_bias;
    lnf_off = off("model.norm.weight");
    wout_off = cfg.tie_word_embeddings ? 0 : off("lm_head.weight");

    use();
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned), (2 + kMaxDeferredLosses) * sizeof(double)));
    opt.validate();
    gemm = std::make_unique<gpu::Gemm>(opt.matmul);
    attn_naive = opt.attention == "naive";
    attn_tc = opt.attention != "simt";

    params.reserve(P * sizeof(float));
    grads.reserve(P * sizeof(float));
    CUDA_CHECK(cudaMemsetAsync(params.p, 0, P * sizeof(float), stream));
    CUDA_CHECK(cudaMemsetAsync(grads.p, 0, P * sizeof(float), stream));
    if (dtype == DType::bfloat16) {
      wc.reserve(P * sizeof(bf16));
      refresh_compute_copy();
    }
    // the same float32 tables as the CPU, RoPE scaling applied (core/rope.h)
    rope_host = RopeTables(cfg);
    rope_cos.reserve((size_t)rope_host.capacity() * (HS / 2) * sizeof(float));
    rope_sin.reserve((size_t)rope_host.capacity() * (HS / 2) * sizeof(float));
    rope_upload();
    scalars.reserve((2 + gpu::kNormBlocks + kMaxDeferredLosses) * sizeof(double));
    CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev));
    kvptr_d.reserve(2 * sizeof(void*));
    CUDA_CHECK(cudaMemsetAsync(kvptr_d.p, 0, 2 * sizeof(void*), stream));
    dec_fast = opt.decode_fast_path;
    dec_graphs = opt.cuda_graphs;
    dec_gemv = opt.decode_gemv;
    dec_fused = opt.decode_fused;
    int cc_major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
    pdl_capable = cc_major >= 9;
    dec_pdl = pdl_capable && opt.pdl;
    if (gemm->uses_cublas()) {
      cublas_ws.reserve(kCublasWorkspace);
      gemm->set_workspace(cublas_ws.p, cublas_ws.bytes);
    }
    sync();  // the host vectors above go out of scope
  }


  // The host tables' valid rows to the device, in stream order (pageable copies: the host
  // buffer may change again as soon as this returns).
  void rope_upload() {
    const size_t n = (size_t)rope_host.rows() * (HS / 2) * sizeof(float);
    CUDA_CHECK(cudaMemcpyAsync(rope_cos.p, rope_host.cos(), n, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(rope_sin.p, rope_host.sin(), n, cudaMemcpyHostToDevice, stream));
  }
  // Dynamic RoPE scaling: the frequencies of a pass reaching position seq_len - 1 (core/rope.h).
  void rope_sync(int seq_len) {
    if (rope_host.update(seq_len)) rope_upload();
  }
  bool dynamic_rope() const { return cfg.rope_scaling.type == "dynamic"; }
  static int max_seq(const int32_t* start_pos, int B, int T) {
    int m = 0;
    for (int b = 0; b < B; b++) m = std::max(m, start_pos[b] + T);
    return m;
  }

  // ------------------------------------------------------------ training forward
  // Inputs checked by Model::forward (backend.cpp).
  float forward(const int32_t* tokens, const int32_t* targets, int B, int T) {
    const long long N = (long long)B * T;
    use();
    rope_sync(T);  // dynamic RoPE scaling: this pass's frequencies
    // No usable forward until this one is queued: a throw below (an allocation failing while
    // a buffer regrows) must not leave backward()/logits() reading released or resized buffers.
    have_forward = false;
    logits_valid = false;
    // device buffers sized for (B, T); they only grow
    size_t need = dtype == DType::bfloat16 ? measure<bf16>(B, T) : measure<float>(B, T);
    if (need > acts.bytes) {
      sync();  // the old buffer may still be in use by queued work
      acts.release();
      acts.reserve(need);
    }
    if ((size_t)N > io_cap) {
      sync();
      io_cap = 0;  // until all three are reallocated
      tokens_d.release();
      targets_d.release();
      pos_d.release();
      groups_d.release();
      tokens_d.reserve(N * sizeof(int32_t));
      targets_d.reserve(N * sizeof(int32_t));
      pos_d.reserve(N * sizeof(int32_t));
      groups_d.reserve((3 * N + 1) * sizeof(int32_t));  // group_tokens: N + 2U + 1, U <= N
      io_cap = (size_t)N;
    }
    // positions and targets on the host (the counted-target count stays on the host)
    targets_h.resize(N);
    pos_h.resize(N);
    int cnt = 0;
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) {
        const size_t i = (size_t)b * T + t;
        pos_h[i] = t;
        targets_h[i] = targets ? targets[i] : -100;
        cnt += targets_h[i] != -100;
      }
    // pageable host -> device copies are staged before cudaMemcpyAsync returns
    CUDA_CHECK(cudaMemcpyAsync(tokens_d.p, tokens, N * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    if (targets) tokens_h.assign(tokens, tokens + N);  // grouped by token for the embedding gradient (backward)
    CUDA_CHECK(cudaMemcpyAsync(targets_d.p, targets_h.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(pos_d.p, pos_h.data(), N * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    B_ = B;
    T_ = T;
    count = cnt;
    have_targets = targets != nullptr;
    have_forward = true;
    const bool want_loss = have_targets && cnt > 0;
    if (dtype == DType::bfloat16)
      forward_t<bf16>(want_loss);
    else
      forward_t<float>(want_loss);
    logits_valid = true;
    if (defer_loss) {  // the loss total stays on the GPU until norm_and_losses (no wait here)
      PYLLAMA_CHECK(deferred_counts.size() < (size_t)kMaxDeferredLosses, ValueError,
                    "LlamaModelCuda.forward: more than " << kMaxDeferredLosses
                    << " deferred losses not read yet: call norm_and_losses() (or set_defer_loss(False))");
      if (want_loss)
        CUDA_CHECK(cudaMemcpyAsync(loss_slots() + deferred_counts.size(), scalars.p, sizeof(double),
                                   cudaMemcpyDeviceToDevice, stream));
      deferred_counts.push_back(want_loss ? cnt : 0);
      return NAN;
    }
    if (!want_loss) return NAN;
    CUDA_CHECK(cudaMemcpyAsync(pinned, scalars.p, sizeof(double), cudaMemcpyDeviceToHost, stream));
    sync();  // the loss
    return (float)(pinned[0] / cnt);
  }

  void set_defer_loss(bool on) {
    defer_loss = on;
    if (on) deferred_counts.clear();
  }

  // The gradient norm (clipped to max_norm when > 0), read back with one wait; with `losses`,
  // the deferred losses in the same wait (the training step's only one), then dropped.
  double read_norm(double max_norm, std::vector<double>* losses) {
    use();
    double* sd = scalars.as<double>();
    gpu::global_norm(sd + 1, sd + 2, grads.as<float>(), (long long)P, stream);
    if (max_norm > 0) gpu::clip_by_norm(grads.as<float>(), sd + 1, max_norm, (long long)P, stream);
    const size_t k = losses ? deferred_counts.size() : 0;
    CUDA_CHECK(cudaMemcpyAsync(pinned + 1, sd + 1, sizeof(double), cudaMemcpyDeviceToHost, stream));
    if (k) CUDA_CHECK(cudaMemcpyAsync(pinned + 2, loss_slots(), k * sizeof(double), cudaMemcpyDeviceToHost, stream));
    sync();
    if (losses) {
      losses->resize(k);
      for (size_t i = 0; i < k; i++)  // as forward returns them: float(total / count)
        (*losses)[i] = deferred_counts[i] ? (double)(float)(pinned[2 + i] / deferred_counts[i]) : NAN;
      deferred_counts.clear();
    }
    return pinned[1];
  }
  std::pair<double, std::vector<double>> norm_and_losses(double max_norm) {
    std::vector<double> losses;
    const double norm = read_norm(max_norm, &losses);
    return {norm, std::move(losses)};
  }

  template <typename T>
  size_t measure(int B, int T_) const {
    Acts<T> a;
    return carve_acts<T>(&a, nullptr, B, T_, C, QD, QKVD, NH, I, V, L, attn_naive);
  }

  // Where one decoder layer's forward writes: the training forward keeps a set per layer (for
  // the backward); the KV-cache prefill reuses one set and adds into x in place (res1 == res2 == x).
  template <typename T>
  struct LayerIO {
    T *ln1, *qkv, *atty, *res1, *ln2, *gu, *h, *res2;
    float *rstd1, *rstd2;
  };
  // The layer stack of the batched passes (training forward and KV-cache prefill), one layer:
  //   res1 = x + o(attend(rope(qkv(ln1(x)))));  res2 = res1 + down(swiglu(gate_up(ln2(res1))))
  // with the biases after their matmuls. attend(qkv, atty) is the attention over the rotated
  // q, k, v (flash over the batch, or over the KV cache); mk marks profiling regions. (Decode
  // steps of one token have their own kernels: run_decode.)
  template <typename T, class Mark, class Attend>
  void layer_forward(const LayerOff& o, const LayerIO<T>& y, const T* x, int N, const int32_t* pos, cudaStream_t s,
                     Mark&& mk, Attend&& attend) {
    const T* Wp = W<T>();
    const float *cs = rope_cos.as<float>(), *sn = rope_sin.as<float>();
    const float eps = cfg.rms_norm_eps;
    gpu::rmsnorm_forward<T>(y.ln1, y.rstd1, x, Wp + o.ln1, N, C, eps, s);
    mk("fwd rmsnorm");
    gpu::linear_forward<T>(*gemm, y.qkv, y.ln1, Wp + o.wqkv, N, C, QKVD, s);
    add_bias<T>(y.qkv, Wp, o.bqkv, N, QKVD, s);
    mk("fwd matmul qkv");
    gpu::rope_apply<T>(y.qkv, QKVD, pos, cs, sn, N, NH + NKV, HS, false, s);  // q and k heads are adjacent
    mk("fwd rope");
    attend(y.qkv, y.atty);
    mk("fwd attention");
    gpu::linear_forward_add<T>(*gemm, y.res1, y.atty, Wp + o.wo, x, N, QD, C, s);  // res1 = x + o(atty)
    add_bias<T>(y.res1, Wp, o.bo, N, C, s);
    mk("fwd matmul o+residual");
    gpu::rmsnorm_forward<T>(y.ln2, y.rstd2, y.res1, Wp + o.ln2, N, C, eps, s);
    mk("fwd rmsnorm");
    gpu::linear_forward<T>(*gemm, y.gu, y.ln2, Wp + o.wgu, N, C, 2 * I, s);
    add_bias<T>(y.gu, Wp, o.bgu, N, 2 * I, s);
    mk("fwd matmul gate_up");
    gpu::swiglu_forward<T>(y.h, y.gu, N, I, s);
    mk("fwd swiglu");
    gpu::linear_forward_add<T>(*gemm, y.res2, y.h, Wp + o.wd, y.res1, N, I, C, s);  // res2 = res1 + down(h)
    add_bias<T>(y.res2, Wp, o.bd, N, C, s);
    mk("fwd matmul down+residual");
  }

  template <typename T>
  void forward_t(bool want_loss) {
    const int B = B_, Tn = T_, N = B * Tn;
    const float eps = cfg.rms_norm_eps;
    Acts<T> a;
    carve_acts<T>(&a, acts.as<char>(), B, Tn, C, QD, QKVD, NH, I, V, L, attn_naive);
    const T* Wp = W<T>();
    const int32_t* tok = tokens_d.as<int32_t>();
    const int32_t* pos = pos_d.as<int32_t>();
    cudaStream_t s = stream;
    auto mk = [&](const char* name) { prof.mark(s, name); };

    prof.begin(s);
    gpu::embedding_forward<T>(a.x0, tok, Wp, N, C, s);
    mk("fwd embedding");
    const T* x = a.x0;
    for (int l = 0; l < L; l++) {
      auto& y = a.layers[l];
      const LayerIO<T> io{y.ln1, y.qkv, y.atty, y.res1, y.ln2, y.gu, y.h, y.res2, y.rstd1, y.rstd2};
      layer_forward<T>(layer_off[l], io, x, N, pos, s, mk, [&](const T* qkv, T* atty) {
        if (attn_naive)
          gpu::attention_forward<T>(atty, y.att, qkv, B, Tn, NH, NKV, HS, s);
        else
          gpu::flash_attention_forward<T>(atty, y.att, qkv, B, Tn, NH, NKV, HS, s, attn_tc);
      });
      x = y.res2;
    }
    gpu::rmsnorm_forward<T>(a.lnf, a.rstdf, x, Wp + lnf_off, N, C, eps, s);
    mk("fwd rmsnorm");
    gpu::linear_forward<T>(*gemm, a.logits, a.lnf, Wp + wout_off, N, C, V, s);
    mk("fwd matmul lm_head");
    if (want_loss)
      gpu::crossentropy_forward<T>(a.lse, a.row_loss, scalars.as<double>(), a.logits, targets_d.as<int32_t>(), N, V,
                                   s);
    mk("fwd cross-entropy");
    prof.end(s);
  }

  void logits_to_host(float* dst) const {
    PYLLAMA_CHECK(logits_valid, ValueError, "no logits: run forward first (backward overwrites them)");
    use();
    const size_t n = (size_t)B_ * T_ * V;
    if (dtype == DType::bfloat16) {
      Acts<bf16> a;
      carve_acts<bf16>(&a, acts.as<char>(), B_, T_, C, QD, QKVD, NH, I, V, L, attn_naive);
      std::vector<uint16_t> tmp(n);
      CUDA_CHECK(cudaMemcpyAsync(tmp.data(), a.logits, n * sizeof(bf16), cudaMemcpyDeviceToHost, stream));
      sync();
      for (size_t i = 0; i < n; i++) dst[i] = bf16_to_float(tmp[i]);
    } else {
      Acts<float> a;
      carve_acts<float>(&a, acts.as<char>(), B_, T_, C, QD, QKVD, NH, I, V, L, attn_naive);
      CUDA_CHECK(cudaMemcpyAsync(dst, a.logits, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
      sync();
    }
  }

  // ------------------------------------------------------------ training backward
  void backward(float scale) {
    PYLLAMA_CHECK(have_forward && B_ > 0, ValueError, "backward() needs a forward pass with labels first");
    PYLLAMA_CHECK(have_targets, ValueError, "backward() needs the last forward pass to have labels");
    PYLLAMA_CHECK(logits_valid, ValueError, "backward() needs a new forward pass: the last one was already used");
    if (count == 0) return;  // no counted targets: the loss does not depend on the parameters
    use();
    logits_valid = false;  // turned into dlogits in place
    if (dtype == DType::bfloat16)
      backward_t<bf16>(scale);
    else
      backward_t<float>(scale);
  }

  template <typename T>
  void backward_t(float scale) {
    const int B = B_, Tn = T_, N = B * Tn;
    Acts<T> a;
    carve_acts<T>(&a, acts.as<char>(), B, Tn, C, QD, QKVD, NH, I, V, L, attn_naive);
    const T* Wp = W<T>();
    float* G = grads.as<float>();
    const int32_t* pos = pos_d.as<int32_t>();
    const float *cs = rope_cos.as<float>(), *sn = rope_sin.as<float>();
    cudaStream_t s = stream;
    auto mk = [&](const char* name) { prof.mark(s, name); };

    prof.begin(s);
    gpu::crossentropy_backward<T>(a.logits, a.logits, a.lse, targets_d.as<int32_t>(), scale / count, N, V, s);
    mk("bwd cross-entropy");
    gpu::linear_backward<T>(*gemm, a.dln, G + wout_off, a.logits, a.lnf, Wp + wout_off, N, C, V, s);
    mk("bwd matmul lm_head");
    CUDA_CHECK(cudaMemsetAsync(a.dres, 0, sizeof(T) * (size_t)N * C, s));
    const T* xL = L > 0 ? a.layers[L - 1].res2 : a.x0;
    gpu::rmsnorm_backward<T>(a.dres, G + lnf_off, a.norm_partial, a.dln, xL, Wp + lnf_off, a.rstdf, N, C, s);
    mk("bwd rmsnorm");

    for (int l = L - 1; l >= 0; l--) {
      const LayerOff& o = layer_off[l];
      auto& y = a.layers[l];
      const T* x = l > 0 ? a.layers[l - 1].res2 : a.x0;
      // feed-forward: res2 = res1 + down(swiglu(gate_up(ln2)))
      grad_bias<T>(G, o.bd, a.dres, N, C, s);
      gpu::linear_backward<T>(*gemm, a.dh, G + o.wd, a.dres, y.h, Wp + o.wd, N, I, C, s);
      mk("bwd matmul down");
      gpu::swiglu_backward<T>(a.dgu, a.dh, y.gu, N, I, s);
      mk("bwd swiglu");
      grad_bias<T>(G, o.bgu, a.dgu, N, 2 * I, s);
      gpu::linear_backward<T>(*gemm, a.dln, G + o.wgu, a.dgu, y.ln2, Wp + o.wgu, N, C, 2 * I, s);
      mk("bwd matmul gate_up");
      gpu::rmsnorm_backward<T>(a.dres, G + o.ln2, a.norm_partial, a.dln, y.res1, Wp + o.ln2, y.rstd2, N, C, s);
      mk("bwd rmsnorm");
      // attention: res1 = x + o(attn(rope(qkv(ln1))))
      grad_bias<T>(G, o.bo, a.dres, N, C, s);
      gpu::linear_backward<T>(*gemm, a.datty, G + o.wo, a.dres, y.atty, Wp + o.wo, N, QD, C, s);
      mk("bwd matmul o");
      if (attn_naive)
        gpu::attention_backward<T>(a.dqkv, a.datt, a.datty, y.qkv, y.att, B, Tn, NH, NKV, HS, s);
      else  // with the inverse RoPE of dq and dk, in its stores where it can
        gpu::flash_attention_backward<T>(a.dqkv, a.datt, a.datty, y.atty, y.qkv, y.att, B, Tn, NH, NKV, HS, s,
                                         attn_tc, gpu::RopeTables{pos, cs, sn});
      mk("bwd attention");
      if (attn_naive) {
        gpu::rope_apply<T>(a.dqkv, QKVD, pos, cs, sn, N, NH + NKV, HS, true, s);  // dq and dk
        mk("bwd rope");
      }
      grad_bias<T>(G, o.bqkv, a.dqkv, N, QKVD, s);
      gpu::linear_backward<T>(*gemm, a.dln, G + o.wqkv, a.dqkv, y.ln1, Wp + o.wqkv, N, C, QKVD, s);
      mk("bwd matmul qkv");
      gpu::rmsnorm_backward<T>(a.dres, G + o.ln1, a.norm_partial, a.dln, x, Wp + o.ln1, y.rstd1, N, C, s);
      mk("bwd rmsnorm");
    }
    // the embedding gradient without atomics: rows grouped by token on the host (pageable
    // copy, staged before cudaMemcpyAsync returns)
    const int U = gpu::group_tokens(tokens_h.data(), N, &groups_h);
    CUDA_CHECK(cudaMemcpyAsync(groups_d.p, groups_h.data(), groups_h.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                               s));
    gpu::embedding_backward<T>(G, a.dres, groups_d.as<int32_t>(), N, U, C, s);
    mk("bwd embedding");
    prof.end(s);
  }

  // ------------------------------------------------------------ KV cache
  void kv_reset(int n_slots, int max_len) {
    PYLLAMA_CHECK(n_slots >= 1, ValueError, "kv cache needs at least one slot, got " << n_slots);
    PYLLAMA_CHECK(max_len >= 1 && max_len <= cfg.max_positions(), ValueError,
                  "kv cache length " << max_len << " must be in [1, "
                                     << (dynamic_rope() ? "max_position_embeddings * rope_scaling factor = "
                                                        : "max_position_embeddings=")
                                     << cfg.max_positions() << "]");
    use();
    sync();
    const size_t bytes = (size_t)L * n_slots * NKV * max_len * HS * elem();
    if (n_slots != kv_slots || max_len != kv_len) drop_graphs();  // they bake in the cache shape, not its address
    // No cache until the new one is complete: a failed allocation below must not leave kv_forward
    // running on released (null) cache buffers with the old shape.
    kv_slots = 0;
    kv_len = 0;
    kcache.release();
    vcache.release();
    kvtmp.release();
    kcache.reserve(bytes);
    vcache.reserve(bytes);
    CUDA_CHECK(cudaMemsetAsync(kcache.p, 0, bytes, stream));
    CUDA_CHECK(cudaMemsetAsync(vcache.p, 0, bytes, stream));
    kv_slots = n_slots;
    kv_len = max_len;
    publish_kv_ptrs();
    if (dec_fast) ensure_decode(n_slots);  // the usual decode batch: no regrowth mid-generation
  }

  // The decode kernels read the cache bases from kvptr_d, so kv_reorder's buffer swaps do not
  // invalidate a captured graph. Pageable source: staged before cudaMemcpyAsync returns.
  void publish_kv_ptrs() {
    void* h[2] = {kcache.p, vcache.p};
    CUDA_CHECK(cudaMemcpyAsync(kvptr_d.p, h, sizeof h, cudaMemcpyHostToDevice, stream));
  }


  const float* kv_forward(const int32_t* tokens, int B, int T, const int32_t* slots, const int32_t* start_pos,
                          bool last_only) {
    rope_sync(max_seq(start_pos, B, T));
    if (T == 1 && dec_fast) return static_cast<const float*>(kv_decode(tokens, B, slots, start_pos, false));
    n_general++;
    const long long N = (long long)B * T;
    use();
    const int R = last_only ? B : (int)N;
    inf_pos_h.resize(N);
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) inf_pos_h[(size_t)b * T + t] = start_pos[b] + t;
    host_logits.resize((size_t)R * V);
    if (dtype == DType::bfloat16)
      kv_forward_t<bf16>(tokens, B, T, slots, R, last_only);
    else
      kv_forward_t<float>(tokens, B, T, slots, R, last_only);
    return host_logits.data();
  }

  template <typename T>
  void kv_forward_t(const int32_t* tokens, int B, int T_, const int32_t* slots, int R, bool last_only) {
    const int N = B * T_;
    const float eps = cfg.rms_norm_eps;
    // scratch
    auto carve = [&](char* base, T** x, T** ln, float** rstd, T** qkv, T** atty, T** tmp, T** gu, T** h, T** logits,
                     float** logits_f, float** scores) {
      Carver cv{base};
      *x = cv.take<T>((size_t)N * C);
      *ln = cv.take<T>((size_t)N * C);
      *rstd = cv.take<float>(N);
      *qkv = cv.take<T>((size_t)N * QKVD);
      *atty = cv.take<T>((size_t)N * QD);
      *tmp = cv.take<T>((size_t)N * C);
      *gu = cv.take<T>((size_t)N * 2 * I);
      *h = cv.take<T>((size_t)N * I);
      *logits = cv.take<T>((size_t)R * V);
      *logits_f = cv.take<float>((size_t)R * V);
      *scores = cv.take<float>((size_t)N * NH * kv_len);
      return cv.off;
    };
    T *x, *ln, *qkv, *atty, *tmp, *gu, *h, *logits;
    float *rstd, *logits_f, *scores;
    const size_t need = carve(nullptr, &x, &ln, &rstd, &qkv, &atty, &tmp, &gu, &h, &logits, &logits_f, &scores);
    const size_t io_need = (2 * (size_t)N + B) * sizeof(int32_t);
    if (need > inf.bytes || io_need > inf_io.bytes) {
      sync();
      if (need > inf.bytes) {
        inf.release();
        inf.reserve(need);
      }
      if (io_need > inf_io.bytes) {
        inf_io.release();
        inf_io.reserve(io_need);
      }
    }
    carve(inf.as<char>(), &x, &ln, &rstd, &qkv, &atty, &tmp, &gu, &h, &logits, &logits_f, &scores);
    int32_t* tok_d = inf_io.as<int32_t>();
    int32_t* kpos = tok_d + N;
    int32_t* slots_d = kpos + N;
    cudaStream_t s = stream;
    CUDA_CHECK(cudaMemcpyAsync(tok_d, tokens, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(kpos, inf_pos_h.data(), (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(slots_d, slots, (size_t)B * sizeof(int32_t), cudaMemcpyHostToDevice, s));

    const T* Wp = W<T>();
    const size_t layer_stride = (size_t)kv_slots * NKV * kv_len * HS;
    gpu::embedding_forward<T>(x, tok_d, Wp, N, C, s);
    // one set of buffers for every layer; x is the residual stream, added into in place
    const LayerIO<T> io{ln, qkv, atty, x, ln, gu, h, x, rstd, rstd};
    for (int l = 0; l < L; l++) {
      T* kc = kcache.as<T>() + l * layer_stride;
      T* vc = vcache.as<T>() + l * layer_stride;
      layer_forward<T>(layer_off[l], io, x, N, kpos, s, [](const char*) {}, [&](const T* q, T* out) {
        gpu::kv_store<T>(kc, vc, q, slots_d, kpos, B, T_, NH, NKV, HS, kv_len, s);
        gpu::attention_kv_forward<T>(out, scores, q, kc, vc, slots_d, kpos, B, T_, NH, NKV, HS, kv_len, s);
      });
    }
    const T* xf = x;
    if (last_only) {
      gpu::gather_last_rows<T>(tmp, x, B, T_, C, s);
      xf = tmp;
    }
    gpu::rmsnorm_forward<T>(ln, rstd, xf, Wp + lnf_off, R, C, eps, s);
    gpu::linear_forward<T>(*gemm, logits, ln, Wp + wout_off, R, C, V, s);
    const float* out = reinterpret_cast<const float*>(logits);
    if constexpr (!std::is_same<T, float>::value) {
      gpu::convert<float, T>(logits_f, logits, (long long)R * V, s);
      out = logits_f;
    }
    CUDA_CHECK(cudaMemcpyAsync(host_logits.data(), out, (size_t)R * V * sizeof(float), cudaMemcpyDeviceToHost, s));
    sync();
  }

  // ------------------------------------------------------------ T = 1 decode fast path
  // One step of B sequences, one token each: inputs staged in pinned memory and sent in one
  // copy into fixed device buffers, the step replayed from a CUDA graph (captured on the
  // second step of a given B, after an eager warm-up), then either B int32 argmaxes
  // (greedy) or the (B, V) float32 logits copied into pinned memory; one sync. The returned
  // pointer is valid until the next call.
  int dec_splits(int B) const { return gpu::decode_attention_splits(B, NH, kv_len, num_sms); }
  // blocks of the fused logits kernel: one wave (two of its blocks fit an SM: launch bounds),
  // so each block normalises its input once and its warps loop over the vocabulary rows
  int head_blocks() const { return 2 * std::max(num_sms, 1); }

  template <typename T>
  size_t dec_carve(DecArrays<T>* d, char* base, int B) const {
    Carver cv{base};
    d->x = cv.take<T>((size_t)B * C);
    d->ln = cv.take<T>((size_t)B * C);
    d->rstd = cv.take<float>(B);
    d->qkv = cv.take<T>((size_t)B * QKVD);
    d->atty = cv.take<T>((size_t)B * QD);
    d->tmp = cv.take<T>((size_t)B * C);
    d->gu = cv.take<T>((size_t)B * 2 * I);
    d->h = cv.take<T>((size_t)B * I);
    d->logits = cv.take<T>((size_t)B * V);
    d->logits_f = cv.take<float>(std::is_same<T, float>::value ? 0 : (size_t)B * V);
    d->part = cv.take<float>((size_t)gpu::decode_attention_scratch(B, NH, HS, dec_splits(B)));
    d->part_am = cv.take<float>(2 * (size_t)gpu::fused_argmax_blocks(V, head_blocks()) * B);
    d->argmax = cv.take<int32_t>(B);
    d->ring = cv.take<int32_t>((size_t)kChainMax * B);
    return cv.off;
  }
  size_t dec_need(int B) const {
    if (dtype == DType::bfloat16) {
      DecArrays<bf16> d;
      return dec_carve<bf16>(&d, nullptr, B);
    }
    DecArrays<float> d;
    return dec_carve<float>(&d, nullptr, B);
  }

  void drop_graphs() {  // the caller has synchronised (or nothing of the graphs is queued)
    for (auto& g : dec_graph) CUDA_CHECK(cudaGraphExecDestroy(g.exec));
    dec_graph.clear();
    dec_seen.clear();
  }

  // Buffers for up to B rows (every B' <= B fits the same buffers, so graphs of smaller
  // batches stay valid); growing drops the graphs.
  void ensure_decode(int B) {
    if (B <= dec_rows && dec_len == kv_len && dec.p) return;
    const int R = std::max(B, dec_rows);
    size_t need = 0;
    for (int b = 1; b <= R; b++) need = std::max(need, dec_need(b));  // attention splits shrink as B grows
    if (R == dec_rows && need <= dec.bytes && dec.p) {  // a new cache length that still fits
      dec_len = kv_len;
      return;
    }
    sync();
    drop_graphs();
    dec.release();
    dec_io.release();
    if (dec_in_h) CUDA_CHECK(cudaFreeHost(dec_in_h));
    dec_in_h = nullptr;
    if (dec_out_h) CUDA_CHECK(cudaFreeHost(dec_out_h));
    dec_out_h = nullptr;
    dec_rows = 0;
    dec.reserve(need);
    const size_t io_bytes = (3 * (size_t)R + 1 + (size_t)R * NH + 1) * sizeof(int32_t);
    dec_io.reserve(io_bytes);
    CUDA_CHECK(cudaMemsetAsync(dec_io.p, 0, io_bytes, stream));  // the counters start at zero
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&dec_in_h), (3 * (size_t)R + 1) * sizeof(int32_t)));
    // the (R, V) float logits, or a chain's kChainMax * R int32 tokens (more when V < kChainMax)
    CUDA_CHECK(cudaMallocHost(&dec_out_h, (size_t)R * std::max(V, kChainMax) * sizeof(float)));
    dec_rows = R;
    dec_len = kv_len;
  }

  // The step's kernels, all reading tokens/positions/slots and the cache bases from device
  // memory: what a graph captures. Each step also feeds its argmax to the next (the greedy
  // chain: DecodeFeed); an upload resets what the feed changed.
  template <typename T>
  void decode_kernels(int B) {
    DecArrays<T> d;
    dec_carve<T>(&d, dec.as<char>(), B);
    const int splits = dec_splits(B);
    int32_t* tok = dec_io.as<int32_t>();
    int32_t* pos = tok + B;
    const int32_t* slt = tok + 2 * B;
    gpu::DecodeFeed feed;  // each step feeds its argmax to the next (the greedy chain)
    feed.tok = tok, feed.pos = pos, feed.ring = d.ring, feed.step = tok + 3 * B, feed.ring_cap = kChainMax;
    void* const* kvp = kvptr_d.as<void*>();
    const T* Wp = W<T>();
    const float *cs = rope_cos.as<float>(), *sn = rope_sin.as<float>();
    const float eps = cfg.rms_norm_eps;
    const long long layer_stride = (long long)kv_slots * NKV * kv_len * HS;
    cudaStream_t s = stream;
    auto lin = [&](T* y, const T* x, const T* w, int in, int out) {
      gpu::decode_linear<T>(*gemm, dec_gemv, y, x, w, B, in, out, s);
    };
    int* attn_cnt = reinterpret_cast<int*>(dec_io.as<int32_t>() + 3 * (size_t)dec_rows + 1);
    auto mk = [&](const char* name) { prof.mark(s, name); };  // eager steps only: see capture()
    if (dec_fused && dec_gemv && fused_fits<T>(B)) {
      // five kernels a layer: RMSNorm folded into the QKV and gate/up matmuls, RoPE and the
      // cache store into the QKV one, SwiGLU into gate/up, the residual adds into the output
      // and down projections, the attention merge into the attention kernel; the final norm,
      // the float copy and the argmax into the logits matmul
      auto residual_matmul = [&](const T* w, const T* in, int in_features) {  // x += in w^T
        gpu::FusedGemv<T> r;
        r.W = w, r.x = in, r.IN = in_features, r.units = C, r.OUT = C, r.y = d.x;
        gpu::fused_gemv<T>(gpu::kEpiResidual, r, B, dec_pdl, s);
      };
      gpu::embedding_forward<T>(d.x, tok, Wp, B, C, s);
      mk("dec embedding");
      for (int l = 0; l < L; l++) {
        const LayerOff& o = layer_off[l];
        gpu::FusedGemv<T> q;
        q.W = Wp + o.wqkv, q.x = d.x, q.nw = Wp + o.ln1, q.eps = eps, q.IN = C, q.units = QKVD / 2, q.OUT = QKVD;
        q.y = d.qkv, q.kvp = kvp, q.layer_off = l * layer_stride, q.slots = slt, q.pos = pos, q.cos_t = cs;
        q.sin_t = sn, q.NH = NH, q.NKV = NKV, q.HS = HS, q.max_len = kv_len;
        gpu::fused_gemv<T>(gpu::kEpiRope, q, B, dec_pdl, s);
        mk("dec fused norm+qkv+rope");
        gpu::decode_attention<T>(d.atty, d.part, attn_cnt, d.qkv, kvp, l * layer_stride, slt, pos, B, NH, NKV, HS,
                                 kv_len, splits, dec_pdl, s);
        mk("dec attention");
        residual_matmul(Wp + o.wo, d.atty, QD);
        mk("dec fused o+residual");
        gpu::FusedGemv<T> gu;
        gu.W = Wp + o.wgu, gu.x = d.x, gu.nw = Wp + o.ln2, gu.eps = eps, gu.IN = C, gu.units = I, gu.OUT = I;
        gu.y = d.h;
        gpu::fused_gemv<T>(gpu::kEpiSwiGLU, gu, B, dec_pdl, s);
        mk("dec fused norm+gate_up+swiglu");
        residual_matmul(Wp + o.wd, d.h, I);
        mk("dec fused down+residual");
      }
      gpu::FusedGemv<T> hd;
      hd.W = Wp + wout_off, hd.x = d.x, hd.nw = Wp + lnf_off, hd.eps = eps, hd.IN = C, hd.units = V, hd.OUT = V;
      hd.y = d.logits, hd.argmax = d.argmax, hd.part = d.part_am, hd.counter = attn_cnt + (size_t)dec_rows * NH;
      hd.max_blocks = head_blocks();
      hd.feed = feed;
      if constexpr (!std::is_same<T, float>::value) hd.yf = d.logits_f;
      gpu::fused_gemv<T>(gpu::kEpiStore, hd, B, dec_pdl, s);
      mk("dec fused norm+lm_head+argmax");
      return;
    }
    // each residual add is fused with the RMSNorm after it (ln2, the next layer's ln1, the final norm)
    gpu::embedding_forward<T>(d.x, tok, Wp, B, C, s);
    gpu::rmsnorm_forward<T>(d.ln, d.rstd, d.x, Wp + (L > 0 ? layer_off[0].ln1 : lnf_off), B, C, eps, s);
    mk("dec embedding+rmsnorm");
    for (int l = 0; l < L; l++) {
      const LayerOff& o = layer_off[l];
      lin(d.qkv, d.ln, Wp + o.wqkv, C, QKVD);
      add_bias<T>(d.qkv, Wp, o.bqkv, B, QKVD, s);
      mk("dec matmul qkv");
      gpu::decode_rope_store<T>(d.qkv, kvp, l * layer_stride, slt, pos, cs, sn, B, NH, NKV, HS, kv_len, s);
      mk("dec rope+store");
      gpu::decode_attention<T>(d.atty, d.part, attn_cnt, d.qkv, kvp, l * layer_stride, slt, pos, B, NH, NKV, HS,
                               kv_len, splits, false, s);
      mk("dec attention");
      lin(d.tmp, d.atty, Wp + o.wo, QD, C);
      add_bias<T>(d.tmp, Wp, o.bo, B, C, s);
      mk("dec matmul o");
      gpu::decode_residual_rmsnorm<T>(d.x, d.tmp, d.ln, d.rstd, Wp + o.ln2, B, C, eps, s);
      mk("dec residual+rmsnorm");
      lin(d.gu, d.ln, Wp + o.wgu, C, 2 * I);
      add_bias<T>(d.gu, Wp, o.bgu, B, 2 * I, s);
      mk("dec matmul gate_up");
      gpu::swiglu_forward<T>(d.h, d.gu, B, I, s);
      mk("dec swiglu");
      lin(d.tmp, d.h, Wp + o.wd, I, C);
      add_bias<T>(d.tmp, Wp, o.bd, B, C, s);
      mk("dec matmul down");
      const size_t next_norm = l + 1 < L ? layer_off[l + 1].ln1 : lnf_off;
      gpu::decode_residual_rmsnorm<T>(d.x, d.tmp, d.ln, d.rstd, Wp + next_norm, B, C, eps, s);
      mk("dec residual+rmsnorm");
    }
    lin(d.logits, d.ln, Wp + wout_off, C, V);
    mk("dec matmul lm_head");
    const float* lf = reinterpret_cast<const float*>(d.logits);
    if constexpr (!std::is_same<T, float>::value) {
      gpu::convert<float, T>(d.logits_f, d.logits, (long long)B * V, s);
      lf = d.logits_f;
    }
    gpu::argmax_rows(d.argmax, lf, B, V, s);
    gpu::decode_advance(feed, d.argmax, B, s);
    mk("dec argmax+feed");
  }

  // Whether the fused decode kernels take B rows: at most kSkinnyMaxRows, 128-bit-aligned
  // rows (every matrix offset a multiple of 16 bytes), the normalised rows in shared memory.
  template <typename T>
  bool fused_fits(int B) const {
    const size_t e = sizeof(T);
    if (has_bias) return false;  // the fused kernels have no bias epilogue: the general path adds them
    if (!gpu::fused_gemv_fits(B, C, (int)e, true) || !gpu::fused_gemv_fits(B, I, (int)e, false) ||
        !gpu::fused_gemv_fits(B, QD, (int)e, false) || HS % 2)
      return false;
    auto al = [&](size_t off) { return (off * e) % 16 == 0; };
    if (!al(wout_off)) return false;
    for (const LayerOff& o : layer_off)
      if (!al(o.wqkv) || !al(o.wo) || !al(o.wgu) || !al(o.wd)) return false;
    return true;
  }

  void graph_failed(const std::string& why) {
    dec_graphs = false;  // for this model; the eager path runs the same kernels
    graph_error = why;
  }

  // Captures decode_kernels<T>(B) into an executable graph; nullptr (graphs off) on failure.
  template <typename T>
  cudaGraphExec_t capture(int B) {
    prof.cancel();  // a pass an exception left open: no profiling events inside a graph
    cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      graph_failed(std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(err));
      return nullptr;
    }
    std::string why;
    try {
      decode_kernels<T>(B);
    } catch (const std::exception& e) {
      why = e.what();
    }
    cudaGraph_t graph = nullptr;
    err = cudaStreamEndCapture(stream, &graph);  // always: leaves capture mode
    if (why.empty() && err != cudaSuccess) why = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(err);
    cudaGraphExec_t exec = nullptr;
    if (why.empty()) {
      err = cudaGraphInstantiate(&exec, graph, 0);
      if (err != cudaSuccess) {
        why = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(err);
        exec = nullptr;
      }
    }
    if (graph) cudaGraphDestroy(graph);
    if (!why.empty()) {
      (void)cudaGetLastError();  // clear a non-sticky error left by the failed capture
      graph_failed(why);
      return nullptr;
    }
    dec_graph.push_back({B, exec});
    n_captures++;
    return exec;
  }

  template <typename T>
  void run_decode(int B) {
    if (dec_graphs) {
      cudaGraphExec_t exec = nullptr;
      for (auto& g : dec_graph)
        if (g.B == B) exec = g.exec;
      if (!exec && std::find(dec_seen.begin(), dec_seen.end(), B) != dec_seen.end()) exec = capture<T>(B);
      if (exec) {
        CUDA_CHECK(cudaGraphLaunch(exec, stream));
        n_replays++;
        return;
      }
      if (dec_graphs) dec_seen.push_back(B);  // first step of this B: eager, warms cuBLAS up
    }
    prof.begin(stream);
    decode_kernels<T>(B);
    prof.end(stream);
    n_eager++;
  }

  // Uploads tokens | positions | slots | step 0 (the previous call synchronised, so no
  // queued copy still reads dec_in_h).
  void dec_upload(const int32_t* tokens, int B, const int32_t* slots, const int32_t* start_pos) {
    std::memcpy(dec_in_h, tokens, (size_t)B * sizeof(int32_t));
    std::memcpy(dec_in_h + B, start_pos, (size_t)B * sizeof(int32_t));
    std::memcpy(dec_in_h + 2 * B, slots, (size_t)B * sizeof(int32_t));
    dec_in_h[3 * B] = 0;
    CUDA_CHECK(cudaMemcpyAsync(dec_io.p, dec_in_h, (3 * (size_t)B + 1) * sizeof(int32_t), cudaMemcpyHostToDevice,
                               stream));
  }

  // What a run of fast-path steps copies back: the last step's (B, V) float logits, its B
  // argmaxes, or the chain's ring (n * B argmaxes, step-major).
  enum class DecOut { Logits, Argmax, Ring };
  template <typename T>
  const void* dec_src(int B, DecOut out) {
    DecArrays<T> d;
    dec_carve<T>(&d, dec.as<char>(), B);
    if (out == DecOut::Argmax) return d.argmax;
    if (out == DecOut::Ring) return d.ring;
    if constexpr (std::is_same<T, float>::value) return d.logits;
    return d.logits_f;
  }

  // Uploads the inputs, runs n steps (each feeding its argmax to the next), copies `out` into
  // pinned memory and waits once. tokens, slots, start_pos: B entries each, already checked.
  const void* dec_run(const int32_t* tokens, int B, const int32_t* slots, const int32_t* start_pos, int n,
                      DecOut out) {
    use();
    ensure_decode(B);
    dec_upload(tokens, B, slots, start_pos);
    const bool b16 = dtype == DType::bfloat16;
    for (int i = 0; i < n; i++) b16 ? run_decode<bf16>(B) : run_decode<float>(B);
    const void* src = b16 ? dec_src<bf16>(B, out) : dec_src<float>(B, out);
    const size_t bytes = out == DecOut::Logits ? (size_t)B * V * sizeof(float)
                                               : (size_t)(out == DecOut::Ring ? n : 1) * B * sizeof(int32_t);
    CUDA_CHECK(cudaMemcpyAsync(dec_out_h, src, bytes, cudaMemcpyDeviceToHost, stream));
    sync();
    return dec_out_h;
  }

  const void* kv_decode(const int32_t* tokens, int B, const int32_t* slots, const int32_t* start_pos, bool greedy) {
    return dec_run(tokens, B, slots, start_pos, 1, greedy ? DecOut::Argmax : DecOut::Logits);
  }

  // n greedy steps in a row (docs/CUDA.md "Greedy chains"): step 0 runs `tokens` at
  // start_pos, step i the argmax of step i - 1 at start_pos + i, fed on the device, so the
  // n steps are queued back to back with one upload, one download and one wait. Returns
  // n * B int32, step-major (valid until the next call). The general path (fast path off)
  // runs the steps one by one, with the same result.
  const int32_t* kv_greedy_chain(const int32_t* tokens, int B, const int32_t* slots, const int32_t* start_pos,
                                 int n) {
    // n and the positions checked by Model::kv_greedy_chain (backend.cpp)
    // (dynamic RoPE scaling may change the tables at every step: the steps one by one)
    if (dec_fast && !dynamic_rope())
      return static_cast<const int32_t*>(dec_run(tokens, B, slots, start_pos, n, DecOut::Ring));
    chain_h.resize((size_t)n * B);
    std::vector<int32_t> tok(tokens, tokens + B), pos(start_pos, start_pos + B);
    for (int i = 0; i < n; i++) {
      const int32_t* t = kv_forward_greedy(tok.data(), B, 1, slots, pos.data());
      std::copy(t, t + B, chain_h.begin() + (size_t)i * B);
      std::copy(t, t + B, tok.begin());
      for (auto& p : pos) p++;
    }
    return chain_h.data();
  }

  // Greedy choice of the last position of each row: B int32 (valid until the next call).
  const int32_t* kv_forward_greedy(const int32_t* tokens, int B, int T, const int32_t* slots,
                                   const int32_t* start_pos) {
    rope_sync(max_seq(start_pos, B, T));
    if (T == 1 && dec_fast) return static_cast<const int32_t*>(kv_decode(tokens, B, slots, start_pos, true));
    const float* lg = kv_forward(tokens, B, T, slots, start_pos, true);  // (B, V) host logits
    greedy_h.resize(B);
    for (int b = 0; b < B; b++) {  // numpy argmax: first maximum, first NaN
      const float* r = lg + (size_t)b * V;
      int best = 0;
      for (int j = 1; j < V && !std::isnan(r[best]); j++)
        if (std::isnan(r[j]) || r[j] > r[best]) best = j;
      greedy_h[b] = best;
    }
    return greedy_h.data();
  }

  void set_decode(bool fast, bool graphs, bool gemv, bool fused, bool pdl) {
    use();
    sync();
    drop_graphs();
    dec_fast = fast;
    dec_graphs = graphs;
    dec_gemv = gemv;
    dec_fused = fused;
    dec_pdl = pdl && pdl_capable;
    graph_error.clear();
  }

  void kv_reorder(const int32_t* src, int n) {  // src checked by Model::kv_reorder
    if (n == 0) return;  // no cache (as the CPU model: nothing to reorder)
    use();
    if (!kvtmp.p || kvtmp.bytes < kcache.bytes) {
      sync();
      kvtmp.release();
      kvtmp.reserve(kcache.bytes);
    }
    if (reorder_src.bytes < n * sizeof(int32_t)) {
      sync();
      reorder_src.release();
      reorder_src.reserve(n * sizeof(int32_t));
    }
    CUDA_CHECK(cudaMemcpyAsync(reorder_src.p, src, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    const long long slot_elems = (long long)NKV * kv_len * HS;
    for (DevBuf* cache : {&kcache, &vcache}) {
      if (dtype == DType::bfloat16)
        gpu::kv_gather<bf16>(kvtmp.as<bf16>(), cache->as<bf16>(), reorder_src.as<int32_t>(), L, n, slot_elems, stream);
      else
        gpu::kv_gather<float>(kvtmp.as<float>(), cache->as<float>(), reorder_src.as<int32_t>(), L, n, slot_elems,
                              stream);
      cache->swap(kvtmp);  // kvtmp now holds the old cache: the next gather's destination
    }
    publish_kv_ptrs();
  }

  // ------------------------------------------------------------ optimizer
  void ensure_moments() {
    if (have_moments) return;
    m.reserve(P * sizeof(float));
    v.reserve(P * sizeof(float));
    CUDA_CHECK(cudaMemsetAsync(m.p, 0, P * sizeof(float), stream));
    CUDA_CHECK(cudaMemsetAsync(v.p, 0, P * sizeof(float), stream));
    have_moments = true;
  }

  void adamw_step(const int64_t* segs, int nseg, float lr, float beta1, float beta2, float eps, float wd,
                  int64_t step) {
    PYLLAMA_CHECK(std::isfinite(lr) && lr >= 0.f, ValueError, "AdamW: lr must be a finite number >= 0, got " << lr);
    PYLLAMA_CHECK(beta1 >= 0.f && beta1 < 1.f, ValueError, "AdamW: beta1 must be in [0, 1), got " << beta1);
    PYLLAMA_CHECK(beta2 >= 0.f && beta2 < 1.f, ValueError, "AdamW: beta2 must be in [0, 1), got " << beta2);
    PYLLAMA_CHECK(std::isfinite(eps) && eps >= 0.f, ValueError, "AdamW: eps must be >= 0, got " << eps);
    PYLLAMA_CHECK(std::isfinite(wd) && wd >= 0.f, ValueError, "AdamW: weight_decay must be >= 0, got " << wd);
    PYLLAMA_CHECK(step >= 1, ValueError,
                  "AdamW: step count must be >= 1 (1-based, for bias correction), got " << step);
    PYLLAMA_CHECK(nseg >= 0, ValueError, "AdamW: negative segment count");
    use();
    std::vector<int64_t> table(segs, segs + 3 * (size_t)nseg);
    if (table != seg_cache) {
      int64_t expect = 0;
      std::vector<int64_t> starts;
      std::vector<int32_t> decays;
      for (int i = 0; i < nseg; i++) {
        const int64_t o = segs[3 * i], k = segs[3 * i + 1];
        const int32_t d = segs[3 * i + 2] != 0;
        PYLLAMA_CHECK(o == expect, ValueError,
                      "AdamW: segment " << i << " starts at " << o << ", expected " << expect
                                        << " (segments must tile the flat buffer in order)");
        PYLLAMA_CHECK(k >= 0, ValueError, "AdamW: segment " << i << " has negative size " << k);
        expect += k;
        if (k == 0) continue;
        if (decays.empty() || decays.back() != d) {  // merge neighbours of equal decay
          starts.push_back(o);
          decays.push_back(d);
        }
      }
      PYLLAMA_CHECK(expect == (int64_t)P, ValueError,
                    "AdamW: segments cover " << expect << " elements but the buffers hold " << P);
      sync();  // the old run tables may still be read by a queued update
      run_start_h = starts;
      run_decay_h = decays;
      run_start_d.reserve(std::max<size_t>(1, starts.size()) * sizeof(int64_t));
      run_decay_d.reserve(std::max<size_t>(1, decays.size()) * sizeof(int32_t));
      if (!starts.empty()) {
        CUDA_CHECK(cudaMemcpyAsync(run_start_d.p, run_start_h.data(), starts.size() * sizeof(int64_t),
                                   cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaMemcpyAsync(run_decay_d.p, run_decay_h.data(), decays.size() * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, stream));
      }
      seg_cache = table;
    }
    ensure_moments();
    const gpu::AdamWScalars sc = gpu::AdamWScalars::make(lr, beta1, beta2, eps, wd, step);
    const int n_runs = (int)run_start_h.size();
    prof.begin(stream);
    if (dtype == DType::bfloat16)
      gpu::adamw_update<bf16>(params.as<float>(), m.as<float>(), v.as<float>(), grads.as<float>(), wc.as<bf16>(),
                              (long long)P, run_start_d.as<int64_t>(), run_decay_d.as<int32_t>(), n_runs, sc, stream);
    else
      gpu::adamw_update<float>(params.as<float>(), m.as<float>(), v.as<float>(), grads.as<float>(), nullptr,
                               (long long)P, run_start_d.as<int64_t>(), run_decay_d.as<int32_t>(), n_runs, sc,
                               stream);
    prof.mark(stream, "adamw");
    prof.end(stream);
  }

  // ------------------------------------------------------------ profiling
  void set_profiling(bool on) {
    use();
    sync();
    prof.on = on;
    prof.acc.clear();
  }

  double grad_norm() { return read_norm(0.0, nullptr); }

  double clip_grad_norm(double max_norm) {
    PYLLAMA_CHECK(max_norm > 0.0, ValueError, "clip_grad_norm: max_norm must be > 0, got " << max_norm);
    return read_norm(max_norm, nullptr);
  }

  // ------------------------------------------------------------ host copies
  void to_host(float* dst, const DevBuf& src) const {
    use();
    CUDA_CHECK(cudaMemcpyAsync(dst, src.p, P * sizeof(float), cudaMemcpyDeviceToHost, stream));
    sync();
  }
  void from_host(DevBuf& dst, const float* src) {
    use();
    CUDA_CHECK(cudaMemcpyAsync(dst.p, src, P * sizeof(float), cudaMemcpyHostToDevice, stream));
  }
};

// ---------------------------------------------------------------- public interface

LlamaModelCuda::LlamaModelCuda(const LlamaConfig& cfg, DType dtype, int device, const BackendOptions& options)
    : Model(cfg), impl_(new Impl) {
  // on a throw, impl_ (a complete member) frees what init made
  impl_->init(cfg, infos_, num_parameters(), dtype, device, options);
}
LlamaModelCuda::~LlamaModelCuda() = default;

namespace {
std::unique_ptr<Model> make_cuda(const LlamaConfig& cfg, int index, DType dtype, const BackendOptions& options) {
  return std::make_unique<LlamaModelCuda>(cfg, dtype, index, options);
}
// Runs on GPU `index` and puts the current device back after.
struct OnDevice {
  int prev = -1;
  explicit OnDevice(int index) {
    CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != index) CUDA_CHECK(cudaSetDevice(index));
  }
  ~OnDevice() {
    int now = -1;
    if (prev >= 0 && cudaGetDevice(&now) == cudaSuccess && now != prev) cudaSetDevice(prev);
  }
};
void* cuda_alloc_on(size_t bytes, int index) {
  OnDevice on(index);
  return cuda_malloc(bytes);
}
void cuda_zero_on(void* p, size_t bytes, int index) {
  OnDevice on(index);
  cuda_zero(p, bytes);
}
void cuda_copy_on(void* dst, const void* src, size_t bytes, int kind, int index) {
  OnDevice on(index);
  cuda_copy(dst, src, bytes, static_cast<CudaCopy>(kind));
}
}  // namespace

void register_cuda_backend() {
  BackendInfo info;
  info.make = &make_cuda;
  info.device_count = &cuda_runtime_device_count;
#ifdef PYLLAMA_CUDA_ARCHS
  info.archs = PYLLAMA_CUDA_ARCHS;
#endif
  register_backend("cuda", info);
  DeviceMemoryOps mem;  // the core's Tensor storage on Device::cuda
  mem.alloc = &cuda_alloc_on;
  mem.free = &cuda_free;
  mem.zero = &cuda_zero_on;
  mem.copy = &cuda_copy_on;
  mem.device_count = &cuda_runtime_device_count;
  register_device_memory(Device::cuda, mem);
}

const LlamaConfig& LlamaModelCuda::config() const { return impl_->cfg; }
DType LlamaModelCuda::dtype() const { return impl_->dtype; }
std::string LlamaModelCuda::device() const { return "cuda:" + std::to_string(impl_->dev); }
int LlamaModelCuda::device_index() const { return impl_->dev; }
void LlamaModelCuda::set_inference_dtype(DType dt) {
  PYLLAMA_CHECK(dt == impl_->dtype, ValueError,
                "this cuda model computes in " << dtype_name(impl_->dtype) << "; choose the dtype with "
                "to('cuda', dtype=...) (set_inference_dtype applies to CPU models)");
}
bool LlamaModelCuda::uses_cublas() const { return impl_->gemm->uses_cublas(); }
std::string LlamaModelCuda::matmul_backend() const { return impl_->gemm->backend(); }
LlamaModelCuda::MatmulStats LlamaModelCuda::matmul_stats() const {
  const gpu::Gemm::LtStats st = impl_->gemm->lt_stats();
  return {st.plans, st.fallbacks};
}
bool LlamaModelCuda::uses_flash_attention() const { return !impl_->attn_naive; }
std::string LlamaModelCuda::attention_kernels() const {
  if (impl_->attn_naive) return "naive";
  return impl_->attn_tc ? "flash" : "flash-simt";
}

float LlamaModelCuda::forward_impl(const int32_t* tokens, const int32_t* targets, int B, int T) {
  return impl_->forward(tokens, targets, B, T);
}
int LlamaModelCuda::last_B() const { return impl_->B_; }
int LlamaModelCuda::last_T() const { return impl_->T_; }
bool LlamaModelCuda::has_logits() const { return impl_->logits_valid; }
void LlamaModelCuda::logits_impl(float* dst) const { impl_->logits_to_host(dst); }
void LlamaModelCuda::backward(float scale) { impl_->backward(scale); }
void LlamaModelCuda::zero_grad() {
  impl_->use();
  CUDA_CHECK(cudaMemsetAsync(impl_->grads.p, 0, impl_->P * sizeof(float), impl_->stream));
}

void LlamaModelCuda::kv_reset(int n_slots, int max_len) { impl_->kv_reset(n_slots, max_len); }
const float* LlamaModelCuda::kv_forward_impl(const int32_t* tokens, int B, int T, const int32_t* slots,
                                        const int32_t* start_pos, bool last_only) {
  return impl_->kv_forward(tokens, B, T, slots, start_pos, last_only);
}
void LlamaModelCuda::kv_reorder_impl(const int32_t* src, int n) { impl_->kv_reorder(src, n); }
const int32_t* LlamaModelCuda::kv_greedy_chain_impl(const int32_t* tokens, int B, const int32_t* slots,
                                               const int32_t* start_pos, int n) {
  return impl_->kv_greedy_chain(tokens, B, slots, start_pos, n);
}
int LlamaModelCuda::chain_max() { return kChainMax; }
const int32_t* LlamaModelCuda::kv_forward_greedy_impl(const int32_t* tokens, int B, int T, const int32_t* slots,
                                                 const int32_t* start_pos) {
  return impl_->kv_forward_greedy(tokens, B, T, slots, start_pos);
}
void LlamaModelCuda::set_profiling(bool on) { impl_->set_profiling(on); }
std::vector<LlamaModelCuda::ProfileEntry> LlamaModelCuda::profile() const {
  std::vector<ProfileEntry> out;
  for (const auto& kv : impl_->prof.acc) out.push_back({kv.first, kv.second.first, kv.second.second});
  return out;
}
void LlamaModelCuda::set_decode_options(bool fast_path, bool cuda_graphs, bool skinny_gemv, bool fused, bool pdl) {
  impl_->set_decode(fast_path, cuda_graphs, skinny_gemv, fused, pdl);
}
LlamaModelCuda::DecodeStats LlamaModelCuda::decode_stats() const {
  const Impl& m = *impl_;
  return DecodeStats{m.dec_fast, m.dec_graphs, m.dec_gemv, m.dec_fused, m.dec_pdl, m.n_captures, m.n_replays, m.n_eager, m.n_general,
                     m.graph_error};
}
size_t LlamaModelCuda::bytes_allocated() const { return (size_t)impl_->model_bytes; }

size_t cuda_bytes_allocated() { return (size_t)std::max(0LL, g_dev_bytes.load()); }
size_t cuda_peak_bytes_allocated() { return (size_t)std::max(0LL, g_dev_peak.load()); }
void cuda_reset_peak_bytes_allocated() { g_dev_peak.store(g_dev_bytes.load()); }
int LlamaModelCuda::kv_slots() const { return impl_->kv_slots; }
int LlamaModelCuda::kv_max_len() const { return impl_->kv_len; }

void LlamaModelCuda::adamw_step(const AdamWSegment* segs, size_t n_segs, const AdamWHyper& h, int64_t step) {
  std::vector<int64_t> rows(3 * n_segs);
  for (size_t i = 0; i < n_segs; i++) {
    rows[3 * i] = segs[i].offset;
    rows[3 * i + 1] = segs[i].numel;
    rows[3 * i + 2] = segs[i].decay ? 1 : 0;
  }
  impl_->adamw_step(rows.data(), (int)n_segs, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, step);
}
double LlamaModelCuda::grad_norm() { return impl_->grad_norm(); }
double LlamaModelCuda::clip_grad_norm(double max_norm) { return impl_->clip_grad_norm(max_norm); }
void LlamaModelCuda::set_defer_loss(bool on) { impl_->set_defer_loss(on); }
std::pair<double, std::vector<double>> LlamaModelCuda::norm_and_losses(double max_norm) {
  return impl_->norm_and_losses(max_norm);
}

void LlamaModelCuda::params_to_host(float* dst) const { impl_->to_host(dst, impl_->params); }
void LlamaModelCuda::grads_to_host(float* dst) const { impl_->to_host(dst, impl_->grads); }
void LlamaModelCuda::params_from_host(const float* src) {
  impl_->from_host(impl_->params, src);
  impl_->refresh_compute_copy();
  impl_->sync();  // the caller may free or reuse src
}
void LlamaModelCuda::grads_from_host(const float* src) {
  impl_->from_host(impl_->grads, src);
  impl_->sync();
}
void LlamaModelCuda::moments_to_host(float* m, float* v) const {
  if (!impl_->have_moments) {
    std::fill(m, m + impl_->P, 0.f);
    std::fill(v, v + impl_->P, 0.f);
    return;
  }
  impl_->to_host(m, impl_->m);
  impl_->to_host(v, impl_->v);
}
bool LlamaModelCuda::has_moments() const { return impl_->have_moments; }
void LlamaModelCuda::reset_moments() {
  if (!impl_->have_moments) return;  // allocated and zeroed on first use
  std::vector<float> zeros(impl_->P, 0.f);
  moments_from_host(zeros.data(), zeros.data());
}
void LlamaModelCuda::moments_from_host(const float* m, const float* v) {
  impl_->use();
  impl_->ensure_moments();
  impl_->from_host(impl_->m, m);
  impl_->from_host(impl_->v, v);
  impl_->sync();
}

void LlamaModelCuda::synchronize() const {
  impl_->use();
  impl_->sync();
}
void* LlamaModelCuda::stream() const { return impl_->stream; }
float* LlamaModelCuda::params_device() { return impl_->params.as<float>(); }
float* LlamaModelCuda::grads_device() { return impl_->grads.as<float>(); }
void LlamaModelCuda::params_written() {
  impl_->use();
  impl_->refresh_compute_copy();
}

}  // namespace pyllama
