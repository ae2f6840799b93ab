// Tokenizer core without Python: the preset scanners on edge cases, BPE by rank,
// the .tiktoken format and its errors, decode errors, training. Failures count.
#include <string>
#include <vector>

#include "pretokenize.h"
#include "test_util.h"
#include "tokenizer.h"

using namespace pyllama;

static std::vector<std::string> split(Pattern p, const std::string& text) {
  std::vector<std::string> out;
  PieceScanner s(p, text);
  std::string_view piece;
  while (s.next(piece)) out.emplace_back(piece);
  return out;
}

static std::vector<std::string> bytes_vocab() {
  std::vector<std::string> v;
  for (int b = 0; b < 256; b++) v.push_back(std::string(1, char(b)));
  return v;
}

int main() {
  using V = std::vector<std::string>;
  // --- gpt2: case-sensitive contractions, ' ?' joins a following class run.
  CHECK(split(Pattern::gpt2, "I'm here  now") == (V{"I", "'m", " here", " ", " now"}));
  CHECK(split(Pattern::gpt2, "DON'T") == (V{"DON", "'", "T"}));
  CHECK(split(Pattern::gpt2, "abc123!! \n") == (V{"abc", "123", "!!", " \n"}));
  // --- cl100k: case-insensitive contractions, digits in threes, newline rules.
  CHECK(split(Pattern::cl100k, "DON'T") == (V{"DON", "'T"}));
  CHECK(split(Pattern::cl100k, "1234567") == (V{"123", "456", "7"}));
  CHECK(split(Pattern::cl100k, "a  \n\n  b") == (V{"a", "  \n\n", " ", " b"}));
  CHECK(split(Pattern::cl100k, "x !!\n\ny   ") == (V{"x", " !!\n\n", "y", "   "}));
  CHECK(split(Pattern::cl100k, "'ſ") == (V{"'ſ"}));
  CHECK(split(Pattern::cl100k, "\thello") == (V{"\thello"}));
  // --- o200k: case classes split camel case; contractions are suffixes; marks.
  CHECK(split(Pattern::o200k, "HelloWORLDFoo") == (V{"Hello", "WORLDFoo"}));
  CHECK(split(Pattern::o200k, "they're HE'LL") == (V{"they're", " HE'LL"}));
  CHECK(split(Pattern::o200k, "a/b//\n/c") == (V{"a", "/b", "//\n/", "c"}));
  CHECK(split(Pattern::o200k, "\xcc\x81") == (V{"\xcc\x81"}));  // lone U+0301
  CHECK(split(Pattern::o200k, "x \n\n  ") == (V{"x", " \n\n", "  "}));
  // Invalid UTF-8 never fails: each bad byte is a character of no category.
  CHECK(split(Pattern::cl100k, "a\xff\xfe b") == (V{"a", "\xff\xfe", " b"}));
  CHECK_THROWS((pattern_from_name("cl200k")), ValueError);
  CHECK(pattern_from_name("llama3") == Pattern::cl100k);

  // --- BPE by rank: "ab" (256) before "bc" (257); "abc" (258) from "ab"+"c".
  V vocab = bytes_vocab();
  vocab.push_back("ab");
  vocab.push_back("bc");
  vocab.push_back("abc");
  Tokenizer tok(vocab, Pattern::gpt2, {{"<|end|>", 300}});
  CHECK(tok.n_vocab() == 301);
  CHECK(tok.encode_ordinary("abc") == (std::vector<uint32_t>{258}));
  CHECK(tok.encode_ordinary("abcb") == (std::vector<uint32_t>{258, 'b'}));
  CHECK(tok.encode_ordinary("xbc") == (std::vector<uint32_t>{'x', 257}));
  std::string long_piece(1000, 'a');
  long_piece += "bc";
  std::vector<uint32_t> ids = tok.encode_ordinary(long_piece);  // heap path
  CHECK(ids.size() == 1000 && ids.back() == 258);  // 999 x "a", then "ab" (lowest rank) + "c"
  CHECK(tok.encode("a<|end|>b", {300}) == (std::vector<uint32_t>{'a', 300, 'b'}));
  CHECK(tok.encode_ordinary("a<|end|>b").size() == 9);  // special text as bytes
  CHECK(tok.decode_bytes(ids.data(), ids.size()) == long_piece);
  uint32_t bad[] = {1, 299};
  CHECK_THROWS((tok.decode_bytes(bad, 2)), IndexError);
  int64_t neg[] = {-1};
  CHECK_THROWS((tok.decode_bytes(neg, 1)), IndexError);
  auto batch = tok.encode_batch({"abc", "xbc", "a<|end|>"}, {300}, 2);
  CHECK(batch.size() == 3 && batch[2] == (std::vector<uint32_t>{'a', 300}));

  // --- .tiktoken round trip and errors.
  std::string file = tok.to_tiktoken();
  CHECK(parse_tiktoken(file) == vocab);
  CHECK_THROWS((parse_tiktoken("YQ== 0\nYQ== 1\n")), ValueError);     // duplicate token
  CHECK_THROWS((parse_tiktoken("YQ== 0\nYg== 0\n")), ValueError);     // duplicate rank
  CHECK_THROWS((parse_tiktoken("YQ== 0\nYg== 2\n")), ValueError);     // gap
  CHECK_THROWS((parse_tiktoken("Y!== 0\n")), ValueError);             // base64
  CHECK_THROWS((parse_tiktoken("YQ== -1\n")), ValueError);            // rank
  CHECK_THROWS((parse_tiktoken("")), ValueError);
  CHECK_THROWS((Tokenizer(V{"a", "b"}, Pattern::gpt2, {})), ValueError);  // missing bytes
  CHECK_THROWS((Tokenizer(vocab, Pattern::gpt2, {{"<|x|>", 3}})), ValueError);  // id collides with a rank
  Tokenizer custom(vocab, std::nullopt, {});
  CHECK_THROWS((custom.encode_ordinary("abc")), ValueError);  // custom patterns split outside
  CHECK(custom.encode_pieces({"abc", "xbc"}) == (std::vector<uint32_t>{258, 'x', 257}));

  // --- Training: the most frequent pair first, deterministic, specials cut out.
  BpeTrainer tr(Pattern::cl100k, {"<|end|>"});
  for (int i = 0; i < 10; i++) tr.add_text("low lower lowest<|end|>newer");
  V learned = tr.train(262);
  CHECK(learned.size() == 262);
  CHECK(learned[256] == "lo" || learned[256] == " l");
  for (const std::string& t : learned) CHECK(t.find('<') == std::string::npos || t.size() == 1);
  BpeTrainer tr2(Pattern::cl100k, {"<|end|>"});
  for (int i = 0; i < 10; i++) tr2.add_text("low lower lowest<|end|>newer");
  CHECK(tr2.train(262) == learned);
  CHECK_THROWS((tr2.train(100)), ValueError);
  Tokenizer trained(learned, Pattern::cl100k, {});
  std::vector<uint32_t> t_ids = trained.encode_ordinary("lowest newer");
  CHECK(trained.decode_bytes(t_ids.data(), t_ids.size()) == "lowest newer");
  return test_summary("test_tokenizer");
}
