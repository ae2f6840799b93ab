// ops_dispatch.cpp — the public op functions of ops.h: each forwards to the variant of
// ops_impl.cpp compiled for the best instruction set this CPU has (runtime.h simd_level()).
#include <algorithm>
#include <cmath>

#include "matmul.h"
#include "ops.h"
#include "ops_variants.h"
#include "runtime.h"

namespace pyllama {

#ifdef PYLLAMA_OPS_X86_VARIANTS
#define PYLLAMA_DISPATCH(fn, ...)                                     \
  do {                                                                \
    int level_ = simd_level();                                        \
    if (level_ == 2) return ops_avx512::fn(__VA_ARGS__);              \
    if (level_ == 1) return ops_avx2::fn(__VA_ARGS__);                \
    return ops_generic::fn(__VA_ARGS__);                              \
  } while (0)
#else
#define PYLLAMA_DISPATCH(fn, ...) return ops_generic::fn(__VA_ARGS__)
#endif

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C, float eps) {
  PYLLAMA_DISPATCH(rmsnorm_forward, out, rstd, inp, w, N, C, eps);
}
void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int N, int C) {
  PYLLAMA_DISPATCH(rmsnorm_backward, dinp, dw, dout, inp, w, rstd, N, C);
}
void rope_apply(float* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads,
                int HS, bool inverse) {
  PYLLAMA_DISPATCH(rope_apply, x, ld, pos, cos_t, sin_t, N, nheads, HS, inverse);
}
void attention_forward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV, int HS) {
  PYLLAMA_DISPATCH(attention_forward, out, att, qkv, B, T, NH, NKV, HS);
}
void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                        int T, int NH, int NKV, int HS) {
  PYLLAMA_DISPATCH(attention_backward, dqkv, scratch, dout, qkv, att, B, T, NH, NKV, HS);
}
void attention_forward_flash(float* out, float* lse, float* scratch, const float* qkv, int B, int T, int NH, int NKV,
                             int HS) {
  PYLLAMA_DISPATCH(attention_forward_flash, out, lse, scratch, qkv, B, T, NH, NKV, HS);
}
void attention_backward_flash(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* lse, int B,
                              int T, int NH, int NKV, int HS) {
  PYLLAMA_DISPATCH(attention_backward_flash, dqkv, scratch, dout, qkv, lse, B, T, NH, NKV, HS);
}
int64_t attention_scratch_floats(int T) {
  // two (64, T) blocks per thread (kAttnRows = 64 in kernels/ops_impl.cpp)
  return (int64_t)std::max(num_threads(), 1) * 2 * 64 * T;
}
void swiglu_forward(float* h, const float* gu, int N, int I) { PYLLAMA_DISPATCH(swiglu_forward, h, gu, N, I); }
void swiglu_backward(float* dgu, const float* dh, const float* gu, int N, int I) {
  PYLLAMA_DISPATCH(swiglu_backward, dgu, dh, gu, N, I);
}
void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C) {
  PYLLAMA_DISPATCH(embedding_forward, out, tokens, wte, N, C);
}
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C, int V) {
  PYLLAMA_DISPATCH(embedding_backward, dwte, dout, tokens, N, C, V);
}
double crossentropy_forward(float* lse, const float* logits, const int32_t* targets, int N, int V, int* count) {
  PYLLAMA_DISPATCH(crossentropy_forward, lse, logits, targets, N, V, count);
}
void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets, float dloss,
                           int N, int V) {
  PYLLAMA_DISPATCH(crossentropy_backward, dlogits, logits, lse, targets, dloss, N, V);
}
void residual_forward(float* out, const float* a, const float* b, long n) {
  PYLLAMA_DISPATCH(residual_forward, out, a, b, n);
}

// ---------------------------------------------------------------- linear

void linear_forward(float* y, const float* x, const float* w, int N, int IN, int OUT) {
  sgemm(false, true, N, OUT, IN, x, IN, w, IN, 0.f, y, OUT);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N, int IN, int OUT) {
  if (dx) sgemm(false, false, N, IN, OUT, dy, OUT, w, IN, 0.f, dx, IN);
  sgemm(true, false, OUT, IN, N, dy, OUT, x, IN, 1.f, dw, IN);
}

}  // namespace pyllama
