// HfTokenizer without Python: a tokenizer.json pipeline (added tokens, normalizers, pre-tokenizers,
// BPE with byte fallback, template, decoders), Unicode normalization facts, parts refused by name, and
// a SentencePiece .model written field by field. tests/test_tokenizer_hf.py compares every family with
// the reference libraries; this checks that the core stands on its own. Failures count.
#include <string>
#include <vector>

#include "common.h"
#include "regex.h"
#include "test_util.h"
#include "tokenizer_hf.h"

using namespace pyllama;

static const char* kSpJson = R"({
  "added_tokens": [{"id": 1, "content": "<s>", "special": true, "normalized": false, "lstrip": false,
                    "rstrip": false, "single_word": false}],
  "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                 {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
  "pre_tokenizer": null,
  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}],
                     "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
  "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
              {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
  "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
            "vocab": {"<unk>": 0, "<s>": 1, "\u2581": 2, "h": 3, "i": 4, "hi": 5, "\u2581hi": 6, "<0xC3>": 7, "<0xA9>": 8},
            "merges": ["h i", "\u2581 hi"]}
})";

static std::vector<int64_t> as64(const std::vector<uint32_t>& v) { return std::vector<int64_t>(v.begin(), v.end()); }

// The matches of a regex as "start-end" byte offsets, e.g. "0-5 5-11".
static std::string spans(const char* pattern, const std::string& text) {
  std::vector<std::pair<size_t, size_t>> m;
  Regex(pattern).find_all(text, m);
  std::string out;
  for (auto& [a, b] : m) out += (out.empty() ? "" : " ") + std::to_string(a) + "-" + std::to_string(b);
  return out;
}

static std::string message_of(const char* pattern) {
  try {
    Regex r(pattern);
  } catch (const ValueError& e) {
    return e.what();
  }
  return "";
}

// The regex engine (regex.h) on facts checked against Oniguruma through `tokenizers`.
static void regex_checks() {
  const char* qwen2 = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  // "Hello", " world", "'S" (case-insensitive), " ", "1", "2", "  \n\n", " x"
  CHECK(spans(qwen2, "Hello world'S 12  \n\n x") == "0-5 5-11 11-13 13-14 14-15 15-16 16-20 20-22");
  CHECK(spans(R"(\p{N}{1,3}+)", "1234567 89") == "0-7 8-10");  // Ruby syntax: a repeat of {1,3}, not possessive
  CHECK(spans(R"(\p{N}{1,3})", "1234567") == "0-3 3-6 6-7");
  CHECK(spans("x*", "axxb") == "0-0 1-3 4-4");  // an empty match right after a match is skipped
  CHECK(spans("^|$", "a\nb\n") == "0-0 1-1 2-2 3-3 4-4");  // line anchors; ^ not at the very end
  CHECK(spans(R"((?i:'s))", "'\xC5\xBF 'S") == "0-3 4-6");   // U+017F folds to s
  CHECK(spans(R"((?<=\p{Ll})\p{Lu})", "aBcD E") == "1-2 3-4");
  CHECK(spans(R"((?<=a+)b)", "aab b") == "2-3");                // variable-length look-behind
  CHECK(spans(R"( ?[^(\s|[.,!?])]+)", "hi there, (x|y)!") == "0-2 2-8 11-12 13-14");
  CHECK(spans(R"([\p{L}&&[^a-c]]+)", "abcdef") == "3-6");
  CHECK(spans(R"(a++a)", "aaa").empty());                          // possessive
  CHECK(spans(R"(\d+)", "\xD9\xA1\xD9\xA2 \xC2\xBD") == "0-4");  // Arabic-Indic digits are \d, ½ is not
  CHECK(spans(".", "a\xFF") == "0-1 1-2");  // a byte that is not UTF-8 is one character
  // Refused by name, syntax errors, and catastrophic backtracking as errors.
  CHECK(message_of(R"(\p{Han})").find("\\p{Han} is not supported") != std::string::npos);
  CHECK(message_of(R"((a)\1)").find("back-reference") != std::string::npos);
  CHECK(message_of("(?x)a").find("(?x) is not supported") != std::string::npos);
  CHECK_THROWS(Regex("(ab"), ValueError);
  CHECK_THROWS(Regex("[z-a]"), ValueError);
  CHECK_THROWS(Regex("*"), ValueError);
  std::vector<std::pair<size_t, size_t>> m;
  CHECK_THROWS(Regex("(a*)*c").find_all(std::string(40, 'a'), m), ValueError);

  // In a tokenizer.json: Split with any behavior and invert, Replace normalizer and decoder.
  auto pieces = [](const std::string& pre, const std::string& norm, const std::string& text) {
    std::string j = R"({"normalizer": )" + norm + R"(, "pre_tokenizer": )" + pre +
                    R"(, "model": {"type": "WordLevel", "unk_token": "u", "vocab": {"u": 0}}})";
    std::string out;
    for (auto& p : HfTokenizer(j).pre_tokenize(text)) out += "[" + p + "]";
    return out;
  };
  auto split = [](const char* re, const char* behavior, bool invert) {
    return std::string(R"({"type": "Split", "pattern": {"Regex": ")") + re + R"("}, "behavior": ")" + behavior +
           R"(", "invert": )" + (invert ? "true" : "false") + "}";
  };
  CHECK(pieces(split("-", "MergedWithPrevious", false), "null", "a--b") == "[a-][-][b]");
  CHECK(pieces(split("-", "MergedWithNext", false), "null", "a--b") == "[a][-][-b]");
  CHECK(pieces(split("-+", "Removed", false), "null", "a--b-") == "[a][b]");
  CHECK(pieces(split("-+", "Removed", true), "null", "a--b-") == "[--][-]");
  CHECK(pieces(split(R"(\\d)", "Contiguous", false), "null", "ab12c3") == "[ab][12][c][3]");
  CHECK(pieces("null", R"({"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "})", "a \t\n b") == "[a b]");
  std::string dec = R"({"decoder": {"type": "Replace", "pattern": {"Regex": "_+"}, "content": " "},
                       "model": {"type": "WordLevel", "unk_token": "u", "vocab": {"u": 0, "a__b": 1, "_c": 2}}})";
  CHECK(HfTokenizer(dec).decode({1, 2}, false) == "a b c");
  CHECK_THROWS(HfTokenizer(R"({"pre_tokenizer": )" + split(R"(\\p{Han})", "Isolated", false) +
                           R"(, "model": {"type": "WordLevel", "unk_token": "u", "vocab": {"u": 0}}})"),
               ValueError);
}

static std::string sp_model() {  // a BPE ModelProto: <unk> <s> </s> ▁ a ▁a
  auto varint = [](std::string& o, uint64_t v) {
    do {
      uint8_t b = v & 0x7F;
      v >>= 7;
      o += (char)(b | (v ? 0x80 : 0));
    } while (v);
  };
  auto field = [&](std::string& o, int num, const std::string& body) {
    varint(o, (uint64_t)num << 3 | 2);
    varint(o, body.size());
    o += body;
  };
  std::string out;
  const char* pieces[] = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "\xE2\x96\x81" "a"};
  for (int i = 0; i < 6; i++) {
    std::string p;
    field(p, 1, pieces[i]);
    float score = -(float)i;
    p += (char)(2 << 3 | 5);
    p.append(reinterpret_cast<const char*>(&score), 4);
    p += (char)(3 << 3);
    varint(p, i == 0 ? 2 : i < 3 ? 3 : 1);
    field(out, 1, p);
  }
  std::string trainer;
  trainer += (char)(3 << 3);
  varint(trainer, 2);
  field(out, 2, trainer);
  std::string norm;
  field(norm, 1, "identity");
  norm += (char)(4 << 3);  // remove_extra_whitespaces = false
  varint(norm, 0);
  field(out, 3, norm);
  return out;
}

int main() {
  using U = std::vector<uint32_t>;
  HfTokenizer sp(kSpJson);
  // "hi": Prepend gives "▁hi"; merges h+i then ▁+hi; the template puts <s> first.
  CHECK(sp.encode("hi", false) == (U{6}));
  CHECK(sp.encode("hi", true) == (U{1, 6}));
  CHECK(sp.prefix_ids() == (U{1}) && sp.suffix_ids().empty());
  // é is not in the vocabulary: its two UTF-8 bytes; "x" has no byte token: <unk>, fused with the next.
  CHECK(sp.encode("\xC3\xA9", false) == (U{2, 7, 8}));
  CHECK(sp.encode("xx", false) == (U{2, 0}));
  // the special token in text is its id; the segment after it gets its own "▁"
  CHECK(sp.encode("hi<s>hi", false) == (U{6, 1, 6}));
  std::vector<uint32_t> allowed;  // none allowed: "<s>" is text
  CHECK(sp.encode("<s>", false, &allowed) != (U{2, 1}));
  // decode: ▁ -> space, bytes joined, the first space stripped; skip_special drops <s>
  CHECK(sp.decode(as64(sp.encode("hi hi", true)), true) == "hi hi");
  CHECK(sp.decode(as64(sp.encode("hi hi", true)), false) == "<s> hi hi");
  CHECK(sp.decode({2, 7, 8}, false) == "\xC3\xA9");
  CHECK(sp.decode({7}, false) == "\xEF\xBF\xBD");  // a lone lead byte: U+FFFD
  CHECK_THROWS(sp.decode({99}, false), IndexError);
  CHECK(sp.token_to_id("\xE2\x96\x81hi") == 6 && sp.token_to_id("nope") == -1);
  // encode_into appends (a batch in one buffer) and leaves the buffer as it was on an error
  std::vector<uint32_t> buf{42};
  sp.encode_into("hi hi", true, buf);
  CHECK(buf == (U{42, 1, 6, 6}));
  HfTokenizer wl(R"({"pre_tokenizer": {"type": "WhitespaceSplit"}, "model": {"type": "WordLevel", "vocab": {"a": 0}}})");
  CHECK_THROWS(wl.encode_into("a b", false, buf), ValueError);
  CHECK(buf == (U{42, 1, 6, 6}));

  // Unicode normalization: e + acute composes (NFC), the ligature splits (NFKC), Hangul composes.
  auto norm = [](const char* type, const std::string& text) {
    std::string j = std::string(R"({"normalizer": {"type": ")") + type +
                    R"("}, "model": {"type": "WordLevel", "unk_token": "u", "vocab": {"u": 0}}})";
    std::string out;
    for (auto& p : HfTokenizer(j).pre_tokenize(text)) out += p;
    return out;
  };
  CHECK(norm("NFC", "e\xCC\x81") == "\xC3\xA9");
  CHECK(norm("NFD", "\xC3\xA9") == "e\xCC\x81");
  CHECK(norm("NFKC", "\xEF\xAC\x81") == "fi");
  CHECK(norm("NFC", "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB") == "\xED\x95\x9C");  // 한 from its jamo
  CHECK(norm("NFD", "\xED\x95\x9C") == "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB");
  CHECK(norm("Lowercase", "ABC \xC3\x89") == "abc \xC3\xA9");

  // Parts that are not implemented are refused by name, never skipped.
  CHECK_THROWS(HfTokenizer(R"({"normalizer": {"type": "Precompiled"}, "model": {"type": "WordLevel", "vocab": {}}})"),
               ValueError);
  CHECK_THROWS(HfTokenizer(R"({"model": {"type": "Mystery"}})"), ValueError);
  CHECK_THROWS(HfTokenizer(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})"), ValueError);
  CHECK_THROWS(HfTokenizer("not json"), ValueError);

  // A SentencePiece model: BPE merges from its pieces, BOS first, ▁ prefix.
  HfTokenizer m(sentencepiece_to_hf_json(sp_model()));
  CHECK(m.model_type() == "BPE");
  CHECK(m.encode("a", true) == (U{1, 5}));
  CHECK(m.encode("a a", false) == (U{5, 5}));
  CHECK(m.decode(as64(m.encode("a a", true)), true) == "a a");
  CHECK_THROWS(sentencepiece_to_hf_json(sp_model().substr(0, 7)), ValueError);
  CHECK_THROWS(sentencepiece_to_hf_json(""), ValueError);

  regex_checks();

  std::printf("test_tokenizer_hf: %d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
