// attention_gemm.cu — kernel lab (README.md): the training attention through batched GEMMs,
// against the library's flash attention (the default).
//
//   attention_gemm [--check] [--reps N]
//
// History: the library's BackendOptions.attention = "gemm" (PYLLAMA_CUDA_ATTENTION=gemm) from
// commit 301428e until it moved here. Timed once, on the first GPU session (an H200, bench/gpu.py,
// bf16 training of the 124M model at 16 x 1024): 299.5K tok/s against flash attention's 438.5K,
// 0.68x; no measurement has shown it faster (docs/CUDA.md, "The kernel lab"). It stays here as a
// second, independent attention (cuBLAS products instead of hand-written tiles) to check the
// flash kernels against, and to time them against.
//
// Causal grouped-query attention for training through batched
// GEMMs on the tensor cores (cuBLAS; the tiled kernel without it), one sequence at a
// time: S = scale Q K^T per head into a scratch of the compute type (float, or bf16 as
// PyTorch's math attention keeps it: half the memory traffic), a causal softmax in float
// that keeps the log-sum-exp per row, O = P V. Backward recomputes S and P from the saved lse (so
// only (B, NH, T) floats are kept per layer, as the flash kernels keep) and runs five
// GEMMs: dV = P^T dO, dP = dO V^T, dS = scale P (dP - rowsum(P dP)), dQ = dS K,
// dK = dS^T Q. The products cover the whole T x T square (the causal half above the
// diagonal is zero in P and dS), which costs 2x the attention flops but runs at
// tensor-core speed. Grouped-query heads: query head h = g * G + r uses kv head g; each
// GEMM is batched over g for one r, and dK, dV add the G members in a fixed order
// (deterministic). Scratch: 2 * NH * T * T elements of T (one sequence).
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"  // PYLLAMA_CHECK, ValueError
#include "kernels.cuh"
#include "lab.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kRowThreads = 256;

// One block per row (h, i) of one sequence: P[h, i, :] = exp(S - lse) for j <= i, 0 after;
// lse[h * lse_stride + i] = log sum_j<=i exp(S[h, i, j]). S is already scaled.
template <typename T>
__global__ void causal_softmax_kernel(T* P, float* lse, const T* S, int T_, long long lse_stride) {
  __shared__ float sh[32];
  const int row = blockIdx.x;  // h * T + i
  const int h = row / T_, i = row % T_;
  const T* s = S + (long long)row * T_;
  T* p = P + (long long)row * T_;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, to_f(s[j]));
  mx = block_max(mx, sh);
  float sum = 0.f;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(to_f(s[j]) - mx);
  sum = block_sum(sum, sh);
  const float l = mx + logf(sum);
  if (threadIdx.x == 0) lse[h * lse_stride + i] = l;
  for (int j = threadIdx.x; j < T_; j += blockDim.x) p[j] = from_f<T>(j <= i ? expf(to_f(s[j]) - l) : 0.f);
}

// P recomputed from the saved lse (backward): one block per row.
template <typename T>
__global__ void causal_probs_kernel(T* P, const float* lse, const T* S, int T_, long long lse_stride) {
  const int row = blockIdx.x;
  const int h = row / T_, i = row % T_;
  const float l = lse[h * lse_stride + i];
  const T* s = S + (long long)row * T_;
  T* p = P + (long long)row * T_;
  for (int j = threadIdx.x; j < T_; j += blockDim.x) p[j] = from_f<T>(j <= i ? expf(to_f(s[j]) - l) : 0.f);
}

// dS = scale * P * (dP - sum_j P dP), in place over P (each thread rewrites only the
// entries it read); zero above the diagonal. One block per row.
template <typename T>
__global__ void causal_softmax_backward_kernel(T* P, const T* dP, int T_, float scale) {
  __shared__ float sh[32];
  const int row = blockIdx.x;
  const int i = row % T_;
  T* p = P + (long long)row * T_;
  const T* dp = dP + (long long)row * T_;
  float dot = 0.f;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += to_f(p[j]) * to_f(dp[j]);
  dot = block_sum(dot, sh);
  for (int j = threadIdx.x; j < T_; j += blockDim.x)
    p[j] = from_f<T>(j <= i ? scale * to_f(p[j]) * (to_f(dp[j]) - dot) : 0.f);
}

void check_shapes(int B, int T_, int NH, int NKV, int HS) {
  PYLLAMA_CHECK(B >= 1 && T_ >= 1 && HS >= 1 && NKV >= 1 && NH >= NKV && NH % NKV == 0, ValueError,
                "attention (gemm): bad shape B=" << B << " T=" << T_ << " NH=" << NH << " NKV=" << NKV
                                                 << " HS=" << HS);
  PYLLAMA_CHECK((long long)NH * T_ <= 0x7fffffffLL, ValueError, "attention (gemm): NH * T too large");
}

}  // namespace

// Scratch of one sequence: S and P (T x T per head each, of the compute type).
size_t attention_gemm_scratch_bytes(int T_, int NH, size_t elem) {
  return 2 * (((size_t)NH * T_ * T_ * elem + 255) / 256) * 256;
}

template <typename T>
void attention_forward_gemm(Gemm& g, T* out, float* lse, const T* qkv, void* scratch, int B, int T_, int NH, int NKV,
                            int HS, cudaStream_t stream) {
  check_shapes(B, T_, NH, NKV, HS);
  const int G = NH / NKV, C = NH * HS, QKVD = (NH + 2 * NKV) * HS;
  const long long TT = (long long)T_ * T_;
  T* S = static_cast<T*>(scratch);
  T* P = reinterpret_cast<T*>(static_cast<char*>(scratch) + attention_gemm_scratch_bytes(T_, NH, sizeof(T)) / 2);
  const float scale = 1.0f / sqrtf((float)HS);
  for (int b = 0; b < B; b++) {
    const T* qb = qkv + (long long)b * T_ * QKVD;
    T* ob = out + (long long)b * T_ * C;
    for (int r = 0; r < G; r++)  // S[h] = scale Q_h K_g^T, h = g G + r
      g.run_batched<T, T>(false, true, T_, T_, HS, scale, qb + r * HS, QKVD, (long long)G * HS,
                              qb + NH * HS, QKVD, HS, 0.f, S + r * TT, T_, G * TT, NKV, stream);
    causal_softmax_kernel<T><<<NH * T_, kRowThreads, 0, stream>>>(P, lse + (long long)b * NH * T_, S, T_, T_);
    CUDA_CHECK_LAUNCH();
    for (int r = 0; r < G; r++)  // O_h = P_h V_g
      g.run_batched<T, T>(false, false, T_, HS, T_, 1.f, P + r * TT, T_, G * TT, qb + (NH + NKV) * HS, QKVD, HS,
                          0.f, ob + r * HS, C, (long long)G * HS, NKV, stream);
  }
}

template <typename T>
void attention_backward_gemm(Gemm& g, T* dqkv, const T* dout, const T* qkv, const float* lse, void* scratch, int B,
                             int T_, int NH, int NKV, int HS, cudaStream_t stream) {
  check_shapes(B, T_, NH, NKV, HS);
  const int G = NH / NKV, C = NH * HS, QKVD = (NH + 2 * NKV) * HS;
  const long long TT = (long long)T_ * T_;
  T* S = static_cast<T*>(scratch);  // S, then dP
  T* P = reinterpret_cast<T*>(static_cast<char*>(scratch) + attention_gemm_scratch_bytes(T_, NH, sizeof(T)) / 2);
  const float scale = 1.0f / sqrtf((float)HS);
  for (int b = 0; b < B; b++) {
    const T* qb = qkv + (long long)b * T_ * QKVD;
    const T* dob = dout + (long long)b * T_ * C;
    T* db = dqkv + (long long)b * T_ * QKVD;
    const T* K0 = qb + NH * HS;
    const T* V0 = qb + (NH + NKV) * HS;
    for (int r = 0; r < G; r++)
      g.run_batched<T, T>(false, true, T_, T_, HS, scale, qb + r * HS, QKVD, (long long)G * HS, K0, QKVD, HS,
                              0.f, S + r * TT, T_, G * TT, NKV, stream);
    causal_probs_kernel<T><<<NH * T_, kRowThreads, 0, stream>>>(P, lse + (long long)b * NH * T_, S, T_, T_);
    CUDA_CHECK_LAUNCH();
    for (int r = 0; r < G; r++)  // dV_g (+)= P_h^T dO_h
      g.run_batched<T, T>(true, false, T_, HS, T_, 1.f, P + r * TT, T_, G * TT, dob + r * HS, C, (long long)G * HS,
                          r ? 1.f : 0.f, db + (NH + NKV) * HS, QKVD, HS, NKV, stream);
    for (int r = 0; r < G; r++)  // dP_h = dO_h V_g^T (into S)
      g.run_batched<T, T>(false, true, T_, T_, HS, 1.f, dob + r * HS, C, (long long)G * HS, V0, QKVD, HS, 0.f,
                              S + r * TT, T_, G * TT, NKV, stream);
    causal_softmax_backward_kernel<T><<<NH * T_, kRowThreads, 0, stream>>>(P, S, T_, scale);
    CUDA_CHECK_LAUNCH();
    for (int r = 0; r < G; r++)  // dQ_h = dS_h K_g
      g.run_batched<T, T>(false, false, T_, HS, T_, 1.f, P + r * TT, T_, G * TT, K0, QKVD, HS, 0.f, db + r * HS,
                          QKVD, (long long)G * HS, NKV, stream);
    for (int r = 0; r < G; r++)  // dK_g (+)= dS_h^T Q_h
      g.run_batched<T, T>(true, false, T_, HS, T_, 1.f, P + r * TT, T_, G * TT, qb + r * HS, QKVD, (long long)G * HS,
                          r ? 1.f : 0.f, db + NH * HS, QKVD, HS, NKV, stream);
  }
}

}  // namespace gpu
}  // namespace pyllama

// ---------------------------------------------------------------- the lab program
namespace {

using pyllama::gpu::bf16;
constexpr size_t kWorkspace = 32u << 20;  // the cuBLAS workspace the model gives its Gemm

struct Run {  // one attention's forward and backward on a shape, with its buffers
  int B, T, NH, NKV, HS;
  size_t N() const { return (size_t)B * T; }
  int C() const { return NH * HS; }
  int QKVD() const { return (NH + 2 * NKV) * HS; }
  size_t NL() const { return (size_t)B * NH * T; }
};

template <typename T>
void gemm_attention(pyllama::gpu::Gemm& g, const Run& r, T* out, float* lse, T* dqkv, const T* qkv, const T* dy,
                    void* scratch) {
  pyllama::gpu::attention_forward_gemm<T>(g, out, lse, qkv, scratch, r.B, r.T, r.NH, r.NKV, r.HS, nullptr);
  pyllama::gpu::attention_backward_gemm<T>(g, dqkv, dy, qkv, lse, scratch, r.B, r.T, r.NH, r.NKV, r.HS, nullptr);
}
template <typename T>
void flash_attention(const Run& r, T* out, float* lse, float* dsum, T* dqkv, const T* qkv, const T* dy) {
  pyllama::gpu::flash_attention_forward<T>(out, lse, qkv, r.B, r.T, r.NH, r.NKV, r.HS, nullptr);
  pyllama::gpu::flash_attention_backward<T>(dqkv, dsum, dy, out, qkv, lse, r.B, r.T, r.NH, r.NKV, r.HS, nullptr);
}

// The GEMM attention and the library's flash attention on the same inputs: out, lse, dqkv
// against the double reference, and against each other.
template <typename T>
void check_case(pyllama::gpu::Gemm& g, const Run& r) {
  const bool b16 = std::is_same<T, bf16>::value;
  // bf16 keeps S, P and dS in bf16 (as PyTorch's math attention): a looser bound than flash's
  const double tol = b16 ? 3e-2 : 1e-5;
  const unsigned seed = 300u * r.B + r.T + 5u * r.HS;
  const auto qkv = lab::randn<T>(r.N() * r.QKVD(), seed), dy = lab::randn<T>(r.N() * r.C(), seed + 1);
  std::vector<double> rout, rlse, rdq;
  lab::attention_reference(rout, rlse, rdq, lab::to_d(qkv), lab::to_d(dy), r.B, r.T, r.NH, r.NKV, r.HS);
  lab::Buf<T> dqkv(qkv), ddy(dy), out(r.N() * r.C()), dq(r.N() * r.QKVD()), fout(r.N() * r.C()),
      fdq(r.N() * r.QKVD());
  lab::Buf<float> lse(r.NL()), flse(r.NL()), dsum(r.NL());
  lab::Buf<char> scratch(pyllama::gpu::attention_gemm_scratch_bytes(r.T, r.NH, sizeof(T)));
  gemm_attention<T>(g, r, out.p, lse.p, dq.p, dqkv.p, ddy.p, scratch.p);
  CUDA_CHECK_LAUNCH();
  flash_attention<T>(r, fout.p, flse.p, dsum.p, fdq.p, dqkv.p, ddy.p);
  CUDA_CHECK_LAUNCH();
  const auto o = out.host(), d = dq.host();
  const std::string what = std::string("gemm attention ") + (b16 ? "bf16 " : "f32 ") +
                           lab::shape(r.B, r.T, r.NH, r.NKV, r.HS) + " (" + g.backend() + ")";
  lab::report(what + " out vs double", lab::rel_err(o, rout), tol);
  lab::report(what + " lse vs double", lab::rel_err(lse.host(), rlse), b16 ? 1e-2 : 1e-6);
  lab::report(what + " dqkv vs double", lab::rel_err(d, rdq), tol * 4);
  // flash is within 1e-2 (bf16) of the reference: the two within the sum of their bounds
  lab::report(what + " out vs the library's flash", lab::rel_err(o, lab::to_d(fout.host())), tol + (b16 ? 1e-2 : 0));
  lab::report(what + " dqkv vs the library's flash", lab::rel_err(d, lab::to_d(fdq.host())),
              4 * tol + (b16 ? 4e-2 : 0));
}

template <typename T>
void time_case(pyllama::gpu::Gemm& g, const Run& r, int reps) {
  lab::Buf<T> qkv(lab::randn<T>(r.N() * r.QKVD(), 7)), dy(lab::randn<T>(r.N() * r.C(), 8)), out(r.N() * r.C()),
      dq(r.N() * r.QKVD()), fout(r.N() * r.C()), fdq(r.N() * r.QKVD());
  lab::Buf<float> lse(r.NL()), flse(r.NL()), dsum(r.NL());
  lab::Buf<char> scratch(pyllama::gpu::attention_gemm_scratch_bytes(r.T, r.NH, sizeof(T)));
  const float lib = lab::time_ms([&] { flash_attention<T>(r, fout.p, flse.p, dsum.p, fdq.p, qkv.p, dy.p); }, reps);
  const float var = lab::time_ms([&] { gemm_attention<T>(g, r, out.p, lse.p, dq.p, qkv.p, dy.p, scratch.p); }, reps);
  const bool b16 = std::is_same<T, bf16>::value;
  lab::report(std::string("gemm attention ") + lab::shape(r.B, r.T, r.NH, r.NKV, r.HS) +
                  " out vs the library's flash after timing",
              lab::rel_err(out.host(), lab::to_d(fout.host())), b16 ? 4e-2 : 1e-5);
  lab::print_time(b16 ? "attention forward + backward, bf16 (flash -> gemm)"
                      : "attention forward + backward, float32 (flash -> gemm)",
                  lab::shape(r.B, r.T, r.NH, r.NKV, r.HS), lib, var);
}

}  // namespace

int main(int argc, char** argv) {
  const lab::Options opt = lab::parse(argc, argv, "attention_gemm");
  try {
    lab::print_device();
    pyllama::gpu::Gemm g;  // the library's default back end (cuBLASLt where cuBLAS was found)
    lab::Buf<char> ws(kWorkspace);
    if (g.uses_cublas()) g.set_workspace(ws.p, kWorkspace);
    // sizes that are not multiples of a block, T = 1, GQA / MQA / MHA, head sizes 12 .. 128
    check_case<float>(g, {2, 37, 4, 2, 12});
    check_case<float>(g, {1, 70, 2, 1, 64});
    check_case<float>(g, {3, 1, 4, 1, 64});
    check_case<float>(g, {1, 9, 3, 3, 100});
    check_case<bf16>(g, {1, 45, 2, 2, 128});
    check_case<bf16>(g, {2, 20, 6, 2, 32});
    // bf16 head size 12: the per-head batch pointers only 8-byte aligned, as cuBLASLt is told
    check_case<bf16>(g, {2, 37, 4, 2, 12});
    if (!opt.check_only) {
      time_case<bf16>(g, {16, 1024, 12, 12, 64}, opt.reps);  // bench/gpu.py's 124M model (bf16, 16 x 1024)
      time_case<bf16>(g, {4, 2048, 16, 16, 128}, opt.reps);
      time_case<bf16>(g, {8, 1024, 32, 8, 128}, opt.reps);
      time_case<float>(g, {4, 1024, 12, 12, 64}, opt.reps);  // the bench's float32 row
    }
  } catch (const std::exception& e) {
    lab::report(std::string("threw: ") + e.what(), INFINITY, 0);
  }
  return lab::finish("attention_gemm");
}
