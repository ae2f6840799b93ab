// pretokenize.h — splits text into pieces exactly as the regular expressions of the
// gpt2, cl100k (= llama3) and o200k presets do (as tiktoken's regex engine runs
// them), with hand-written scanners instead of a regex engine.
//
//   pyllama::PieceScanner s(pyllama::Pattern::cl100k, "Hello world!!\n");
//   std::string_view piece;
//   while (s.next(piece)) { ... }   // "Hello", " world", "!!\n"
//
// Text is UTF-8. A byte that does not start a valid UTF-8 sequence counts as one
// character of no category (like punctuation), so invalid input never fails here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pyllama {

enum class Pattern : uint8_t {
  gpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  cl100k,  // '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s
  o200k,   // see pattern_regex(Pattern::o200k)
};

// "gpt2", "cl100k", "llama3" (= cl100k), "o200k"; throws ValueError for other names.
Pattern pattern_from_name(const std::string& name);
const char* pattern_name(Pattern p);
// The regular expression the scanner implements, as tiktoken writes it.
const char* pattern_regex(Pattern p);
// True when `name` is one of the preset names above.
bool is_pattern_name(const std::string& name);

// One pass over a text; next() yields the pieces in order. They cover the text.
class PieceScanner {
 public:
  PieceScanner(Pattern p, std::string_view text) : p_(p), s_(reinterpret_cast<const uint8_t*>(text.data())), n_(text.size()) {}
  bool next(std::string_view& piece) {
    if (pos_ >= n_) return false;
    size_t end = p_ == Pattern::cl100k ? scan_cl100k(pos_) : p_ == Pattern::o200k ? scan_o200k(pos_) : scan_gpt2(pos_);
    piece = std::string_view(reinterpret_cast<const char*>(s_) + pos_, end - pos_);
    pos_ = end;
    return true;
  }

 private:
  size_t scan_gpt2(size_t i) const;
  size_t scan_cl100k(size_t i) const;
  size_t scan_o200k(size_t i) const;

  Pattern p_;
  const uint8_t* s_;
  size_t n_;
  size_t pos_ = 0;
};

}  // namespace pyllama
