// attention_kv.cpp — the KV-cache ops of ops.h (kv_store, attention_kv_forward), the CPU twins of
// cuda/attention.cu's. Compiled with the CPU backend's flags (not once per instruction set as
// kernels/ops_impl.cpp is): the cached steps keep the arithmetic, and the bits, they always had.
#include <cmath>
#include <cstring>

#include "ops.h"
#ifdef PYLLAMA_HAVE_OPENMP
#include <omp.h>
#endif

namespace pyllama {

void kv_store(float* kcache, float* vcache, const float* qkv, const int32_t* slots, const int32_t* pos, int B, int T,
              int NH, int NKV, int HS, int max_len) {
  const long N = (long)B * T;
  const size_t QD = (size_t)NH * HS, KVD = (size_t)NKV * HS, QKVD = QD + 2 * KVD;
  const size_t slot_stride = (size_t)NKV * max_len * HS;
  for (long n = 0; n < N; n++) {
    const int b = (int)(n / T);
    for (int kh = 0; kh < NKV; kh++) {
      const size_t dst = (size_t)slots[b] * slot_stride + ((size_t)kh * max_len + pos[n]) * HS;
      std::memcpy(kcache + dst, qkv + (size_t)n * QKVD + QD + kh * HS, sizeof(float) * HS);
      std::memcpy(vcache + dst, qkv + (size_t)n * QKVD + QD + KVD + kh * HS, sizeof(float) * HS);
    }
  }
}

void attention_kv_forward(float* out, float* scores, const float* qkv, const float* kcache, const float* vcache,
                          const int32_t* slots, const int32_t* pos, int B, int T, int NH, int NKV, int HS,
                          int max_len) {
  const long N = (long)B * T;
  const size_t QD = (size_t)NH * HS, QKVD = QD + 2 * (size_t)NKV * HS;
  const size_t slot_stride = (size_t)NKV * max_len * HS;
  const int group = NH / NKV;
  const float scale = 1.0f / std::sqrt((float)HS);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if ((long)N * NH * (pos[N - 1] + 1) * HS > (1 << 16))
  for (long n = 0; n < N; n++)
    for (int hh = 0; hh < NH; hh++) {
      const int b = (int)(n / T), kh = hh / group, p = pos[n];
      const float* q = qkv + (size_t)n * QKVD + hh * HS;
      const float* kbase = kcache + (size_t)slots[b] * slot_stride + (size_t)kh * max_len * HS;
      const float* vbase = vcache + (size_t)slots[b] * slot_stride + (size_t)kh * max_len * HS;
#ifdef PYLLAMA_HAVE_OPENMP
      float* sc = scores + (size_t)omp_get_thread_num() * max_len;
#else
      float* sc = scores;
#endif
      float mx = -INFINITY;
      for (int s = 0; s <= p; s++) {
        const float* k = kbase + (size_t)s * HS;
        float d = 0.f;
#pragma omp simd reduction(+ : d)
        for (int i = 0; i < HS; i++) d += q[i] * k[i];
        d *= scale;
        sc[s] = d;
        mx = d > mx ? d : mx;
      }
      float sum = 0.f;
      for (int s = 0; s <= p; s++) {
        sc[s] = std::exp(sc[s] - mx);
        sum += sc[s];
      }
      const float inv = 1.f / sum;
      float* o = out + (size_t)n * QD + hh * HS;
      for (int i = 0; i < HS; i++) o[i] = 0.f;
      for (int s = 0; s <= p; s++) {
        const float* v = vbase + (size_t)s * HS;
        const float ps = sc[s] * inv;
#pragma omp simd
        for (int i = 0; i < HS; i++) o[i] += ps * v[i];
      }
    }
}

}  // namespace pyllama
