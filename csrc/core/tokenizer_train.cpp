// tokenizer_train.cpp — byte-level BPE training.
//
// 1. Count the pieces the pre-tokenizer makes (a piece is a "word"; each unique
//    word is stored once with its count).
// 2. Count adjacent symbol pairs over the words (weighted by word count) and keep,
//    for each pair, the words that contain it.
// 3. Repeatedly take the most frequent pair from a max-heap (ties: the smaller
//    (left id, right id)), merge it in just the words that contain it, and apply the
//    resulting changes to the pair counts. Heap entries go stale when counts fall;
//    a popped entry whose count is out of date is re-pushed with the current count.
//    A pair whose count rises is pushed again, so the heap top is always exact.
#include <algorithm>
#include <queue>
#include <unordered_map>

#include "common.h"
#include "tokenizer.h"

namespace pyllama {

BpeTrainer::BpeTrainer(std::optional<Pattern> pattern, std::vector<std::string> specials)
    : pattern_(pattern), specials_(std::move(specials)) {
  for (const std::string& s : specials_) PYLLAMA_CHECK(!s.empty(), ValueError, "a special token is the empty string");
}

void BpeTrainer::add_piece(std::string_view piece, uint64_t count) {
  if (piece.empty() || count == 0) return;
  auto ins = counts_.insert(piece.data(), piece.size(), count);
  if (!ins.second) *ins.first += count;
}

void BpeTrainer::add_text(std::string_view text) {
  PYLLAMA_CHECK(pattern_.has_value(), ValueError, "this trainer uses a custom pattern: split the text and call add_piece");
  size_t pos = 0;
  while (pos < text.size()) {
    // Cut at the next special token (earliest; longest at the same offset).
    size_t cut = text.size(), cut_len = 0;
    for (const std::string& s : specials_) {
      size_t f = text.find(s, pos);
      if (f < cut || (f == cut && f != std::string_view::npos && s.size() > cut_len)) cut = f, cut_len = s.size();
    }
    PieceScanner scan(*pattern_, text.substr(pos, cut - pos));
    std::string_view piece;
    while (scan.next(piece)) add_piece(piece, 1);
    pos = cut + cut_len;
  }
}

namespace {

inline uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t(a) << 32) | b; }

struct HeapItem {
  int64_t count;
  uint64_t key;
  // Max-heap order: higher count first, then the smaller pair.
  bool operator<(const HeapItem& o) const { return count != o.count ? count < o.count : key > o.key; }
};

struct Word {
  uint32_t off;   // into the symbol array
  uint32_t len;   // symbols now
  int64_t count;  // occurrences in the corpus
};

}  // namespace

std::vector<std::string> BpeTrainer::train(size_t n_tokens, const std::function<void(size_t, size_t)>& progress) {
  PYLLAMA_CHECK(n_tokens >= 256, ValueError,
                "a byte-level BPE vocabulary needs at least 256 tokens (one per byte), asked for " << n_tokens);
  std::vector<std::string> tokens(256);
  ByteMap<uint32_t> token_id;
  for (int b = 0; b < 256; b++) {
    tokens[b] = std::string(1, char(b));
    token_id.insert(tokens[b].data(), 1, uint32_t(b));
  }
  // Words, sorted by bytes so that everything below is independent of hash order.
  std::vector<std::pair<std::string_view, uint64_t>> uniq;
  uniq.reserve(counts_.size());
  counts_.for_each([&](std::string_view k, uint64_t c) { uniq.emplace_back(k, c); });
  std::sort(uniq.begin(), uniq.end());
  std::vector<uint32_t> sym;
  std::vector<Word> words;
  words.reserve(uniq.size());
  for (auto& [k, c] : uniq) {
    if (k.size() < 2) continue;  // a single byte never takes part in a pair
    words.push_back({uint32_t(sym.size()), uint32_t(k.size()), int64_t(c)});
    for (char ch : k) sym.push_back(uint8_t(ch));
  }
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words holding it (may hold extra)
  pair_count.reserve(1 << 16);
  where.reserve(1 << 16);
  for (uint32_t w = 0; w < words.size(); w++) {
    const uint32_t* s = sym.data() + words[w].off;
    for (uint32_t i = 0; i + 1 < words[w].len; i++) {
      uint64_t k = pair_key(s[i], s[i + 1]);
      pair_count[k] += words[w].count;
      std::vector<uint32_t>& v = where[k];
      if (v.empty() || v.back() != w) v.push_back(w);
    }
  }
  std::vector<HeapItem> init;
  init.reserve(pair_count.size());
  for (auto& [k, c] : pair_count) init.push_back({c, k});
  std::priority_queue<HeapItem> heap(std::less<HeapItem>(), std::move(init));

  size_t target = n_tokens - 256, done = 0;
  size_t report_every = std::max<size_t>(1, target / 200);
  std::vector<uint32_t> stamp(words.size(), 0xFFFFFFFFu);
  std::unordered_map<uint64_t, int64_t> delta;
  std::string merged;
  uint32_t step = 0;
  if (progress) progress(0, target);
  while (tokens.size() < n_tokens && !heap.empty()) {
    HeapItem top = heap.top();
    heap.pop();
    auto pit = pair_count.find(top.key);
    int64_t cur = pit == pair_count.end() ? 0 : pit->second;
    if (cur != top.count) {
      if (cur > 0 && cur < top.count) heap.push({cur, top.key});
      continue;
    }
    uint32_t a = uint32_t(top.key >> 32), b = uint32_t(top.key);
    merged = tokens[a];
    merged += tokens[b];
    auto ins = token_id.insert(merged.data(), merged.size(), uint32_t(tokens.size()));
    uint32_t id = *ins.first;
    if (ins.second) tokens.push_back(merged);

    delta.clear();
    std::vector<uint32_t> ws;
    auto wit = where.find(top.key);
    if (wit != where.end()) {
      ws = std::move(wit->second);
      where.erase(wit);
    }
    for (uint32_t w : ws) {
      if (stamp[w] == step) continue;
      stamp[w] = step;
      Word& word = words[w];
      uint32_t* s = sym.data() + word.off;
      uint32_t len = word.len;
      bool has = false;
      for (uint32_t i = 0; i + 1 < len && !has; i++) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (uint32_t i = 0; i + 1 < len; i++) delta[pair_key(s[i], s[i + 1])] -= word.count;
      uint32_t j = 0;
      for (uint32_t i = 0; i < len;) {
        if (i + 1 < len && s[i] == a && s[i + 1] == b) {
          s[j++] = id;
          i += 2;
        } else {
          s[j++] = s[i++];
        }
      }
      word.len = j;
      for (uint32_t i = 0; i + 1 < j; i++) {
        uint64_t k = pair_key(s[i], s[i + 1]);
        delta[k] += word.count;
        if (s[i] == id || s[i + 1] == id) {
          std::vector<uint32_t>& v = where[k];
          if (v.empty() || v.back() != w) v.push_back(w);
        }
      }
    }
    for (auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& c = pair_count[k];
      c += d;
      if (d > 0) heap.push({c, k});
      if (c <= 0) pair_count.erase(k);
    }
    step++;
    done++;
    if (progress && done % report_every == 0) progress(tokens.size() - 256, target);
  }
  if (progress) progress(target, target);
  return tokens;
}

}  // namespace pyllama
