// sampling.h — choosing the next token from logits, and a generation loop over a Model's
// KV cache, for native programs (the Python package has its own, richer, strategies in
// pyllama/generation.py). The logits processors follow transformers' definitions and order:
//
//   repetition_penalty  every token id already in the sequence (prompt + generated):
//                       logit < 0 ? logit * penalty : logit / penalty
//   (greedy: argmax here, first index on ties; sampling goes on:)
//   temperature         logits / temperature
//   top_k               keep the logits >= the k-th largest (ties at the threshold kept)
//   top_p               sort ascending, drop tokens while the cumulative probability <= 1 - top_p
//                       (the most likely token always stays)
//   then one draw from softmax by inverse transform with the sampler's own generator
//   (splitmix64 seeded by `seed`: deterministic per seed, not torch's or numpy's stream).
//
//   pyllama::SamplingParams p;  p.do_sample = true;  p.temperature = 0.8f;  p.top_p = 0.95f;
//   pyllama::Sampler s(p);
//   int32_t next = s.sample(logits, V, history.data(), history.size());
//
//   std::vector<int32_t> out = pyllama::generate_tokens(model, prompt, p,
//       [&](int32_t tok) { std::printf("%d ", tok); return true; });   // false stops early
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pyllama {

class Model;

struct SamplingParams {
  int max_new_tokens = 64;          // >= 0
  bool do_sample = false;           // false: greedy (argmax after the repetition penalty)
  float temperature = 1.0f;         // > 0 (used when do_sample)
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;               // in (0, 1]; 1: off
  float repetition_penalty = 1.0f;  // > 0; 1: off
  uint64_t seed = 0;
  std::vector<int32_t> stop_token_ids;  // generation ends after emitting one of these
  void validate() const;                // ValueError naming the field
};

// Why generate_tokens stopped.
enum class StopReason { max_new_tokens, stop_token, max_context, callback };

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);  // validates params
  // Turns logits (V floats, modified in place) into the distribution the next token is drawn
  // from: probs[V] (zeros for removed tokens). Greedy: one-hot on the argmax.
  void probs(float* logits, size_t V, const int32_t* history, size_t n_history, float* probs);
  // The next token. logits are modified in place.
  int32_t sample(float* logits, size_t V, const int32_t* history, size_t n_history);
  double next_uniform();  // in [0, 1), from the sampler's generator

 private:
  void process(float* logits, size_t V, const int32_t* history, size_t n_history);
  SamplingParams p_;
  uint64_t state_;
  std::vector<double> work_;
  std::vector<uint32_t> order_;
};

// Prefill the prompt over a fresh KV cache (one slot), then one token per step until
// max_new_tokens, a stop token (included in the result), the model's context
// (max_position_embeddings) or on_token returning false. on_token may be empty.
// ValueError for an empty prompt, an id outside the vocabulary or a prompt longer than the context.
std::vector<int32_t> generate_tokens(Model& model, const std::vector<int32_t>& prompt, const SamplingParams& params,
                                     const std::function<bool(int32_t)>& on_token = nullptr,
                                     StopReason* reason = nullptr);

}  // namespace pyllama
