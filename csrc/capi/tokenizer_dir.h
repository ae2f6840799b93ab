// tokenizer_dir.h — the tokenizer of a model folder, for native programs. The one place
// the C API and the examples load a tokenizer from, so another file format plugs in here.
//
//   std::unique_ptr<pyllama::Tokenizer> tok = pyllama::load_tokenizer("runs/shakespeare/latest");
//   std::vector<uint32_t> ids = tok->encode_ordinary("To be");
//
// Read today: what pyllama writes into checkpoints (pyllama.Tokenizer.save): `tokenizer.tiktoken`
// (ranks) + `tokenizer.tiktoken.json` (pattern preset and special tokens). `path` is the folder
// or the .tiktoken file itself. A folder with only a Hugging Face tokenizer.json is refused by
// name (not yet read natively).
#pragma once
#include <memory>
#include <string>

#include "tokenizer.h"

namespace pyllama {

// IOError for a missing file, ValueError for a bad or unsupported one (the message says which).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace pyllama
