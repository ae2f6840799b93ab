// ops_variants.h — the per-instruction-set copies of the op kernels (ops_impl.cpp is
// compiled once per namespace below). Use the dispatching functions of ops.h instead.
#pragma once
#include <cstdint>

#define PYLLAMA_OPS_DECLARE                                                                   \
  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C, float eps); \
  void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, \
                        const float* rstd, int N, int C); \
  void rope_apply(float* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads, \
                  int HS, bool inverse); \
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV, int HS); \
  void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B, \
                          int T, int NH, int NKV, int HS); \
  void attention_forward_flash(float* out, float* lse, float* scratch, const float* qkv, int B, int T, int NH, \
                               int NKV, int HS); \
  void attention_backward_flash(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* lse, \
                                int B, int T, int NH, int NKV, int HS); \
  void swiglu_forward(float* h, const float* gu, int N, int I); \
  void swiglu_backward(float* dgu, const float* dh, const float* gu, int N, int I); \
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C); \
  void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C, int V); \
  double crossentropy_forward(float* lse, const float* logits, const int32_t* targets, int N, int V, int* count); \
  void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets, float dloss, \
                             int N, int V); \
  void residual_forward(float* out, const float* a, const float* b, long n); \


namespace pyllama {
namespace ops_generic { PYLLAMA_OPS_DECLARE }
namespace ops_avx2 { PYLLAMA_OPS_DECLARE }
namespace ops_avx512 { PYLLAMA_OPS_DECLARE }
}  // namespace pyllama
