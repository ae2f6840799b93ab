// generate.cpp — a C++ program that links pyllama_core without Python: load a
// Hugging Face–format checkpoint and greedy-decode a few tokens.
//
//   pyllama_generate CHECKPOINT_DIR [-n 16] TOKEN_ID...     # prints the new token ids
//   pyllama_generate --selftest                              # save, load and decode a random model (CTest)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backends.h"
#include "checkpoint.h"
#include "model.h"

using namespace pyllama;

static int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

// Greedy decoding over the KV cache: prefill the prompt, then one token per step.
static std::vector<int32_t> greedy(Model& m, const std::vector<int32_t>& prompt, int n_new) {
  int max_len = std::min((int)prompt.size() + n_new, m.config().max_position_embeddings);
  m.kv_reset(1, max_len);
  int32_t slot = 0, pos = 0;
  // Tensors over our own memory (no copy): the model reads pos at each call
  const Tensor slots = Tensor::wrap(&slot, {1}, DType::int32, nullptr);
  const Tensor start = Tensor::wrap(&pos, {1}, DType::int32, nullptr);
  std::vector<int32_t> ids = prompt;
  Tensor lg = m.kv_forward(Tensor::wrap(ids.data(), {1, (int64_t)ids.size()}, DType::int32, nullptr), slots, start);
  const float* logits = lg.data<float>();
  std::vector<int32_t> out;
  pos = (int32_t)prompt.size();
  while ((int)out.size() < n_new && pos < max_len) {
    int32_t tok = argmax(logits, m.config().vocab_size);
    out.push_back(tok);
    if ((int)out.size() == n_new || pos >= max_len) break;
    lg = m.kv_forward(Tensor::wrap(&tok, {1, 1}, DType::int32, nullptr), slots, start);
    logits = lg.data<float>();
    pos++;
  }
  return out;
}

static int selftest() {
  LlamaConfig c;
  c.vocab_size = 61; c.hidden_size = 32; c.intermediate_size = 48; c.num_hidden_layers = 2;
  c.num_attention_heads = 4; c.num_key_value_heads = 2; c.max_position_embeddings = 64;
  LlamaModel m(c);
  m.init_weights(42);
  std::string dir = "pyllama_selftest_ckpt";
  save_pretrained(m, dir);
  auto loaded = load_pretrained(dir);
  const Tensor back = loaded->parameters_copy();
  if (std::memcmp(back.raw(), m.params(), m.num_parameters() * sizeof(float)) != 0) {
    std::fprintf(stderr, "selftest: loaded weights differ from saved weights\n");
    return 1;
  }
  std::vector<int32_t> prompt = {1, 7, 3, 12};
  std::vector<int32_t> gen = greedy(*loaded, prompt, 8);
  // The cached steps must pick the same tokens as the full forward pass over the whole sequence.
  std::vector<int32_t> seq = prompt;
  for (int step = 0; step < 8; step++) {
    m.forward(Tensor::wrap(seq.data(), {1, (int64_t)seq.size()}, DType::int32, nullptr));
    int tok = argmax(m.logits_data() + (seq.size() - 1) * c.vocab_size, c.vocab_size);
    if (tok != gen[step]) {
      std::fprintf(stderr, "selftest: step %d: cached decode chose %d, full forward %d\n", step, gen[step], tok);
      return 1;
    }
    seq.push_back(tok);
  }
  std::printf("selftest ok: generated");
  for (int t : gen) std::printf(" %d", t);
  std::printf("\n");
  try {
    load_pretrained("no-such-dir");
    std::fprintf(stderr, "selftest: loading a missing folder did not throw\n");
    return 1;
  } catch (const std::exception& e) {
    std::printf("missing folder -> %s\n", e.what());
  }
  return 0;
}

int main(int argc, char** argv) {
  register_backends();  // cpu (and cuda when compiled in) for load_pretrained
  if (argc >= 2 && std::strcmp(argv[1], "--selftest") == 0) return selftest();
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [-n N] TOKEN_ID...\n       %s --selftest\n", argv[0], argv[0]);
    return 2;
  }
  int n_new = 16;
  std::vector<int32_t> prompt;
  for (int i = 2; i < argc; i++) {
    if (std::strcmp(argv[i], "-n") == 0 && i + 1 < argc) n_new = std::atoi(argv[++i]);
    else prompt.push_back((int32_t)std::atoi(argv[i]));
  }
  try {
    auto model = load_pretrained(argv[1]);
    for (int32_t t : greedy(*model, prompt, n_new)) std::printf("%d ", t);
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
