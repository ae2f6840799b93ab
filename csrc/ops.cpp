// ops.cpp — CPU kernels for the LLaMA layers (see ops.h for shapes and rules).
#include "ops.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "matmul.h"
#include "runtime.h"
#ifdef PYLLAMA_HAVE_OPENMP
#include <omp.h>
#endif

namespace pyllama {

static inline int thread_id() {
#ifdef PYLLAMA_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// ---------------------------------------------------------------- RMSNorm

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
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
#pragma omp parallel for schedule(static)
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

void linear_forward(float* y, const float* x, const float* w, int N, int IN, int OUT) {
  sgemm(false, true, N, OUT, IN, x, IN, w, IN, 0.f, y, OUT);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N, int IN, int OUT) {
  if (dx) sgemm(false, false, N, IN, OUT, dy, OUT, w, IN, 0.f, dx, IN);
  sgemm(true, false, OUT, IN, N, dy, OUT, x, IN, 1.f, dw, IN);
}

// ---------------------------------------------------------------- RoPE

void rope_table(float* cos_t, float* sin_t, int max_T, int HS, float theta) {
  int half = HS / 2;
  for (int i = 0; i < half; i++) {
    // as transformers: inv_freq = 1 / theta^(2i/HS) in float32, angle = pos * inv_freq in float32
    float inv_freq = 1.0f / std::pow(theta, (float)(2 * i) / (float)HS);
    for (int p = 0; p < max_T; p++) {
      float ang = (float)p * inv_freq;
      cos_t[(size_t)p * half + i] = std::cos(ang);
      sin_t[(size_t)p * half + i] = std::sin(ang);
    }
  }
}

void rope_apply(float* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads,
                int HS, bool inverse) {
  int half = HS / 2;
  float sgn = inverse ? -1.f : 1.f;
#pragma omp parallel for schedule(static)
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

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV, int HS) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
#pragma omp parallel for collapse(3) schedule(dynamic, 8)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < T; t++) {
        const int kvh = h / group;
        const float* q = qkv + (size_t)(b * T + t) * QKVD + h * HS;
        float* p = att + ((size_t)(b * NH + h) * T + t) * T;
        float mx = -INFINITY;
        for (int s = 0; s <= t; s++) {
          const float* k = qkv + (size_t)(b * T + s) * QKVD + C + kvh * HS;
          float d = 0.f;
#pragma omp simd reduction(+ : d)
          for (int i = 0; i < HS; i++) d += q[i] * k[i];
          d *= scale;
          p[s] = d;
          mx = d > mx ? d : mx;
        }
        float sum = 0.f;
        for (int s = 0; s <= t; s++) {
          p[s] = std::exp(p[s] - mx);
          sum += p[s];
        }
        float inv = 1.f / sum;
        for (int s = 0; s <= t; s++) p[s] *= inv;
        float* o = out + (size_t)(b * T + t) * C + h * HS;
        for (int i = 0; i < HS; i++) o[i] = 0.f;
        for (int s = 0; s <= t; s++) {
          const float* v = qkv + (size_t)(b * T + s) * QKVD + C + KVD + kvh * HS;
          float ps = p[s];
#pragma omp simd
          for (int i = 0; i < HS; i++) o[i] += ps * v[i];
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
      float* dp = scratch + (size_t)thread_id() * T;
      for (int t = 0; t < T; t++) {
        float* dk = dqkv + (size_t)(b * T + t) * QKVD + C + kvh * HS;
        float* dv = dk + KVD;
        for (int i = 0; i < HS; i++) dk[i] = dv[i] = 0.f;
      }
      for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int t = 0; t < T; t++) {
          const float* p = att + ((size_t)(b * NH + h) * T + t) * T;
          const float* dy = dout + (size_t)(b * T + t) * C + h * HS;
          const float* q = qkv + (size_t)(b * T + t) * QKVD + h * HS;
          float* dq = dqkv + (size_t)(b * T + t) * QKVD + h * HS;
          float dot = 0.f;
          for (int s = 0; s <= t; s++) {
            const float* v = qkv + (size_t)(b * T + s) * QKVD + C + KVD + kvh * HS;
            float* dv = dqkv + (size_t)(b * T + s) * QKVD + C + KVD + kvh * HS;
            float d = 0.f, ps = p[s];
#pragma omp simd reduction(+ : d)
            for (int i = 0; i < HS; i++) {
              d += dy[i] * v[i];
              dv[i] += ps * dy[i];
            }
            dp[s] = d;
            dot += ps * d;
          }
          for (int i = 0; i < HS; i++) dq[i] = 0.f;
          for (int s = 0; s <= t; s++) {
            float ds = p[s] * (dp[s] - dot) * scale;
            const float* k = qkv + (size_t)(b * T + s) * QKVD + C + kvh * HS;
            float* dk = dqkv + (size_t)(b * T + s) * QKVD + C + kvh * HS;
#pragma omp simd
            for (int i = 0; i < HS; i++) {
              dq[i] += ds * k[i];
              dk[i] += ds * q[i];
            }
          }
        }
    }
}

// ---------------------------------------------------------------- SwiGLU

void swiglu_forward(float* h, const float* gu, int N, int I) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* g = gu + (size_t)n * 2 * I;
    const float* u = g + I;
    float* o = h + (size_t)n * I;
#pragma omp simd
    for (int i = 0; i < I; i++) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
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
      float sig = 1.f / (1.f + std::exp(-g[i]));
      float silu = g[i] * sig;
      du[i] = d[i] * silu;
      dg[i] = d[i] * u[i] * sig * (1.f + g[i] * (1.f - sig));
    }
  }
}

// ---------------------------------------------------------------- embedding

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C) {
#pragma omp parallel for schedule(static)
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
    for (int i = 0; i < V; i++) s += std::exp(x[i] - mx);
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
    for (int i = 0; i < V; i++) d[i] = std::exp(x[i] - l) * dloss;
    d[tgt] -= dloss;
  }
}

void residual_forward(float* out, const float* a, const float* b, long n) {
#pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

}  // namespace pyllama
