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
#ifdef PYLLAMA_HAVE_OPENMP
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
    int nt = 1, id = 0;
#endif
    int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
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
constexpr int kAttnRows = 64;

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV, int HS) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      const int kvh = h / group;
      const float* Q = qkv + (size_t)b * T * QKVD + h * HS;
      const float* K = qkv + (size_t)b * T * QKVD + C + kvh * HS;
      const float* Vv = qkv + (size_t)b * T * QKVD + C + KVD + kvh * HS;
      float* P = att + (size_t)(b * NH + h) * T * T;  // (T, T), row stride T
      float* O = out + (size_t)b * T * C + h * HS;
      for (int r0 = 0; r0 < T; r0 += kAttnRows) {
        const int r1 = std::min(T, r0 + kAttnRows), rows = r1 - r0;
        // scores (rows, r1) = Q[r0:r1] K[0:r1]^T
        sgemm(false, true, rows, r1, HS, Q + (size_t)r0 * QKVD, QKVD, K, QKVD, 0.f, P + (size_t)r0 * T, T);
        for (int t = r0; t < r1; t++) {
          float* p = P + (size_t)t * T;
          float mx = -INFINITY;
          for (int s2 = 0; s2 <= t; s2++) {
            p[s2] *= scale;
            mx = p[s2] > mx ? p[s2] : mx;
          }
          float sum = 0.f;
          for (int s2 = 0; s2 <= t; s2++) {
            p[s2] = fast_expf(p[s2] - mx);
            sum += p[s2];
          }
          float inv = 1.f / sum;
          for (int s2 = 0; s2 <= t; s2++) p[s2] *= inv;
          for (int s2 = t + 1; s2 < r1; s2++) p[s2] = 0.f;  // masked keys inside the block
        }
        // out[r0:r1] = P[r0:r1, 0:r1] V[0:r1]
        sgemm(false, false, rows, HS, r1, P + (size_t)r0 * T, T, Vv, QKVD, 0.f, O + (size_t)r0 * C, C);
      }
    }
}

void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                        int T, int NH, int NKV, int HS) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
  // q, k and v gradients of one (b, kv head) are written by one thread only.
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = 0; b < B; b++)
    for (int kvh = 0; kvh < NKV; kvh++) {
      float* dS = scratch + (size_t)thread_id() * T * T;  // (T, T) per thread
      const float* K = qkv + (size_t)b * T * QKVD + C + kvh * HS;
      const float* Vv = K + KVD;
      float* dK = dqkv + (size_t)b * T * QKVD + C + kvh * HS;
      float* dV = dK + KVD;
      for (int t = 0; t < T; t++)
        for (int i = 0; i < HS; i++) dK[(size_t)t * QKVD + i] = dV[(size_t)t * QKVD + i] = 0.f;
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const float* P = att + (size_t)(b * NH + h) * T * T;
        const float* dY = dout + (size_t)b * T * C + h * HS;
        const float* Q = qkv + (size_t)b * T * QKVD + h * HS;
        float* dQ = dqkv + (size_t)b * T * QKVD + h * HS;
        for (int r0 = 0; r0 < T; r0 += kAttnRows) {
          const int r1 = std::min(T, r0 + kAttnRows), rows = r1 - r0;
          float* dSb = dS + (size_t)r0 * T;
          const float* Pb = P + (size_t)r0 * T;
          // dP (rows, r1) = dY[r0:r1] V[0:r1]^T
          sgemm(false, true, rows, r1, HS, dY + (size_t)r0 * C, C, Vv, QKVD, 0.f, dSb, T);
          // dS = P * (dP - sum_s P dP) * scale   (zero above the diagonal since P is)
          for (int t = r0; t < r1; t++) {
            const float* p = P + (size_t)t * T;
            float* d = dS + (size_t)t * T;
            float dot = 0.f;
            for (int s2 = 0; s2 <= t; s2++) dot += p[s2] * d[s2];
            for (int s2 = 0; s2 <= t; s2++) d[s2] = p[s2] * (d[s2] - dot) * scale;
            for (int s2 = t + 1; s2 < r1; s2++) d[s2] = 0.f;
          }
          // dQ[r0:r1] = dS K[0:r1];  dK[0:r1] += dS^T Q[r0:r1];  dV[0:r1] += P^T dY[r0:r1]
          sgemm(false, false, rows, HS, r1, dSb, T, K, QKVD, 0.f, dQ + (size_t)r0 * QKVD, QKVD);
          sgemm(true, false, r1, HS, rows, dSb, T, Q + (size_t)r0 * QKVD, QKVD, 1.f, dK, QKVD);
          sgemm(true, false, r1, HS, rows, Pb, T, dY + (size_t)r0 * C, C, 1.f, dV, QKVD);
        }
      }
    }
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
#ifdef PYLLAMA_HAVE_OPENMP
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
    int nt = 1, id = 0;
#endif
    int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
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
