// attention_gemm.cu — causal grouped-query attention for training through batched
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

#include "common.h"  // PYLLAMA_CHECK, ValueError
#include "kernels.cuh"

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

template void attention_forward_gemm<float>(Gemm&, float*, float*, const float*, void*, int, int, int, int, int,
                                            cudaStream_t);
template void attention_forward_gemm<bf16>(Gemm&, bf16*, float*, const bf16*, void*, int, int, int, int, int,
                                           cudaStream_t);
template void attention_backward_gemm<float>(Gemm&, float*, const float*, const float*, const float*, void*, int, int,
                                             int, int, int, cudaStream_t);
template void attention_backward_gemm<bf16>(Gemm&, bf16*, const bf16*, const bf16*, const float*, void*, int, int, int,
                                            int, int, cudaStream_t);

}  // namespace gpu
}  // namespace pyllama
