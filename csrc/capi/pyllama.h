/* pyllama.h — the C API of pyllama: embed the LLaMA core in C programs and in any language
 * with a C FFI (ctypes, cffi, Rust, Go, C#, ...). Link libpyllama_c (CMake: pyllama::c).
 *
 *   pyllama_model* m;  pyllama_tokenizer* tok;
 *   if (pyllama_model_load("runs/shakespeare/latest", "cpu", &m) != PYLLAMA_OK ||
 *       pyllama_tokenizer_load("runs/shakespeare/latest", &tok) != PYLLAMA_OK) {
 *     fprintf(stderr, "%s\n", pyllama_last_error());  return 1;
 *   }
 *   int32_t ids[256];  size_t n;
 *   pyllama_tokenize(tok, "ROMEO:", 6, 0, ids, 256, &n);
 *   pyllama_generate_params p = pyllama_generate_default_params();
 *   p.max_new_tokens = 40;  p.do_sample = 1;  p.temperature = 0.8f;  p.top_p = 0.95f;
 *   int32_t out[40];  size_t n_out;
 *   pyllama_generate(m, ids, n, &p, on_token, tok, out, 40, &n_out);
 *   pyllama_tokenizer_free(tok);  pyllama_model_free(m);
 *
 * Rules:
 * - Every fallible function returns a pyllama_status; PYLLAMA_OK is 0. After a failure,
 *   pyllama_last_error() is a message naming what was wrong (per thread; valid until the
 *   thread's next failing call). No C++ exception crosses this boundary; nothing aborts.
 * - Handles are opaque; each _load/_new has its _free (NULL is accepted and ignored).
 *   A handle is used by one thread at a time.
 * - Output arrays are (pointer, capacity) pairs with the count written to *n_out. When the
 *   capacity is too small the call returns PYLLAMA_ERR_BUFFER_TOO_SMALL and *n_out holds the
 *   count needed (call again with a larger buffer); pyllama_generate instead keeps generating
 *   only up to its capacity.
 * - Parameter structs start with struct_size = sizeof(struct): get them from the _default_params
 *   functions, so a program built against an older header keeps working with a newer library.
 * - pyllama_abi_version() is PYLLAMA_ABI_VERSION of the library; compare it with the header's.
 */
#ifndef PYLLAMA_H
#define PYLLAMA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PYLLAMA_API __declspec(dllexport)
#else
#define PYLLAMA_API __attribute__((visibility("default")))
#endif

/* Bumped on any incompatible change of a function, struct or enum below. */
#define PYLLAMA_ABI_VERSION 1

typedef enum pyllama_status {
  PYLLAMA_OK = 0,
  PYLLAMA_ERR_INVALID_ARGUMENT = 1, /* a bad value: NULL handle, out-of-range id, bad setting, bad file content */
  PYLLAMA_ERR_IO = 2,               /* a file is missing or cannot be read/written */
  PYLLAMA_ERR_OUT_OF_RANGE = 3,     /* an index outside its range */
  PYLLAMA_ERR_BACKEND = 4,          /* the device is unavailable (no GPU, CUDA library missing, not built) */
  PYLLAMA_ERR_BUFFER_TOO_SMALL = 5, /* *n_out holds the size needed */
  PYLLAMA_ERR_OUT_OF_MEMORY = 6,
  PYLLAMA_ERR_INTERNAL = 7          /* anything else; the message says what */
} pyllama_status;

typedef struct pyllama_model pyllama_model;
typedef struct pyllama_tokenizer pyllama_tokenizer;

/* ---- library */
PYLLAMA_API int pyllama_abi_version(void);
PYLLAMA_API const char* pyllama_version(void);          /* e.g. "0.1.0" */
PYLLAMA_API const char* pyllama_last_error(void);       /* "" when this thread had no failure */
PYLLAMA_API const char* pyllama_status_name(pyllama_status s);  /* "PYLLAMA_ERR_IO", ... */
/* What the library was built with, as JSON: {"version", "cuda", "cuda_archs", "cuda_available", "simd", ...} */
PYLLAMA_API const char* pyllama_build_info(void);

/* ---- models */
/* A Hugging Face folder (config.json + model.safetensors or shards) on device "cpu", "cuda" or "cuda:N"
 * (NULL: "cpu"). A device this build or machine lacks is PYLLAMA_ERR_BACKEND. */
PYLLAMA_API pyllama_status pyllama_model_load(const char* dir, const char* device, pyllama_model** out);
/* A fresh model of a config.json file, weights drawn from seed (as pyllama.Llama(config, seed)). */
PYLLAMA_API pyllama_status pyllama_model_new(const char* config_json_path, uint64_t seed, const char* device,
                                             pyllama_model** out);
PYLLAMA_API void pyllama_model_free(pyllama_model* model);
/* config.json + model.safetensors (float32), each written atomically (temp file + rename). */
PYLLAMA_API pyllama_status pyllama_model_save(const pyllama_model* model, const char* dir);
PYLLAMA_API int32_t pyllama_model_vocab_size(const pyllama_model* model);       /* -1 for NULL */
PYLLAMA_API int32_t pyllama_model_context_length(const pyllama_model* model);   /* max_position_embeddings */
PYLLAMA_API int64_t pyllama_model_num_parameters(const pyllama_model* model);
/* The eos token ids of the folder's generation_config.json or config.json (up to capacity). */
PYLLAMA_API pyllama_status pyllama_model_eos_token_ids(const pyllama_model* model, int32_t* ids, size_t capacity,
                                                       size_t* n_out);

/* ---- tokenizers */
/* The tokenizer of a model folder, or a file: pyllama's tokenizer.tiktoken (+ .json), a Hugging Face
 * tokenizer.json, or a SentencePiece tokenizer.model (pyllama's files win in a folder that has both).
 * pyllama_tokenize adds no template tokens (BOS): prepend them as the model's config says. */
PYLLAMA_API pyllama_status pyllama_tokenizer_load(const char* path, pyllama_tokenizer** out);
PYLLAMA_API void pyllama_tokenizer_free(pyllama_tokenizer* tok);
PYLLAMA_API int32_t pyllama_tokenizer_n_vocab(const pyllama_tokenizer* tok);  /* -1 for NULL */
/* UTF-8 text (len bytes) to ids. allow_special != 0: special-token text becomes its id;
 * 0: it is encoded as ordinary text. */
PYLLAMA_API pyllama_status pyllama_tokenize(const pyllama_tokenizer* tok, const char* text, size_t len,
                                            int allow_special, int32_t* ids, size_t capacity, size_t* n_out);
/* ids to bytes (not NUL-terminated; a token may end inside a UTF-8 character). */
PYLLAMA_API pyllama_status pyllama_detokenize(const pyllama_tokenizer* tok, const int32_t* ids, size_t n_ids,
                                              char* buf, size_t capacity, size_t* n_out);
/* The id of a special token's text (e.g. "<|endoftext|>"); PYLLAMA_ERR_INVALID_ARGUMENT when none. */
PYLLAMA_API pyllama_status pyllama_tokenizer_special_id(const pyllama_tokenizer* tok, const char* text,
                                                        int32_t* id);

/* ---- generation */
typedef struct pyllama_generate_params {
  size_t struct_size;          /* sizeof(pyllama_generate_params) */
  int32_t max_new_tokens;      /* default 64 */
  int32_t do_sample;           /* 0 (default): greedy; 1: sample */
  float temperature;           /* > 0, default 1 */
  int32_t top_k;               /* 0 (default): off */
  float top_p;                 /* (0, 1], default 1: off */
  float repetition_penalty;    /* > 0, default 1: off */
  uint64_t seed;               /* the sampler's generator (splitmix64), default 0 */
  const int32_t* stop_token_ids;  /* generation ends after one of these (it is returned); */
  size_t n_stop_token_ids;        /* n = 0 and use_model_eos: the model's eos ids */
  int32_t use_model_eos;          /* default 1 */
} pyllama_generate_params;

PYLLAMA_API pyllama_generate_params pyllama_generate_default_params(void);

/* Called with each new token as it is chosen; return 0 to go on, non-zero to stop. */
typedef int (*pyllama_token_callback)(int32_t token, void* user_data);

/* Generates after prompt (one sequence, over a KV cache) until max_new_tokens, a stop token,
 * the model's context, capacity tokens, or the callback asks to stop. out (capacity ids) gets
 * the new tokens, *n_out their count. callback may be NULL; out may be NULL when capacity is 0
 * only if callback is set (then max_new_tokens alone bounds the run). */
PYLLAMA_API pyllama_status pyllama_generate(pyllama_model* model, const int32_t* prompt, size_t n_prompt,
                                            const pyllama_generate_params* params, pyllama_token_callback callback,
                                            void* user_data, int32_t* out, size_t capacity, size_t* n_out);

/* The distribution the sampler draws the next token from after `history` (vocab floats into
 * probs; greedy: one-hot), with logits (vocab floats) as the model's output. */
PYLLAMA_API pyllama_status pyllama_sampling_probs(const float* logits, size_t vocab, const int32_t* history,
                                                  size_t n_history, const pyllama_generate_params* params,
                                                  float* probs);

/* ---- training */
typedef struct pyllama_train_params {
  size_t struct_size;   /* sizeof(pyllama_train_params) */
  float lr;             /* default 3e-4 */
  float beta1, beta2;   /* default 0.9, 0.95 */
  float eps;            /* default 1e-8 */
  float weight_decay;   /* default 0.1: 2-D weights only (not the norms), as pyllama.AdamW */
  float max_grad_norm;  /* default 1.0; <= 0: no clipping */
} pyllama_train_params;

PYLLAMA_API pyllama_train_params pyllama_train_default_params(void);

/* Forward over ids (B, T) row-major. labels (B, T) aligned with ids (the model shifts them;
 * -100 ignored) or NULL. *loss (may be NULL) gets the mean loss (NaN without labels). */
PYLLAMA_API pyllama_status pyllama_model_forward(pyllama_model* model, const int32_t* ids, const int32_t* labels,
                                                 int32_t B, int32_t T, float* loss);
/* The last forward's logits (B, T, vocab) as float32. */
PYLLAMA_API pyllama_status pyllama_model_logits(const pyllama_model* model, float* out, size_t capacity,
                                                size_t* n_out);
/* grads += scale * d(last loss)/d(params). */
PYLLAMA_API pyllama_status pyllama_model_backward(pyllama_model* model, float scale);
PYLLAMA_API pyllama_status pyllama_model_zero_grad(pyllama_model* model);
/* torch's clip_grad_norm_: *norm (may be NULL) gets the global L2 norm before clipping. */
PYLLAMA_API pyllama_status pyllama_model_clip_grad_norm(pyllama_model* model, double max_norm, double* norm);
/* One AdamW step (torch.optim.AdamW; the model counts the steps and owns the moments). */
PYLLAMA_API pyllama_status pyllama_model_adamw_step(pyllama_model* model, const pyllama_train_params* params);
/* zero_grad, forward with labels, backward, clip (max_grad_norm), AdamW: one training step. */
PYLLAMA_API pyllama_status pyllama_train_step(pyllama_model* model, const int32_t* ids, const int32_t* labels,
                                              int32_t B, int32_t T, const pyllama_train_params* params,
                                              float* loss, double* grad_norm);
PYLLAMA_API int64_t pyllama_model_steps(const pyllama_model* model);  /* AdamW steps taken */

#ifdef __cplusplus
}
#endif

#endif /* PYLLAMA_H */
