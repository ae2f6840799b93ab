// chat.cpp — text in, text out: a C++ program on the installed core (pyllama::core), no Python.
// Loads a model folder and its tokenizer, then generates after each prompt, streaming the text.
//
//   pyllama_chat MODEL_DIR --prompt "ROMEO:" [-n 64] [--temperature 0.8] [--top-k 40] [--top-p 0.95]
//                [--repetition-penalty 1.1] [--seed 0] [--greedy]
//   pyllama_chat MODEL_DIR            # interactive: one prompt per line on stdin, an empty line ends
//
// Built in-tree (target pyllama_chat) and, by tests/test_embedding.py, out of tree against an
// installed pyllama (examples/CMakeLists.txt).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "backends.h"     // register_backends
#include "checkpoint.h"   // load_pretrained
#include "sampling.h"     // SamplingParams, generate_tokens
#include "tokenizer_dir.h"  // load_tokenizer

static void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s MODEL_DIR [--prompt TEXT] [-n N] [--greedy] [--temperature T] [--top-k K] "
               "[--top-p P] [--repetition-penalty R] [--seed S] [--device cpu|cuda]\n",
               argv0);
}

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    usage(argv[0]);
    return 2;
  }
  std::string dir = argv[1], device = "cpu", prompt;
  bool have_prompt = false;
  pyllama::SamplingParams p;
  p.do_sample = true;
  p.temperature = 0.8f;
  p.max_new_tokens = 64;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--prompt") prompt = value(), have_prompt = true;
    else if (a == "-n") p.max_new_tokens = std::atoi(value());
    else if (a == "--greedy") p.do_sample = false;
    else if (a == "--temperature") p.temperature = std::strtof(value(), nullptr);
    else if (a == "--top-k") p.top_k = std::atoi(value());
    else if (a == "--top-p") p.top_p = std::strtof(value(), nullptr);
    else if (a == "--repetition-penalty") p.repetition_penalty = std::strtof(value(), nullptr);
    else if (a == "--seed") p.seed = std::strtoull(value(), nullptr, 10);
    else if (a == "--device") device = value();
    else {
      usage(argv[0]);
      return 2;
    }
  }
  try {
    pyllama::register_backends();
    auto model = pyllama::load_pretrained(dir, device);
    auto tok = pyllama::load_tokenizer(dir);
    // stop at the tokenizer's end-of-text token when it has one
    for (const pyllama::SpecialToken& s : tok->specials())
      if (s.text == "<|endoftext|>" || s.text == "<|eot_id|>" || s.text == "</s>") p.stop_token_ids.push_back(s.id);
    auto run = [&](const std::string& text) {
      std::vector<uint32_t> enc = tok->encode_ordinary(text);
      std::vector<int32_t> ids(enc.begin(), enc.end());
      std::fwrite(text.data(), 1, text.size(), stdout);
      pyllama::generate_tokens(*model, ids, p, [&](int32_t t) {
        if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), t) == p.stop_token_ids.end()) {
          std::string_view b = tok->token_bytes(static_cast<uint32_t>(t));  // bytes: may split a UTF-8 char
          std::fwrite(b.data(), 1, b.size(), stdout);
          std::fflush(stdout);
        }
        return true;
      });
      std::fputc('\n', stdout);
    };
    if (have_prompt) {
      run(prompt);
    } else {
      std::string line;
      while (std::getline(std::cin, line) && !line.empty()) run(line);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
