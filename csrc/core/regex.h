// regex.h — a small backtracking regex engine with the semantics of Oniguruma (the engine the
// Hugging Face `tokenizers` library runs tokenizer.json regexes with, through the Rust `onig`
// crate), as far as tokenizer files use it. Used for Split pre-tokenizers and Replace
// normalizers/decoders whose regex is not one of the presets pretokenize.h scans by hand.
//
//   pyllama::Regex re(R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+)");
//   std::vector<std::pair<size_t, size_t>> m;
//   re.find_all("x 12345!!", m);             // {2,5} {5,7} {7,9}: byte offsets, as onig's find_iter
//
// Semantics (Oniguruma's Ruby syntax, as `onig::Regex::new` compiles it):
//  - UTF-8 text, matched by code point. A byte that does not start valid UTF-8 is one character
//    with no properties (general category Cn), so any input is safe.
//  - leftmost match; alternatives tried in order, the first that leads to a match wins;
//    greedy `* + ? {n} {n,} {n,m} {,m}` with backtracking, lazy `*? +? ?? {n,m}?`, possessive
//    `*+ ++ ?+` (Ruby syntax: `{n,m}+` is a repeat of a repeat and `{n}?` is `(?:x{n})?`).
//  - groups `(...)`, `(?:...)`, `(?<name>...)`, atomic `(?>...)`, comments `(?#...)`;
//    options `(?i)`/`(?i:...)` (case-insensitive) and `(?m)` (Ruby's: `.` matches \n), `(?-i)`;
//    an option without a colon applies to the rest of its group, alternatives included.
//  - lookahead `(?=...)` `(?!...)`, lookbehind `(?<=...)` `(?<!...)` of any length (as Oniguruma: its
//    top-level alternatives are look-behinds of their own; a variable-length body matches only
//    within the text before the position).
//  - anchors `^ $` (at every line, as Ruby), `\A \z \Z \b \B`.
//  - classes `[...]` with ranges, negation, nested classes, `&&` intersection; escapes `\d \D \w
//    \W \s \S \h \H \N \O \R`, `\p{..}`/`\P{..}`/`\p{^..}` for general categories (L Lu Ll Lt Lm
//    Lo LC M Mn Mc Me N Nd Nl No P Pc Pd Ps Pe Pi Pf Po S Sm Sc Sk So Z Zs Zl Zp C Cc Cf Cs Co Cn,
//    short or long names) and Any, Assigned, Word, Space, Digit; `\t \n \r \f \v \a \e \xHH
//    (up to 7F) \x{H..} \uHHHH`; `.` (not \n).
//  - (?i) matches a character against the characters Oniguruma folds it with one to one
//    (unicode_tables.h: fold_next); foldings to several characters (ß and "ss") are not done.
//    As in Oniguruma, a bare \p{..} outside brackets is not case-folded, a bracket class is.
// Anything else (back-references, \G, \K, \X, scripts such as \p{Han}, POSIX brackets, (?x),
// conditionals, absent operator, ...) is refused when compiling, by name (ValueError
// "regex /PATTERN/: <construct> is not supported").
//
// Catastrophic backtracking: a find_all gets a step budget of kStepBase + kStepsPerByte per byte
// of text; going over it throws ValueError naming the pattern, so no input hangs. Stack use is
// bounded (an explicit backtracking stack; nesting is limited when compiling).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pyllama {

class Regex {
 public:
  static constexpr uint64_t kStepBase = 20000000;
  static constexpr uint64_t kStepsPerByte = 1000;

  // Compiles `pattern` (UTF-8). Throws ValueError for syntax errors and unsupported constructs.
  explicit Regex(std::string_view pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // The matches the onig crate's find_iter yields, as (start, end) byte offsets in order:
  // leftmost matches from the end of the previous one; an empty match right at the end of the
  // previous match is skipped (the search goes on one character later). Appends to `out`.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

  // The leftmost match starting at or after byte `from` (a character boundary): true and its
  // offsets, or false.
  bool search(std::string_view text, size_t from, size_t& start, size_t& end) const;

  const std::string& pattern() const { return pattern_; }

  struct Program;

 private:
  std::string pattern_;
  std::unique_ptr<Program> prog_;
};

// `tokenizers`' Pattern::find_matches for a regex: the text as consecutive spans (start, end,
// is_match) covering it, the matches (empty ones too) and the text between them; an empty text is
// one empty span that is not a match.
struct RegexSpan {
  size_t start, end;
  bool match;
};
std::vector<RegexSpan> regex_spans(const Regex& re, std::string_view text);

}  // namespace pyllama
