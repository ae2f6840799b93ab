/* generate_c.c — a C99 program on the C API (pyllama.h, libpyllama_c): load a model folder and
 * its tokenizer, optionally fine-tune a few AdamW steps on the prompt, generate text, save.
 *
 *   pyllama_generate_c MODEL_DIR PROMPT [-n N] [--sample] [--seed S] [--train-steps K] [--save DIR]
 *
 * Built out of tree against an installed pyllama by tests/test_embedding.py (examples/CMakeLists.txt).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyllama.h"

static int check(pyllama_status s, const char* what) {
  if (s == PYLLAMA_OK) return 0;
  fprintf(stderr, "error: %s: %s: %s\n", what, pyllama_status_name(s), pyllama_last_error());
  return 1;
}

/* streams each new token's bytes to stdout */
static int on_token(int32_t token, void* user_data) {
  pyllama_tokenizer* tok = (pyllama_tokenizer*)user_data;
  char buf[256];
  size_t n = 0;
  if (pyllama_detokenize(tok, &token, 1, buf, sizeof buf, &n) == PYLLAMA_OK) fwrite(buf, 1, n, stdout);
  fflush(stdout);
  return 0; /* go on */
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL_DIR PROMPT [-n N] [--sample] [--seed S] [--train-steps K] [--save DIR]\n", argv[0]);
    return 2;
  }
  if (pyllama_abi_version() != PYLLAMA_ABI_VERSION) {
    fprintf(stderr, "error: libpyllama_c has ABI %d, this program was built for %d\n", pyllama_abi_version(),
            PYLLAMA_ABI_VERSION);
    return 1;
  }
  const char* dir = argv[1];
  const char* prompt = argv[2];
  const char* save_dir = NULL;
  int train_steps = 0;
  pyllama_generate_params gp = pyllama_generate_default_params();
  gp.max_new_tokens = 32;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "-n") && i + 1 < argc) gp.max_new_tokens = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--sample")) gp.do_sample = 1, gp.temperature = 0.8f, gp.top_p = 0.95f;
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) gp.seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--train-steps") && i + 1 < argc) train_steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--save") && i + 1 < argc) save_dir = argv[++i];
    else {
      fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 2;
    }
  }

  pyllama_model* model = NULL;
  pyllama_tokenizer* tok = NULL;
  int32_t* ids = NULL;
  int32_t* out = NULL;
  int rc = 1;
  size_t n_ids = 0, n_out = 0;
  if (check(pyllama_model_load(dir, "cpu", &model), "loading the model")) goto done;
  if (check(pyllama_tokenizer_load(dir, &tok), "loading the tokenizer")) goto done;

  /* tokenize: ask for the size first, then fill */
  if (pyllama_tokenize(tok, prompt, strlen(prompt), 0, NULL, 0, &n_ids) != PYLLAMA_ERR_BUFFER_TOO_SMALL && n_ids) {
    fprintf(stderr, "error: tokenize did not report the size: %s\n", pyllama_last_error());
    goto done;
  }
  ids = (int32_t*)malloc((n_ids + 1) * sizeof(int32_t));
  if (check(pyllama_tokenize(tok, prompt, strlen(prompt), 0, ids, n_ids, &n_ids), "tokenizing")) goto done;

  if (train_steps > 0) {
    pyllama_train_params tp = pyllama_train_default_params();
    tp.lr = 1e-3f;
    for (int s = 0; s < train_steps; s++) {
      float loss;
      double norm;
      if (check(pyllama_train_step(model, ids, ids, 1, (int32_t)n_ids, &tp, &loss, &norm), "training")) goto done;
      printf("step %d loss %.4f grad_norm %.4f\n", s + 1, loss, norm);
    }
  }

  out = (int32_t*)malloc((size_t)(gp.max_new_tokens > 0 ? gp.max_new_tokens : 1) * sizeof(int32_t));
  fwrite(prompt, 1, strlen(prompt), stdout);
  if (check(pyllama_generate(model, ids, n_ids, &gp, on_token, tok, out, (size_t)gp.max_new_tokens, &n_out),
            "generating"))
    goto done;
  printf("\n[ids]");
  for (size_t i = 0; i < n_out; i++) printf(" %d", out[i]);
  printf("\n");
  if (save_dir && check(pyllama_model_save(model, save_dir), "saving")) goto done;
  rc = 0;
done:
  free(ids);
  free(out);
  pyllama_tokenizer_free(tok);
  pyllama_model_free(model);
  return rc;
}
