// ops_impl.cpp — CPU kernels for the LLaMA layers (see ops.h for shapes and rules).
// This file is compiled once per instruction set (generic, AVX2+FMA, AVX-512), each
// time into its own namespace PYLLAMA_OPS_NS; ops_dispatch.cpp picks one at run time.
#include "ops.h"
#include "ops_variants.h"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <vector>

#include "matmul.h"
#include "runtime.h"
#ifdef PYLLAMA_HAVE_OPENMP
#include <omp.h>
#endif

namespace pyllama {
namespace PYLLAMA_OPS_NS {

// exp(x) for the softmax, cross-entropy and SiLU loops: Cody-Waite range reduction and a
// degree-6 polynomial (relative error ~2e-7), written so that `omp simd` loops vectorise it.
static inline float fast_expf(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.4426950408889634f;
  const float fn = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const float f = x - fn * 0.693145751953125f - fn * 1.428606765330187e-06f;
  const float p =
      1.f + f * (1.f + f * (0.5f + f * (0.16666667f + f * (0.041666668f + f * (0.008333334f + f * 0.0013888889f)))));
  const int32_t bits = ((int32_t)fn + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// The calling thread's share [*c0, *c1) of n columns, inside a parallel region
// (for column-parallel accumulations that must not race).
static inline void thread_slice(int n, int* c0, int* c1) {
#ifdef PYLLAMA_HAVE_OPENMP
  const int nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
  const int nt = 1, id = 0;
#endif
  *c0 = (int)((long)n * id / nt);
  *c1 = (int)((long)n * (id + 1) / nt);
}

static inline int thread_id() {
#ifdef PYLLAMA_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// ---------------------------------------------------------------- RMSNorm

// Parallel regions only pay off above this many elements; decoding steps stay on one thread.
constexpr long kParallelMin = 1 << 15;

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((long)N * C > kParallelMin)
  for (int n = 0; n < N; n++) {
    const float* x = inp + (size_t)n * C;
    float* o = out + (size_t)n * C;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < C; i++) ss += x[i] * x[i];
    float r = 1.0f / std::sqrt(ss / C + eps);
    rstd[n] = r;
#pragma omp simd
    for (int i = 0; i < C; i++) o[i] = w[i] * (x[i] * r);
  }
}

void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int N, int C) {
  // dinp: rows are independent.
#pragma omp parallel for schedule(static) if ((long)N * C > kParallelMin)
  for (int n = 0; n < N; n++) {
    const float* x = inp + (size_t)n * C;
    const float* dy = dout + (size_t)n * C;
    float* dx = dinp + (size_t)n * C;
    float r = rstd[n];
    float dot = 0.f;  // sum_j w_j dy_j x_j
#pragma omp simd reduction(+ : dot)
    for (int i = 0; i < C; i++) dot += w[i] * dy[i] * x[i];
    float k = r * r * r * dot / C;
#pragma omp simd
    for (int i = 0; i < C; i++) dx[i] += r * w[i] * dy[i] - k * x[i];
  }
  // dw: columns are independent; each thread owns a slice of channels.
#pragma omp parallel
  {
    int c0, c1;
    thread_slice(C, &c0, &c1);
    for (int n = 0; n < N; n++) {
      const float* x = inp + (size_t)n * C;
      const float* dy = dout + (size_t)n * C;
      float r = rstd[n];
#pragma omp simd
      for (int i = c0; i < c1; i++) dw[i] += dy[i] * x[i] * r;
    }
  }
}

// ---------------------------------------------------------------- linear

// ---------------------------------------------------------------- RoPE

void rope_apply(float* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads,
                int HS, bool inverse) {
  int half = HS / 2;
  float sgn = inverse ? -1.f : 1.f;
#pragma omp parallel for schedule(static) if ((long)N * nheads * HS > kParallelMin)
  for (int n = 0; n < N; n++) {
    const float* c = cos_t + (size_t)pos[n] * half;
    const float* s = sin_t + (size_t)pos[n] * half;
    for (int h = 0; h < nheads; h++) {
      float* v = x + (size_t)n * ld + (size_t)h * HS;
#pragma omp simd
      for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        float si = sgn * s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = b * c[i] + a * si;
      }
    }
  }
}

// ---------------------------------------------------------------- attention

// Attention runs per (batch, head) with the blocked sgemm: rows are taken in blocks
// of kAttnRows queries, and each block only multiplies the keys it can see (0 .. end
// of the block), so the causal upper triangle costs at most one block's worth.
// Two variants share the block helpers below:
//   dense: keeps the probabilities P (B, NH, T, T) for the backward pass (reference path);
//   flash: keeps only the row log-sum-exps (B, NH, T) and recomputes P block by block in
//          the backward pass, so no T x T array ever exists (what the model uses).

constexpr int kAttnRows = 64;  // query rows per block (attention_scratch_floats assumes 64)

// Causal softmax of the score rows t = r0..r1-1 held in Pb (row t at Pb + (t-r0)*ldp):
// P = softmax(scale * S) over keys 0..t, zero for keys t+1..r1-1; lse[t] = log sum exp.
static void softmax_block(float* Pb, int ldp, int r0, int r1, float scale, float* lse) {
  for (int t = r0; t < r1; t++) {
    float* p = Pb + (size_t)(t - r0) * ldp;
    float mx = -INFINITY;
    for (int s2 = 0; s2 <= t; s2++) {
      p[s2] *= scale;
      mx = p[s2] > mx ? p[s2] : mx;
    }
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int s2 = 0; s2 <= t; s2++) {
      p[s2] = fast_expf(p[s2] - mx);
      sum += p[s2];
    }
    float inv = 1.f / sum;
#pragma omp simd
    for (int s2 = 0; s2 <= t; s2++) p[s2] *= inv;
    for (int s2 = t + 1; s2 < r1; s2++) p[s2] = 0.f;
    if (lse) lse[t] = mx + std::log(sum);
  }
}

// P = exp(scale * S - lse) for the block's rows, from the raw scores S in Pb.
static void recompute_block(float* Pb, int ldp, int r0, int r1, float scale, const float* lse) {
  for (int t = r0; t < r1; t++) {
    float* p = Pb + (size_t)(t - r0) * ldp;
    const float l = lse[t];
#pragma omp simd
    for (int s2 = 0; s2 <= t; s2++) p[s2] = fast_expf(p[s2] * scale - l);
    for (int s2 = t + 1; s2 < r1; s2++) p[s2] = 0.f;
  }
}

// Gradients of one row block given its probabilities Pb: dP = dY V^T into dSb, then
// dS = P (dP - sum_s P dP) scale, dQ = dS K (assigned), dK += dS^T Q, dV += P^T dY.
static void backward_block(float* dSb, const float* Pb, int ldp, int r0, int r1, float scale, const float* dY, int ldy,
                           const float* Q, const float* K, const float* Vv, int QKVD, int HS, float* dQ, float* dK,
                           float* dV) {
  const int rows = r1 - r0;
  sgemm(false, true, rows, r1, HS, dY + (size_t)r0 * ldy, ldy, Vv, QKVD, 0.f, dSb, ldp);
  for (int t = r0; t < r1; t++) {
    const float* p = Pb + (size_t)(t - r0) * ldp;
    float* d = dSb + (size_t)(t - r0) * ldp;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int s2 = 0; s2 <= t; s2++) dot += p[s2] * d[s2];
#pragma omp simd
    for (int s2 = 0; s2 <= t; s2++) d[s2] = p[s2] * (d[s2] - dot) * scale;
    for (int s2 = t + 1; s2 < r1; s2++) d[s2] = 0.f;
  }
  sgemm(false, false, rows, HS, r1, dSb, ldp, K, QKVD, 0.f, dQ + (size_t)r0 * QKVD, QKVD);
  sgemm(true, false, r1, HS, rows, dSb, ldp, Q + (size_t)r0 * QKVD, QKVD, 1.f, dK, QKVD);
  sgemm(true, false, r1, HS, rows, Pb, ldp, dY + (size_t)r0 * ldy, ldy, 1.f, dV, QKVD);
}

// Shared driver of both forward variants: att (dense P) or lse (flash) is non-null.
static void attention_forward_impl(float* out, float* att, float* lse, float* scratch, const float* qkv, int B, int T,
                                   int NH, int NKV, int HS) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      const int kvh = h / group;
      const float* Q = qkv + (size_t)b * T * QKVD + h * HS;
      const float* K = qkv + (size_t)b * T * QKVD + C + kvh * HS;
      const float* Vv = qkv + (size_t)b * T * QKVD + C + KVD + kvh * HS;
      float* O = out + (size_t)b * T * C + h * HS;
      float* L = lse ? lse + (size_t)(b * NH + h) * T : nullptr;
      for (int r0 = 0; r0 < T; r0 += kAttnRows) {
        const int r1 = std::min(T, r0 + kAttnRows), rows = r1 - r0;
        float* Pb = att ? att + ((size_t)(b * NH + h) * T + r0) * T
                        : scratch + (size_t)thread_id() * 2 * kAttnRows * T;
        sgemm(false, true, rows, r1, HS, Q + (size_t)r0 * QKVD, QKVD, K, QKVD, 0.f, Pb, T);
        softmax_block(Pb, T, r0, r1, scale, L);
        sgemm(false, false, rows, HS, r1, Pb, T, Vv, QKVD, 0.f, O + (size_t)r0 * C, C);
      }
    }
}

static void attention_backward_impl(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att,
                                    const float* lse, int B, int T, int NH, int NKV, int HS) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
  // q, k and v gradients of one (b, kv head) are written by one thread only.
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = 0; b < B; b++)
    for (int kvh = 0; kvh < NKV; kvh++) {
      float* dSb = scratch + (size_t)thread_id() * 2 * kAttnRows * T;  // (kAttnRows, T)
      float* Pscratch = dSb + (size_t)kAttnRows * T;                    // (kAttnRows, T), flash only
      const float* K = qkv + (size_t)b * T * QKVD + C + kvh * HS;
      const float* Vv = K + KVD;
      float* dK = dqkv + (size_t)b * T * QKVD + C + kvh * HS;
      float* dV = dK + KVD;
      for (int t = 0; t < T; t++)
        for (int i = 0; i < HS; i++) dK[(size_t)t * QKVD + i] = dV[(size_t)t * QKVD + i] = 0.f;
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const float* dY = dout + (size_t)b * T * C + h * HS;
        const float* Q = qkv + (size_t)b * T * QKVD + h * HS;
        float* dQ = dqkv + (size_t)b * T * QKVD + h * HS;
        for (int r0 = 0; r0 < T; r0 += kAttnRows) {
          const int r1 = std::min(T, r0 + kAttnRows), rows = r1 - r0;
          const float* Pb;
          if (att) {
            Pb = att + ((size_t)(b * NH + h) * T + r0) * T;
          } else {
            sgemm(false, true, rows, r1, HS, Q + (size_t)r0 * QKVD, QKVD, K, QKVD, 0.f, Pscratch, T);
            recompute_block(Pscratch, T, r0, r1, scale, lse + (size_t)(b * NH + h) * T);
            Pb = Pscratch;
          }
          backward_block(dSb, Pb, T, r0, r1, scale, dY, C, Q, K, Vv, QKVD, HS, dQ, dK, dV);
        }
      }
    }
}

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV, int HS) {
  attention_forward_impl(out, att, nullptr, nullptr, qkv, B, T, NH, NKV, HS);
}

void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                        int T, int NH, int NKV, int HS) {
  attention_backward_impl(dqkv, scratch, dout, qkv, att, nullptr, B, T, NH, NKV, HS);
}

void attention_forward_flash(float* out, float* lse, float* scratch, const float* qkv, int B, int T, int NH, int NKV,
                             int HS) {
  attention_forward_impl(out, nullptr, lse, scratch, qkv, B, T, NH, NKV, HS);
}

void attention_backward_flash(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* lse, int B,
                              int T, int NH, int NKV, int HS) {
  attention_backward_impl(dqkv, scratch, dout, qkv, nullptr, lse, B, T, NH, NKV, HS);
}

// ---------------------------------------------------------------- SwiGLU

void swiglu_forward(float* h, const float* gu, int N, int I) {
#pragma omp parallel for schedule(static) if ((long)N * I > kParallelMin)
  for (int n = 0; n < N; n++) {
    const float* g = gu + (size_t)n * 2 * I;
    const float* u = g + I;
    float* o = h + (size_t)n * I;
#pragma omp simd
    for (int i = 0; i < I; i++) o[i] = g[i] / (1.f + fast_expf(-g[i])) * u[i];
  }
}

void swiglu_backward(float* dgu, const float* dh, const float* gu, int N, int I) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* g = gu + (size_t)n * 2 * I;
    const float* u = g + I;
    const float* d = dh + (size_t)n * I;
    float* dg = dgu + (size_t)n * 2 * I;
    float* du = dg + I;
#pragma omp simd
    for (int i = 0; i < I; i++) {
      float sig = 1.f / (1.f + fast_expf(-g[i]));
      float silu = g[i] * sig;
      du[i] = d[i] * silu;
      dg[i] = d[i] * u[i] * sig * (1.f + g[i] * (1.f - sig));
    }
  }
}

// ---------------------------------------------------------------- embedding

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C) {
#pragma omp parallel for schedule(static) if ((long)N * C > kParallelMin)
  for (int n = 0; n < N; n++) std::memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, sizeof(float) * C);
}

void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C, int V) {
#pragma omp parallel
  {
    int c0, c1;
    thread_slice(C, &c0, &c1);
    for (int n = 0; n < N; n++) {
      float* d = dwte + (size_t)tokens[n] * C;
      const float* g = dout + (size_t)n * C;
#pragma omp simd
      for (int i = c0; i < c1; i++) d[i] += g[i];
    }
  }
}

// ---------------------------------------------------------------- cross-entropy

double crossentropy_forward(float* lse, const float* logits, const int32_t* targets, int N, int V, int* count) {
  double total = 0.0;
  int cnt = 0;
#pragma omp parallel for schedule(static) reduction(+ : total, cnt)
  for (int n = 0; n < N; n++) {
    const float* x = logits + (size_t)n * V;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < V; i++) s += fast_expf(x[i] - mx);
    float l = mx + std::log(s);
    lse[n] = l;
    int tgt = targets ? targets[n] : -100;
    if (tgt != -100) {
      total += (double)l - x[tgt];
      cnt++;
    }
  }
  *count = cnt;
  return total;
}

void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets, float dloss,
                           int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* x = logits + (size_t)n * V;
    float* d = dlogits + (size_t)n * V;
    int tgt = targets[n];
    if (tgt == -100) {
      std::memset(d, 0, sizeof(float) * V);
      continue;
    }
    float l = lse[n];
#pragma omp simd
    for (int i = 0; i < V; i++) d[i] = fast_expf(x[i] - l) * dloss;
    d[tgt] -= dloss;
  }
}

void residual_forward(float* out, const float* a, const float* b, long n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

}  // namespace PYLLAMA_OPS_NS
}  // namespace pyllama
