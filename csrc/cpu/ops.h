// ops.h — the LLaMA layers on the CPU, each a forward/backward pair of free
// functions. Arguments: outputs first, then inputs, then sizes. What a backward
// pass needs from its forward pass is an explicit output (e.g. rstd).
// Parameter gradients accumulate (+=); activation gradients are assigned,
// except dinp of rmsnorm_backward, which adds into the residual stream.
//
// Size letters: B batch, T time, N = B*T rows, C channels, NH query heads,
// NKV key/value heads, HS head size, I feed-forward width, V vocabulary.
// Weights are stored (out, in), row-major, as in PyTorch / Hugging Face.
#pragma once
#include <cstdint>

namespace pyllama {

// out (N, C) = inp * rstd * w;  rstd (N) = 1 / sqrt(mean(inp^2) + eps)
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C, float eps);
// dinp (N, C) += ...;  dw (C) += ...
void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                      const float* rstd, int N, int C);

// y (N, OUT) = x (N, IN) W^T (OUT, IN)
void linear_forward(float* y, const float* x, const float* w, int N, int IN, int OUT);
// dx (N, IN) = dy W (assigned);  dw (OUT, IN) += dy^T x
void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N, int IN, int OUT);

// (RoPE tables: rope_table in core/rope.h, shared with the CUDA backend.)
// Rotates, in place, the first `nheads` heads of each row of x (row stride ld):
// rotate-half pairing, dimension i with i + HS/2; row r sits at position pos[r].
// inverse = true rotates by -angle (the backward pass).
void rope_apply(float* x, int ld, const int32_t* pos, const float* cos_t, const float* sin_t, int N, int nheads,
                int HS, bool inverse);

// Causal grouped-query attention over qkv (B, T, (NH + 2 NKV) HS) rows (q | k | v).
// Scratch for every attention function: attention_scratch_floats(T) floats.
int64_t attention_scratch_floats(int T);
// Dense (reference) variant: out (B, T, NH*HS); att (B, NH, T, T) softmax probabilities
// (upper triangle zero within the computed blocks, unused beyond).
void attention_forward(float* out, float* att, const float* qkv, int B, int T, int NH, int NKV, int HS);
// dqkv (B, T, (NH+2NKV) HS) assigned.
void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att, int B,
                        int T, int NH, int NKV, int HS);
// Flash variant (what the model uses): keeps only lse (B, NH, T), the log-sum-exp of each
// scaled score row, and recomputes the probabilities block by block in the backward pass,
// so memory grows as T, not T^2.
void attention_forward_flash(float* out, float* lse, float* scratch, const float* qkv, int B, int T, int NH, int NKV,
                             int HS);
void attention_backward_flash(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* lse, int B,
                              int T, int NH, int NKV, int HS);

// The KV cache (inference; csrc/cpu/attention_kv.cpp, the twins of cuda/'s kv_store and
// attention_kv_forward): per layer, caches (slots, NKV, max_len, HS). Row n of qkv belongs to
// sequence b = n / T, at position pos[n], in cache slot slots[b].
// Writes each row's k and v heads into its slot at its position.
void kv_store(float* kcache, float* vcache, const float* qkv, const int32_t* slots, const int32_t* pos, int B, int T,
              int NH, int NKV, int HS, int max_len);
// out (N, NH*HS): each row's query heads attend to their slot's cache positions [0, pos[n]]
// (causal grouped-query attention). scores: num_threads() * max_len floats.
void attention_kv_forward(float* out, float* scores, const float* qkv, const float* kcache, const float* vcache,
                          const int32_t* slots, const int32_t* pos, int B, int T, int NH, int NKV, int HS,
                          int max_len);

// gu (N, 2I) = [gate | up] rows;  h (N, I) = silu(gate) * up
void swiglu_forward(float* h, const float* gu, int N, int I);
// dgu (N, 2I) assigned
void swiglu_backward(float* dgu, const float* dh, const float* gu, int N, int I);

// out (N, C) = wte[tokens]
void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C);
// dwte (V, C) += scatter of dout rows
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C, int V);

// Cross-entropy of logits (N, V) against targets (N; -100 = ignored).
// lse (N) = logsumexp per row; returns the summed loss over counted rows and sets *count.
double crossentropy_forward(float* lse, const float* logits, const int32_t* targets, int N, int V, int* count);
// dlogits (N, V) = dloss * (softmax - onehot) for counted rows, 0 for ignored; may alias logits.
void crossentropy_backward(float* dlogits, const float* logits, const float* lse, const int32_t* targets, float dloss,
                           int N, int V);

// out (N, C) = a + b (may alias a)
void residual_forward(float* out, const float* a, const float* b, long n);

}  // namespace pyllama
