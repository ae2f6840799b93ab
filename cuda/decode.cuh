// decode.cuh — kernels of the T = 1 decode step (LlamaModelCuda::kv_decode), written so
// that one CUDA graph per (B, cache shape) can replay the step: everything that changes
// from one step to the next (tokens, positions, slots, even the KV-cache base pointers,
// which kv_reorder swaps) is read from device memory, never passed as a kernel argument.
//
//   kvp: device array {k cache base, v cache base} (void*); the caches are
//        (L, S, NKV, max_len, HS) in T, layer l starting at l * layer_stride elements.
//   slots (B), pos (B): row b is sequence b in slot slots[b] at position pos[b]; it
//        attends to positions 0 .. pos[b] of its slot (its own key included).
#pragma once
#include <cstdint>

#include "kernels.cuh"  // Gemm, linear_forward

namespace pyllama {
namespace gpu {

// qkv (B, QKVD) rows (q | k | v): RoPE on q in place; the rotated k and the v written into
// the caches of layer `layer` at (slots[b], pos[b]). Same arithmetic as rope_apply + kv_store.
template <typename T>
void decode_rope_store(T* qkv, void* const* kvp, long long layer_off, const int32_t* slots, const int32_t* pos,
                       const float* cos_t, const float* sin_t, int B, int NH, int NKV, int HS, int max_len,
                       cudaStream_t stream);

// How many key ranges ("splits") one (row, head) of the decode attention is cut into, for a
// cache of max_len positions on a GPU with num_sms multiprocessors (>= 1; fixed per shape).
int decode_attention_splits(int B, int NH, int max_len, int num_sms);
// Floats of scratch decode_attention needs: B * NH * splits * (HS + 2).
long long decode_attention_scratch(int B, int NH, int HS, int splits);

// out (B, NH*HS) = softmax(q k^T / sqrt(HS)) v of row b over cache positions 0..pos[b] of
// slot slots[b] (q: the first NH*HS columns of qkv (B, QKVD)). Flash-decoding: the keys are
// cut into `splits` ranges, one block each (4 warps, a group of lanes per key with 128-bit
// loads when HS allows), online softmax; with splits > 1 the last block of each (row, head)
// to finish (counted in counters[b * NH + h], which must start at 0 and are left at 0)
// merges the ranges, so one kernel does it all. scratch: decode_attention_scratch(...) floats.
// pdl: launched as a programmatic dependent launch (see below).
template <typename T>
void decode_attention(T* out, float* scratch, int* counters, const T* qkv, void* const* kvp, long long layer_off,
                      const int32_t* slots, const int32_t* pos, int B, int NH, int NKV, int HS, int max_len,
                      int splits, bool pdl, cudaStream_t stream);

// y (B, OUT) = x (B, IN) W^T (W (OUT, IN)): with `skinny` and B <= kSkinnyMaxRows (and 16-byte
// aligned x, W, IN a multiple of 16 bytes), a warp-per-output kernel streaming W with 128-bit
// loads; otherwise linear_forward (cuBLAS or the tiled kernel).
constexpr int kSkinnyMaxRows = 4;
bool skinny_gemv_fits(const void* x, const void* w, int B, int IN, int elem_bytes);
template <typename T>
void decode_linear(Gemm& g, bool skinny, T* y, const T* x, const T* w, int B, int IN, int OUT, cudaStream_t stream);

// Greedy steps that feed themselves (LlamaModelCuda's greedy chain): after the argmax, the
// step's input token becomes the argmax, its position advances by one, and the token goes
// into ring[step * B + b] (step counted in device memory, reset by the host).
struct DecodeFeed {
  int32_t* tok = nullptr;  // nullptr: no feed
  int32_t* pos = nullptr;
  int32_t* ring = nullptr;
  int32_t* step = nullptr;
  int ring_cap = 0;  // steps the ring holds
};
// The feed as a kernel of its own (the unfused path): one block after argmax_rows.
void decode_advance(const DecodeFeed& f, const int32_t* argmax, int B, cudaStream_t stream);

// ---- fused decode matmuls (B <= kSkinnyMaxRows): the skinny GEMV with its neighbours folded
// in, so a layer takes five kernels (QKV, attention, output projection, gate/up, down).
// Epilogues: kEpiStore y = xW^T (and, when set, yf its float copy and argmax the index of
// each row's largest entry, numpy semantics: part holds 2 * fused_argmax_blocks(OUT,
// max_blocks) * B floats and counter one int that starts at 0 and is left at 0); kEpiResidual y += xW^T
// (y is the residual stream, rounded to T as residual_forward); kEpiSwiGLU y = silu(g) * u
// with g, u rows u and OUT + u of W (the [gate | up] matrix, OUT = I); kEpiRope: the QKV
// rows, rotary pair (i, i + HS/2) of head h per unit, q rotated into y (B, OUT = QKVD), k
// rotated and v stored into the caches of layer_off at (slots[b], pos[b]) (see
// decode_rope_store). With nw set, the prologue replaces x by rmsnorm(x) * nw (rounded to
// T). Every rounding happens where the unfused path rounds, so the results match it.
//
// pdl (sm_90+, cudaLaunchAttributeProgrammaticStreamSerialization): the kernel may start
// while the previous one in the stream finishes; it issues its first weight loads, then
// waits for that kernel (griddepcontrol.wait) before reading anything it wrote, so the
// launch latency and the first DRAM round trip overlap the previous kernel's tail.
constexpr int kEpiStore = 0, kEpiResidual = 1, kEpiSwiGLU = 2, kEpiRope = 3;
template <typename T>
struct FusedGemv {
  const T* W = nullptr;   // weight rows of IN elements
  const T* x = nullptr;   // (B, IN) input
  const T* nw = nullptr;  // RMSNorm weight (IN), or nullptr (no norm)
  float eps = 0.f;
  int IN = 0;
  int units = 0;  // warps of work: rows (store, residual), features (SwiGLU), rotary pairs (rope)
  int OUT = 0;    // row length of y
  int max_blocks = 0;  // > 0: at most this many blocks, each warp looping over units (one prologue per block)
  T* y = nullptr;
  float* yf = nullptr;         // store: float copy of y, or nullptr
  int32_t* argmax = nullptr;   // store: (B) row argmaxes, or nullptr
  float* part = nullptr;       // store with argmax: per-block partials
  int* counter = nullptr;      // store with argmax: blocks finished
  // store with argmax, optional: the step feeds itself (decode_advance's arithmetic, done by
  // the last block): feed_tok[b] = argmax[b], feed_pos[b] += 1, ring[step * B + b] =
  // argmax[b] while step < ring_cap, then step += 1
  DecodeFeed feed;
  void* const* kvp = nullptr;  // rope: {k cache, v cache} bases
  long long layer_off = 0;
  const int32_t *slots = nullptr, *pos = nullptr;
  const float *cos_t = nullptr, *sin_t = nullptr;
  int NH = 0, NKV = 0, HS = 0, max_len = 0;
};
// Whether the fused kernels take B rows of IN inputs (16-byte aligned x and W checked by the
// caller); with a norm, the B normalised rows must fit the 48 KiB of shared memory (less
// 1 KiB for the kernel's own).
bool fused_gemv_fits(int B, int IN, int elem_bytes, bool norm);
int fused_argmax_blocks(int OUT, int max_blocks);
template <typename T>
void fused_gemv(int epi, const FusedGemv<T>& a, int B, bool pdl, cudaStream_t stream);

// x (B, C) += add (rounded to T); out (B, C) = rmsnorm(x) * w; rstd (B): residual_forward
// followed by rmsnorm_forward in one kernel (block per row).
template <typename T>
void decode_residual_rmsnorm(T* x, const T* add, T* out, float* rstd, const T* w, int B, int C, float eps,
                             cudaStream_t stream);

// out[r] = index of the largest x[r, :] (R rows of V), numpy argmax semantics: the first
// index among equal maxima, and the first NaN when a row has one.
void argmax_rows(int32_t* out, const float* x, int R, int V, cudaStream_t stream);

}  // namespace gpu
}  // namespace pyllama
