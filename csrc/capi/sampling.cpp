// sampling.cpp — see sampling.h for the rules (transformers' processors, in its order).
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend.h"
#include "common.h"

namespace pyllama {

void SamplingParams::validate() const {
  PYLLAMA_CHECK(max_new_tokens >= 0, ValueError, "max_new_tokens must be >= 0, got " << max_new_tokens);
  PYLLAMA_CHECK(std::isfinite(temperature) && temperature > 0, ValueError,
                "temperature must be a finite number > 0, got " << temperature
                << " (for greedy decoding set do_sample = false)");
  PYLLAMA_CHECK(top_k >= 0, ValueError, "top_k must be >= 0 (0 turns it off), got " << top_k);
  PYLLAMA_CHECK(top_p > 0 && top_p <= 1, ValueError, "top_p must be in (0, 1] (1 turns it off), got " << top_p);
  PYLLAMA_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0, ValueError,
                "repetition_penalty must be a finite number > 0 (1 turns it off), got " << repetition_penalty);
  for (int32_t id : stop_token_ids)
    PYLLAMA_CHECK(id >= 0, ValueError, "stop token ids must be >= 0, got " << id);
}

static uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Sampler::Sampler(const SamplingParams& params) : p_(params), state_(params.seed) { p_.validate(); }

double Sampler::next_uniform() { return static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53; }

static size_t argmax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; i++) {
    if (std::isnan(x[best])) break;  // a NaN wins, as numpy's argmax
    if (x[i] > x[best] || std::isnan(x[i])) best = i;
  }
  return best;
}

void Sampler::process(float* logits, size_t V, const int32_t* history, size_t n_history) {
  PYLLAMA_CHECK(V > 0, ValueError, "sampling: the vocabulary is empty");
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // repetition penalty: each distinct id of the sequence once (transformers gathers, then scatters)
  if (p_.repetition_penalty != 1.0f && n_history) {
    std::vector<bool> seen(V, false);
    for (size_t i = 0; i < n_history; i++) {
      int32_t id = history[i];
      PYLLAMA_CHECK(id >= 0 && static_cast<size_t>(id) < V, ValueError,
                    "sampling: token id " << id << " in the sequence is outside the vocabulary [0, " << V << ")");
      if (seen[id]) continue;
      seen[id] = true;
      float& x = logits[id];
      x = x < 0 ? x * p_.repetition_penalty : x / p_.repetition_penalty;
    }
  }
  if (!p_.do_sample) return;
  if (p_.temperature != 1.0f)
    for (size_t i = 0; i < V; i++) logits[i] /= p_.temperature;
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < V) {
    std::vector<float> tmp(logits, logits + V);
    std::nth_element(tmp.begin(), tmp.begin() + (p_.top_k - 1), tmp.end(), std::greater<float>());
    float thr = tmp[p_.top_k - 1];
    for (size_t i = 0; i < V; i++)
      if (logits[i] < thr) logits[i] = neg_inf;
  }
  if (p_.top_p < 1.0f) {
    // softmax over the tokens still allowed, sorted ascending (stable: ties keep id order)
    order_.clear();
    for (size_t i = 0; i < V; i++)
      if (logits[i] > neg_inf) order_.push_back(static_cast<uint32_t>(i));
    if (order_.size() > 1) {
      std::stable_sort(order_.begin(), order_.end(), [&](uint32_t a, uint32_t b) { return logits[a] < logits[b]; });
      double mx = logits[order_.back()], sum = 0;
      work_.resize(order_.size());
      for (size_t j = 0; j < order_.size(); j++) sum += work_[j] = std::exp(static_cast<double>(logits[order_[j]]) - mx);
      double cum = 0;
      for (size_t j = 0; j + 1 < order_.size(); j++) {  // the most likely token always stays
        cum += work_[j] / sum;
        if (cum > 1.0 - p_.top_p) break;
        logits[order_[j]] = neg_inf;
      }
    }
  }
}

void Sampler::probs(float* logits, size_t V, const int32_t* history, size_t n_history, float* out) {
  process(logits, V, history, n_history);
  std::fill(out, out + V, 0.0f);
  if (!p_.do_sample) {
    out[argmax(logits, V)] = 1.0f;
    return;
  }
  float mx = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < V; i++) mx = std::max(mx, logits[i]);
  PYLLAMA_CHECK(mx > -std::numeric_limits<float>::infinity(), ValueError,
                "sampling: every token is masked (logit -inf), so there is nothing to sample");
  PYLLAMA_CHECK(std::isfinite(mx), ValueError, "sampling: the logits hold NaN or +inf; the model's output is broken");
  double sum = 0;
  for (size_t i = 0; i < V; i++) sum += std::exp(static_cast<double>(logits[i]) - mx);
  for (size_t i = 0; i < V; i++) out[i] = static_cast<float>(std::exp(static_cast<double>(logits[i]) - mx) / sum);
}

int32_t Sampler::sample(float* logits, size_t V, const int32_t* history, size_t n_history) {
  process(logits, V, history, n_history);
  if (!p_.do_sample) return static_cast<int32_t>(argmax(logits, V));
  float mx = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < V; i++) mx = std::max(mx, logits[i]);
  PYLLAMA_CHECK(mx > -std::numeric_limits<float>::infinity(), ValueError,
                "sampling: every token is masked (logit -inf), so there is nothing to sample");
  PYLLAMA_CHECK(std::isfinite(mx), ValueError, "sampling: the logits hold NaN or +inf; the model's output is broken");
  work_.resize(V);
  double sum = 0;
  for (size_t i = 0; i < V; i++) sum += work_[i] = std::exp(static_cast<double>(logits[i]) - mx);
  double u = next_uniform() * sum, cum = 0;
  size_t last = 0;
  for (size_t i = 0; i < V; i++) {
    if (work_[i] <= 0) continue;
    last = i;
    cum += work_[i];
    if (cum > u) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(last);  // u * sum rounded up to the total
}

std::vector<int32_t> generate_tokens(Model& model, const std::vector<int32_t>& prompt, const SamplingParams& params,
                                     const std::function<bool(int32_t)>& on_token, StopReason* reason) {
  Sampler sampler(params);
  const LlamaConfig& c = model.config();
  const int V = c.vocab_size, max_pos = c.max_position_embeddings;
  PYLLAMA_CHECK(!prompt.empty(), ValueError, "generate: the prompt is empty; it needs at least one token");
  PYLLAMA_CHECK(static_cast<int64_t>(prompt.size()) <= max_pos, ValueError,
                "generate: the prompt has " << prompt.size() << " tokens, longer than the model's context "
                << "(max_position_embeddings = " << max_pos << ")");
  for (size_t i = 0; i < prompt.size(); i++)
    PYLLAMA_CHECK(prompt[i] >= 0 && prompt[i] < V, ValueError,
                  "generate: prompt token " << i << " is " << prompt[i] << ", outside the vocabulary [0, " << V << ")");
  StopReason why = StopReason::max_new_tokens;
  std::vector<int32_t> seq = prompt, out;
  const int n_prompt = static_cast<int>(prompt.size());
  const int max_len = static_cast<int>(std::min<int64_t>(max_pos, int64_t(n_prompt) + params.max_new_tokens));
  if (params.max_new_tokens > 0) {
    model.kv_reset(1, std::max(max_len, n_prompt));
    int32_t slot = 0, pos = 0;
    Tensor slots = Tensor::wrap(&slot, {1}, DType::int32, nullptr), start = Tensor::wrap(&pos, {1}, DType::int32, nullptr);
    Tensor lg = model.kv_forward(Tensor::wrap(seq.data(), {1, n_prompt}, DType::int32, nullptr), slots, start, true);
    const float* logits = lg.data<float>();
    std::vector<float> row(V);
    pos = n_prompt;
    while (true) {
      if (pos >= max_pos) {
        why = StopReason::max_context;
        break;
      }
      std::copy(logits, logits + V, row.begin());
      int32_t tok = sampler.sample(row.data(), V, seq.data(), seq.size());
      out.push_back(tok);
      seq.push_back(tok);
      if (on_token && !on_token(tok)) {
        why = StopReason::callback;
        break;
      }
      if (std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), tok) != params.stop_token_ids.end()) {
        why = StopReason::stop_token;
        break;
      }
      if (static_cast<int>(out.size()) >= params.max_new_tokens) break;
      lg = model.kv_forward(Tensor::wrap(&tok, {1, 1}, DType::int32, nullptr), slots, start, true);
      logits = lg.data<float>();
      pos++;
    }
  }
  if (reason) *reason = why;
  return out;
}

}  // namespace pyllama
