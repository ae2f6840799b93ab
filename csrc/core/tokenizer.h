// tokenizer.h — byte-level BPE, tiktoken-compatible: encode by merge rank over
// bytes, decode, the .tiktoken file format, and training (tokenizer_train.cpp).
//
//   std::string text = read_file("cl100k_base.tiktoken");
//   pyllama::Tokenizer tok(pyllama::parse_tiktoken(text), pyllama::Pattern::cl100k,
//                          {{"<|endoftext|>", 100257}});
//   std::vector<uint32_t> ids = tok.encode_ordinary("hello world");  // {15339, 1917}
//   std::string back = tok.decode_bytes(ids.data(), ids.size());      // "hello world"
//
// Ids: ranks 0..R-1 are the byte-sequence tokens (rank = id), special tokens take
// other ids (possibly leaving holes: cl100k has none at 100256). n_vocab() is the
// largest id + 1. Errors throw the types in common.h; nothing aborts.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common.h"
#include "pretokenize.h"

namespace pyllama {

// A hash map from byte strings to V (open addressing; keys copied into one arena).
template <class V>
class ByteMap {
 public:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  ByteMap() { rehash(16); }
  size_t size() const { return size_; }
  // Pointer to the value, or nullptr.
  const V* find(const char* p, size_t n) const {
    uint64_t h = hash(p, n);
    uint32_t h32 = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.off == kEmpty) return nullptr;
      if (s.hash == h32 && s.len == n && std::memcmp(arena_.data() + s.off, p, n) == 0) return &s.val;
    }
  }
  V* find(const char* p, size_t n) { return const_cast<V*>(static_cast<const ByteMap*>(this)->find(p, n)); }
  // Inserts (key, v) when the key is new; returns the stored value and whether it was new.
  std::pair<V*, bool> insert(const char* p, size_t n, V v) {
    if ((size_ + 1) * 4 > slots_.size() * 3) rehash(slots_.size() * 2);
    uint64_t h = hash(p, n);
    uint32_t h32 = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.off == kEmpty) {
        s.off = static_cast<uint32_t>(arena_.size());
        s.len = static_cast<uint32_t>(n);
        s.hash = h32;
        s.val = v;
        arena_.append(p, n);
        size_++;
        return {&s.val, true};
      }
      if (s.hash == h32 && s.len == n && std::memcmp(arena_.data() + s.off, p, n) == 0) return {&s.val, false};
    }
  }
  void clear() {
    arena_.clear();
    size_ = 0;
    slots_.assign(16, Slot{});
    mask_ = 15;
  }
  size_t arena_bytes() const { return arena_.size(); }
  // Calls f(key, value) for every entry (in slot order).
  template <class F>
  void for_each(F&& f) const {
    for (const Slot& s : slots_)
      if (s.off != kEmpty) f(std::string_view(arena_.data() + s.off, s.len), s.val);
  }
  static uint64_t hash(const char* p, size_t n) {
    uint64_t h = 0x243F6A8885A308D3ull ^ (static_cast<uint64_t>(n) * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
      uint64_t w;
      std::memcpy(&w, p, 8);
      h = (h ^ w) * 0x9E3779B97F4A7C15ull;
      h ^= h >> 31;
      p += 8;
      n -= 8;
    }
    if (n) {
      uint64_t w = 0;
      std::memcpy(&w, p, n);
      h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    }
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return h;
  }

 private:
  struct Slot {
    uint32_t off = kEmpty;  // kEmpty: free slot
    uint32_t len = 0;
    uint32_t hash = 0;
    V val{};
  };
  void rehash(size_t cap) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.off == kEmpty) continue;
      uint64_t h = hash(arena_.data() + s.off, s.len);
      size_t i = h & mask_;
      while (slots_[i].off != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
  std::string arena_;
};

struct SpecialMatcher;  // tokenizer.cpp

struct SpecialToken {
  std::string text;
  uint32_t id;
};

// Base64 (RFC 4648, padded): .tiktoken lines and tokenizer.json's precompiled_charsmap.
bool b64_decode(std::string_view s, std::string& out);  // false when s is not base64 (out cleared first)
void b64_encode(std::string_view s, std::string& out);  // appends

// Parses a .tiktoken file (one "base64 rank" per line). Returns the tokens in rank
// order. Throws ValueError naming the line for bad base64, a bad rank, a duplicate
// rank or token, or a gap (ranks must be 0..R-1).
std::vector<std::string> parse_tiktoken(std::string_view contents);
// The .tiktoken text for tokens in rank order.
std::string format_tiktoken(const std::vector<std::string>& tokens);

class Tokenizer {
 public:
  // tokens[r]: the bytes of rank r; all 256 single bytes must be among them.
  // pattern: a preset, or nullopt for a custom pattern (the caller pre-splits and
  // uses encode_pieces). Special-token ids must not collide with ranks or each other.
  Tokenizer(std::vector<std::string> tokens, std::optional<Pattern> pattern, std::vector<SpecialToken> specials);

  size_t n_vocab() const { return dec_.size(); }
  size_t n_ranks() const { return n_ranks_; }
  std::optional<Pattern> pattern() const { return pattern_; }
  const std::vector<SpecialToken>& specials() const { return specials_; }
  // Bytes of a token id (regular or special); throws IndexError for an unknown id.
  std::string_view token_bytes(uint32_t id) const;
  // Rank of a byte string, or -1 when it is not a token.
  int64_t rank_of(std::string_view bytes) const;

  // Pre-tokenize and BPE-encode; special-token text is ordinary text here.
  std::vector<uint32_t> encode_ordinary(std::string_view text) const;
  void encode_ordinary_into(std::string_view text, std::vector<uint32_t>& out) const;
  // Like encode_ordinary, but the special tokens with ids in `allowed` become their ids.
  std::vector<uint32_t> encode(std::string_view text, const std::vector<uint32_t>& allowed) const;
  // BPE of pieces that the caller split (custom patterns).
  std::vector<uint32_t> encode_pieces(const std::vector<std::string_view>& pieces) const;
  // BPE of one piece, appended to out.
  void encode_piece(std::string_view piece, std::vector<uint32_t>& out) const;
  // Each text encoded as encode(text, allowed), on up to `threads` threads (0: hardware).
  std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string_view>& texts,
                                                  const std::vector<uint32_t>& allowed, int threads) const;
  // The first occurrence in text of a special token among `ids`: (byte offset, id),
  // or (npos, 0). At one offset the longest token wins.
  std::pair<size_t, uint32_t> find_special(std::string_view text, const std::vector<uint32_t>& ids) const;

  // Concatenated bytes; throws IndexError naming the first unknown id.
  std::string decode_bytes(const uint32_t* ids, size_t n) const;
  std::string decode_bytes(const int64_t* ids, size_t n) const;

  // The .tiktoken text of the regular tokens.
  std::string to_tiktoken() const;
  // Merges for a Hugging Face BPE model that reproduces rank-order merging: for each
  // token (by rank) every split into two tokens, as (left rank, right rank, rank).
  std::vector<std::array<uint32_t, 3>> hf_merges() const;

 private:
  void bpe(const char* p, size_t n, std::vector<uint32_t>& out) const;
  void bpe_small(const char* p, size_t n, std::vector<uint32_t>& out) const;
  void bpe_large(const char* p, size_t n, std::vector<uint32_t>& out) const;
  uint32_t rank2(const char* p, size_t n) const {
    const uint32_t* r = ranks_.find(p, n);
    return r ? *r : 0xFFFFFFFFu;
  }

  // A matcher for `ids` (the cached one when ids are all special ids, ascending).
  std::shared_ptr<const SpecialMatcher> matcher(const std::vector<uint32_t>& ids) const;

  std::optional<Pattern> pattern_;
  size_t n_ranks_ = 0;
  ByteMap<uint32_t> ranks_;              // bytes -> rank
  std::vector<SpecialToken> specials_;
  std::string dec_arena_;                // bytes of every id, concatenated
  std::vector<std::pair<uint32_t, uint32_t>> dec_;  // id -> (offset, length); length kHole = no such id
  std::vector<uint32_t> all_special_ids_;               // ascending
  std::shared_ptr<const SpecialMatcher> all_specials_;  // matcher for all of them
  uint64_t uid_;                         // tells the thread-local piece caches apart
};

// Learns a byte-level BPE vocabulary (tokenizer_train.cpp).
//
//   pyllama::BpeTrainer tr(pyllama::Pattern::cl100k, {"<|endoftext|>"});
//   tr.add_text("the cat sat on the mat");   // any number of times
//   std::vector<std::string> tokens = tr.train(300);  // 256 bytes + 44 merges
class BpeTrainer {
 public:
  // pattern: nullopt when the caller splits with a custom regex (then add_piece only).
  // Text equal to a special token is cut out of the training text.
  BpeTrainer(std::optional<Pattern> pattern, std::vector<std::string> specials = {});
  void add_text(std::string_view text);
  void add_piece(std::string_view piece, uint64_t count = 1);
  size_t n_unique_pieces() const { return counts_.size(); }
  // Merges the most frequent adjacent pair (ties: the smaller pair of ids) until there
  // are n_tokens tokens (256 single bytes first, rank = byte value) or no pair is left.
  // progress(done, total) is called now and then with the number of merges.
  std::vector<std::string> train(size_t n_tokens,
                                 const std::function<void(size_t, size_t)>& progress = nullptr);

 private:
  std::optional<Pattern> pattern_;
  std::vector<std::string> specials_;
  ByteMap<uint64_t> counts_;
};

}  // namespace pyllama
