// pyllama_c.cpp — the C API (pyllama.h) over the C++ core: handles own C++ objects, every
// entry point catches every exception and turns it into a status + a thread-local message.
#include "pyllama.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "backend.h"
#include "backends.h"
#include "checkpoint.h"
#include "common.h"
#include "json.h"
#include "sampling.h"
#include "tokenizer_dir.h"
#ifdef PYLLAMA_HAVE_CUDA
#include "cuda_device.h"  // CudaError: no GPU, a driver or CUDA library missing, a failed CUDA call
#endif

struct pyllama_model {
  std::unique_ptr<pyllama::Model> m;
  std::vector<pyllama::AdamWSegment> segs;
  std::vector<int32_t> eos;
  int64_t steps = 0;
};

struct pyllama_tokenizer {
  std::unique_ptr<pyllama::Tokenizer> t;      // pyllama's own files (tiktoken-style BPE), or
  std::unique_ptr<pyllama::HfTokenizer> hf;   // a tokenizer.json / SentencePiece model
};

namespace {

thread_local std::string g_last_error;

pyllama_status fail(pyllama_status s, const std::string& msg) {
  g_last_error = msg;
  return s;
}

// Runs f, mapping the core's exceptions to statuses. f returns a status itself.
template <class F>
pyllama_status guarded(const char* fn, F&& f) noexcept {
  try {
    return f();
  } catch (const pyllama::BackendUnavailable& e) {
    return fail(PYLLAMA_ERR_BACKEND, std::string(fn) + ": " + e.what());
#ifdef PYLLAMA_HAVE_CUDA
  } catch (const pyllama::CudaError& e) {
    return fail(PYLLAMA_ERR_BACKEND, std::string(fn) + ": " + e.what());
#endif
  } catch (const pyllama::IOError& e) {
    return fail(PYLLAMA_ERR_IO, std::string(fn) + ": " + e.what());
  } catch (const pyllama::IndexError& e) {
    return fail(PYLLAMA_ERR_OUT_OF_RANGE, std::string(fn) + ": " + e.what());
  } catch (const std::invalid_argument& e) {  // ValueError, TypeError
    return fail(PYLLAMA_ERR_INVALID_ARGUMENT, std::string(fn) + ": " + e.what());
  } catch (const std::bad_alloc&) {
    return fail(PYLLAMA_ERR_OUT_OF_MEMORY, std::string(fn) + ": out of memory");
  } catch (const std::exception& e) {
    return fail(PYLLAMA_ERR_INTERNAL, std::string(fn) + ": " + e.what());
  } catch (...) {
    return fail(PYLLAMA_ERR_INTERNAL, std::string(fn) + ": unknown error");
  }
}

#define PYLLAMA_C_REQUIRE(cond, fn, what)                                      \
  do {                                                                         \
    if (!(cond)) return fail(PYLLAMA_ERR_INVALID_ARGUMENT, std::string(fn) + ": " + (what)); \
  } while (0)

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// eos_token_id of a JSON file (an int or a list of ints), appended to out; false when absent.
bool read_eos(const std::string& path, std::vector<int32_t>& out) {
  if (!file_exists(path)) return false;
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  pyllama::Json j;
  try {
    j = pyllama::Json::parse(ss.str());
  } catch (const pyllama::ValueError& e) {
    throw pyllama::ValueError("'" + path + "' is not valid JSON: " + e.what());
  }
  if (j.kind() != pyllama::Json::Kind::object || !j.has("eos_token_id") || j["eos_token_id"].is_null()) return false;
  const pyllama::Json& e = j["eos_token_id"];
  if (e.kind() == pyllama::Json::Kind::number) {
    out.push_back(static_cast<int32_t>(e.as_int()));
  } else if (e.kind() == pyllama::Json::Kind::array) {
    for (size_t i = 0; i < e.size(); i++) out.push_back(static_cast<int32_t>(e.at(i).as_int()));
  } else {
    throw pyllama::ValueError("'" + path + "': eos_token_id must be an integer or a list of integers");
  }
  return true;
}

void init_handle(pyllama_model* h) {
  for (const pyllama::ParamInfo& p : h->m->param_infos())
    h->segs.push_back({static_cast<int64_t>(p.offset), static_cast<int64_t>(p.numel), p.shape.size() >= 2});
}

pyllama::AdamWHyper hyper_of(const pyllama_train_params* p) {
  pyllama::AdamWHyper h;
  h.lr = p->lr;
  h.beta1 = p->beta1;
  h.beta2 = p->beta2;
  h.eps = p->eps;
  h.weight_decay = p->weight_decay;
  return h;
}

pyllama_status check_train_params(const char* fn, const pyllama_train_params* p) {
  PYLLAMA_C_REQUIRE(p, fn, "params is NULL; use pyllama_train_default_params()");
  PYLLAMA_C_REQUIRE(p->struct_size >= sizeof(pyllama_train_params), fn,
                    "params->struct_size is " + std::to_string(p->struct_size) + ", expected " +
                        std::to_string(sizeof(pyllama_train_params)) + ": start from pyllama_train_default_params()");
  PYLLAMA_C_REQUIRE(std::isfinite(p->max_grad_norm), fn, "max_grad_norm must be finite (<= 0: no clipping)");
  return PYLLAMA_OK;
}

pyllama::SamplingParams sampling_of(const pyllama_generate_params* p, const pyllama_model* m) {
  PYLLAMA_CHECK(p->struct_size >= sizeof(pyllama_generate_params), pyllama::ValueError,
                "params->struct_size is " << p->struct_size << ", expected " << sizeof(pyllama_generate_params)
                << ": start from pyllama_generate_default_params()");
  pyllama::SamplingParams s;
  s.max_new_tokens = p->max_new_tokens;
  s.do_sample = p->do_sample != 0;
  s.temperature = p->temperature;
  s.top_k = p->top_k;
  s.top_p = p->top_p;
  s.repetition_penalty = p->repetition_penalty;
  s.seed = p->seed;
  PYLLAMA_CHECK(p->n_stop_token_ids == 0 || p->stop_token_ids, pyllama::ValueError,
                "stop_token_ids is NULL but n_stop_token_ids is " << p->n_stop_token_ids);
  s.stop_token_ids.assign(p->stop_token_ids, p->stop_token_ids + p->n_stop_token_ids);
  if (p->n_stop_token_ids == 0 && p->use_model_eos && m) s.stop_token_ids = m->eos;
  s.validate();
  return s;
}

template <class T>
pyllama_status copy_out(const char* fn, const T* src, size_t n, T* dst, size_t capacity, size_t* n_out) {
  PYLLAMA_C_REQUIRE(n_out, fn, "n_out is NULL");
  *n_out = n;
  if (n > capacity)
    return fail(PYLLAMA_ERR_BUFFER_TOO_SMALL, std::string(fn) + ": the output needs " + std::to_string(n) +
                                                  " elements, capacity is " + std::to_string(capacity));
  PYLLAMA_C_REQUIRE(dst || n == 0, fn, "the output buffer is NULL");
  if (n) std::memcpy(dst, src, n * sizeof(T));
  return PYLLAMA_OK;
}

}  // namespace

extern "C" {

int pyllama_abi_version(void) { return PYLLAMA_ABI_VERSION; }

const char* pyllama_version(void) { return PYLLAMA_VERSION; }

const char* pyllama_last_error(void) { return g_last_error.c_str(); }

const char* pyllama_status_name(pyllama_status s) {
  switch (s) {
    case PYLLAMA_OK: return "PYLLAMA_OK";
    case PYLLAMA_ERR_INVALID_ARGUMENT: return "PYLLAMA_ERR_INVALID_ARGUMENT";
    case PYLLAMA_ERR_IO: return "PYLLAMA_ERR_IO";
    case PYLLAMA_ERR_OUT_OF_RANGE: return "PYLLAMA_ERR_OUT_OF_RANGE";
    case PYLLAMA_ERR_BACKEND: return "PYLLAMA_ERR_BACKEND";
    case PYLLAMA_ERR_BUFFER_TOO_SMALL: return "PYLLAMA_ERR_BUFFER_TOO_SMALL";
    case PYLLAMA_ERR_OUT_OF_MEMORY: return "PYLLAMA_ERR_OUT_OF_MEMORY";
    case PYLLAMA_ERR_INTERNAL: return "PYLLAMA_ERR_INTERNAL";
  }
  return "PYLLAMA_ERR_UNKNOWN_STATUS";
}

const char* pyllama_build_info(void) {
  static thread_local std::string s;
  try {
    pyllama::BuildInfo bi = pyllama::build_info();
    pyllama::Json j = pyllama::Json::object();
    j.set("version", pyllama::Json::str(bi.version));
    j.set("abi_version", pyllama::Json::number(PYLLAMA_ABI_VERSION));
    j.set("cuda", pyllama::Json::boolean(bi.cuda));
    j.set("cuda_archs", pyllama::Json::str(bi.cuda_archs));
    j.set("cuda_available", pyllama::Json::boolean(bi.cuda_available));
    j.set("simd", pyllama::Json::str(bi.simd));
    j.set("openmp", pyllama::Json::boolean(bi.openmp));
    j.set("threads", pyllama::Json::number(bi.threads));
    s = j.dump();
  } catch (...) {
    s = "{}";
  }
  return s.c_str();
}

// ---------------------------------------------------------------- models
pyllama_status pyllama_model_load(const char* dir, const char* device, pyllama_model** out) {
  const char* fn = "pyllama_model_load";
  PYLLAMA_C_REQUIRE(out, fn, "out is NULL");
  *out = nullptr;
  PYLLAMA_C_REQUIRE(dir, fn, "dir is NULL");
  return guarded(fn, [&] {
    pyllama::register_backends();
    auto h = std::make_unique<pyllama_model>();
    h->m = pyllama::load_pretrained(dir, device ? device : "cpu");
    std::string d(dir);
    if (!read_eos(d + "/generation_config.json", h->eos)) read_eos(d + "/config.json", h->eos);
    init_handle(h.get());
    *out = h.release();
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_model_new(const char* config_json_path, uint64_t seed, const char* device,
                                 pyllama_model** out) {
  const char* fn = "pyllama_model_new";
  PYLLAMA_C_REQUIRE(out, fn, "out is NULL");
  *out = nullptr;
  PYLLAMA_C_REQUIRE(config_json_path, fn, "config_json_path is NULL");
  return guarded(fn, [&] {
    pyllama::register_backends();
    pyllama::LlamaConfig cfg = pyllama::load_config(config_json_path);
    // weights drawn on the host (the same values on every device), then moved
    auto cpu = pyllama::make_model(cfg, "cpu");
    cpu->init_weights(seed);
    auto h = std::make_unique<pyllama_model>();
    std::string dev = device ? device : "cpu";
    h->m = dev == "cpu" ? std::move(cpu) : pyllama::move_model(*cpu, dev);
    read_eos(config_json_path, h->eos);
    init_handle(h.get());
    *out = h.release();
    return PYLLAMA_OK;
  });
}

void pyllama_model_free(pyllama_model* model) { delete model; }

pyllama_status pyllama_model_save(const pyllama_model* model, const char* dir) {
  const char* fn = "pyllama_model_save";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  PYLLAMA_C_REQUIRE(dir, fn, "dir is NULL");
  return guarded(fn, [&] {
    pyllama::save_pretrained(*model->m, dir);
    return PYLLAMA_OK;
  });
}

int32_t pyllama_model_vocab_size(const pyllama_model* model) { return model ? model->m->config().vocab_size : -1; }

int32_t pyllama_model_context_length(const pyllama_model* model) {
  return model ? model->m->config().max_position_embeddings : -1;
}

int64_t pyllama_model_num_parameters(const pyllama_model* model) {
  return model ? static_cast<int64_t>(model->m->num_parameters()) : -1;
}

pyllama_status pyllama_model_eos_token_ids(const pyllama_model* model, int32_t* ids, size_t capacity, size_t* n_out) {
  const char* fn = "pyllama_model_eos_token_ids";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  return copy_out(fn, model->eos.data(), model->eos.size(), ids, capacity, n_out);
}

// ---------------------------------------------------------------- tokenizers
pyllama_status pyllama_tokenizer_load(const char* path, pyllama_tokenizer** out) {
  const char* fn = "pyllama_tokenizer_load";
  PYLLAMA_C_REQUIRE(out, fn, "out is NULL");
  *out = nullptr;
  PYLLAMA_C_REQUIRE(path, fn, "path is NULL");
  return guarded(fn, [&] {
    auto h = std::make_unique<pyllama_tokenizer>();
    h->hf = pyllama::load_hf_tokenizer(path);
    if (!h->hf) h->t = pyllama::load_tokenizer(path);
    *out = h.release();
    return PYLLAMA_OK;
  });
}

void pyllama_tokenizer_free(pyllama_tokenizer* tok) { delete tok; }

int32_t pyllama_tokenizer_n_vocab(const pyllama_tokenizer* tok) {
  if (!tok) return -1;
  return static_cast<int32_t>(tok->hf ? tok->hf->vocab_size() : tok->t->n_vocab());
}

pyllama_status pyllama_tokenize(const pyllama_tokenizer* tok, const char* text, size_t len, int allow_special,
                                int32_t* ids, size_t capacity, size_t* n_out) {
  const char* fn = "pyllama_tokenize";
  PYLLAMA_C_REQUIRE(tok, fn, "tok is NULL");
  PYLLAMA_C_REQUIRE(text || len == 0, fn, "text is NULL");
  return guarded(fn, [&] {
    std::string_view sv(text ? text : "", len);
    std::vector<uint32_t> enc;
    if (tok->hf) {  // the text's special tokens recognised or not; no template tokens (BOS) added
      const std::vector<uint32_t> none;
      enc = tok->hf->encode(sv, false, allow_special ? nullptr : &none);
    } else if (allow_special) {
      std::vector<uint32_t> all;
      for (const pyllama::SpecialToken& s : tok->t->specials()) all.push_back(s.id);
      enc = tok->t->encode(sv, all);
    } else {
      enc = tok->t->encode_ordinary(sv);
    }
    std::vector<int32_t> out(enc.begin(), enc.end());
    return copy_out(fn, out.data(), out.size(), ids, capacity, n_out);
  });
}

pyllama_status pyllama_detokenize(const pyllama_tokenizer* tok, const int32_t* ids, size_t n_ids, char* buf,
                                  size_t capacity, size_t* n_out) {
  const char* fn = "pyllama_detokenize";
  PYLLAMA_C_REQUIRE(tok, fn, "tok is NULL");
  PYLLAMA_C_REQUIRE(ids || n_ids == 0, fn, "ids is NULL");
  return guarded(fn, [&] {
    std::vector<int64_t> wide(ids, ids + n_ids);
    std::string bytes = tok->hf ? tok->hf->decode(wide, false) : tok->t->decode_bytes(wide.data(), wide.size());
    return copy_out(fn, bytes.data(), bytes.size(), buf, capacity, n_out);
  });
}

pyllama_status pyllama_tokenizer_special_id(const pyllama_tokenizer* tok, const char* text, int32_t* id) {
  const char* fn = "pyllama_tokenizer_special_id";
  PYLLAMA_C_REQUIRE(tok, fn, "tok is NULL");
  PYLLAMA_C_REQUIRE(text, fn, "text is NULL");
  PYLLAMA_C_REQUIRE(id, fn, "id is NULL");
  if (tok->hf) {
    for (const pyllama::HfAddedToken& a : tok->hf->added_tokens())
      if (a.content == text) {
        *id = static_cast<int32_t>(a.id);
        return PYLLAMA_OK;
      }
  } else {
    for (const pyllama::SpecialToken& s : tok->t->specials())
      if (s.text == text) {
        *id = static_cast<int32_t>(s.id);
        return PYLLAMA_OK;
      }
  }
  return fail(PYLLAMA_ERR_INVALID_ARGUMENT, std::string(fn) + ": '" + text + "' is not a special token of this tokenizer");
}

// ---------------------------------------------------------------- generation
pyllama_generate_params pyllama_generate_default_params(void) {
  pyllama_generate_params p;
  std::memset(&p, 0, sizeof(p));
  p.struct_size = sizeof(p);
  p.max_new_tokens = 64;
  p.do_sample = 0;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.repetition_penalty = 1.0f;
  p.seed = 0;
  p.stop_token_ids = nullptr;
  p.n_stop_token_ids = 0;
  p.use_model_eos = 1;
  return p;
}

pyllama_status pyllama_generate(pyllama_model* model, const int32_t* prompt, size_t n_prompt,
                                const pyllama_generate_params* params, pyllama_token_callback callback,
                                void* user_data, int32_t* out, size_t capacity, size_t* n_out) {
  const char* fn = "pyllama_generate";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  PYLLAMA_C_REQUIRE(prompt || n_prompt == 0, fn, "prompt is NULL");
  PYLLAMA_C_REQUIRE(params, fn, "params is NULL; use pyllama_generate_default_params()");
  PYLLAMA_C_REQUIRE(n_out, fn, "n_out is NULL");
  PYLLAMA_C_REQUIRE(out || capacity == 0, fn, "out is NULL with a capacity > 0");
  PYLLAMA_C_REQUIRE(capacity > 0 || callback, fn, "capacity is 0 and there is no callback: nothing would see the tokens");
  *n_out = 0;
  return guarded(fn, [&] {
    pyllama::SamplingParams s = sampling_of(params, model);
    if (out && static_cast<size_t>(s.max_new_tokens) > capacity) s.max_new_tokens = static_cast<int>(capacity);
    std::vector<int32_t> p(prompt, prompt + n_prompt);
    size_t n = 0;
    pyllama::generate_tokens(*model->m, p, s, [&](int32_t tok) {
      if (out) out[n] = tok;
      n++;
      *n_out = n;
      return !(callback && callback(tok, user_data) != 0);
    });
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_sampling_probs(const float* logits, size_t vocab, const int32_t* history, size_t n_history,
                                      const pyllama_generate_params* params, float* probs) {
  const char* fn = "pyllama_sampling_probs";
  PYLLAMA_C_REQUIRE(logits && probs, fn, "logits and probs must not be NULL");
  PYLLAMA_C_REQUIRE(history || n_history == 0, fn, "history is NULL");
  PYLLAMA_C_REQUIRE(params, fn, "params is NULL; use pyllama_generate_default_params()");
  return guarded(fn, [&] {
    pyllama::Sampler sampler(sampling_of(params, nullptr));
    std::vector<float> row(logits, logits + vocab);
    sampler.probs(row.data(), vocab, history, n_history, probs);
    return PYLLAMA_OK;
  });
}

// ---------------------------------------------------------------- training
pyllama_train_params pyllama_train_default_params(void) {
  pyllama_train_params p;
  std::memset(&p, 0, sizeof(p));
  p.struct_size = sizeof(p);
  p.lr = 3e-4f;
  p.beta1 = 0.9f;
  p.beta2 = 0.95f;
  p.eps = 1e-8f;
  p.weight_decay = 0.1f;
  p.max_grad_norm = 1.0f;
  return p;
}

pyllama_status pyllama_model_forward(pyllama_model* model, const int32_t* ids, const int32_t* labels, int32_t B,
                                     int32_t T, float* loss) {
  const char* fn = "pyllama_model_forward";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  PYLLAMA_C_REQUIRE(ids, fn, "ids is NULL");
  PYLLAMA_C_REQUIRE(B > 0 && T > 0, fn, "B and T must be > 0, got B=" + std::to_string(B) + " T=" + std::to_string(T));
  return guarded(fn, [&] {
    const int V = model->m->config().vocab_size;
    for (int64_t i = 0; i < int64_t(B) * T; i++) {
      PYLLAMA_CHECK(ids[i] >= 0 && ids[i] < V, pyllama::ValueError,
                    "ids[" << i << "] is " << ids[i] << ", outside the vocabulary [0, " << V << ")");
      PYLLAMA_CHECK(!labels || labels[i] == -100 || (labels[i] >= 0 && labels[i] < V), pyllama::ValueError,
                    "labels[" << i << "] is " << labels[i] << ": expected -100 (ignored) or an id in [0, " << V << ")");
    }
    const pyllama::Tensor t = pyllama::Tensor::wrap(const_cast<int32_t*>(ids), {B, T}, pyllama::DType::int32, nullptr);
    const pyllama::Tensor lab =
        labels ? pyllama::Tensor::wrap(const_cast<int32_t*>(labels), {B, T}, pyllama::DType::int32, nullptr)
               : pyllama::Tensor();
    float l = model->m->forward(t, lab);
    if (loss) *loss = l;
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_model_logits(const pyllama_model* model, float* out, size_t capacity, size_t* n_out) {
  const char* fn = "pyllama_model_logits";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  PYLLAMA_C_REQUIRE(n_out, fn, "n_out is NULL");
  return guarded(fn, [&] {
    const pyllama::Model& m = *model->m;
    PYLLAMA_CHECK(m.has_logits(), pyllama::ValueError,
                  "there are no logits: call pyllama_model_forward first (backward consumes them)");
    size_t n = size_t(m.last_B()) * m.last_T() * m.config().vocab_size;
    *n_out = n;
    if (n > capacity)
      return fail(PYLLAMA_ERR_BUFFER_TOO_SMALL, std::string(fn) + ": the logits need " + std::to_string(n) +
                                                    " floats, capacity is " + std::to_string(capacity));
    PYLLAMA_CHECK(out, pyllama::ValueError, "out is NULL");
    pyllama::Tensor dst = pyllama::Tensor::wrap(out, {m.last_B(), m.last_T(), (int64_t)m.config().vocab_size},
                                                pyllama::DType::float32, nullptr);
    m.logits_into(dst);
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_model_backward(pyllama_model* model, float scale) {
  const char* fn = "pyllama_model_backward";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  return guarded(fn, [&] {
    PYLLAMA_CHECK(model->m->has_logits(), pyllama::ValueError,
                  "backward needs a forward with labels first (call pyllama_model_forward with labels)");
    model->m->backward(scale);
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_model_zero_grad(pyllama_model* model) {
  const char* fn = "pyllama_model_zero_grad";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  return guarded(fn, [&] {
    model->m->zero_grad();
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_model_clip_grad_norm(pyllama_model* model, double max_norm, double* norm) {
  const char* fn = "pyllama_model_clip_grad_norm";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  PYLLAMA_C_REQUIRE(std::isfinite(max_norm) && max_norm > 0, fn,
                    "max_norm must be a finite number > 0, got " + std::to_string(max_norm));
  return guarded(fn, [&] {
    double n = model->m->clip_grad_norm(max_norm);
    if (norm) *norm = n;
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_model_adamw_step(pyllama_model* model, const pyllama_train_params* params) {
  const char* fn = "pyllama_model_adamw_step";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  pyllama_status st = check_train_params(fn, params);
  if (st != PYLLAMA_OK) return st;
  return guarded(fn, [&] {
    model->m->adamw_step(model->segs.data(), model->segs.size(), hyper_of(params), model->steps + 1);
    model->steps++;
    return PYLLAMA_OK;
  });
}

pyllama_status pyllama_train_step(pyllama_model* model, const int32_t* ids, const int32_t* labels, int32_t B,
                                  int32_t T, const pyllama_train_params* params, float* loss, double* grad_norm) {
  const char* fn = "pyllama_train_step";
  PYLLAMA_C_REQUIRE(model, fn, "model is NULL");
  PYLLAMA_C_REQUIRE(labels, fn, "labels is NULL: a training step needs labels (use ids for next-token training)");
  pyllama_status st = check_train_params(fn, params);
  if (st != PYLLAMA_OK) return st;
  if ((st = pyllama_model_zero_grad(model)) != PYLLAMA_OK) return st;
  float l = 0;
  if ((st = pyllama_model_forward(model, ids, labels, B, T, &l)) != PYLLAMA_OK) return st;
  if (!std::isfinite(l))
    return fail(PYLLAMA_ERR_INVALID_ARGUMENT,
                std::string(fn) + ": the loss is " + std::to_string(l) + " (every label -100, or the model diverged)");
  if ((st = pyllama_model_backward(model, 1.0f)) != PYLLAMA_OK) return st;
  double norm = std::numeric_limits<double>::quiet_NaN();
  st = params->max_grad_norm > 0 ? pyllama_model_clip_grad_norm(model, params->max_grad_norm, &norm)
                                 : guarded(fn, [&] {
                                     norm = model->m->grad_norm();
                                     return PYLLAMA_OK;
                                   });
  if (st != PYLLAMA_OK) return st;
  if ((st = pyllama_model_adamw_step(model, params)) != PYLLAMA_OK) return st;
  if (loss) *loss = l;
  if (grad_norm) *grad_norm = norm;
  return PYLLAMA_OK;
}

int64_t pyllama_model_steps(const pyllama_model* model) { return model ? model->steps : -1; }

}  // extern "C"
