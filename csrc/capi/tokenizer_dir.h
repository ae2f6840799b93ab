// tokenizer_dir.h — the tokenizer of a model folder, for native programs. The one place
// the C API and the examples load a tokenizer from, so another file format plugs in here.
//
//   std::unique_ptr<pyllama::Tokenizer> tok = pyllama::load_tokenizer("runs/shakespeare/latest");
//   std::vector<uint32_t> ids = tok->encode_ordinary("To be");
//
// Read: what pyllama writes into checkpoints (pyllama.Tokenizer.save): `tokenizer.tiktoken`
// (ranks) + `tokenizer.tiktoken.json` (pattern preset and special tokens), with load_tokenizer;
// and the files models ship, with load_hf_tokenizer: a Hugging Face `tokenizer.json`, or a
// SentencePiece `tokenizer.model` (run by the core's HfTokenizer, tokenizer_hf.h). `path` is the
// folder or the file itself. A folder with pyllama's files takes those.
#pragma once
#include <memory>
#include <string>

#include "tokenizer.h"
#include "tokenizer_hf.h"

namespace pyllama {

// IOError for a missing file, ValueError for a bad or unsupported one (the message says which).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
// The folder's (or file's) tokenizer.json / SentencePiece tokenizer.model, or null when `path`
// holds pyllama's own files (or neither): then load_tokenizer says what is missing.
std::unique_ptr<HfTokenizer> load_hf_tokenizer(const std::string& path);

}  // namespace pyllama
