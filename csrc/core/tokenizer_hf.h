// tokenizer_hf.h — the tokenizers that real models ship, read from a Hugging Face
// tokenizer.json and run as the `tokenizers` library runs them: added tokens, normalizer,
// pre-tokenizer, model (BPE byte-level or with byte fallback, WordPiece, WordLevel, Unigram),
// post-processor, decoder. A part the file names that is not implemented is refused by name
// (ValueError) when the file is read, never skipped.
//
//   std::string text = read_file("tokenizer.json");
//   pyllama::HfTokenizer tok(text);
//   std::vector<uint32_t> ids = tok.encode("Hello world", /*add_special_tokens=*/true);  // {128000, 9906, 1917}
//   std::string back = tok.decode(ids_as_int64, /*skip_special_tokens=*/true);            // "Hello world"
//
// Text is UTF-8. Errors throw the types in common.h; nothing aborts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace pyllama {

class Json;

// One entry of tokenizer.json's "added_tokens" (the flags as `tokenizers` defines them).
struct HfAddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = false;      // skipped by decode(skip_special_tokens=true)
  bool lstrip = false;       // the match takes the whitespace before it
  bool rstrip = false;       // the match takes the whitespace after it
  bool normalized = false;   // matched in the normalized text (else in the raw text)
  bool single_word = false;  // only matched when not inside a word
};

// A Unigram vocabulary entry (SentencePiece .model files and tokenizer.json "Unigram").
struct UnigramPiece {
  std::string piece;
  double score = 0;
};

class HfTokenizer {
 public:
  // Parses tokenizer.json text. Throws ValueError naming the first unsupported or malformed part.
  explicit HfTokenizer(const std::string& json_text);
  ~HfTokenizer();
  HfTokenizer(const HfTokenizer&) = delete;
  HfTokenizer& operator=(const HfTokenizer&) = delete;

  // Ids of text: added tokens, normalizer, pre-tokenizer, model; with add_special_tokens the
  // post-processor's template (BOS, CLS/SEP, ...) too. allowed_special: when given, only the special
  // added tokens with these ids are recognised in the text (the others are text); null: all of them.
  std::vector<uint32_t> encode(std::string_view text, bool add_special_tokens,
                               const std::vector<uint32_t>* allowed_special = nullptr) const;
  // The same ids appended to out (a batch in one buffer); on an exception out is as it was.
  void encode_into(std::string_view text, bool add_special_tokens, std::vector<uint32_t>& out,
                   const std::vector<uint32_t>* allowed_special = nullptr) const;
  // The pieces the model receives (after normalization and pre-tokenization), for inspection.
  std::vector<std::string> pre_tokenize(std::string_view text) const;
  // The decoder's text of ids. Throws IndexError naming an id that has no token.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const;

  size_t vocab_size() const { return id_to_token_.size(); }  // largest id + 1
  // Id of a token string (model vocabulary or added token), or -1.
  int64_t token_to_id(std::string_view token) const;
  // The token string of an id ("" for an id no token has); throws IndexError past the end.
  const std::string& id_to_token(uint32_t id) const;
  const std::vector<HfAddedToken>& added_tokens() const { return added_; }
  bool is_special(uint32_t id) const;
  const std::string& model_type() const { return model_type_; }
  // The post-processor's special-token ids placed before / after a single sequence.
  const std::vector<uint32_t>& prefix_ids() const { return prefix_; }
  const std::vector<uint32_t>& suffix_ids() const { return suffix_; }
  // Replaces the single-sequence template (transformers' add_bos_token / add_eos_token policy).
  void set_template(std::vector<uint32_t> prefix, std::vector<uint32_t> suffix) {
    prefix_ = std::move(prefix);
    suffix_ = std::move(suffix);
  }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::string model_type_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, uint32_t> token_to_id_;
  std::vector<HfAddedToken> added_;
  std::vector<uint8_t> special_;  // id -> 1 when an added special token
  std::vector<uint32_t> prefix_, suffix_;
};

// A character-level BPE learnt from counted words (tokenizer_hf_train.cpp), as `tokenizers`' BpeTrainer
// and WordPieceTrainer learn one: the vocabulary starts with the specials and every character seen
// (characters after a word's first carry `prefix`, e.g. "##"), then the most frequent adjacent pair
// (at least min_frequency; ties: the smaller pair text) is merged until vocab_size tokens or no pair
// is left. The merged token drops the right part's prefix ("un" + "##der" -> "under").
//
//   CharBpeResult r = train_char_bpe({{"lower", 3}, {"lowest", 2}}, 40, "##", {"[UNK]"}, 1);
struct CharBpeResult {
  std::vector<std::string> vocab;                            // id -> token
  std::vector<std::pair<std::string, std::string>> merges;  // in the order learnt
};
CharBpeResult train_char_bpe(const std::vector<std::pair<std::string, uint64_t>>& words, size_t vocab_size,
                             const std::string& prefix, const std::vector<std::string>& specials,
                             uint64_t min_frequency);

// A Unigram vocabulary learnt from counted words (tokenizer_hf_train.cpp), SentencePiece's way: seed
// pieces (every substring up to max_piece_chars, the seed_size most frequent by frequency x length, and
// every character), then rounds of EM (expected counts by forward-backward over each word's lattice,
// digamma M-step, pieces below half an expected use dropped) each followed by pruning to 3/4, keeping
// the pieces whose removal loses the most likelihood, until vocab_size pieces (characters always kept).
// Returns (piece, log probability), best first. The caller adds <unk> and other specials.
std::vector<UnigramPiece> train_unigram(const std::vector<std::pair<std::string, uint64_t>>& words, size_t vocab_size,
                                        size_t max_piece_chars, size_t seed_size);

// SentencePiece .model (protobuf ModelProto) → the equivalent tokenizer.json text
// (sentencepiece_model.cpp): Unigram or BPE (merges as transformers' converter makes them), byte
// fallback, SentencePiece's whitespace rules, the control pieces as special tokens, BOS first as in
// Llama. Read without a protobuf library. Throws ValueError naming the problem for a file that is not
// a SentencePiece model or that uses an option not supported (a precompiled normalization map).
std::string sentencepiece_to_hf_json(std::string_view model_bytes);

}  // namespace pyllama
