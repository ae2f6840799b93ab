// pretokenize.cpp — the preset scanners. Each scan_* returns the end of the piece
// that starts at byte i, trying the pattern's alternatives in order, with the
// backtracking each one would do in a regex engine worked out by hand (see the
// comments at each alternative and docs/TOKENIZER.md).
#include "pretokenize.h"

#include "common.h"
#include "unicode_tables.h"

namespace pyllama {

namespace {

using namespace unicode;
constexpr size_t npos = static_cast<size_t>(-1);

struct Ch {
  uint32_t cp;  // code point; 0xFFFFFFFF for a byte that is not valid UTF-8
  uint8_t f;    // flags from unicode_tables.h
  uint8_t len;  // bytes
};

struct AsciiFlags {
  uint8_t f[128];
  AsciiFlags() {
    for (uint32_t c = 0; c < 128; c++) f[c] = cp_flags(c);
  }
};
const AsciiFlags kAscii;

inline bool cont(uint8_t b) { return (b & 0xC0) == 0x80; }

// The character at byte i (< n). Validates UTF-8; a bad byte is one character of no category.
inline Ch char_at(const uint8_t* s, size_t n, size_t i) {
  uint8_t b = s[i];
  if (b < 0x80) return {b, kAscii.f[b], 1};
  if (b >= 0xC2 && b <= 0xDF) {
    if (i + 1 < n && cont(s[i + 1])) {
      uint32_t cp = (uint32_t(b & 0x1F) << 6) | (s[i + 1] & 0x3F);
      return {cp, cp_flags(cp), 2};
    }
  } else if (b >= 0xE0 && b <= 0xEF) {
    if (i + 2 < n && cont(s[i + 1]) && cont(s[i + 2])) {
      uint32_t cp = (uint32_t(b & 0x0F) << 12) | (uint32_t(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
      if (cp >= 0x800 && !(cp >= 0xD800 && cp < 0xE000)) return {cp, cp_flags(cp), 3};
    }
  } else if (b >= 0xF0 && b <= 0xF4) {
    if (i + 3 < n && cont(s[i + 1]) && cont(s[i + 2]) && cont(s[i + 3])) {
      uint32_t cp = (uint32_t(b & 0x07) << 18) | (uint32_t(s[i + 1] & 0x3F) << 12) |
                    (uint32_t(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
      if (cp >= 0x10000 && cp < 0x110000) return {cp, cp_flags(cp), 4};
    }
  }
  return {0xFFFFFFFFu, 0, 1};
}

inline bool is_nl(uint32_t cp) { return cp == '\r' || cp == '\n'; }
// [^\s\p{L}\p{N}]
inline bool is_other(const Ch& c) { return !(c.f & (kLetter | kNumber | kSpace)); }

}  // namespace

#define AT(i) char_at(s_, n_, (i))

// The end of the run of characters from `start` for which `cond` holds (it sees the
// current character as `c`).
#define RUN_WHILE(start, cond)          \
  [&]() {                               \
    size_t e_ = (start);                \
    while (e_ < n_) {                   \
      Ch c = AT(e_);                    \
      if (!(cond)) break;               \
      e_ += c.len;                      \
    }                                   \
    return e_;                          \
  }()

namespace {

// After a quote at j-1: s|d|m|t|ll|ve|re, case-insensitive when `ci` (then also
// U+017F LATIN SMALL LETTER LONG S, which folds to 's'). Returns the end or 0.
inline size_t contraction_end(const uint8_t* s, size_t n, size_t j, bool ci) {
  if (j >= n) return 0;
  uint8_t b = s[j];
  uint8_t fold = ci ? 0x20 : 0;
  if (ci && b >= 'A' && b <= 'Z') b |= 0x20;
  uint8_t second;
  switch (b) {
    case 's': case 'd': case 'm': case 't': return j + 1;
    case 'l': second = 'l'; break;
    case 'v': case 'r': second = 'e'; break;
    case 0xC5:
      return (ci && j + 1 < n && s[j + 1] == 0xBF) ? j + 2 : 0;
    default: return 0;
  }
  if (j + 1 < n && (uint8_t)(s[j + 1] | fold) == second) return j + 2;
  return 0;
}

// Pieces the patterns share (free functions over the scanner's text s_[0, n_), so AT and
// RUN_WHILE apply). \p{N}{1,3} from i (i itself a number):
size_t digits_end(const uint8_t* s_, size_t n_, size_t i) {
  size_t e = i;
  for (int t = 0; t < 3 && e < n_; t++) {
    Ch c = AT(e);
    if (!(c.f & kNumber)) break;
    e += c.len;
  }
  return e;
}

// ' ?[^\s\p{L}\p{N}]+' from i (c0 = the character at i), then the run of \r, \n (and '/'
// when `slash`); 0 when no such run starts at i.
size_t punct_end(const uint8_t* s_, size_t n_, size_t i, Ch c0, bool slash) {
  size_t k = i;
  Ch c = c0;
  if (c0.cp == ' ' && i + 1 < n_) {
    Ch c1 = AT(i + 1);
    if (is_other(c1)) {
      k = i + 1;
      c = c1;
    }
  }
  if (!is_other(c)) return 0;
  size_t e = RUN_WHILE(k, is_other(c));
  while (e < n_ && (s_[e] == '\r' || s_[e] == '\n' || (slash && s_[e] == '/'))) e++;
  return e;
}

struct SpaceRun {
  size_t end, last, last_nl;  // past the run, start of its last char, last \r/\n (or npos)
  int count;                  // characters in the run
};

// The whitespace run from i.
SpaceRun space_run(const uint8_t* s_, size_t n_, size_t i) {
  SpaceRun r{i, i, npos, 0};
  while (r.end < n_) {
    Ch w = AT(r.end);
    if (!(w.f & kSpace)) break;
    if (is_nl(w.cp)) r.last_nl = r.end;
    r.last = r.end;
    r.end += w.len;
    r.count++;
  }
  return r;
}

}  // namespace

size_t PieceScanner::scan_gpt2(size_t i) const {
  Ch c0 = AT(i);
  // 's|'t|'re|'ve|'m|'ll|'d
  if (c0.cp == '\'') {
    size_t e = contraction_end(s_, n_, i + 1, false);
    if (e) return e;
  }
  // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': the space joins when a class char follows.
  size_t k = i;
  Ch c = c0;
  if (c0.cp == ' ' && i + 1 < n_) {
    Ch c1 = AT(i + 1);
    if (!(c1.f & kSpace)) {
      k = i + 1;
      c = c1;
    }
  }
  if (c.f & kLetter) return RUN_WHILE(k, c.f & kLetter);
  if (c.f & kNumber) return RUN_WHILE(k, c.f & kNumber);
  if (is_other(c)) return RUN_WHILE(k, is_other(c));
  // Whitespace run starting at i.
  const SpaceRun w = space_run(s_, n_, i);
  if (w.end == n_) return w.end;       // \s+ up to the end: (?!\S) holds there
  if (w.count >= 2) return w.last;     // \s+(?!\S): give back the last space
  return w.end;                        // \s+ (one char)
}

size_t PieceScanner::scan_cl100k(size_t i) const {
  Ch c0 = AT(i);
  // '(?i:[sdmt]|ll|ve|re)
  if (c0.cp == '\'') {
    size_t e = contraction_end(s_, n_, i + 1, true);
    if (e) return e;
  }
  // [^\r\n\p{L}\p{N}]?+\p{L}++ — possessive: once the optional char is taken, no retry without it.
  if (c0.f & kLetter) return RUN_WHILE(i, c.f & kLetter);
  if (!(c0.f & kNumber) && !is_nl(c0.cp)) {
    size_t k = i + c0.len;
    if (k < n_ && (AT(k).f & kLetter)) return RUN_WHILE(k, c.f & kLetter);
  }
  // \p{N}{1,3}+
  if (c0.f & kNumber) return digits_end(s_, n_, i);
  //  ?[^\s\p{L}\p{N}]++[\r\n]*+
  if (size_t e = punct_end(s_, n_, i, c0, false)) return e;
  // c0 is whitespace. Scan its run, noting the last \r/\n and the last char's start.
  const SpaceRun w = space_run(s_, n_, i);
  if (w.end == n_) return w.end;                // \s++$
  if (w.last_nl != npos) return w.last_nl + 1;  // \s*[\r\n]: backtracks to the last newline
  if (w.count >= 2) return w.last;              // \s+(?!\S)
  return i + c0.len;                            // \s
}

size_t PieceScanner::scan_o200k(size_t i) const {
  Ch c0 = AT(i);
  // [^\r\n\p{L}\p{N}]? may take c0 (then the engine retries without it on failure).
  bool lead_ok = !(c0.f & (kLetter | kNumber)) && !is_nl(c0.cp);
  auto suffix = [&](size_t e) -> size_t {  // (?i:'s|'t|'re|'ve|'m|'ll|'d)?
    if (e < n_ && s_[e] == '\'') {
      size_t c = contraction_end(s_, n_, e + 1, true);
      if (c) return c;
    }
    return e;
  };
  // [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:...)?
  // The upper run backtracks until a lower-class char can start: the latest such
  // position is the first char after the run, or else the last char in the run that is
  // in both classes.
  for (int p = lead_ok ? 1 : 0; p >= 0; p--) {
    size_t e = i + (p ? c0.len : 0), wstart = npos;
    while (e < n_) {
      Ch c = AT(e);
      if (c.f & kLowerish) wstart = e;
      if (!(c.f & kUpperish)) break;
      e += c.len;
    }
    if (wstart != npos) return suffix(RUN_WHILE(wstart, c.f & kLowerish));
  }
  // [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:...)?
  for (int p = lead_ok ? 1 : 0; p >= 0; p--) {
    size_t s = i + (p ? c0.len : 0);
    size_t e = RUN_WHILE(s, c.f & kUpperish);
    if (e > s) return suffix(RUN_WHILE(e, c.f & kLowerish));
  }
  // \p{N}{1,3}
  if (c0.f & kNumber) return digits_end(s_, n_, i);
  //  ?[^\s\p{L}\p{N}]+[\r\n/]*
  if (size_t e = punct_end(s_, n_, i, c0, true)) return e;
  // Whitespace.
  const SpaceRun w = space_run(s_, n_, i);
  if (w.last_nl != npos) return w.last_nl + 1;  // \s*[\r\n]+
  if (w.end == n_) return w.end;                // \s+(?!\S) at the end
  if (w.count >= 2) return w.last;              // \s+(?!\S)
  return w.end;                                 // \s+
}

#undef RUN_WHILE
#undef AT

// ---------------------------------------------------------------- names

static const char* kGpt2Regex =
    R"('(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s)";
static const char* kCl100kRegex =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
static const char* kO200kRegex =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool is_pattern_name(const std::string& name) {
  return name == "gpt2" || name == "cl100k" || name == "llama3" || name == "o200k";
}

Pattern pattern_from_name(const std::string& name) {
  if (name == "gpt2") return Pattern::gpt2;
  if (name == "cl100k" || name == "llama3") return Pattern::cl100k;
  if (name == "o200k") return Pattern::o200k;
  throw ValueError("unknown pre-tokenizer preset '" + name + "': expected one of gpt2, cl100k, llama3, o200k");
}

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::gpt2: return "gpt2";
    case Pattern::cl100k: return "cl100k";
    case Pattern::o200k: return "o200k";
  }
  return "?";
}

const char* pattern_regex(Pattern p) {
  switch (p) {
    case Pattern::gpt2: return kGpt2Regex;
    case Pattern::cl100k: return kCl100kRegex;
    case Pattern::o200k: return kO200kRegex;
  }
  return "";
}

}  // namespace pyllama
