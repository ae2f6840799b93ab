// tokenizer_hf.cpp — tokenizer.json pipelines run as the Hugging Face `tokenizers` library runs
// them (see tokenizer_hf.h). Each stage mirrors the library's component of the same name:
//
//   text ─ added tokens (raw) ─ normalizer ─ added tokens (normalized) ─ pre-tokenizer ─ model ─ post-processor
//   ids ─ tokens ─ decoder chain ─ text
//
// Strings are UTF-8 bytes throughout; a "char" is one code point.
#include "tokenizer_hf.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <queue>
#include <sstream>

#include "json.h"
#include "pretokenize.h"
#include "regex.h"
#include "tokenizer.h"  // b64_decode
#include "unicode_tables.h"

namespace pyllama {

namespace hf_tables {
extern const uint32_t kPunct[][2];
extern const size_t kPunct_size;
extern const uint32_t kWord[][2];
extern const size_t kWord_size;
extern const uint32_t kMarks[][2];
extern const size_t kMarks_size;
extern const uint32_t kBertMarks[][2];
extern const size_t kBertMarks_size;
extern const uint32_t kDropped[][2];
extern const size_t kDropped_size;
extern const uint32_t kCanon[][3], kCanon_pool[];
extern const size_t kCanon_size;
extern const uint32_t kCompat[][3], kCompat_pool[];
extern const size_t kCompat_size;
extern const uint32_t kCcc[][3], kCcc_pool[];
extern const size_t kCcc_size;
extern const uint32_t kLower[][3], kLower_pool[];
extern const size_t kLower_size;
extern const uint64_t kComp[][2];
extern const size_t kComp_size;
}  // namespace hf_tables

namespace {

// ------------------------------------------------------------------ UTF-8

// Length of the UTF-8 character at s[i] (1 for a byte that does not start a valid sequence).
size_t u8_len(std::string_view s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; k++)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

uint32_t u8_cp(std::string_view s, size_t i, size_t n) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  switch (n) {
    case 2: return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3: return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    case 4: return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
    default: return p[0] < 0x80 ? p[0] : 0xFFFD;
  }
}

void u8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The code points of s with their byte offsets.
struct Chars {
  std::vector<uint32_t> cp;
  std::vector<size_t> off;  // off[i]: byte offset of char i; off[n] = s.size()
  explicit Chars(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
      size_t n = u8_len(s, i);
      cp.push_back(u8_cp(s, i, n));
      off.push_back(i);
      i += n;
    }
    off.push_back(s.size());
  }
  size_t size() const { return cp.size(); }
};

bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (cp < r[mid][0]) hi = mid;
    else if (cp > r[mid][1]) lo = mid + 1;
    else return true;
  }
  return false;
}

bool is_space(uint32_t cp) { return unicode::cp_flags(cp) & unicode::kSpace; }
bool is_numeric(uint32_t cp) { return unicode::cp_flags(cp) & unicode::kNumber; }
bool is_alnum(uint32_t cp) { return unicode::cp_flags(cp) & (unicode::kLetter | unicode::kNumber); }
bool is_punct(uint32_t cp) {
  bool ascii_punct = (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
                     (cp >= 0x7B && cp <= 0x7E);
  return ascii_punct || in_ranges(hf_tables::kPunct, hf_tables::kPunct_size, cp);
}
bool is_word(uint32_t cp) { return in_ranges(hf_tables::kWord, hf_tables::kWord_size, cp); }

// ------------------------------------------------------------------ Unicode normalization

// A row of a generated (code point, offset, length) map, or nullptr.
const uint32_t* map_row(const uint32_t (*rows)[3], size_t n, uint32_t cp) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (rows[mid][0] < cp) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && rows[lo][0] == cp ? rows[lo] : nullptr;
}

uint32_t ccc_of(uint32_t cp) {
  const uint32_t* r = map_row(hf_tables::kCcc, hf_tables::kCcc_size, cp);
  return r ? hf_tables::kCcc_pool[r[1]] : 0;
}

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

// NFD / NFKD / NFC / NFKC of UTF-8 text (Unicode's algorithm: full decomposition, canonical
// ordering, canonical composition).
std::string unicode_normalize(std::string_view s, bool compat, bool compose) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n = u8_len(s, i);
    uint32_t cp = u8_cp(s, i, n);
    i += n;
    if (cp >= kSBase && cp < kSBase + kSCount) {
      uint32_t si = cp - kSBase;
      cps.push_back(kLBase + si / kNCount);
      cps.push_back(kVBase + (si % kNCount) / kTCount);
      if (si % kTCount) cps.push_back(kTBase + si % kTCount);
      continue;
    }
    const uint32_t* r = compat ? map_row(hf_tables::kCompat, hf_tables::kCompat_size, cp)
                               : map_row(hf_tables::kCanon, hf_tables::kCanon_size, cp);
    if (!r) {
      cps.push_back(cp);
      continue;
    }
    const uint32_t* pool = compat ? hf_tables::kCompat_pool : hf_tables::kCanon_pool;
    for (uint32_t k = 0; k < r[2]; k++) {
      uint32_t d = pool[r[1] + k];
      if (d >= kSBase && d < kSBase + kSCount) {  // a compatibility form of a syllable
        uint32_t si = d - kSBase;
        cps.push_back(kLBase + si / kNCount);
        cps.push_back(kVBase + (si % kNCount) / kTCount);
        if (si % kTCount) cps.push_back(kTBase + si % kTCount);
      } else {
        cps.push_back(d);
      }
    }
  }
  // canonical ordering: stable sort of each run of non-starters by combining class
  for (size_t i = 0; i < cps.size();) {
    if (!ccc_of(cps[i])) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && ccc_of(cps[j])) j++;
    std::stable_sort(cps.begin() + static_cast<std::ptrdiff_t>(i), cps.begin() + static_cast<std::ptrdiff_t>(j),
                     [](uint32_t a, uint32_t b) { return ccc_of(a) < ccc_of(b); });
    i = j;
  }
  if (compose && !cps.empty()) {
    auto pair = [](uint32_t a, uint32_t b) -> int64_t {
      if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
        return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
      if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
        return a + (b - kTBase);
      uint64_t key = (uint64_t(a) << 21) | b;
      size_t lo = 0, hi = hf_tables::kComp_size;
      while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (hf_tables::kComp[mid][0] < key) lo = mid + 1;
        else hi = mid;
      }
      return lo < hf_tables::kComp_size && hf_tables::kComp[lo][0] == key ? int64_t(hf_tables::kComp[lo][1]) : -1;
    };
    std::vector<uint32_t> out;
    out.reserve(cps.size());
    int64_t starter = -1;  // index in out of the last starter
    uint32_t last_ccc = 0;
    for (uint32_t cp : cps) {
      uint32_t cc = ccc_of(cp);
      if (starter >= 0) {
        bool blocked = !out.empty() && size_t(starter) != out.size() - 1 && (last_ccc == 0 || last_ccc >= cc);
        int64_t c = blocked ? -1 : pair(out[size_t(starter)], cp);
        if (c >= 0) {
          out[size_t(starter)] = static_cast<uint32_t>(c);
          continue;
        }
      }
      if (cc == 0) {
        starter = static_cast<int64_t>(out.size());
        last_ccc = 0;
      } else {
        last_ccc = cc;
      }
      out.push_back(cp);
    }
    cps.swap(out);
  }
  std::string r;
  r.reserve(s.size());
  for (uint32_t cp : cps) u8_append(r, cp);
  return r;
}

std::string unicode_lower(std::string_view s) {
  std::string r;
  r.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t n = u8_len(s, i);
    uint32_t cp = u8_cp(s, i, n);
    const uint32_t* row = cp < 0x80 ? nullptr : map_row(hf_tables::kLower, hf_tables::kLower_size, cp);
    if (cp < 0x80) r += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    else if (row) for (uint32_t k = 0; k < row[2]; k++) u8_append(r, hf_tables::kLower_pool[row[1] + k]);
    else r.append(s.substr(i, n));
    i += n;
  }
  return r;
}

// Drops the marks (StripAccents, and BertNormalizer's strip_accents with its own, narrower table).
std::string drop_marks(std::string_view s, bool bert) {
  std::string r;
  for (size_t i = 0; i < s.size();) {
    size_t n = u8_len(s, i);
    uint32_t cp = u8_cp(s, i, n);
    bool mark = bert ? in_ranges(hf_tables::kBertMarks, hf_tables::kBertMarks_size, cp)
                     : in_ranges(hf_tables::kMarks, hf_tables::kMarks_size, cp);
    if (!mark) r.append(s.substr(i, n));
    i += n;
  }
  return r;
}

bool is_chinese(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// BertNormalizer: clean_text, handle_chinese_chars, strip_accents (NFD + drop marks), lowercase.
std::string bert_normalize(std::string_view s, bool clean, bool chinese, bool strip, bool lower) {
  std::string r;
  for (size_t i = 0; i < s.size();) {
    size_t n = u8_len(s, i);
    uint32_t cp = u8_cp(s, i, n);
    std::string_view ch = s.substr(i, n);
    i += n;
    if (clean) {
      bool ws = cp == '\t' || cp == '\n' || cp == '\r' || is_space(cp);
      if (in_ranges(hf_tables::kDropped, hf_tables::kDropped_size, cp)) continue;
      if (ws) {
        r += ' ';
        continue;
      }
    }
    if (chinese && is_chinese(cp)) {
      r += ' ';
      r.append(ch);
      r += ' ';
      continue;
    }
    r.append(ch);
  }
  if (strip) r = drop_marks(unicode_normalize(r, false, false), true);
  if (lower) r = unicode_lower(r);
  return r;
}

// SentencePiece's precompiled character map (the Precompiled normalizer): a darts-clone double array of
// uint32 units mapping byte strings to offsets of their NUL-terminated replacements in the rest of the
// blob. normalize() replaces, at each position, the longest match (else copies one character), as
// SentencePiece's normalizer does.
class CharsMap {
 public:
  explicit CharsMap(std::string_view blob) {
    PYLLAMA_CHECK(blob.size() >= 4, ValueError, "precompiled_charsmap: shorter than its 4-byte header");
    uint32_t n;
    std::memcpy(&n, blob.data(), 4);
    PYLLAMA_CHECK(n % 4 == 0 && n <= blob.size() - 4, ValueError,
                  "precompiled_charsmap: its trie size " << n << " does not fit the " << blob.size() << " bytes");
    units_.resize(n / 4);
    if (n) std::memcpy(units_.data(), blob.data() + 4, n);
    strings_ = std::string(blob.substr(4 + n));
  }
  std::string normalize(std::string_view s) const {
    std::string out;
    for (size_t i = 0; i < s.size();) {
      size_t len = 0;
      uint32_t val = 0;
      match(s.substr(i), len, val);
      if (len) {
        out += strings_.c_str() + val;  // NUL-terminated; val < strings_.size() checked in match
        i += len;
      } else {
        size_t k = u8_len(s, i);
        out.append(s.substr(i, k));
        i += k;
      }
    }
    return out;
  }

 private:
  static uint32_t offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
  static uint32_t label(uint32_t u) { return u & ((1u << 31) | 0xFFu); }
  static bool has_leaf(uint32_t u) { return (u >> 8) & 1; }
  static uint32_t value(uint32_t u) { return u & ((1u << 31) - 1); }
  void match(std::string_view key, size_t& len, uint32_t& val) const {
    if (units_.empty()) return;
    size_t pos = offset(units_[0]);
    for (size_t i = 0; i < key.size(); i++) {
      uint8_t c = static_cast<uint8_t>(key[i]);
      pos ^= c;
      if (pos >= units_.size()) return;
      uint32_t u = units_[pos];
      if (label(u) != c) return;
      pos ^= offset(u);
      if (pos >= units_.size()) return;
      if (has_leaf(u) && value(units_[pos]) < strings_.size()) {
        len = i + 1;
        val = value(units_[pos]);
      }
    }
  }
  std::vector<uint32_t> units_;
  std::string strings_;
};

// GPT-2's byte -> printable character table (byte-level BPE).
const std::vector<std::string>& byte_to_char() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int extra = 0;
    for (int b = 0; b < 256; b++) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      u8_append(t[b], printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++));
    }
    return t;
  }();
  return table;
}
// The inverse: code point -> byte, -1 for a char outside the table.
int char_to_byte(uint32_t cp) {
  static const std::vector<int> table = [] {
    std::vector<int> t(512, -1);
    const auto& b2c = byte_to_char();
    for (int b = 0; b < 256; b++) {
      std::string_view s = b2c[b];
      t[u8_cp(s, 0, s.size())] = b;
    }
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  if (from.size() == 1) {  // one byte (a space): count, then write, no search calls
    const char c = from[0];
    size_t hits = 0;
    for (char x : s) hits += x == c;
    out.resize(s.size() - hits + hits * to.size());
    char* d = out.data();
    for (char x : s) {
      if (x != c) {
        *d++ = x;
        continue;
      }
      for (char y : to) *d++ = y;
    }
    return out;
  }
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string_view::npos; i = j + from.size()) {
    out.append(s.substr(i, j - i));
    out.append(to);
  }
  out.append(s.substr(i));
  return out;
}

std::string type_of(const Json& j, const char* what) {
  PYLLAMA_CHECK(j.kind() == Json::Kind::object && j.has("type"), ValueError,
                "tokenizer.json: the " << what << " is not an object with a \"type\"");
  return j["type"].as_string();
}

bool opt_bool(const Json& j, const char* key, bool dflt) {
  return j.has(key) && !j[key].is_null() ? j[key].as_bool() : dflt;
}
std::string opt_str(const Json& j, const char* key, const std::string& dflt) {
  return j.has(key) && !j[key].is_null() ? j[key].as_string() : dflt;
}

// A Split/Replace pattern: {"String": s} or {"Regex": r}; is_regex tells which.
std::string pattern_of(const Json& p, const char* where, bool& is_regex) {
  is_regex = p.kind() == Json::Kind::object && p.has("Regex");
  if (is_regex) return p["Regex"].as_string();
  if (p.kind() == Json::Kind::object && p.has("String")) return p["String"].as_string();
  throw ValueError(std::string("tokenizer.json: ") + where + "'s pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
}

// A tokenizer.json regex compiled by the core's engine (regex.h); its errors name the component.
std::shared_ptr<const Regex> compile_regex(const std::string& re, const char* where) {
  try {
    return std::make_shared<const Regex>(re);
  } catch (const ValueError& e) {
    throw ValueError(std::string("tokenizer.json: ") + where + ": " + e.what());
  }
}

enum class SplitBehavior { removed, isolated, merged_prev, merged_next, contiguous };

SplitBehavior behavior_from(const std::string& s) {
  if (s == "Removed") return SplitBehavior::removed;
  if (s == "Isolated") return SplitBehavior::isolated;
  if (s == "MergedWithPrevious") return SplitBehavior::merged_prev;
  if (s == "MergedWithNext") return SplitBehavior::merged_next;
  if (s == "Contiguous") return SplitBehavior::contiguous;
  throw ValueError("tokenizer.json: split behavior '" + s +
                   "' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

// `tokenizers`' NormalizedString::split: the spans of a pattern's find_matches (matches and the
// text between them, covering s), flipped by `invert`, grouped by the behavior; the pieces that
// are neither removed nor empty are appended to out.
void split_spans(std::string_view s, std::vector<RegexSpan> spans, SplitBehavior b, bool invert,
                 std::vector<std::string>& out) {
  if (invert)
    for (RegexSpan& x : spans) x.match = !x.match;
  struct Cut {
    size_t a, e;
    bool remove;
  };
  std::vector<Cut> cuts;
  bool prev = false;
  switch (b) {
    case SplitBehavior::isolated:
      for (const RegexSpan& x : spans) cuts.push_back({x.start, x.end, false});
      break;
    case SplitBehavior::removed:
      for (const RegexSpan& x : spans) cuts.push_back({x.start, x.end, x.match});
      break;
    case SplitBehavior::contiguous:  // runs of matches (or of non-matches) join
      for (const RegexSpan& x : spans) {
        if (x.match == prev && !cuts.empty()) cuts.back().e = x.end;
        else cuts.push_back({x.start, x.end, false});
        prev = x.match;
      }
      break;
    case SplitBehavior::merged_prev:  // a match right after a non-match joins it
      for (const RegexSpan& x : spans) {
        if (x.match && !prev && !cuts.empty()) cuts.back().e = x.end;
        else cuts.push_back({x.start, x.end, false});
        prev = x.match;
      }
      break;
    case SplitBehavior::merged_next:  // the same from the end: a match joins the non-match after it
      for (size_t k = spans.size(); k-- > 0;) {
        const RegexSpan& x = spans[k];
        if (x.match && !prev && !cuts.empty()) cuts.back().a = x.start;
        else cuts.push_back({x.start, x.end, false});
        prev = x.match;
      }
      std::reverse(cuts.begin(), cuts.end());
      break;
  }
  for (const Cut& c : cuts)
    if (!c.remove && c.e > c.a) out.emplace_back(s.substr(c.a, c.e - c.a));
}

// The find_matches spans of a literal delimiter (non-overlapping, leftmost; an empty delimiter
// matches empty at every character boundary, as `tokenizers`' escaped regex does).
std::vector<RegexSpan> string_spans(std::string_view s, std::string_view delim) {
  std::vector<RegexSpan> out;
  if (s.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  size_t prev = 0;
  auto add = [&](size_t a, size_t e) {
    if (prev != a) out.push_back({prev, a, false});
    out.push_back({a, e, true});
    prev = e;
  };
  if (delim.empty()) {
    for (size_t i = 0;; i += u8_len(s, i)) {
      add(i, i);
      if (i >= s.size()) break;
    }
  } else {
    for (size_t j, i = 0; (j = s.find(delim, i)) != std::string_view::npos; i = j + delim.size()) add(j, j + delim.size());
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
  return out;
}

// The find_matches spans of a character predicate: each char for which `hit` holds is a match.
template <class Pred>
std::vector<RegexSpan> char_spans(std::string_view s, Pred hit) {
  std::vector<RegexSpan> out;
  if (s.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  size_t prev = 0;
  for (size_t i = 0; i < s.size();) {
    size_t n = u8_len(s, i);
    if (hit(u8_cp(s, i, n))) {
      if (prev != i) out.push_back({prev, i, false});
      out.push_back({i, i + n, true});
      prev = i + n;
    }
    i += n;
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
  return out;
}

// Splits s at the chars for which `hit` holds (the `tokenizers` split behaviors). Empty pieces dropped.
template <class Pred>
void split_chars(std::string_view s, SplitBehavior b, Pred hit, std::vector<std::string>& out) {
  split_spans(s, char_spans(s, hit), b, false, out);
}

// Same for a literal substring delimiter.
void split_string(std::string_view s, std::string_view delim, SplitBehavior b, bool invert, std::vector<std::string>& out) {
  split_spans(s, string_spans(s, delim), b, invert, out);
}

// `tokenizers`' Replace with a regex (normalizer and decoder): each match, empty ones too, becomes
// `content`; an empty text stays empty.
std::string regex_replace(const Regex& re, std::string_view s, std::string_view content) {
  std::string out;
  for (const RegexSpan& x : regex_spans(re, s)) {
    if (x.match) out.append(content);
    else out.append(s.substr(x.start, x.end - x.start));
  }
  return out;
}

// The regular expressions real tokenizer.json files put in a Split pre-tokenizer, each with the
// core's scanner that splits exactly as it does.
struct KnownRegex {
  const char* regex;
  Pattern pattern;
};
// (tiktoken's own spellings of gpt2 and o200k too; not its cl100k one, whose \p{N}{1,3}+ Oniguruma
// reads as a repeat of \p{N}{1,3}, which the regex engine runs.)
const KnownRegex kKnownRegexes[] = {
    {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", Pattern::gpt2},
    // Llama 3 (transformers' converter of the tiktoken file)
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     Pattern::cl100k},
    {nullptr, Pattern::gpt2},  // pattern_regex(Pattern::gpt2)
    {nullptr, Pattern::o200k},  // pattern_regex(Pattern::o200k)
};

// The preset scanner that splits exactly as `regex` does (Isolated), or false.
bool known_regex(const std::string& regex, Pattern& out) {
  for (const KnownRegex& k : kKnownRegexes)
    if (regex == (k.regex ? k.regex : pattern_regex(k.pattern))) {
      out = k.pattern;
      return true;
    }
  return false;
}

// BPE merges: (left id, right id) -> (rank, merged id), open addressing on the 64-bit key
// (left << 32 | right). Ids are below 2^32 - 1, so the all-ones key marks a free slot.
class PairMap {
 public:
  struct Entry {
    uint64_t key = ~0ull;
    uint32_t rank = 0, id = 0;
  };
  // Adds the pair unless present (the first, lowest-ranked merge of a pair wins).
  void insert(uint32_t a, uint32_t b, uint32_t rank, uint32_t id) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    uint64_t key = (uint64_t(a) << 32) | b;
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      Entry& e = slots_[i];
      if (e.key == key) return;
      if (e.key == ~0ull) {
        e = {key, rank, id};
        size_++;
        return;
      }
    }
  }
  const Entry* find(uint32_t a, uint32_t b) const {
    if (size_ == 0) return nullptr;
    uint64_t key = (uint64_t(a) << 32) | b;
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == ~0ull) return nullptr;
    }
  }
  size_t size() const { return size_; }
  template <class F>
  void for_each(F&& f) const {
    for (const Entry& e : slots_)
      if (e.key != ~0ull) f(uint32_t(e.key >> 32), uint32_t(e.key), e.rank, e.id);
  }

 private:
  size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  void grow() {
    std::vector<Entry> old;
    old.swap(slots_);
    size_t cap = old.empty() ? 64 : old.size() * 2;
    slots_.assign(cap, Entry{});
    mask_ = cap - 1;
    shift_ = 64;
    for (size_t c = cap; c > 1; c >>= 1) shift_--;
    for (const Entry& e : old) {
      if (e.key == ~0ull) continue;
      size_t i = slot(e.key);
      while (slots_[i].key != ~0ull) i = (i + 1) & mask_;
      slots_[i] = e;
    }
  }
  std::vector<Entry> slots_;
  size_t mask_ = 0, size_ = 0;
  int shift_ = 64;
};

// Per-thread cache of BPE words (word bytes -> ids) of the tokenizer that last used it on this
// thread; cleared when another tokenizer uses the thread or when it is full (65536 words or 16 MiB of
// records). Compact, since a
// lookup is mostly a wait for memory: a table of 8-byte slots (hash tag << 32 | record offset + 1,
// 0 when free) and one record per word in `data`, 32-bit units: key length, id count, the key
// bytes (zero-padded to whole units), the ids.
constexpr size_t kWordCacheMaxBytes = 256;  // longer words are not cached
constexpr size_t kWordCacheMaxEntries = 1 << 16;
constexpr size_t kWordCacheMaxUnits = 1 << 22;  // 32-bit units of records
class WordCache {
 public:
  uint64_t owner = 0;

  void clear() {
    slots_.assign(1024, 0);
    data_.clear();
    size_ = 0;
  }
  // The ids of word w (and their count), or nullptr.
  const uint32_t* find(std::string_view w, uint64_t h, uint32_t& count) const {
    if (slots_.empty()) return nullptr;
    const size_t mask = slots_.size() - 1;
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      uint64_t sl = slots_[i];
      if (sl == 0) return nullptr;
      if (static_cast<uint32_t>(sl >> 32) != tag) continue;
      const uint32_t* r = data_.data() + (static_cast<uint32_t>(sl) - 1);
      if (r[0] != w.size() || std::memcmp(r + 2, w.data(), w.size()) != 0) continue;
      count = r[1];
      return r + 2 + (w.size() + 3) / 4;
    }
  }
  void insert(std::string_view w, uint64_t h, const uint32_t* ids, size_t count) {
    if (slots_.empty() || size_ >= kWordCacheMaxEntries || data_.size() >= kWordCacheMaxUnits) clear();
    if ((size_ + 1) * 4 > slots_.size() * 3) grow();
    size_t off = data_.size();
    size_t key_units = (w.size() + 3) / 4;
    data_.resize(off + 2 + key_units + count, 0);
    data_[off] = static_cast<uint32_t>(w.size());
    data_[off + 1] = static_cast<uint32_t>(count);
    std::memcpy(data_.data() + off + 2, w.data(), w.size());
    std::memcpy(data_.data() + off + 2 + key_units, ids, count * sizeof(uint32_t));
    place((h & 0xFFFFFFFF00000000ull) | (off + 1), h);
    size_++;
  }
  static uint64_t hash(std::string_view w) { return ByteMap<uint32_t>::hash(w.data(), w.size()); }

 private:
  void place(uint64_t slot, uint64_t h) {
    const size_t mask = slots_.size() - 1;
    size_t i = h & mask;
    while (slots_[i] != 0) i = (i + 1) & mask;
    slots_[i] = slot;
  }
  void grow() {
    std::vector<uint64_t> old(slots_.size() * 2, 0);
    old.swap(slots_);
    for (uint64_t sl : old) {
      if (sl == 0) continue;
      const uint32_t* r = data_.data() + (static_cast<uint32_t>(sl) - 1);
      place(sl, hash(std::string_view(reinterpret_cast<const char*>(r + 2), r[0])));
    }
  }
  std::vector<uint64_t> slots_;
  std::vector<uint32_t> data_;
  size_t size_ = 0;
};
thread_local WordCache t_word_cache;
std::atomic<uint64_t> g_next_hf_uid{1};

constexpr uint32_t kNoId = 0xFFFFFFFFu;
const std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 ▁, SentencePiece's space

}  // namespace

// ------------------------------------------------------------------ the pipeline

struct HfTokenizer::Impl {
  // normalizer
  enum class NormKind { prepend, replace, replace_regex, strip, runs_start, runs_end, runs_squeeze, nfc, nfd, nfkc, nfkd,
                        lowercase, strip_accents, bert, precompiled };
  struct Norm {
    NormKind kind;
    std::string a, b;
    bool left = false, right = false;
    int flags = 0;  // BertNormalizer: 1 clean_text, 2 handle_chinese_chars, 4 strip_accents, 8 lowercase
    std::shared_ptr<const Regex> regex;  // replace_regex
  };
  std::vector<Norm> norms;
  std::vector<CharsMap> charsmaps;  // Precompiled normalizers, by Norm::flags

  // pre-tokenizer
  enum class PreKind { byte_level, split_regex, split_string, metaspace, whitespace, whitespace_split, bert, digits, punctuation };
  struct Pre {
    PreKind kind;
    bool add_prefix_space = false, use_regex = true;
    Pattern pattern = Pattern::gpt2;
    std::string str;
    SplitBehavior behavior = SplitBehavior::isolated;
    bool invert = false;
    std::string replacement;  // metaspace
    int prepend = 0;          // metaspace: 0 always, 1 first, 2 never
    bool split = true;
    bool individual = false;  // digits
    std::shared_ptr<const Regex> regex;  // split_regex without a preset scanner
  };
  std::vector<Pre> pres;

  // model
  enum class ModelKind { bpe, wordpiece, wordlevel, unigram } model = ModelKind::bpe;
  std::unordered_map<std::string, uint32_t> vocab;  // filled while reading; then copied to vocab_fast
  ByteMap<uint32_t> vocab_fast;                     // the same map, for encoding (finish_model)
  bool vocab_fast_ready = false;
  uint32_t ascii_ids[128];                          // id of each one-byte token, kNoId when none
  PairMap merges;                                   // (a, b) -> (rank, merged id)
  // BPE: whether a word may be cut before each "▁" that follows another character (decided by
  // finish_model from the merges; true only when that never changes the ids).
  bool split_at_metaspace = false;
  // BPE: whether every token string has its own id and none is empty or needs the subword prefix
  // stripped (else the stale-candidate test of the heap merge can differ from a scan of the current
  // pairs, and every word takes the heap).
  bool scan_merges = true;
  uint64_t uid = g_next_hf_uid++;  // owner tag of the per-thread word cache
  int64_t unk_id = -1;
  std::string unk_token;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  std::string cont_prefix, end_suffix;
  size_t max_chars = 100;  // wordpiece
  std::vector<double> scores;  // unigram, by id
  double min_score = 0;
  size_t max_piece_bytes = 0;  // unigram
  int64_t byte_ids[256];  // id of "<0xXX>", -1 when the vocabulary lacks it

  // added tokens: by first byte, longest first
  struct AddedIndex {
    std::vector<std::vector<uint32_t>> by_byte = std::vector<std::vector<uint32_t>>(256);  // indices into added_
    uint8_t starts[256] = {};  // 1 for a byte that some token starts with
    bool any = false;
  };
  AddedIndex raw_added, norm_added;  // matched in the raw / the normalized text
  std::vector<std::string> added_match;                         // text each added token matches

  // decoder
  enum class DecKind { byte_level, replace, byte_fallback, fuse, strip, metaspace, wordpiece, bpe_suffix };
  struct Dec {
    DecKind kind;
    std::string a, b;
    size_t start = 0, stop = 0;
    int prepend = 0;
    bool cleanup = false;
    std::shared_ptr<const Regex> regex;  // replace with a Regex pattern
  };
  std::vector<Dec> decs;
  bool has_decoder = false;

  const HfTokenizer* owner = nullptr;

  // -------------------------------------------------------------- parsing
  void parse_normalizer(const Json& j) {
    if (j.is_null()) return;
    std::string t = type_of(j, "normalizer");
    if (t == "Sequence") {
      for (size_t i = 0; i < j["normalizers"].size(); i++) parse_normalizer(j["normalizers"].at(i));
    } else if (t == "Prepend") {
      norms.push_back({NormKind::prepend, j["prepend"].as_string(), ""});
    } else if (t == "Replace") {
      bool is_regex;
      std::string regex = pattern_of(j["pattern"], "Replace normalizer", is_regex);
      if (!is_regex) {
        norms.push_back({NormKind::replace, regex, j["content"].as_string()});
        return;
      }
      // SentencePiece's whitespace rules, \AX+, X+\z and X{2,} for one character X, run by hand
      // (Oniguruma's ^ and $ match at every line, so they are not these); other regexes by the engine.
      auto one_char = [](const std::string& x) { return !x.empty() && u8_len(x, 0) == x.size() && x != "\\"; };
      std::string body;
      NormKind kind = NormKind::replace;
      if (regex.size() > 3 && regex.compare(0, 2, "\\A") == 0 && regex.back() == '+') {
        body = regex.substr(2, regex.size() - 3);
        kind = NormKind::runs_start;
      } else if (regex.size() > 3 && regex.compare(regex.size() - 3, 3, "+\\z") == 0) {
        body = regex.substr(0, regex.size() - 3);
        kind = NormKind::runs_end;
      } else if (regex.size() > 4 && regex.compare(regex.size() - 4, 4, "{2,}") == 0) {
        body = regex.substr(0, regex.size() - 4);
        kind = NormKind::runs_squeeze;
      }
      if (!(one_char(body) && std::string(".[]()*+?{}|^$").find(body) == std::string::npos)) {
        Norm n{NormKind::replace_regex, "", j["content"].as_string()};
        n.regex = compile_regex(regex, "Replace normalizer");
        norms.push_back(n);
        return;
      }
      norms.push_back({kind, body, j["content"].as_string()});
    } else if (t == "Strip") {
      Norm n{NormKind::strip, "", ""};
      n.left = opt_bool(j, "strip_left", true);
      n.right = opt_bool(j, "strip_right", true);
      norms.push_back(n);
    } else if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") {
      norms.push_back({t == "NFC" ? NormKind::nfc : t == "NFD" ? NormKind::nfd : t == "NFKC" ? NormKind::nfkc : NormKind::nfkd, "", ""});
    } else if (t == "Precompiled") {
      std::string blob;
      const std::string b64 = opt_str(j, "precompiled_charsmap", "");
      PYLLAMA_CHECK(b64_decode(b64, blob), ValueError, "tokenizer.json: Precompiled's precompiled_charsmap is not base64");
      Norm n{NormKind::precompiled, "", ""};
      n.flags = static_cast<int>(charsmaps.size());
      charsmaps.emplace_back(blob);
      norms.push_back(n);
    } else if (t == "Lowercase") {
      norms.push_back({NormKind::lowercase, "", ""});
    } else if (t == "StripAccents") {
      norms.push_back({NormKind::strip_accents, "", ""});
    } else if (t == "BertNormalizer") {
      Norm n{NormKind::bert, "", ""};
      bool lower = opt_bool(j, "lowercase", true);
      n.flags = (opt_bool(j, "clean_text", true) ? 1 : 0) | (opt_bool(j, "handle_chinese_chars", true) ? 2 : 0) |
                (opt_bool(j, "strip_accents", lower) ? 4 : 0) | (lower ? 8 : 0);
      norms.push_back(n);
    } else {
      throw ValueError("tokenizer.json: normalizer '" + t +
                       "' is not supported (supported: Sequence, Prepend, Replace, Strip, NFC, NFD, NFKC, NFKD, "
                       "Lowercase, StripAccents, BertNormalizer, Precompiled)");
    }
  }

  void parse_pre(const Json& j) {
    if (j.is_null()) return;
    std::string t = type_of(j, "pre_tokenizer");
    Pre p{};
    if (t == "Sequence") {
      for (size_t i = 0; i < j["pretokenizers"].size(); i++) parse_pre(j["pretokenizers"].at(i));
      return;
    } else if (t == "ByteLevel") {
      p.kind = PreKind::byte_level;
      p.add_prefix_space = opt_bool(j, "add_prefix_space", true);
      p.use_regex = opt_bool(j, "use_regex", true);
    } else if (t == "Split") {
      bool is_regex;
      std::string s = pattern_of(j["pattern"], "Split pre-tokenizer", is_regex);
      p.behavior = behavior_from(j["behavior"].as_string());
      p.invert = opt_bool(j, "invert", false);
      if (is_regex) {
        // The presets' own scanners where they give the same pieces (fast); the engine otherwise.
        p.kind = PreKind::split_regex;
        if (!(p.behavior == SplitBehavior::isolated && !p.invert && known_regex(s, p.pattern)))
          p.regex = compile_regex(s, "Split pre-tokenizer");
      } else {
        p.kind = PreKind::split_string;
        p.str = s;
      }
    } else if (t == "Metaspace") {
      p.kind = PreKind::metaspace;
      parse_metaspace(j, p.replacement, p.prepend);
      p.split = opt_bool(j, "split", true);
    } else if (t == "Whitespace") {
      p.kind = PreKind::whitespace;
    } else if (t == "WhitespaceSplit") {
      p.kind = PreKind::whitespace_split;
    } else if (t == "BertPreTokenizer") {
      p.kind = PreKind::bert;
    } else if (t == "Digits") {
      p.kind = PreKind::digits;
      p.individual = opt_bool(j, "individual_digits", false);
    } else if (t == "Punctuation") {
      p.kind = PreKind::punctuation;
      p.behavior = behavior_from(opt_str(j, "behavior", "Isolated"));
    } else {
      throw ValueError("tokenizer.json: pre-tokenizer '" + t +
                       "' is not supported (supported: Sequence, ByteLevel, Split, Metaspace, Whitespace, "
                       "WhitespaceSplit, BertPreTokenizer, Digits, Punctuation)");
    }
    pres.push_back(p);
  }

  static void parse_metaspace(const Json& j, std::string& replacement, int& prepend) {
    replacement = opt_str(j, "replacement", "\xE2\x96\x81");
    PYLLAMA_CHECK(!replacement.empty() && u8_len(replacement, 0) == replacement.size(), ValueError,
                  "tokenizer.json: Metaspace replacement must be one character");
    std::string scheme = opt_str(j, "prepend_scheme", "");
    if (scheme.empty()) scheme = opt_bool(j, "add_prefix_space", true) ? "always" : "never";
    if (scheme == "always") prepend = 0;
    else if (scheme == "first") prepend = 1;
    else if (scheme == "never") prepend = 2;
    else throw ValueError("tokenizer.json: Metaspace prepend_scheme '" + scheme + "' is not always, first or never");
  }

  // After the model is read: the encoding tables, and for BPE the decision on split_at_metaspace.
  //
  // Cutting a word before a "▁" that follows another character gives the same ids when no merge can
  // join a symbol that ends at the cut with one that starts there. A symbol starting at a cut has an
  // id in S: "▁"'s, and the result of any merge whose left part is in S. A symbol ending at a cut
  // covers text that ends with a character other than "▁"; its id is in N: a one-character token
  // other than "▁", a byte token, <unk>, and the result of any merge whose right part is in N. So the
  // cut is exact when no merge has its left part in N and its right part in S. It also needs "▁" in
  // the vocabulary (else it is bytes or <unk>, and <unk>s fuse), an unk token (else an unknown
  // character is dropped and the characters beside it become adjacent), and no
  // continuing_subword_prefix / end_of_word_suffix / ignore_merges (they depend on the whole word).
  void finish_model() {
    for (const auto& [tok, id] : vocab) vocab_fast.insert(tok.data(), tok.size(), id);
    vocab_fast_ready = true;
    for (int c = 0; c < 128; c++) {
      char ch = static_cast<char>(c);
      int64_t id = lookup(std::string_view(&ch, 1));
      ascii_ids[c] = id < 0 ? kNoId : static_cast<uint32_t>(id);
    }
    if (model != ModelKind::bpe) return;
    size_t n_ids = 0;
    for (const auto& [tok, id] : vocab) n_ids = std::max(n_ids, size_t(id) + 1);
    std::vector<uint8_t> seen(n_ids, 0);
    for (const auto& [tok, id] : vocab) {
      if (seen[id] || tok.empty()) scan_merges = false;
      seen[id] = 1;
    }
    if (!cont_prefix.empty()) scan_merges = false;
    int64_t space = lookup(kMetaspace);
    if (space < 0 || unk_id < 0 || ignore_merges || !cont_prefix.empty() || !end_suffix.empty()) return;
    std::vector<uint8_t> in_s(n_ids, 0), in_n(n_ids, 0);
    in_s[size_t(space)] = 1;
    for (const auto& [tok, id] : vocab)
      if (!tok.empty() && u8_len(tok, 0) == tok.size() && tok != kMetaspace) in_n[id] = 1;
    for (int64_t b : byte_ids)
      if (b >= 0) in_n[size_t(b)] = 1;
    in_n[size_t(unk_id)] = 1;
    for (bool changed = true; changed;) {
      changed = false;
      merges.for_each([&](uint32_t a, uint32_t b, uint32_t, uint32_t c) {
        if (in_s[a] && !in_s[c]) in_s[c] = changed = true;
        if (in_n[b] && !in_n[c]) in_n[c] = changed = true;
      });
    }
    bool exact = true;
    merges.for_each([&](uint32_t a, uint32_t b, uint32_t, uint32_t) { exact = exact && !(in_n[a] && in_s[b]); });
    split_at_metaspace = exact;
  }

  void parse_decoder(const Json& j) {
    if (j.is_null()) return;
    std::string t = type_of(j, "decoder");
    Dec d{};
    if (t == "Sequence") {
      for (size_t i = 0; i < j["decoders"].size(); i++) parse_decoder(j["decoders"].at(i));
      return;
    } else if (t == "ByteLevel") {
      d.kind = DecKind::byte_level;
    } else if (t == "Replace") {
      d.kind = DecKind::replace;
      bool is_regex;
      d.a = pattern_of(j["pattern"], "Replace decoder", is_regex);
      d.b = j["content"].as_string();
      if (is_regex) d.regex = compile_regex(d.a, "Replace decoder");
    } else if (t == "ByteFallback") {
      d.kind = DecKind::byte_fallback;
    } else if (t == "Fuse") {
      d.kind = DecKind::fuse;
    } else if (t == "Strip") {
      d.kind = DecKind::strip;
      d.a = j["content"].as_string();
      d.start = static_cast<size_t>(j["start"].as_int());
      d.stop = static_cast<size_t>(j["stop"].as_int());
    } else if (t == "Metaspace") {
      d.kind = DecKind::metaspace;
      parse_metaspace(j, d.a, d.prepend);
    } else if (t == "WordPiece") {
      d.kind = DecKind::wordpiece;
      d.a = opt_str(j, "prefix", "##");
      d.cleanup = opt_bool(j, "cleanup", true);
    } else if (t == "BPEDecoder") {
      d.kind = DecKind::bpe_suffix;
      d.a = opt_str(j, "suffix", "</w>");
    } else {
      throw ValueError("tokenizer.json: decoder '" + t +
                       "' is not supported (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                       "Metaspace, WordPiece, BPEDecoder)");
    }
    decs.push_back(d);
    has_decoder = true;
  }

  // -------------------------------------------------------------- normalizer
  std::string normalize(std::string s) const {
    for (const Norm& n : norms) {
      switch (n.kind) {
        case NormKind::prepend:
          if (!s.empty()) s.insert(0, n.a);
          break;
        case NormKind::replace: s = replace_all(s, n.a, n.b); break;
        case NormKind::replace_regex:
          if (!s.empty()) s = regex_replace(*n.regex, s, n.b);
          break;
        case NormKind::strip: {
          Chars c(s);
          size_t a = 0, e = c.size();
          if (n.left)
            while (a < e && is_space(c.cp[a])) a++;
          if (n.right)
            while (e > a && is_space(c.cp[e - 1])) e--;
          s = s.substr(c.off[a], c.off[e] - c.off[a]);
          break;
        }
        case NormKind::nfc: s = unicode_normalize(s, false, true); break;
        case NormKind::nfd: s = unicode_normalize(s, false, false); break;
        case NormKind::nfkc: s = unicode_normalize(s, true, true); break;
        case NormKind::nfkd: s = unicode_normalize(s, true, false); break;
        case NormKind::lowercase: s = unicode_lower(s); break;
        case NormKind::precompiled: s = charsmaps[static_cast<size_t>(n.flags)].normalize(s); break;
        case NormKind::strip_accents: s = drop_marks(s, false); break;
        case NormKind::bert: s = bert_normalize(s, n.flags & 1, n.flags & 2, n.flags & 4, n.flags & 8); break;
        case NormKind::runs_start: {
          size_t k = 0;
          while (s.compare(k, n.a.size(), n.a) == 0 && k < s.size()) k += n.a.size();
          if (k > 0) s = n.b + s.substr(k);
          break;
        }
        case NormKind::runs_end: {
          size_t k = s.size();
          while (k >= n.a.size() && s.compare(k - n.a.size(), n.a.size(), n.a) == 0) k -= n.a.size();
          if (k < s.size()) s = s.substr(0, k) + n.b;
          break;
        }
        case NormKind::runs_squeeze: {  // each run of two or more n.a becomes n.b
          size_t j = 0;
          if (n.a.size() == 1) {
            while (j + 1 < s.size() && !(s[j] == n.a[0] && s[j + 1] == n.a[0])) j++;
            if (j + 1 >= s.size()) break;  // no run of two
          } else {
            j = s.find(n.a);
            while (j != std::string::npos && s.compare(j + n.a.size(), n.a.size(), n.a) != 0) j = s.find(n.a, j + n.a.size());
            if (j == std::string::npos) break;
          }
          std::string out;
          out.reserve(s.size());
          size_t i = 0;
          for (; (j = s.find(n.a, i)) != std::string::npos; i = j) {
            out.append(s, i, j - i);
            size_t run = 0;
            for (; s.compare(j, n.a.size(), n.a) == 0; j += n.a.size()) run++;
            out += run >= 2 ? n.b : n.a;
          }
          out.append(s, i, std::string::npos);
          s = std::move(out);
          break;
        }
      }
    }
    return s;
  }

  // -------------------------------------------------------------- pre-tokenizer
  struct Piece {
    std::string s;
    bool first;  // starts at offset 0 of the original text
  };

  void pre_tokenize(std::vector<Piece>& pieces) const {
    for (const Pre& p : pres) {
      std::vector<Piece> next;
      for (Piece& pc : pieces) {
        std::vector<std::string> out;
        switch (p.kind) {
          case PreKind::byte_level: {
            std::string s = std::move(pc.s);
            if (p.add_prefix_space && (s.empty() || s[0] != ' ')) s = " " + s;
            std::vector<std::string> parts;
            if (p.use_regex) {
              PieceScanner sc(Pattern::gpt2, s);
              std::string_view v;
              while (sc.next(v)) parts.emplace_back(v);
            } else {
              parts.push_back(std::move(s));
            }
            const auto& b2c = byte_to_char();
            for (auto& part : parts) {
              std::string m;
              for (unsigned char ch : part) m += b2c[ch];
              out.push_back(std::move(m));
            }
            break;
          }
          case PreKind::split_regex: {
            if (p.regex) {
              split_spans(pc.s, regex_spans(*p.regex, pc.s), p.behavior, p.invert, out);
              break;
            }
            PieceScanner sc(p.pattern, pc.s);
            std::string_view v;
            while (sc.next(v)) out.emplace_back(v);
            break;
          }
          case PreKind::split_string: split_string(pc.s, p.str, p.behavior, p.invert, out); break;
          case PreKind::metaspace: {
            std::string s = replace_all(pc.s, " ", p.replacement);
            bool starts = s.compare(0, p.replacement.size(), p.replacement) == 0;
            if (!starts && (p.prepend == 0 || (p.prepend == 1 && pc.first))) s = p.replacement + s;
            if (p.split) {
              split_string(s, p.replacement, SplitBehavior::merged_next, false, out);
            } else {
              out.push_back(std::move(s));
            }
            break;
          }
          case PreKind::whitespace: {
            // \w+|[^\w\s]+ ; whitespace dropped
            Chars c(pc.s);
            size_t i = 0;
            while (i < c.size()) {
              if (is_space(c.cp[i])) {
                i++;
                continue;
              }
              bool w = is_word(c.cp[i]);
              size_t j = i + 1;
              while (j < c.size() && !is_space(c.cp[j]) && is_word(c.cp[j]) == w) j++;
              out.emplace_back(pc.s.substr(c.off[i], c.off[j] - c.off[i]));
              i = j;
            }
            break;
          }
          case PreKind::whitespace_split: split_chars(pc.s, SplitBehavior::removed, is_space, out); break;
          case PreKind::bert: {
            std::vector<std::string> words;
            split_chars(pc.s, SplitBehavior::removed, is_space, words);
            for (auto& w : words) split_chars(w, SplitBehavior::isolated, is_punct, out);
            break;
          }
          case PreKind::digits:
            split_chars(pc.s, p.individual ? SplitBehavior::isolated : SplitBehavior::contiguous, is_numeric, out);
            break;
          case PreKind::punctuation: split_chars(pc.s, p.behavior, is_punct, out); break;
        }
        bool first = pc.first;
        for (auto& o : out) {
          next.push_back({std::move(o), first});
          first = false;
        }
      }
      pieces = std::move(next);
    }
  }

  // -------------------------------------------------------------- models
  int64_t lookup(std::string_view s) const {
    if (vocab_fast_ready) {
      const uint32_t* id = vocab_fast.find(s.data(), s.size());
      return id ? static_cast<int64_t>(*id) : -1;
    }
    auto it = vocab.find(std::string(s));
    return it == vocab.end() ? -1 : static_cast<int64_t>(it->second);
  }

  void model_encode(std::string_view w, std::vector<uint32_t>& out) const {
    if (w.empty()) return;
    switch (model) {
      case ModelKind::bpe: bpe(w, out); break;
      case ModelKind::wordpiece: wordpiece(w, out); break;
      case ModelKind::wordlevel: {
        int64_t id = lookup(w);
        if (id < 0) {
          PYLLAMA_CHECK(unk_id >= 0, ValueError, "WordLevel: '" << w << "' is not in the vocabulary and there is no unk_token");
          id = unk_id;
        }
        out.push_back(static_cast<uint32_t>(id));
        break;
      }
      case ModelKind::unigram: unigram(w, out); break;
    }
  }

  // Whether every byte of w[a, e) has a "<0xXX>" token (else byte fallback gives <unk>, as in `tokenizers`).
  bool has_bytes(std::string_view w, size_t a, size_t e) const {
    for (size_t k = a; k < e; k++)
      if (byte_ids[static_cast<unsigned char>(w[k])] < 0) return false;
    return true;
  }

  // BPE of a word: with split_at_metaspace, the parts between cuts (before each "▁" that follows
  // another character) are merged separately, which gives the same ids (see finish_model); each
  // part goes through the per-thread word cache.
  void bpe(std::string_view w, std::vector<uint32_t>& out) const {
    if (ignore_merges) {
      int64_t id = lookup(w);
      if (id >= 0) {
        out.push_back(static_cast<uint32_t>(id));
        return;
      }
    }
    WordCache& cache = t_word_cache;
    if (cache.owner != uid) {
      cache.clear();
      cache.owner = uid;
    }
    if (!split_at_metaspace) {
      bpe_cached(w, cache, out);
      return;
    }
    size_t start = 0;
    for (size_t p = w.find(kMetaspace, 1); p != std::string_view::npos; p = w.find(kMetaspace, p + kMetaspace.size())) {
      if (p >= kMetaspace.size() && w.compare(p - kMetaspace.size(), kMetaspace.size(), kMetaspace) == 0) continue;
      bpe_cached(w.substr(start, p - start), cache, out);
      start = p;
    }
    bpe_cached(w.substr(start), cache, out);
  }

  void bpe_cached(std::string_view w, WordCache& cache, std::vector<uint32_t>& out) const {
    if (w.size() > kWordCacheMaxBytes) {
      bpe_word(w, out);
      return;
    }
    const uint64_t h = WordCache::hash(w);
    uint32_t count = 0;
    if (const uint32_t* ids = cache.find(w, h, count)) {
      for (uint32_t k = 0; k < count; k++) out.push_back(ids[k]);
      return;
    }
    size_t before = out.size();
    bpe_word(w, out);
    cache.insert(w, h, out.data() + before, out.size() - before);
  }

  // The symbols of a word before merging: each char's token (with the continuing-subword prefix and
  // end-of-word suffix), else its byte tokens (byte fallback), else <unk> (adjacent ones fused with
  // fuse_unk), else nothing, as `tokenizers` does.
  void bpe_symbols(std::string_view w, std::vector<uint32_t>& syms) const {
    const bool plain = cont_prefix.empty() && end_suffix.empty();
    bool prev_unk = false;
    for (size_t i = 0; i < w.size();) {
      size_t n = u8_len(w, i);
      unsigned char c0 = static_cast<unsigned char>(w[i]);
      int64_t id;
      if (plain && c0 < 0x80) {
        id = ascii_ids[c0] == kNoId ? -1 : static_cast<int64_t>(ascii_ids[c0]);
      } else if (plain) {
        id = lookup(w.substr(i, n));
      } else {
        std::string ch(w.substr(i, n));
        if (!cont_prefix.empty() && i > 0) ch = cont_prefix + ch;
        if (!end_suffix.empty() && i + n == w.size()) ch += end_suffix;
        id = lookup(ch);
      }
      if (id >= 0) {
        syms.push_back(static_cast<uint32_t>(id));
        prev_unk = false;
      } else if (byte_fallback && has_bytes(w, i, i + n)) {
        for (size_t k = i; k < i + n; k++) syms.push_back(static_cast<uint32_t>(byte_ids[static_cast<unsigned char>(w[k])]));
        prev_unk = false;
      } else if (unk_id >= 0 && !(fuse_unk && prev_unk)) {  // without unk_id `tokenizers` drops the char
        syms.push_back(static_cast<uint32_t>(unk_id));
        prev_unk = true;
      }
      i += n;
    }
  }

  // Merges a word's symbols, always the pair of lowest rank, leftmost on ties (what `tokenizers`'
  // heap does): words up to kScanSymbols by scanning the pair ranks, longer ones with a heap.
  static constexpr size_t kScanSymbols = 64;
  void bpe_word(std::string_view w, std::vector<uint32_t>& out) const {
    std::vector<uint32_t> syms;
    syms.reserve(w.size() + 1);
    bpe_symbols(w, syms);
    size_t n = syms.size();
    if (n <= kScanSymbols && scan_merges) {
      uint32_t rank[kScanSymbols], merged[kScanSymbols];  // of the pair (syms[i], syms[i + 1])
      auto pair = [&](size_t i) {
        const PairMap::Entry* e = merges.find(syms[i], syms[i + 1]);
        rank[i] = e ? e->rank : kNoId;
        merged[i] = e ? e->id : 0;
      };
      for (size_t i = 0; i + 1 < n; i++) pair(i);
      while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
          if (rank[i] < rank[best]) best = i;
        if (rank[best] == kNoId) break;
        syms[best] = merged[best];
        for (size_t k = best + 1; k + 1 < n; k++) syms[k] = syms[k + 1];
        for (size_t k = best + 1; k + 2 < n; k++) {
          rank[k] = rank[k + 1];
          merged[k] = merged[k + 1];
        }
        n--;
        if (best > 0) pair(best - 1);
        if (best + 1 < n) pair(best);
      }
      out.insert(out.end(), syms.begin(), syms.begin() + static_cast<std::ptrdiff_t>(n));
      return;
    }
    struct Sym {
      uint32_t id;
      int prev, next;
      bool live;
    };
    std::vector<Sym> s(n);
    for (size_t i = 0; i < n; i++) s[i] = {syms[i], int(i) - 1, i + 1 < n ? int(i) + 1 : -1, true};
    struct Cand {
      uint32_t rank;
      int pos;
      uint32_t new_id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> q;
    auto push = [&](int i) {
      if (i < 0 || s[i].next < 0) return;
      if (const PairMap::Entry* e = merges.find(s[i].id, s[s[i].next].id)) q.push({e->rank, i, e->id});
    };
    for (int i = 0; i + 1 < int(n); i++) push(i);
    while (!q.empty()) {
      Cand top = q.top();
      q.pop();
      Sym& a = s[top.pos];
      if (!a.live || a.next < 0) continue;
      // a stale candidate: the pair changed since it was pushed (`tokenizers`' test)
      const PairMap::Entry* e = merges.find(a.id, s[a.next].id);
      if (!e || e->id != top.new_id) continue;
      Sym& b = s[a.next];
      a.id = top.new_id;
      b.live = false;
      a.next = b.next;
      if (a.next >= 0) s[a.next].prev = top.pos;
      push(a.prev);
      push(top.pos);
    }
    for (int i = n ? 0 : -1; i >= 0; i = s[i].next) out.push_back(s[i].id);
  }

  void wordpiece(std::string_view w, std::vector<uint32_t>& out) const {
    Chars c(w);
    if (c.size() > max_chars) {
      PYLLAMA_CHECK(unk_id >= 0, ValueError, "WordPiece: unk_token is not in the vocabulary");
      out.push_back(static_cast<uint32_t>(unk_id));
      return;
    }
    std::vector<uint32_t> sub;
    size_t start = 0;
    while (start < c.size()) {
      size_t end = c.size();
      int64_t found = -1;
      while (start < end) {
        std::string s(w.substr(c.off[start], c.off[end] - c.off[start]));
        if (start > 0) s = cont_prefix + s;
        found = lookup(s);
        if (found >= 0) break;
        end--;
      }
      if (found < 0) {
        PYLLAMA_CHECK(unk_id >= 0, ValueError, "WordPiece: unk_token is not in the vocabulary");
        out.push_back(static_cast<uint32_t>(unk_id));
        return;
      }
      sub.push_back(static_cast<uint32_t>(found));
      start = end;
    }
    out.insert(out.end(), sub.begin(), sub.end());
  }

  void unigram(std::string_view w, std::vector<uint32_t>& out) const {
    // Viterbi over byte positions that start chars: best[i] = best score of w[0..i).
    Chars c(w);
    size_t n = c.size();
    const double kUnkPenalty = 10.0;
    std::vector<double> best(n + 1, -1e300);
    std::vector<int64_t> best_id(n + 1, -1);
    std::vector<size_t> best_from(n + 1, 0);
    best[0] = 0;
    for (size_t i = 0; i < n; i++) {
      if (best[i] <= -1e299) continue;
      bool single = false;
      for (size_t j = i + 1; j <= n && c.off[j] - c.off[i] <= max_piece_bytes; j++) {
        int64_t id = lookup(w.substr(c.off[i], c.off[j] - c.off[i]));
        // Special tokens come only from the added-token pass, never from the lattice (as in SentencePiece,
        // whose control pieces are not matched in text).
        if (id < 0 || owner->is_special(static_cast<uint32_t>(id))) continue;
        if (j == i + 1) single = true;
        double sc = best[i] + scores[static_cast<size_t>(id)];
        if (sc > best[j]) {
          best[j] = sc;
          best_id[j] = id;
          best_from[j] = i;
        }
      }
      if (!single) {
        double sc = best[i] + min_score - kUnkPenalty;
        if (sc > best[i + 1]) {
          best[i + 1] = sc;
          best_id[i + 1] = -2;  // unknown char
          best_from[i + 1] = i;
        }
      }
    }
    std::vector<std::pair<size_t, int64_t>> path;  // (start char, id or -2)
    for (size_t j = n; j > 0; j = best_from[j]) path.emplace_back(best_from[j], best_id[j]);
    std::reverse(path.begin(), path.end());
    // `tokenizers` fuses adjacent unknown pieces, then byte fallback spells each unknown piece in bytes.
    for (size_t k = 0; k < path.size(); k++) {
      if (path[k].second != -2) {
        out.push_back(static_cast<uint32_t>(path[k].second));
        continue;
      }
      size_t a = path[k].first, e = k + 1 < path.size() ? path[k + 1].first : n;
      while (k + 1 < path.size() && path[k + 1].second == -2) {
        k++;
        e = k + 1 < path.size() ? path[k + 1].first : n;
      }
      if (byte_fallback && has_bytes(w, c.off[a], c.off[e])) {
        for (size_t b = c.off[a]; b < c.off[e]; b++)
          out.push_back(static_cast<uint32_t>(byte_ids[static_cast<unsigned char>(w[b])]));
      } else {
        PYLLAMA_CHECK(unk_id >= 0, ValueError, "Unigram: text has a character outside the vocabulary and no unk_id");
        out.push_back(static_cast<uint32_t>(unk_id));
      }
    }
  }

  // -------------------------------------------------------------- added tokens
  // Splits text at added tokens of one kind (raw or normalized). Calls seg(text piece, at_start)
  // for text between them and tok(id) for each match.
  template <class Seg, class Tok>
  void split_added(std::string_view text, bool at_start, const AddedIndex& index, const std::vector<uint32_t>* allowed,
                   Seg seg, Tok tok) const {
    if (!index.any) {
      if (!text.empty()) seg(text, at_start);
      return;
    }
    const auto& added = owner->added_;
    size_t start_offset = 0, i = 0;
    while (i < text.size()) {
      if (!index.starts[static_cast<unsigned char>(text[i])]) {
        i++;
        continue;
      }
      const auto& cands = index.by_byte[static_cast<unsigned char>(text[i])];
      int64_t hit = -1;
      for (uint32_t k : cands) {
        const std::string& m = added_match[k];
        if (allowed && added[k].special && !std::binary_search(allowed->begin(), allowed->end(), added[k].id)) continue;
        if (text.compare(i, m.size(), m) == 0) {
          hit = k;
          break;  // longest first
        }
      }
      if (hit < 0) {
        i++;
        continue;
      }
      const HfAddedToken& a = added[static_cast<size_t>(hit)];
      size_t start = i, stop = i + added_match[static_cast<size_t>(hit)].size();
      i = stop;
      if (a.single_word) {
        auto last_is_word = [&](size_t end) {
          if (end == 0) return false;
          size_t b = end - 1;
          while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) b--;
          uint32_t cp = u8_cp(text, b, u8_len(text, b));
          return is_alnum(cp) || cp == '_';
        };
        bool start_ok = start == 0 || !last_is_word(start);
        bool stop_ok = true;
        if (stop < text.size()) {
          uint32_t cp = u8_cp(text, stop, u8_len(text, stop));
          stop_ok = !(is_alnum(cp) || cp == '_');
        }
        if (!start_ok || !stop_ok) continue;
      }
      if (a.lstrip) {
        Chars c(text.substr(start_offset, start - start_offset));
        size_t k = c.size();
        while (k > 0 && is_space(c.cp[k - 1])) k--;
        start = start_offset + c.off[k];
      }
      if (a.rstrip) {
        while (stop < text.size()) {
          size_t n = u8_len(text, stop);
          if (!is_space(u8_cp(text, stop, n))) break;
          stop += n;
        }
        i = stop;
      }
      if (start_offset < start) seg(text.substr(start_offset, start - start_offset), at_start && start_offset == 0);
      tok(a.id);
      start_offset = stop;
    }
    if (start_offset < text.size()) seg(text.substr(start_offset), at_start && start_offset == 0);
  }

  // Calls piece(normalized text, starts the text) for the text between added tokens and tok(id) for
  // each added token, in order.
  template <class PieceFn, class TokFn>
  void for_each_segment(std::string_view text, const std::vector<uint32_t>* allowed, PieceFn piece, TokFn tok) const {
    split_added(
        text, true, raw_added, allowed,
        [&](std::string_view s, bool first) {
          std::string n;
          n.reserve(s.size() + s.size() / 2 + 8);  // room for what normalizers add (a Prepend)
          n.assign(s);
          n = normalize(std::move(n));
          split_added(n, first, norm_added, allowed, piece, tok);
        },
        tok);
  }

  // Pieces for the model and ids of added tokens, in order: (piece, -1) or ("", id).
  void segments(std::string_view text, const std::vector<uint32_t>* allowed,
                std::vector<std::pair<Piece, int64_t>>& out) const {
    for_each_segment(
        text, allowed, [&](std::string_view t, bool first) { out.push_back({Piece{std::string(t), first}, -1}); },
        [&](uint32_t id) { out.push_back({Piece{std::string(), false}, id}); });
  }

  // -------------------------------------------------------------- decoder
  std::string decode_tokens(std::vector<std::string> toks) const {
    if (!has_decoder) {
      std::string s;
      for (size_t i = 0; i < toks.size(); i++) s += (i ? " " : "") + toks[i];
      return s;
    }
    for (const Dec& d : decs) {
      std::vector<std::string> next;
      switch (d.kind) {
        case DecKind::byte_level: {
          std::string s;
          for (auto& t : toks) {
            Chars c(t);
            std::string b;
            bool ok = true;
            for (uint32_t cp : c.cp) {
              int v = char_to_byte(cp);
              if (v < 0) {
                ok = false;
                break;
              }
              b += static_cast<char>(v);
            }
            s += ok ? b : t;
          }
          next.push_back(valid_utf8(s));
          break;
        }
        case DecKind::replace:
          for (auto& t : toks) next.push_back(d.regex ? regex_replace(*d.regex, t, d.b) : replace_all(t, d.a, d.b));
          break;
        case DecKind::byte_fallback: {
          std::string bytes;
          size_t nbytes = 0;
          auto flush = [&] {
            if (!nbytes) return;
            if (valid_utf8(bytes) == bytes) {
              next.push_back(bytes);
            } else {
              for (size_t k = 0; k < nbytes; k++) next.push_back("\xEF\xBF\xBD");
            }
            bytes.clear();
            nbytes = 0;
          };
          for (auto& t : toks) {
            int v = byte_token(t);
            if (v >= 0) {
              bytes += static_cast<char>(v);
              nbytes++;
            } else {
              flush();
              next.push_back(t);
            }
          }
          flush();
          break;
        }
        case DecKind::fuse: {
          std::string s;
          for (auto& t : toks) s += t;
          next.push_back(s);
          break;
        }
        case DecKind::strip:
          for (auto& t : toks) {
            Chars c(t);
            size_t a = 0, e = c.size();
            std::string_view content = d.a;
            uint32_t cc = content.empty() ? 0 : u8_cp(content, 0, u8_len(content, 0));
            while (a < d.start && a < e && c.cp[a] == cc) a++;
            size_t k = 0;
            while (k < d.stop && e > a && c.cp[e - 1] == cc) {
              e--;
              k++;
            }
            next.push_back(t.substr(c.off[a], c.off[e] - c.off[a]));
          }
          break;
        case DecKind::metaspace:
          for (size_t i = 0; i < toks.size(); i++) {
            std::string s;
            if (i == 0 && d.prepend != 2) s = replace_all(toks[i], d.a, "");
            else s = replace_all(toks[i], d.a, " ");
            next.push_back(s);
          }
          break;
        case DecKind::wordpiece:
          for (size_t i = 0; i < toks.size(); i++) {
            std::string t = toks[i];
            if (i > 0) {
              if (t.compare(0, d.a.size(), d.a) == 0) t = t.substr(d.a.size());
              else t = " " + t;
            }
            if (d.cleanup) t = cleanup(t);
            next.push_back(t);
          }
          break;
        case DecKind::bpe_suffix:
          for (size_t i = 0; i < toks.size(); i++)
            next.push_back(replace_all(toks[i], d.a, i + 1 == toks.size() ? "" : " "));
          break;
      }
      toks = std::move(next);
    }
    std::string s;
    for (auto& t : toks) s += t;
    return s;
  }

  static std::string cleanup(const std::string& s) {
    std::string t = s;
    for (auto [a, b] : {std::pair<const char*, const char*>{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","},
                        {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"},
                        {" 've", "'ve"}, {" 're", "'re"}})
      t = replace_all(t, a, b);
    return t;
  }

  // "<0xAB>" -> 0xAB, else -1.
  static int byte_token(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
      char ch = t[k];
      int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }

  // Lossy UTF-8 as Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
  static std::string valid_utf8(const std::string& s) {
    std::string out;
    size_t i = 0;
    const unsigned char* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t n = s.size();
    while (i < n) {
      unsigned char c = p[i];
      if (c < 0x80) {
        out += static_cast<char>(c);
        i++;
        continue;
      }
      size_t need = 0;
      unsigned char lo = 0x80, hi = 0xBF;
      if (c >= 0xC2 && c <= 0xDF) need = 1;
      else if (c == 0xE0) need = 2, lo = 0xA0;
      else if (c >= 0xE1 && c <= 0xEC) need = 2;
      else if (c == 0xED) need = 2, hi = 0x9F;
      else if (c >= 0xEE && c <= 0xEF) need = 2;
      else if (c == 0xF0) need = 3, lo = 0x90;
      else if (c >= 0xF1 && c <= 0xF3) need = 3;
      else if (c == 0xF4) need = 3, hi = 0x8F;
      if (need == 0) {
        out += "\xEF\xBF\xBD";
        i++;
        continue;
      }
      size_t k = 1;
      for (; k <= need && i + k < n; k++) {
        unsigned char b = p[i + k];
        unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b < l || b > h) break;
      }
      if (k == need + 1) {
        out.append(s, i, need + 1);
        i += need + 1;
      } else {
        out += "\xEF\xBF\xBD";
        i += k;
      }
    }
    return out;
  }
};

// ------------------------------------------------------------------ HfTokenizer

HfTokenizer::~HfTokenizer() = default;

HfTokenizer::HfTokenizer(const std::string& json_text) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.owner = this;
  Json j = Json::parse(json_text);
  PYLLAMA_CHECK(j.kind() == Json::Kind::object && j.has("model"), ValueError,
                "tokenizer.json: no \"model\" object (is this a Hugging Face tokenizer.json?)");
  if (j.has("truncation") && !j["truncation"].is_null())
    throw ValueError("tokenizer.json: \"truncation\" is set; pyllama does not truncate (set it to null)");
  if (j.has("padding") && !j["padding"].is_null())
    throw ValueError("tokenizer.json: \"padding\" is set; pyllama does not pad (set it to null)");

  // ---- model
  const Json& mj = j["model"];
  // Ids may leave holes, but not more than a few: a bound keeps a corrupt id from allocating gigabytes.
  const size_t n_entries = (mj.has("vocab") ? mj["vocab"].size() : 0) + (j.has("added_tokens") ? j["added_tokens"].size() : 0);
  const int64_t max_id = static_cast<int64_t>(n_entries) + 65536;
  model_type_ = mj.has("type") ? mj["type"].as_string() : std::string();
  auto add_vocab = [&](const std::string& tok, uint32_t id) {
    m.vocab[tok] = id;
    if (id_to_token_.size() <= id) id_to_token_.resize(size_t(id) + 1);
    id_to_token_[id] = tok;
  };
  if (model_type_.empty()) {
    // Old files: a BPE model without a type has "merges"; WordPiece has "continuing_subword_prefix" only.
    PYLLAMA_CHECK(mj.has("merges"), ValueError, "tokenizer.json: the model has no \"type\"");
    model_type_ = "BPE";
  }
  if (model_type_ == "BPE" || model_type_ == "WordPiece" || model_type_ == "WordLevel") {
    const Json& vj = mj["vocab"];
    PYLLAMA_CHECK(vj.kind() == Json::Kind::object, ValueError, "tokenizer.json: model.vocab is not an object");
    for (const auto& [tok, id] : vj.items()) {
      int64_t v = id.as_int();
      PYLLAMA_CHECK(v >= 0 && v < max_id, ValueError,
                    "tokenizer.json: vocab id " << v << " of '" << tok << "' is out of range (the file has "
                                                << n_entries << " tokens)");
      add_vocab(tok, static_cast<uint32_t>(v));
    }
    m.unk_token = opt_str(mj, "unk_token", "");
    if (!m.unk_token.empty()) m.unk_id = m.lookup(m.unk_token);
  }
  if (model_type_ == "BPE") {
    m.model = Impl::ModelKind::bpe;
    if (mj.has("dropout") && !mj["dropout"].is_null() && mj["dropout"].as_number() > 0)
      throw ValueError("tokenizer.json: BPE dropout is set; pyllama encodes deterministically (set it to null)");
    m.byte_fallback = opt_bool(mj, "byte_fallback", false);
    m.fuse_unk = opt_bool(mj, "fuse_unk", false);
    m.ignore_merges = opt_bool(mj, "ignore_merges", false);
    m.cont_prefix = opt_str(mj, "continuing_subword_prefix", "");
    m.end_suffix = opt_str(mj, "end_of_word_suffix", "");
    const Json& mg = mj["merges"];
    for (size_t r = 0; r < mg.size(); r++) {
      const Json& e = mg.at(r);
      std::string a, b;
      if (e.kind() == Json::Kind::string) {
        const std::string& s = e.as_string();
        size_t sp = s.find(' ');
        PYLLAMA_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, ValueError,
                      "tokenizer.json: merge " << r << " '" << s << "' is not two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        PYLLAMA_CHECK(e.kind() == Json::Kind::array && e.size() == 2, ValueError,
                      "tokenizer.json: merge " << r << " is not a pair of tokens");
        a = e.at(0).as_string();
        b = e.at(1).as_string();
      }
      int64_t ia = m.lookup(a), ib = m.lookup(b);
      std::string ab = a + (m.cont_prefix.empty() || b.compare(0, m.cont_prefix.size(), m.cont_prefix) != 0
                                ? b
                                : b.substr(m.cont_prefix.size()));
      int64_t iab = m.lookup(ab);
      PYLLAMA_CHECK(ia >= 0 && ib >= 0, ValueError,
                    "tokenizer.json: merge " << r << " ('" << a << "' '" << b << "') names a token not in the vocabulary");
      PYLLAMA_CHECK(iab >= 0, ValueError,
                    "tokenizer.json: merge " << r << " makes '" << ab << "', which is not in the vocabulary");
      m.merges.insert(static_cast<uint32_t>(ia), static_cast<uint32_t>(ib), static_cast<uint32_t>(r),
                      static_cast<uint32_t>(iab));
    }
  } else if (model_type_ == "WordPiece") {
    m.model = Impl::ModelKind::wordpiece;
    m.cont_prefix = opt_str(mj, "continuing_subword_prefix", "##");
    m.max_chars = mj.has("max_input_chars_per_word") ? static_cast<size_t>(mj["max_input_chars_per_word"].as_int()) : 100;
  } else if (model_type_ == "WordLevel") {
    m.model = Impl::ModelKind::wordlevel;
  } else if (model_type_ == "Unigram") {
    m.model = Impl::ModelKind::unigram;
    const Json& vj = mj["vocab"];
    m.min_score = 1e300;
    for (size_t i = 0; i < vj.size(); i++) {
      const Json& e = vj.at(i);
      PYLLAMA_CHECK(e.kind() == Json::Kind::array && e.size() == 2, ValueError,
                    "tokenizer.json: Unigram vocab entry " << i << " is not [piece, score]");
      const std::string& piece = e.at(0).as_string();
      double sc = e.at(1).as_number();
      if (!m.vocab.count(piece)) m.vocab[piece] = static_cast<uint32_t>(i);
      if (id_to_token_.size() <= i) id_to_token_.resize(i + 1);
      id_to_token_[i] = piece;
      m.scores.push_back(sc);
      m.min_score = std::min(m.min_score, sc);
      m.max_piece_bytes = std::max(m.max_piece_bytes, piece.size());
    }
    if (m.scores.empty()) m.min_score = 0;
    if (mj.has("unk_id") && !mj["unk_id"].is_null()) {
      m.unk_id = mj["unk_id"].as_int();
      PYLLAMA_CHECK(m.unk_id >= 0 && size_t(m.unk_id) < m.scores.size(), ValueError,
                    "tokenizer.json: Unigram unk_id " << m.unk_id << " is outside the vocabulary");
    }
    m.byte_fallback = opt_bool(mj, "byte_fallback", false);
  } else {
    throw ValueError("tokenizer.json: model type '" + model_type_ +
                     "' is not supported (supported: BPE, WordPiece, WordLevel, Unigram)");
  }
  for (int b = 0; b < 256; b++) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    m.byte_ids[b] = m.byte_fallback ? m.lookup(name) : -1;
  }
  m.finish_model();
  for (size_t i = 0; i < id_to_token_.size(); i++)
    if (!id_to_token_[i].empty()) token_to_id_.emplace(id_to_token_[i], static_cast<uint32_t>(i));

  // ---- pipeline parts
  m.parse_normalizer(j.has("normalizer") ? j["normalizer"] : Json());
  m.parse_pre(j.has("pre_tokenizer") ? j["pre_tokenizer"] : Json());
  m.parse_decoder(j.has("decoder") ? j["decoder"] : Json());

  // ---- added tokens
  if (j.has("added_tokens")) {
    const Json& aj = j["added_tokens"];
    for (size_t i = 0; i < aj.size(); i++) {
      const Json& e = aj.at(i);
      HfAddedToken a;
      int64_t id = e["id"].as_int();
      PYLLAMA_CHECK(id >= 0 && id < max_id, ValueError,
                    "tokenizer.json: added token id " << id << " is out of range (the file has " << n_entries << " tokens)");
      a.id = static_cast<uint32_t>(id);
      a.content = e["content"].as_string();
      PYLLAMA_CHECK(!a.content.empty(), ValueError, "tokenizer.json: added token " << id << " is empty");
      a.special = opt_bool(e, "special", false);
      a.lstrip = opt_bool(e, "lstrip", false);
      a.rstrip = opt_bool(e, "rstrip", false);
      a.normalized = opt_bool(e, "normalized", !a.special);
      a.single_word = opt_bool(e, "single_word", false);
      if (id_to_token_.size() <= a.id) id_to_token_.resize(size_t(a.id) + 1);
      id_to_token_[a.id] = a.content;
      token_to_id_[a.content] = a.id;
      added_.push_back(a);
    }
  }
  special_.assign(id_to_token_.size(), 0);
  for (size_t k = 0; k < added_.size(); k++) {
    const HfAddedToken& a = added_[k];
    if (a.special) special_[a.id] = 1;
    std::string match = a.normalized ? m.normalize(a.content) : a.content;
    m.added_match.push_back(match);
    if (match.empty()) continue;
    Impl::AddedIndex& index = a.normalized ? m.norm_added : m.raw_added;
    index.by_byte[static_cast<unsigned char>(match[0])].push_back(static_cast<uint32_t>(k));
    index.starts[static_cast<unsigned char>(match[0])] = 1;
    index.any = true;
  }
  for (auto* index : {&m.raw_added, &m.norm_added})
    for (auto& v : index->by_byte)
      std::stable_sort(v.begin(), v.end(), [&](uint32_t x, uint32_t y) { return m.added_match[x].size() > m.added_match[y].size(); });

  // ---- post-processor: the ids around a single sequence
  auto special_id = [&](const std::string& tok, const char* where) {
    int64_t id = token_to_id(tok);
    PYLLAMA_CHECK(id >= 0, ValueError, "tokenizer.json: " << where << " token '" << tok << "' has no id");
    return static_cast<uint32_t>(id);
  };
  std::function<void(const Json&)> parse_post = [&](const Json& pj) {
    if (pj.is_null()) return;
    std::string t = type_of(pj, "post_processor");
    if (t == "Sequence") {
      for (size_t i = 0; i < pj["processors"].size(); i++) parse_post(pj["processors"].at(i));
    } else if (t == "ByteLevel") {
      // offsets only
    } else if (t == "TemplateProcessing") {
      const Json& single = pj["single"];
      const Json& sp = pj["special_tokens"];
      bool seen_seq = false;
      std::vector<uint32_t> pre, post;
      for (size_t i = 0; i < single.size(); i++) {
        const Json& item = single.at(i);
        if (item.has("Sequence")) {
          PYLLAMA_CHECK(!seen_seq, ValueError, "tokenizer.json: TemplateProcessing's single template names the sequence twice");
          seen_seq = true;
          continue;
        }
        PYLLAMA_CHECK(item.has("SpecialToken"), ValueError,
                      "tokenizer.json: TemplateProcessing item " << i << " is neither Sequence nor SpecialToken");
        const std::string& name = item["SpecialToken"]["id"].as_string();
        PYLLAMA_CHECK(sp.has(name), ValueError,
                      "tokenizer.json: TemplateProcessing names special token '" << name << "' that its special_tokens lack");
        const Json& ids = sp[name]["ids"];
        for (size_t k = 0; k < ids.size(); k++) (seen_seq ? post : pre).push_back(static_cast<uint32_t>(ids.at(k).as_int()));
      }
      prefix_.insert(prefix_.end(), pre.begin(), pre.end());
      suffix_.insert(suffix_.end(), post.begin(), post.end());
    } else if (t == "BertProcessing" || t == "RobertaProcessing") {
      const Json& cls = pj["cls"];
      const Json& sep = pj["sep"];
      prefix_.push_back(cls.size() == 2 ? static_cast<uint32_t>(cls.at(1).as_int()) : special_id(cls.as_string(), "cls"));
      suffix_.push_back(sep.size() == 2 ? static_cast<uint32_t>(sep.at(1).as_int()) : special_id(sep.as_string(), "sep"));
    } else {
      throw ValueError("tokenizer.json: post_processor '" + t +
                       "' is not supported (supported: Sequence, ByteLevel, TemplateProcessing, BertProcessing, "
                       "RobertaProcessing)");
    }
  };
  parse_post(j.has("post_processor") ? j["post_processor"] : Json());
}

std::vector<std::string> HfTokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::pair<Impl::Piece, int64_t>> segs;
  impl_->segments(text, nullptr, segs);
  std::vector<std::string> out;
  for (auto& [piece, id] : segs) {
    if (id >= 0) {
      out.push_back(id_to_token_[static_cast<size_t>(id)]);
      continue;
    }
    std::vector<Impl::Piece> ps{piece};
    impl_->pre_tokenize(ps);
    for (auto& p : ps) out.push_back(std::move(p.s));
  }
  return out;
}

std::vector<uint32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens,
                                          const std::vector<uint32_t>* allowed_special) const {
  std::vector<uint32_t> out;
  out.reserve(text.size() / 2 + prefix_.size() + suffix_.size() + 1);
  encode_into(text, add_special_tokens, out, allowed_special);
  return out;
}

void HfTokenizer::encode_into(std::string_view text, bool add_special_tokens, std::vector<uint32_t>& out,
                              const std::vector<uint32_t>* allowed_special) const {
  std::vector<uint32_t> sorted_allowed;
  if (allowed_special) {
    sorted_allowed = *allowed_special;
    std::sort(sorted_allowed.begin(), sorted_allowed.end());
  }
  const size_t before = out.size();
  const Impl& m = *impl_;
  try {
    if (add_special_tokens) out.insert(out.end(), prefix_.begin(), prefix_.end());
    m.for_each_segment(
        text, allowed_special ? &sorted_allowed : nullptr,
        [&](std::string_view t, bool first) {
          if (m.pres.empty()) {
            m.model_encode(t, out);
            return;
          }
          std::vector<Impl::Piece> ps{Impl::Piece{std::string(t), first}};
          m.pre_tokenize(ps);
          for (auto& p : ps) m.model_encode(p.s, out);
        },
        [&](uint32_t id) { out.push_back(id); });
    if (add_special_tokens) out.insert(out.end(), suffix_.begin(), suffix_.end());
  } catch (...) {
    out.resize(before);
    throw;
  }
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int64_t id : ids) {
    PYLLAMA_CHECK(id >= 0 && size_t(id) < id_to_token_.size() && !id_to_token_[size_t(id)].empty(), IndexError,
                  "token id " << id << " is not in the vocabulary (size " << id_to_token_.size() << ")");
    if (skip_special_tokens && special_[size_t(id)]) continue;
    toks.push_back(id_to_token_[size_t(id)]);
  }
  return impl_->decode_tokens(std::move(toks));
}

int64_t HfTokenizer::token_to_id(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  return it == token_to_id_.end() ? -1 : static_cast<int64_t>(it->second);
}

const std::string& HfTokenizer::id_to_token(uint32_t id) const {
  PYLLAMA_CHECK(id < id_to_token_.size(), IndexError, "token id " << id << " is not in the vocabulary (size " << id_to_token_.size() << ")");
  return id_to_token_[id];
}

bool HfTokenizer::is_special(uint32_t id) const { return id < special_.size() && special_[id]; }

}  // namespace pyllama
