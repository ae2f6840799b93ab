// regex.cpp — the engine of regex.h: a parser to a syntax tree, a compiler to a small program,
// and a backtracking machine with an explicit stack that runs it (Oniguruma's order of trying
// things, so the same match wins).
#include "regex.h"

#include <algorithm>
#include <sstream>

#include "common.h"
#include "unicode_tables.h"

namespace pyllama {

namespace {

using namespace unicode;

constexpr uint32_t kBad = 0x110000;  // code point of a byte that does not start valid UTF-8
constexpr uint32_t kInf = 0xFFFFFFFFu;
constexpr size_t npos = static_cast<size_t>(-1);
constexpr int kMaxDepth = 200;             // nesting of groups and quantifiers
constexpr uint32_t kMaxRepeat = 100000;    // Oniguruma's ONIG_MAX_REPEAT_NUM
constexpr size_t kMaxProgram = 1u << 20;   // instructions, after expanding counted repeats

inline bool cont(uint8_t b) { return (b & 0xC0) == 0x80; }

// The character at byte i < n: its code point (kBad for a byte that does not start a valid
// sequence) and its length in `len`.
inline uint32_t decode(const uint8_t* s, size_t n, size_t i, size_t& len) {
  uint8_t b = s[i];
  if (b < 0x80) {
    len = 1;
    return b;
  }
  if (b >= 0xC2 && b <= 0xDF) {
    if (i + 1 < n && cont(s[i + 1])) {
      len = 2;
      return (uint32_t(b & 0x1F) << 6) | (s[i + 1] & 0x3F);
    }
  } else if (b >= 0xE0 && b <= 0xEF) {
    if (i + 2 < n && cont(s[i + 1]) && cont(s[i + 2])) {
      uint32_t cp = (uint32_t(b & 0x0F) << 12) | (uint32_t(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
      if (cp >= 0x800 && !(cp >= 0xD800 && cp < 0xE000)) {
        len = 3;
        return cp;
      }
    }
  } else if (b >= 0xF0 && b <= 0xF4) {
    if (i + 3 < n && cont(s[i + 1]) && cont(s[i + 2]) && cont(s[i + 3])) {
      uint32_t cp = (uint32_t(b & 0x07) << 18) | (uint32_t(s[i + 1] & 0x3F) << 12) |
                    (uint32_t(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
      if (cp >= 0x10000 && cp < 0x110000) {
        len = 4;
        return cp;
      }
    }
  }
  len = 1;
  return kBad;
}

// The start of the character that ends at byte i > 0 (consistent with decode's forward reading).
inline size_t prev_start(const uint8_t* s, size_t n, size_t i) {
  size_t q = i - 1;
  if (!cont(s[q])) return q;
  size_t lim = i >= 4 ? i - 4 : 0;
  while (q > lim && cont(s[q])) q--;
  if (cont(s[q])) return i - 1;
  size_t len;
  decode(s, n, q, len);
  return q + len == i ? q : i - 1;
}

inline bool is_word(uint32_t cp) { return cp_props(cp) & kPropWord; }

// The pattern as messages show it: "/pattern/", bytes that are not valid UTF-8 as '?'.
std::string shown(std::string_view pat) {
  std::string out = "/";
  const uint8_t* s = reinterpret_cast<const uint8_t*>(pat.data());
  for (size_t i = 0; i < pat.size();) {
    size_t len;
    if (decode(s, pat.size(), i, len) == kBad) out += '?';
    else out.append(pat.substr(i, len));
    i += len;
  }
  return out + "/";
}

// ------------------------------------------------------------------ character classes

struct CharClass {
  uint64_t ascii[2] = {0, 0};  // the answer for code points < 128 (finalize())
  bool neg = false;            // [^...]
  bool icase = false;          // (?i): a character matches when any of its fold set does
  bool any = false;
  uint32_t gc = 0;             // bit per general category (kGc*)
  uint8_t props = 0;           // kPropWord | kPropSpace
  std::vector<std::pair<uint32_t, uint32_t>> ranges;  // sorted, merged
  std::vector<CharClass> subs;  // union members (negated escapes, nested classes)
  std::vector<CharClass> ands;  // && operands the union is intersected with

  bool in_ranges(uint32_t cp) const {
    size_t lo = 0, hi = ranges.size();
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (cp < ranges[mid].first) hi = mid;
      else if (cp > ranges[mid].second) lo = mid + 1;
      else return true;
    }
    return false;
  }
  // The union and intersections, without case folding or negation.
  bool core(uint32_t cp) const {
    bool m = any;
    if (!m && (gc | props)) {
      uint8_t p = cp_props(cp);
      m = ((gc >> (p & kPropGc)) & 1u) || (p & props);
    }
    if (!m && !ranges.empty()) m = in_ranges(cp);
    if (!m)
      for (const CharClass& c : subs)
        if (c.test(cp)) {
          m = true;
          break;
        }
    if (m)
      for (const CharClass& c : ands)
        if (!c.test(cp)) return false;
    return m;
  }
  bool slow(uint32_t cp) const {
    bool m = core(cp);
    if (!m && icase)
      for (uint32_t x = fold_next(cp); x != cp; x = fold_next(x))
        if (core(x)) {
          m = true;
          break;
        }
    return m != neg;
  }
  bool test(uint32_t cp) const { return cp < 128 ? (ascii[cp >> 6] >> (cp & 63)) & 1u : slow(cp); }

  void finalize() {
    for (CharClass& c : subs) c.finalize();
    for (CharClass& c : ands) c.finalize();
    std::sort(ranges.begin(), ranges.end());
    std::vector<std::pair<uint32_t, uint32_t>> merged;
    for (const auto& r : ranges) {
      if (!merged.empty() && r.first <= merged.back().second + 1) merged.back().second = std::max(merged.back().second, r.second);
      else merged.push_back(r);
    }
    ranges.swap(merged);
    ascii[0] = ascii[1] = 0;
    for (uint32_t cp = 0; cp < 128; cp++)
      if (slow(cp)) ascii[cp >> 6] |= uint64_t(1) << (cp & 63);
  }
  // Merges a non-negated simple class (an escape) into this union.
  void add(const CharClass& c) {
    if (c.neg || !c.subs.empty() || !c.ands.empty() || c.icase) {
      subs.push_back(c);
      return;
    }
    any = any || c.any;
    gc |= c.gc;
    props |= c.props;
    ranges.insert(ranges.end(), c.ranges.begin(), c.ranges.end());
  }
};

// ------------------------------------------------------------------ syntax tree

struct Node {
  enum Kind : uint8_t { empty, chr, set, seq, alt, repeat, look, atomic, assert_ } kind = empty;
  uint32_t cp = 0;               // chr
  uint32_t set_id = 0;           // set: index into the classes
  uint32_t min = 0, max = 0;     // repeat (max kInf: unbounded)
  bool lazy = false;             // repeat
  bool behind = false, neg = false;  // look
  uint8_t anchor = 0;            // assert_
  std::vector<Node> kids;
};

enum Anchor : uint8_t { kBol, kEol, kBos, kEos, kEosNl, kWordB, kNotWordB };

struct Flags {
  bool icase = false;
  bool dotall = false;
};

// ------------------------------------------------------------------ program

enum Op : uint8_t {
  kChar,       // a: code point
  kSet,        // a: class
  kRepeatSet,  // a: class, b: min, c: max; lazy flag
  kSplit,      // try a, then b
  kSplitIf,    // the same when the character here is in class c (a can start only with those), else b
  kJmp,        // a
  kAssert,     // a: Anchor
  kLook,       // a: body pc; behind/neg flags; b, c: lookbehind length bounds in chars
  kAtomic,     // a: body pc (the first way the body matches, no retry)
  kMark,       // a: slot = position (undone on backtracking)
  kCheck,      // a: slot, b: exit pc: the loop body matched empty -> leave the loop
  kMatch,
};

struct Inst {
  uint8_t op = kMatch;
  uint8_t lazy = 0, behind = 0, neg = 0;
  uint8_t var = 0;  // kLook behind: a variable-length body (Oniguruma limits it to the text before)
  uint32_t a = 0, b = 0, c = 0;
};

Inst inst(uint8_t op, uint32_t a = 0) {
  Inst in;
  in.op = op;
  in.a = a;
  return in;
}

}  // namespace

struct Regex::Program {
  std::vector<Inst> code;
  std::vector<CharClass> classes;
  uint32_t slots = 0;
  bool prefilter = false;  // `first` is a necessary condition at a match's start
  CharClass first;
};

namespace {

// ------------------------------------------------------------------ parser

class Parser {
 public:
  Parser(std::string_view pat, std::vector<CharClass>& classes) : p_(pat), classes_(classes) {}

  Node parse() {
    Node n = parse_alt(Flags{}, 0);
    if (i_ < p_.size()) syntax("unmatched ')'");
    return n;
  }

  [[noreturn]] void unsupported(const std::string& what, const std::string& hint = "") const {
    throw ValueError("regex " + shown(p_) + ": " + what + " is not supported" + (hint.empty() ? "" : " (" + hint + ")"));
  }
  [[noreturn]] void syntax(const std::string& what) const {
    std::ostringstream os;
    os << "regex " << shown(p_) << ": " << what << " (at offset " << i_ << ")";
    throw ValueError(os.str());
  }

 private:
  std::string_view p_;
  size_t i_ = 0;
  std::vector<CharClass>& classes_;

  bool at_end() const { return i_ >= p_.size(); }
  char peek(size_t k = 0) const { return i_ + k < p_.size() ? p_[i_ + k] : '\0'; }
  bool starts(std::string_view s) const { return p_.substr(i_, s.size()) == s; }

  // The pattern's character at i_, as text (for messages).
  std::string char_here() const {
    if (at_end()) return std::string();
    size_t len;
    decode(reinterpret_cast<const uint8_t*>(p_.data()), p_.size(), i_, len);
    return std::string(p_.substr(i_, len));
  }

  uint32_t next_cp() {
    size_t len;
    uint32_t cp = decode(reinterpret_cast<const uint8_t*>(p_.data()), p_.size(), i_, len);
    if (cp == kBad) syntax("the pattern is not valid UTF-8");
    i_ += len;
    return cp;
  }

  Node set_node(CharClass c) {
    c.finalize();
    classes_.push_back(std::move(c));
    Node n;
    n.kind = Node::set;
    n.set_id = static_cast<uint32_t>(classes_.size() - 1);
    return n;
  }

  Node char_node(uint32_t cp, const Flags& f) {
    if (f.icase && fold_next(cp) != cp) {
      CharClass c;
      c.icase = true;
      c.ranges.push_back({cp, cp});
      return set_node(std::move(c));
    }
    Node n;
    n.kind = Node::chr;
    n.cp = cp;
    return n;
  }

  // A group that Oniguruma keeps as a node of its own (capture, named, option groups): a
  // quantifier may apply to it even when it holds only an anchor; (?:...) is transparent.
  static Node wrap(Node n) {
    if (n.kind != Node::assert_ && n.kind != Node::look) return n;
    Node s;
    s.kind = Node::seq;
    s.kids.push_back(std::move(n));
    return s;
  }

  static Node anchor_node(uint8_t a) {
    Node n;
    n.kind = Node::assert_;
    n.anchor = a;
    return n;
  }

  Node parse_alt(const Flags& f, int depth) {
    if (depth > kMaxDepth) unsupported("nesting deeper than " + std::to_string(kMaxDepth));
    Node alt;
    alt.kind = Node::alt;
    alt.kids.push_back(parse_seq(f, depth));
    while (peek() == '|' && !at_end()) {
      i_++;
      alt.kids.push_back(parse_seq(f, depth));
    }
    if (alt.kids.size() == 1) return std::move(alt.kids[0]);
    return alt;
  }

  Node parse_seq(const Flags& f, int depth) {
    Node seq;
    seq.kind = Node::seq;
    while (!at_end() && peek() != '|' && peek() != ')') {
      Flags f2 = f;
      int r = parse_atom(f, depth, f2, seq);
      if (r == 2) {  // (?i): the rest of the group, alternatives included, gets the options
        seq.kids.push_back(wrap(parse_alt(f2, depth + 1)));
        break;
      }
      if (r == 1) parse_quantifiers(seq.kids.back(), depth);
    }
    if (seq.kids.size() == 1) return std::move(seq.kids[0]);
    if (seq.kids.empty()) seq.kind = Node::empty;
    return seq;
  }

  // A valid interval {n}, {n,}, {n,m}, {,m} at i_: its bounds and the offset after it.
  bool interval(uint32_t& lo, uint32_t& hi, size_t& after) const {
    size_t k = i_;
    if (k >= p_.size() || p_[k] != '{') return false;
    k++;
    auto number = [&](uint32_t& v) {
      size_t s = k;
      uint64_t x = 0;
      while (k < p_.size() && p_[k] >= '0' && p_[k] <= '9') {
        x = x * 10 + uint64_t(p_[k] - '0');
        if (x > 0xFFFFFFF) x = 0xFFFFFFF;
        k++;
      }
      v = static_cast<uint32_t>(x);
      return k > s;
    };
    bool has_lo = number(lo);
    if (!has_lo) lo = 0;
    if (k < p_.size() && p_[k] == ',') {
      k++;
      bool has_hi = number(hi);
      if (!has_hi) {
        if (!has_lo) return false;  // {,}
        hi = kInf;
      }
    } else {
      if (!has_lo) return false;
      hi = lo;
    }
    if (k >= p_.size() || p_[k] != '}') return false;
    after = k + 1;
    return true;
  }

  void parse_quantifiers(Node& atom, int depth) {
    for (;;) {
      uint32_t lo, hi;
      size_t after;
      bool lazy = false, possessive = false, fixed_optional = false;
      char c = peek();
      if (at_end()) return;
      if (c == '*' || c == '+' || c == '?') {
        i_++;
        lo = c == '+' ? 1 : 0;
        hi = c == '?' ? 1 : kInf;
        if (peek() == '?' && !at_end()) {
          lazy = true;
          i_++;
        } else if (peek() == '+' && !at_end()) {
          possessive = true;
          i_++;
        }
      } else if (interval(lo, hi, after)) {
        if (lo > kMaxRepeat || (hi != kInf && hi > kMaxRepeat)) syntax("too big number for repeat range");
        if (hi != kInf && lo > hi) unsupported("a repeat range {n,m} with n > m");
        bool exact = p_.substr(i_, after - i_).find(',') == std::string_view::npos;
        i_ = after;
        if (peek() == '?' && !at_end()) {
          i_++;
          if (exact) fixed_optional = true;  // Ruby syntax: x{n}? is (?:x{n})?
          else lazy = true;
        }
      } else {
        return;
      }
      if (atom.kind == Node::assert_ || atom.kind == Node::look) syntax("target of repeat operator is invalid");
      if (++depth > kMaxDepth) unsupported("nesting deeper than " + std::to_string(kMaxDepth));
      Node r;
      r.kind = Node::repeat;
      r.min = lo;
      r.max = hi;
      r.lazy = lazy;
      r.kids.push_back(std::move(atom));
      if (fixed_optional) {
        Node o;
        o.kind = Node::repeat;
        o.min = 0;
        o.max = 1;
        o.kids.push_back(std::move(r));
        r = std::move(o);
      }
      if (possessive) {
        Node a;
        a.kind = Node::atomic;
        a.kids.push_back(std::move(r));
        r = std::move(a);
      }
      atom = std::move(r);
    }
  }

  // Parses one atom into seq.kids. Returns 0: nothing added (a comment), 1: an atom was added,
  // 2: an isolated option group (?flags) was read into f2.
  int parse_atom(const Flags& f, int depth, Flags& f2, Node& seq) {
    char c = peek();
    switch (c) {
      case '(':
        return parse_group(f, depth, f2, seq);
      case '[':
        i_++;
        seq.kids.push_back(set_node(parse_class(f, depth + 1)));
        return 1;
      case '.': {
        i_++;
        CharClass cc;
        if (f.dotall) cc.any = true;
        else {
          cc.neg = true;
          cc.ranges.push_back({'\n', '\n'});
        }
        seq.kids.push_back(set_node(std::move(cc)));
        return 1;
      }
      case '^':
        i_++;
        seq.kids.push_back(anchor_node(kBol));
        return 1;
      case '$':
        i_++;
        seq.kids.push_back(anchor_node(kEol));
        return 1;
      case '\\':
        seq.kids.push_back(parse_escape(f));
        return 1;
      case '*': case '+': case '?':
        syntax("target of repeat operator is not specified");
      case '{': {
        uint32_t lo, hi;
        size_t after;
        if (interval(lo, hi, after)) syntax("target of repeat operator is not specified");
        i_++;
        seq.kids.push_back(char_node('{', f));
        return 1;
      }
      default:
        seq.kids.push_back(char_node(next_cp(), f));
        return 1;
    }
  }

  bool parse_flags(Flags& f) {  // at the letters after "(?"; stops at ':' or ')'
    bool on = true, any = false;
    while (!at_end() && peek() != ':' && peek() != ')') {
      char c = peek();
      if (c == '-') {
        if (!on) syntax("invalid group option");
        on = false;
      } else if (c == 'i') {
        f.icase = on;
      } else if (c == 'm') {
        f.dotall = on;
      } else if (c == 'x') {
        unsupported("the extended option (?x)");
      } else {
        unsupported("the group option (?" + char_here() + ")");
      }
      any = true;
      i_++;
    }
    if (at_end()) syntax("end pattern in group");
    return any;
  }

  void expect_close() {
    if (peek() != ')' || at_end()) syntax("end pattern with unmatched parenthesis");
    i_++;
  }

  int parse_group(const Flags& f, int depth, Flags& f2, Node& seq) {
    i_++;  // '('
    if (depth + 1 > kMaxDepth) unsupported("nesting deeper than " + std::to_string(kMaxDepth));
    if (peek() != '?') {
      seq.kids.push_back(wrap(parse_alt(f, depth + 1)));
      expect_close();
      return 1;
    }
    i_++;  // '?'
    char c = peek();
    auto lookaround = [&](bool behind, bool neg) {
      Node n;
      n.kind = Node::look;
      n.behind = behind;
      n.neg = neg;
      n.kids.push_back(parse_alt(f, depth + 1));
      expect_close();
      seq.kids.push_back(std::move(n));
      return 1;
    };
    if (c == ':') {
      i_++;
      seq.kids.push_back(parse_alt(f, depth + 1));
      expect_close();
      return 1;
    }
    if (c == '=' || c == '!') {
      i_++;
      return lookaround(false, c == '!');
    }
    if (c == '<' && (peek(1) == '=' || peek(1) == '!')) {
      bool neg = peek(1) == '!';
      i_ += 2;
      return lookaround(true, neg);
    }
    if (c == '>') {
      i_++;
      Node n;
      n.kind = Node::atomic;
      n.kids.push_back(parse_alt(f, depth + 1));
      expect_close();
      seq.kids.push_back(std::move(n));
      return 1;
    }
    if (c == '<' || c == '\'') {  // a named group: a group (captures are not used)
      char close = c == '<' ? '>' : '\'';
      i_++;
      size_t s = i_;
      while (!at_end() && peek() != close) {
        char k = peek();
        if (!(k == '_' || (k >= '0' && k <= '9') || (k >= 'a' && k <= 'z') || (k >= 'A' && k <= 'Z')))
          syntax("invalid group name");
        i_++;
      }
      if (at_end() || i_ == s) syntax("invalid group name");
      i_++;
      seq.kids.push_back(wrap(parse_alt(f, depth + 1)));
      expect_close();
      return 1;
    }
    if (c == '#') {
      while (!at_end() && peek() != ')') i_++;
      if (at_end()) syntax("end pattern in group");
      i_++;
      return 0;
    }
    if (c == 'i' || c == 'm' || c == 'x' || c == '-') {
      Flags g = f;
      parse_flags(g);
      if (peek() == ')') {
        i_++;
        f2 = g;
        return 2;
      }
      i_++;  // ':'
      seq.kids.push_back(wrap(parse_alt(g, depth + 1)));
      expect_close();
      return 1;
    }
    if (c == '~') unsupported("the absent operator (?~...)");
    if (c == '(') unsupported("a conditional group (?(...)...)");
    if (c == 'P') unsupported("(?P...) groups");
    if (c == '@') unsupported("(?@...) capture history");
    unsupported("the group (?" + char_here() + "...)");
  }

  uint32_t hex(size_t min_digits, size_t max_digits) {
    uint64_t v = 0;
    size_t k = 0;
    while (k < max_digits && !at_end()) {
      char c = peek();
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) break;
      v = v * 16 + uint64_t(d);
      i_++;
      k++;
    }
    if (k < min_digits) syntax("invalid code point value");
    if (v > 0x10FFFF || (v >= 0xD800 && v < 0xE000)) syntax("invalid code point value");
    return static_cast<uint32_t>(v);
  }

  // After '\x' / '\u': the code point.
  uint32_t hex_escape(char kind) {
    if (kind == 'u') return hex(4, 4);
    if (peek() == '{' && !at_end()) {
      i_++;
      uint32_t v = hex(1, 8);
      if (peek() != '}' || at_end()) syntax("invalid code point value");
      i_++;
      return v;
    }
    size_t at = i_;
    uint32_t v = hex(1, 2);
    if (v >= 0x80) {
      i_ = at;
      unsupported("\\x" + std::string(p_.substr(at, 2)), "a single byte above 7F; write \\x{..} or the character");
    }
    return v;
  }

  // General category names (lower case, without spaces, '_' or '-') -> bit mask of kGc*.
  static uint32_t gc_mask(const std::string& name) {
    struct Entry {
      const char* a;
      const char* b;
      uint32_t mask;
    };
    auto bit = [](uint32_t g) { return uint32_t(1) << g; };
    const uint32_t L = bit(kGcLu) | bit(kGcLl) | bit(kGcLt) | bit(kGcLm) | bit(kGcLo);
    const uint32_t M = bit(kGcMn) | bit(kGcMc) | bit(kGcMe);
    const uint32_t N = bit(kGcNd) | bit(kGcNl) | bit(kGcNo);
    const uint32_t P = bit(kGcPc) | bit(kGcPd) | bit(kGcPs) | bit(kGcPe) | bit(kGcPi) | bit(kGcPf) | bit(kGcPo);
    const uint32_t S = bit(kGcSm) | bit(kGcSc) | bit(kGcSk) | bit(kGcSo);
    const uint32_t Z = bit(kGcZs) | bit(kGcZl) | bit(kGcZp);
    const uint32_t C = bit(kGcCc) | bit(kGcCf) | bit(kGcCs) | bit(kGcCo) | bit(kGcCn);
    const Entry table[] = {
        {"l", "letter", L}, {"lu", "uppercaseletter", bit(kGcLu)}, {"ll", "lowercaseletter", bit(kGcLl)},
        {"lt", "titlecaseletter", bit(kGcLt)}, {"lm", "modifierletter", bit(kGcLm)}, {"lo", "otherletter", bit(kGcLo)},
        {"lc", "casedletter", bit(kGcLu) | bit(kGcLl) | bit(kGcLt)},
        {"m", "mark", M}, {"mn", "nonspacingmark", bit(kGcMn)}, {"mc", "spacingmark", bit(kGcMc)},
        {"me", "enclosingmark", bit(kGcMe)}, {"combiningmark", "combiningmark", M},
        {"n", "number", N}, {"nd", "decimalnumber", bit(kGcNd)}, {"nl", "letternumber", bit(kGcNl)},
        {"no", "othernumber", bit(kGcNo)},
        {"p", "punctuation", P}, {"pc", "connectorpunctuation", bit(kGcPc)}, {"pd", "dashpunctuation", bit(kGcPd)},
        {"ps", "openpunctuation", bit(kGcPs)}, {"pe", "closepunctuation", bit(kGcPe)},
        {"pi", "initialpunctuation", bit(kGcPi)}, {"pf", "finalpunctuation", bit(kGcPf)},
        {"po", "otherpunctuation", bit(kGcPo)},
        {"s", "symbol", S}, {"sm", "mathsymbol", bit(kGcSm)}, {"sc", "currencysymbol", bit(kGcSc)},
        {"sk", "modifiersymbol", bit(kGcSk)}, {"so", "othersymbol", bit(kGcSo)},
        {"z", "separator", Z}, {"zs", "spaceseparator", bit(kGcZs)}, {"zl", "lineseparator", bit(kGcZl)},
        {"zp", "paragraphseparator", bit(kGcZp)},
        {"c", "other", C}, {"cc", "control", bit(kGcCc)}, {"cf", "format", bit(kGcCf)}, {"cs", "surrogate", bit(kGcCs)},
        {"co", "privateuse", bit(kGcCo)}, {"cn", "unassigned", bit(kGcCn)},
        {"digit", "digit", bit(kGcNd)},
    };
    for (const Entry& e : table)
      if (name == e.a || name == e.b) return e.mask;
    return 0;
  }

  // After "\p" or "\P": the class of {name}.
  CharClass property(bool negated) {
    if (peek() != '{' || at_end()) unsupported(std::string("\\") + (negated ? "P" : "p") + " without {name}");
    i_++;
    size_t s = i_;
    while (!at_end() && peek() != '}') i_++;
    if (at_end()) syntax("invalid character property name");
    std::string raw(p_.substr(s, i_ - s));
    i_++;
    std::string body = raw;
    if (!body.empty() && body[0] == '^') {
      negated = !negated;
      body = body.substr(1);
    }
    std::string name;
    for (char c : body) {
      if (c == ' ' || c == '_' || c == '-') continue;
      name += (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
    }
    CharClass cc;
    cc.neg = negated;
    if (uint32_t m = gc_mask(name)) {
      cc.gc = m;
    } else if (name == "any") {
      cc.any = true;
    } else if (name == "assigned") {
      cc.gc = ((uint32_t(1) << 30) - 1) & ~(uint32_t(1) << kGcCn);
    } else if (name == "word") {
      cc.props = kPropWord;
    } else if (name == "space") {
      cc.props = kPropSpace;
    } else {
      unsupported("\\p{" + raw + "}", "the properties known are the general categories and Any, Assigned, Word, "
                  "Space, Digit; not scripts or other Unicode properties");
    }
    return cc;
  }

  // The class of \d \D \w \W \s \S \h \H (c is the letter).
  static CharClass escape_class(char c) {
    CharClass cc;
    char lower = c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c;
    cc.neg = lower != c;
    if (lower == 'd') cc.gc = uint32_t(1) << kGcNd;
    else if (lower == 'w') cc.props = kPropWord;
    else if (lower == 's') cc.props = kPropSpace;
    else cc.ranges = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};  // h: a hexadecimal digit (Oniguruma)
    return cc;
  }

  // Escapes that mean one character and are the same inside and outside brackets; -1 if c is not one.
  int64_t simple_escape(char c) {
    switch (c) {
      case 't': return '\t';
      case 'n': return '\n';
      case 'r': return '\r';
      case 'f': return '\f';
      case 'v': return '\v';
      case 'a': return 0x07;
      case 'e': return 0x1B;
      case 'x': case 'u': return hex_escape(c);
      default: return -1;
    }
  }

  [[noreturn]] void bad_escape(char c) {
    switch (c) {
      case 'G': unsupported("\\G (the search start)");
      case 'K': unsupported("\\K (keep)");
      case 'X': unsupported("\\X (a grapheme cluster)");
      case 'y': case 'Y': unsupported(std::string("\\") + c + " (text segment boundaries)");
      case 'k': unsupported("\\k<name> (a back-reference)");
      case 'g': unsupported("\\g<name> (a subexpression call)");
      case 'Q': case 'E': unsupported("\\Q...\\E quoting");
      case 'c': case 'C': case 'M': unsupported(std::string("\\") + c + " (control/meta escapes)");
      case 'o': unsupported("\\o{...} (an octal escape)");
      case '0': unsupported("\\0 (an octal escape)");
      default: break;
    }
    if (c >= '1' && c <= '9') unsupported(std::string("\\") + c + " (a back-reference or octal escape)");
    unsupported(std::string("the escape \\") + c);
  }

  Node parse_escape(const Flags& f) {
    i_++;  // '\'
    if (at_end()) syntax("end pattern at escape");
    char c = peek();
    if (static_cast<unsigned char>(c) >= 0x80) return char_node(next_cp(), f);
    i_++;
    switch (c) {
      case 'A': return anchor_node(kBos);
      case 'z': return anchor_node(kEos);
      case 'Z': return anchor_node(kEosNl);
      case 'b': return anchor_node(kWordB);
      case 'B': return anchor_node(kNotWordB);
      case 'd': case 'D': case 'w': case 'W': case 's': case 'S': case 'h': case 'H':
        return set_node(escape_class(c));
      case 'p': case 'P':
        return set_node(property(c == 'P'));
      case 'N': {
        CharClass cc;
        cc.neg = true;
        cc.ranges.push_back({'\n', '\n'});
        return set_node(std::move(cc));
      }
      case 'O': {
        CharClass cc;
        cc.any = true;
        return set_node(std::move(cc));
      }
      case 'R': {  // (?>\r\n|[\n\v\f\r\x85\u2028\u2029])
        Node crlf;
        crlf.kind = Node::seq;
        crlf.kids.push_back(char_node('\r', Flags{}));
        crlf.kids.push_back(char_node('\n', Flags{}));
        CharClass cc;
        cc.ranges = {{'\n', '\r'}, {0x85, 0x85}, {0x2028, 0x2029}};
        Node alt;
        alt.kind = Node::alt;
        alt.kids.push_back(std::move(crlf));
        alt.kids.push_back(set_node(std::move(cc)));
        Node a;
        a.kind = Node::atomic;
        a.kids.push_back(std::move(alt));
        return a;
      }
      default:
        break;
    }
    int64_t v = simple_escape(c);
    if (v >= 0) return char_node(static_cast<uint32_t>(v), f);
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alnum) bad_escape(c);
    return char_node(static_cast<uint32_t>(static_cast<unsigned char>(c)), f);
  }

  // One item of a bracket class: a character (returns true, cp set) or a class (cc set).
  bool class_atom(uint32_t& cp, CharClass& cc) {
    if (peek() != '\\') {
      cp = next_cp();
      return true;
    }
    i_++;
    if (at_end()) syntax("premature end of char-class");
    char c = peek();
    if (static_cast<unsigned char>(c) >= 0x80) {
      cp = next_cp();
      return true;
    }
    i_++;
    switch (c) {
      case 'd': case 'D': case 'w': case 'W': case 's': case 'S': case 'h': case 'H':
        cc = escape_class(c);
        return false;
      case 'p': case 'P':
        cc = property(c == 'P');
        return false;
      case 'b':
        cp = 0x08;  // backspace inside brackets
        return true;
      case 'N': case 'O': case 'R': case 'A': case 'z': case 'Z': case 'B':
        unsupported(std::string("\\") + c + " inside brackets");
      default:
        break;
    }
    int64_t v = simple_escape(c);
    if (v >= 0) {
      cp = static_cast<uint32_t>(v);
      return true;
    }
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alnum) bad_escape(c);
    cp = static_cast<unsigned char>(c);
    return true;
  }

  // After '[': the class up to and including its ']'.
  CharClass parse_class(const Flags& f, int depth) {
    if (depth > kMaxDepth) unsupported("nesting deeper than " + std::to_string(kMaxDepth));
    CharClass out;
    out.icase = f.icase;
    if (peek() == '^' && !at_end()) {
      out.neg = true;
      i_++;
    }
    std::vector<CharClass> operands(1);
    bool first = true, empty_operand = true;
    for (;;) {
      if (at_end()) syntax("premature end of char-class");
      char c = peek();
      CharClass& cur = operands.back();
      if (c == ']' && !first) {
        i_++;
        break;
      }
      if (c == '&' && peek(1) == '&') {
        if (empty_operand) unsupported("an empty operand of && in a class");
        i_ += 2;
        operands.emplace_back();
        empty_operand = true;
        first = false;
        continue;
      }
      first = false;
      empty_operand = false;
      if (c == '[') {
        if (peek(1) == ':') unsupported("POSIX bracket expressions [:name:]");
        i_++;
        cur.subs.push_back(parse_class(f, depth + 1));
        continue;
      }
      uint32_t lo = 0;
      CharClass esc;
      if (!class_atom(lo, esc)) {
        if (peek() == '-' && peek(1) != ']' && !at_end()) unsupported("a range that starts with a class escape");
        operands.back().add(esc);
        continue;
      }
      if (peek() == '-' && peek(1) != ']' && i_ + 1 < p_.size()) {
        if (peek(1) == '[' || (peek(1) == '&' && peek(2) == '&')) {
          // '-' before a nested class or &&: a literal '-'
          operands.back().ranges.push_back({lo, lo});
          continue;
        }
        i_++;  // '-'
        uint32_t hi = 0;
        CharClass esc2;
        if (!class_atom(hi, esc2)) unsupported("a range that ends with a class escape");
        if (hi < lo) syntax("empty range in char class");
        operands.back().ranges.push_back({lo, hi});
        continue;
      }
      operands.back().ranges.push_back({lo, lo});
    }
    if (empty_operand && operands.size() > 1) unsupported("an empty operand of && in a class");
    CharClass& base = operands[0];
    out.any = base.any;
    out.gc = base.gc;
    out.props = base.props;
    out.ranges = std::move(base.ranges);
    out.subs = std::move(base.subs);
    for (size_t k = 1; k < operands.size(); k++) out.ands.push_back(std::move(operands[k]));
    return out;
  }
};

// ------------------------------------------------------------------ analysis

// Length bounds in characters (hi kInf64: unbounded).
constexpr uint64_t kInf64 = ~uint64_t(0);
void length_bounds(const Node& n, uint64_t& lo, uint64_t& hi) {
  auto sat_add = [](uint64_t a, uint64_t b) { return a == kInf64 || b == kInf64 || a + b < a ? kInf64 : a + b; };
  auto sat_mul = [](uint64_t a, uint64_t b) {
    if (a == 0 || b == 0) return uint64_t(0);
    if (a == kInf64 || b == kInf64 || a > kInf64 / b) return kInf64;
    return a * b;
  };
  switch (n.kind) {
    case Node::empty: case Node::assert_: case Node::look: lo = hi = 0; return;
    case Node::chr: case Node::set: lo = hi = 1; return;
    case Node::seq:
      lo = hi = 0;
      for (const Node& k : n.kids) {
        uint64_t a, b;
        length_bounds(k, a, b);
        lo = sat_add(lo, a);
        hi = sat_add(hi, b);
      }
      return;
    case Node::alt:
      lo = kInf64;
      hi = 0;
      for (const Node& k : n.kids) {
        uint64_t a, b;
        length_bounds(k, a, b);
        lo = std::min(lo, a);
        hi = std::max(hi, b);
      }
      return;
    case Node::repeat: {
      uint64_t a, b;
      length_bounds(n.kids[0], a, b);
      lo = sat_mul(a, n.min);
      hi = n.max == kInf ? (b == 0 ? 0 : kInf64) : sat_mul(b, n.max);
      return;
    }
    case Node::atomic: length_bounds(n.kids[0], lo, hi); return;
  }
}

// Whether n has one length, as Oniguruma decides it for look-behind: a quantifier with min != max
// or alternatives of different lengths make it variable.
bool fixed_length(const Node& n, uint64_t& len) {
  switch (n.kind) {
    case Node::empty: case Node::assert_: case Node::look: len = 0; return true;
    case Node::chr: case Node::set: len = 1; return true;
    case Node::seq: {
      len = 0;
      for (const Node& k : n.kids) {
        uint64_t l;
        if (!fixed_length(k, l)) return false;
        len += l;
      }
      return true;
    }
    case Node::alt: {
      for (size_t i = 0; i < n.kids.size(); i++) {
        uint64_t l;
        if (!fixed_length(n.kids[i], l) || (i > 0 && l != len)) return false;
        len = l;
      }
      return true;
    }
    case Node::repeat: {
      uint64_t l;
      if (n.min != n.max || !fixed_length(n.kids[0], l)) return false;
      len = l * n.min;
      return true;
    }
    case Node::atomic: return fixed_length(n.kids[0], len);
  }
  return false;
}

bool nullable(const Node& n) {
  uint64_t lo, hi;
  length_bounds(n, lo, hi);
  return lo == 0;
}

// Adds to `acc` the characters a match of n can start with; returns whether n can match empty
// (then what follows n can start the match too).
bool first_chars(const Node& n, const std::vector<CharClass>& classes, CharClass& acc) {
  switch (n.kind) {
    case Node::empty: case Node::assert_: case Node::look: return true;
    case Node::chr: acc.ranges.push_back({n.cp, n.cp}); return false;
    case Node::set: acc.add(classes[n.set_id]); return false;
    case Node::seq:
      for (const Node& k : n.kids)
        if (!first_chars(k, classes, acc)) return false;
      return true;
    case Node::alt: {
      bool any = false;
      for (const Node& k : n.kids) any = first_chars(k, classes, acc) || any;
      return any;
    }
    case Node::repeat: {
      if (n.max == 0) return true;
      bool e = first_chars(n.kids[0], classes, acc);
      return e || n.min == 0;
    }
    case Node::atomic: return first_chars(n.kids[0], classes, acc);
  }
  return true;
}

// ------------------------------------------------------------------ compiler

class Compiler {
 public:
  Compiler(Regex::Program& p, const Parser& parser) : p_(p), parser_(parser) {}

  void emit_node(const Node& n) {
    switch (n.kind) {
      case Node::empty: return;
      case Node::chr: push(inst(kChar, n.cp)); return;
      case Node::set: push(inst(kSet, n.set_id)); return;
      case Node::seq:
        for (const Node& k : n.kids) emit_node(k);
        return;
      case Node::alt: {
        std::vector<size_t> to_end;
        for (size_t k = 0; k < n.kids.size(); k++) {
          if (k + 1 < n.kids.size()) {
            // An alternative that cannot start with the character here is skipped without a
            // backtracking entry (the first test of most tokenizer alternatives fails).
            CharClass first;
            Inst in = inst(kSplit);
            if (!first_chars(n.kids[k], p_.classes, first)) {
              first.finalize();
              p_.classes.push_back(std::move(first));
              in.op = kSplitIf;
              in.c = static_cast<uint32_t>(p_.classes.size() - 1);
            }
            size_t split = push(in);
            p_.code[split].a = here();
            emit_node(n.kids[k]);
            to_end.push_back(push(inst(kJmp)));
            p_.code[split].b = here();
          } else {
            emit_node(n.kids[k]);
          }
        }
        for (size_t j : to_end) p_.code[j].a = here();
        return;
      }
      case Node::repeat: emit_repeat(n); return;
      case Node::look: {
        if (n.behind && n.kids[0].kind == Node::alt) {
          // Oniguruma runs each top-level alternative of a look-behind as a look-behind of its
          // own: (?<=A|B) is (?:(?<=A)|(?<=B)), (?<!A|B) is (?<!A)(?<!B).
          Node split;
          split.kind = n.neg ? Node::seq : Node::alt;
          for (const Node& k : n.kids[0].kids) {
            Node one;
            one.kind = Node::look;
            one.behind = true;
            one.neg = n.neg;
            one.kids.push_back(k);
            split.kids.push_back(std::move(one));
          }
          emit_node(split);
          return;
        }
        uint64_t lo = 0, hi = 0, fixed = 0;
        if (n.behind) length_bounds(n.kids[0], lo, hi);
        Inst in = inst(kLook);
        in.behind = n.behind;
        in.neg = n.neg;
        in.var = n.behind && !fixed_length(n.kids[0], fixed);
        in.b = lo > kInf - 1 ? kInf - 1 : static_cast<uint32_t>(lo);
        in.c = hi >= kInf ? kInf : static_cast<uint32_t>(hi);
        size_t at = push(in);
        size_t jmp = push(inst(kJmp));
        p_.code[at].a = here();
        emit_node(n.kids[0]);
        push(inst(kMatch));
        p_.code[jmp].a = here();
        return;
      }
      case Node::atomic: {
        size_t at = push(inst(kAtomic));
        size_t jmp = push(inst(kJmp));
        p_.code[at].a = here();
        emit_node(n.kids[0]);
        push(inst(kMatch));
        p_.code[jmp].a = here();
        return;
      }
      case Node::assert_: push(inst(kAssert, n.anchor)); return;
    }
  }

 private:
  Regex::Program& p_;
  const Parser& parser_;

  uint32_t here() const { return static_cast<uint32_t>(p_.code.size()); }
  size_t push(Inst in) {
    if (p_.code.size() >= kMaxProgram) parser_.unsupported("a pattern this large (over a million steps once repeats are expanded)");
    p_.code.push_back(in);
    return p_.code.size() - 1;
  }

  void emit_repeat(const Node& n) {
    const Node& kid = n.kids[0];
    if (kid.kind == Node::chr || kid.kind == Node::set) {
      uint32_t cls;
      if (kid.kind == Node::set) {
        cls = kid.set_id;
      } else {
        CharClass c;
        c.ranges.push_back({kid.cp, kid.cp});
        c.finalize();
        p_.classes.push_back(std::move(c));
        cls = static_cast<uint32_t>(p_.classes.size() - 1);
      }
      Inst in = inst(kRepeatSet);
      in.lazy = n.lazy;
      in.a = cls;
      in.b = n.min;
      in.c = n.max;
      push(in);
      return;
    }
    for (uint32_t k = 0; k < n.min; k++) emit_node(kid);
    if (n.max == kInf) {
      // L0: split body, exit (greedy) / exit, body (lazy); body: [mark] X [check -> exit]; jmp L0
      bool check = nullable(kid);
      uint32_t slot = check ? p_.slots++ : 0;
      size_t l0 = push(inst(kSplit));
      size_t body = here();
      if (check) push(inst(kMark, slot));
      emit_node(kid);
      size_t chk = check ? push(inst(kCheck, slot)) : 0;
      push(inst(kJmp, static_cast<uint32_t>(l0)));
      uint32_t exit = here();
      p_.code[l0].a = n.lazy ? exit : static_cast<uint32_t>(body);
      p_.code[l0].b = n.lazy ? static_cast<uint32_t>(body) : exit;
      if (check) p_.code[chk].b = exit;
      return;
    }
    std::vector<size_t> splits;
    for (uint32_t k = n.min; k < n.max; k++) {
      splits.push_back(push(inst(kSplit)));
      uint32_t body = here();
      if (n.lazy) p_.code[splits.back()].b = body;
      else p_.code[splits.back()].a = body;
      emit_node(kid);
    }
    uint32_t exit = here();
    for (size_t s : splits) {
      if (n.lazy) p_.code[s].a = exit;
      else p_.code[s].b = exit;
    }
  }
};

// ------------------------------------------------------------------ machine

enum FrameKind : uint32_t { kBranch, kGiveBack, kLazyMore, kRestore };

struct Frame {
  uint32_t kind;
  uint32_t pc;  // kRestore: the slot
  size_t pos;   // kRestore: the old value
  size_t aux;   // kGiveBack: the lowest end; kLazyMore: the count so far
};

struct Scratch {
  std::vector<Frame> stack;
  std::vector<size_t> slots;
};

class Machine {
 public:
  Machine(const Regex::Program& p, const std::string& pattern, const uint8_t* s, size_t n, Scratch& sc, uint64_t budget)
      : p_(p), pattern_(pattern), s_(s), n_(n), limit_(n), stack_(sc.stack), slots_(sc.slots), budget_(budget) {
    stack_.clear();
    slots_.assign(p.slots, npos);
  }

  // The end of the first match of the program from pc at pos (ending exactly at need_end unless
  // npos), or npos.
  size_t run(uint32_t pc, size_t pos, size_t need_end) {
    const size_t base = stack_.size();
    const Inst* code = p_.code.data();
    for (;;) {
      if (++steps_ > budget_) too_many_steps();
      const Inst& in = code[pc];
      switch (in.op) {
        case kChar: {
          if (pos >= limit_) goto fail;
          size_t len;
          uint32_t cp = decode(s_, n_, pos, len);
          if (cp != in.a) goto fail;
          pos += len;
          pc++;
          continue;
        }
        case kSet: {
          if (pos >= limit_) goto fail;
          size_t len;
          uint32_t cp = decode(s_, n_, pos, len);
          if (!p_.classes[in.a].test(cp)) goto fail;
          pos += len;
          pc++;
          continue;
        }
        case kRepeatSet: {
          const CharClass& cc = p_.classes[in.a];
          size_t q = pos;
          uint32_t k = 0;
          size_t len;
          for (; k < in.b; k++) {
            if (q >= limit_ || !cc.test(decode(s_, n_, q, len))) goto fail;
            q += len;
          }
          steps_ += k;
          if (in.lazy) {
            if (k < in.c) stack_.push_back({kLazyMore, pc, q, k});
            pos = q;
            pc++;
            continue;
          }
          size_t floor = q, start = q;
          while (k < in.c && q < limit_ && cc.test(decode(s_, n_, q, len))) {
            q += len;
            k++;
          }
          steps_ += (q - start);
          if (q > floor) stack_.push_back({kGiveBack, pc + 1, q, floor});
          pos = q;
          pc++;
          continue;
        }
        case kSplit:
          stack_.push_back({kBranch, in.b, pos, 0});
          pc = in.a;
          continue;
        case kSplitIf: {
          size_t len;
          if (pos < limit_ && p_.classes[in.c].test(decode(s_, n_, pos, len))) {
            stack_.push_back({kBranch, in.b, pos, 0});
            pc = in.a;
          } else {
            pc = in.b;
          }
          continue;
        }
        case kJmp:
          pc = in.a;
          continue;
        case kAssert:
          if (!anchor(in.a, pos)) goto fail;
          pc++;
          continue;
        case kLook: {
          bool ok = in.behind ? look_behind(in, pos) : run(in.a, pos, npos) != npos;
          if (ok == static_cast<bool>(in.neg)) goto fail;
          pc++;
          continue;
        }
        case kAtomic: {
          size_t e = run(in.a, pos, npos);
          if (e == npos) goto fail;
          pos = e;
          pc++;
          continue;
        }
        case kMark:
          stack_.push_back({kRestore, in.a, slots_[in.a], 0});
          slots_[in.a] = pos;
          pc++;
          continue;
        case kCheck:
          pc = slots_[in.a] == pos ? in.b : pc + 1;
          continue;
        case kMatch:
          if (need_end != npos && pos != need_end) goto fail;
          unwind(base);
          return pos;
      }
    fail:
      for (;;) {
        if (stack_.size() == base) return npos;
        Frame f = stack_.back();
        stack_.pop_back();
        if (f.kind == kBranch) {
          pc = f.pc;
          pos = f.pos;
          break;
        }
        if (f.kind == kGiveBack) {
          size_t q = prev_start(s_, n_, f.pos);
          if (q > f.aux) stack_.push_back({kGiveBack, f.pc, q, f.aux});
          pc = f.pc;
          pos = q;
          break;
        }
        if (f.kind == kLazyMore) {
          const Inst& r = code[f.pc];
          size_t len;
          if (f.pos >= limit_ || !p_.classes[r.a].test(decode(s_, n_, f.pos, len))) continue;
          size_t k = f.aux + 1;
          if (k < r.c) stack_.push_back({kLazyMore, f.pc, f.pos + len, k});
          pc = f.pc + 1;
          pos = f.pos + len;
          break;
        }
        slots_[f.pc] = f.pos;  // kRestore
      }
    }
  }

 private:
  const Regex::Program& p_;
  const std::string& pattern_;
  const uint8_t* s_;
  size_t n_;
  size_t limit_;  // characters are read before this (n_, or a variable look-behind's position)
  std::vector<Frame>& stack_;
  std::vector<size_t>& slots_;
  uint64_t budget_;
  uint64_t steps_ = 0;

  [[noreturn]] void too_many_steps() const {
    std::ostringstream os;
    os << "regex " << shown(pattern_) << ": more than " << budget_ << " backtracking steps on a text of " << n_
       << " bytes (catastrophic backtracking); the pattern cannot split this text in reasonable time";
    throw ValueError(os.str());
  }

  // Drops the frames above base, undoing their slot changes.
  void unwind(size_t base) {
    while (stack_.size() > base) {
      const Frame& f = stack_.back();
      if (f.kind == kRestore) slots_[f.pc] = f.pos;
      stack_.pop_back();
    }
  }

  bool word_before(size_t pos) const {
    if (pos == 0) return false;
    size_t q = prev_start(s_, n_, pos), len;
    return is_word(decode(s_, n_, q, len));
  }
  bool word_at(size_t pos) const {
    // At the text's start Oniguruma checks that a character may be read (not in a variable
    // look-behind at position 0); elsewhere it reads the character even past the limit.
    if (pos >= n_ || (pos == 0 && limit_ == 0)) return false;
    size_t len;
    return is_word(decode(s_, n_, pos, len));
  }

  bool anchor(uint32_t a, size_t pos) const {
    switch (a) {
      case kBol: return pos == 0 || (s_[pos - 1] == '\n' && pos != n_);
      case kEol: return pos == n_ || s_[pos] == '\n';
      case kBos: return pos == 0;
      case kEos: return pos == n_;
      case kEosNl: return pos == n_ || (pos + 1 == n_ && s_[pos] == '\n');
      case kWordB: return word_before(pos) != word_at(pos);
      case kNotWordB: return word_before(pos) == word_at(pos);
    }
    return false;
  }

  // Whether the body matches some text that ends exactly at pos.
  bool look_behind(const Inst& in, size_t pos) {
    if (in.var) {
      // A variable-length body matches within the text before pos (Oniguruma's right range).
      size_t saved = limit_;
      limit_ = pos;
      bool ok;
      try {
        ok = look_behind_at(in, pos);
      } catch (...) {
        limit_ = saved;
        throw;
      }
      limit_ = saved;
      return ok;
    }
    return look_behind_at(in, pos);
  }
  bool look_behind_at(const Inst& in, size_t pos) {
    size_t q = pos;
    uint64_t k = 0;
    for (; k < in.b; k++) {
      if (q == 0) return false;
      q = prev_start(s_, n_, q);
    }
    for (;;) {
      if (run(in.a, q, pos) != npos) return true;
      if ((in.c != kInf && k >= in.c) || q == 0) return false;
      q = prev_start(s_, n_, q);
      k++;
      if (++steps_ > budget_) too_many_steps();
    }
  }
};

// The backtracking stack of this thread, kept between calls; a very deep one (a long match of a
// loop over a group) is given back afterwards.
struct ScratchLease {
  Scratch& s;
  ScratchLease() : s(get()) {}
  ~ScratchLease() {
    if (s.stack.capacity() > (size_t(1) << 20)) std::vector<Frame>().swap(s.stack);
  }
  static Scratch& get() {
    thread_local Scratch t;
    return t;
  }
};

bool search_impl(const Regex::Program& prog, const std::string& pattern, const uint8_t* s, size_t n, size_t from,
                 Machine& m, size_t& start, size_t& end) {
  for (size_t p = from; p <= n;) {
    size_t len = 1;
    bool try_here = true;
    if (p < n) {
      uint32_t cp = decode(s, n, p, len);
      if (prog.prefilter && !prog.first.test(cp)) try_here = false;
    } else if (prog.prefilter) {
      try_here = false;
    }
    if (try_here) {
      size_t e = m.run(0, p, npos);
      if (e != npos) {
        start = p;
        end = e;
        return true;
      }
    }
    if (p == n) break;
    p += len;
  }
  (void)pattern;
  return false;
}

}  // namespace

// ------------------------------------------------------------------ Regex

Regex::Regex(std::string_view pattern) : pattern_(pattern), prog_(std::make_unique<Program>()) {
  Parser parser(pattern, prog_->classes);
  Node root = parser.parse();
  Compiler comp(*prog_, parser);
  comp.emit_node(root);
  prog_->code.push_back(inst(kMatch));
  CharClass first;
  if (!first_chars(root, prog_->classes, first)) {
    first.finalize();
    prog_->first = std::move(first);
    prog_->prefilter = true;
  }
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

bool Regex::search(std::string_view text, size_t from, size_t& start, size_t& end) const {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  ScratchLease lease;
  Machine m(*prog_, pattern_, s, text.size(), lease.s, kStepBase + kStepsPerByte * uint64_t(text.size()));
  return search_impl(*prog_, pattern_, s, text.size(), from, m, start, end);
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  ScratchLease lease;
  Machine m(*prog_, pattern_, s, n, lease.s, kStepBase + kStepsPerByte * uint64_t(n));
  size_t last_end = 0, last_match_end = npos;
  while (last_end <= n) {
    size_t a, b;
    if (!search_impl(*prog_, pattern_, s, n, last_end, m, a, b)) break;
    if (a == b && last_match_end == b) {
      // An empty match right where the previous match ended: search again one character later.
      size_t len = 1;
      if (last_end < n) decode(s, n, last_end, len);
      last_end += len;
      continue;
    }
    last_end = b;
    last_match_end = b;
    out.emplace_back(a, b);
  }
}

std::vector<RegexSpan> regex_spans(const Regex& re, std::string_view text) {
  std::vector<RegexSpan> out;
  if (text.empty()) {
    out.push_back({0, 0, false});
    return out;
  }
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all(text, m);
  size_t prev = 0;
  for (const auto& [a, b] : m) {
    if (prev != a) out.push_back({prev, a, false});
    out.push_back({a, b, true});
    prev = b;
  }
  if (prev != text.size()) out.push_back({prev, text.size(), false});
  return out;
}

}  // namespace pyllama
