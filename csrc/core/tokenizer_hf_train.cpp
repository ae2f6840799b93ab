// tokenizer_hf_train.cpp — learning a character-level BPE over counted words, the way the `tokenizers`
// BpeTrainer / WordPieceTrainer do: every character seen starts in the vocabulary, characters after the
// first of a word carry the continuing-subword prefix ("##" for WordPiece), and the most frequent
// adjacent pair is merged until the vocabulary is full. See tokenizer_hf.h.
#include <algorithm>
#include <map>
#include <unordered_map>

#include "tokenizer_hf.h"

namespace pyllama {

namespace {
size_t u8_char_len(const std::string& s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  return i + n <= s.size() ? n : 1;
}
}  // namespace

CharBpeResult train_char_bpe(const std::vector<std::pair<std::string, uint64_t>>& words, size_t vocab_size,
                             const std::string& prefix, const std::vector<std::string>& specials,
                             uint64_t min_frequency) {
  CharBpeResult res;
  std::unordered_map<std::string, uint32_t> ids;
  auto add = [&](const std::string& t) {
    auto it = ids.find(t);
    if (it != ids.end()) return it->second;
    uint32_t id = static_cast<uint32_t>(res.vocab.size());
    ids.emplace(t, id);
    res.vocab.push_back(t);
    return id;
  };
  for (const std::string& s : specials) add(s);
  // The alphabet, in code point order, then each word as symbol ids.
  std::map<std::string, uint64_t> alphabet;
  for (auto& [w, n] : words)
    for (size_t i = 0; i < w.size();) {
      size_t k = u8_char_len(w, i);
      alphabet[w.substr(i, k)] += n;
      i += k;
    }
  for (auto& [ch, n] : alphabet) add(ch);
  std::vector<std::vector<uint32_t>> syms(words.size());
  for (size_t wi = 0; wi < words.size(); wi++) {
    const std::string& w = words[wi].first;
    for (size_t i = 0; i < w.size();) {
      size_t k = u8_char_len(w, i);
      syms[wi].push_back(add(i == 0 ? w.substr(i, k) : prefix + w.substr(i, k)));
      i += k;
    }
  }
  auto strip = [&](const std::string& t) {
    return !prefix.empty() && t.compare(0, prefix.size(), prefix) == 0 ? t.substr(prefix.size()) : t;
  };
  while (res.vocab.size() < vocab_size) {
    // Count the adjacent pairs (words are few after counting, so a fresh count per merge is cheap).
    std::unordered_map<uint64_t, uint64_t> counts;
    for (size_t wi = 0; wi < syms.size(); wi++)
      for (size_t i = 0; i + 1 < syms[wi].size(); i++)
        counts[(uint64_t(syms[wi][i]) << 32) | syms[wi][i + 1]] += words[wi].second;
    uint64_t best = 0, best_n = 0;
    std::string best_text;
    for (auto& [pair, n] : counts) {
      if (n < best_n || n < std::max<uint64_t>(min_frequency, 1)) continue;
      std::string text = res.vocab[pair >> 32] + " " + res.vocab[pair & 0xFFFFFFFFu];
      if (n > best_n || text < best_text) {  // ties: the smaller pair text, so training is deterministic
        best = pair;
        best_n = n;
        best_text = std::move(text);
      }
    }
    if (best_n == 0) break;
    uint32_t a = static_cast<uint32_t>(best >> 32), b = static_cast<uint32_t>(best & 0xFFFFFFFFu);
    std::string merged = res.vocab[a] + strip(res.vocab[b]);
    uint32_t m = add(merged);
    res.merges.emplace_back(res.vocab[a], res.vocab[b]);
    for (auto& s : syms) {
      size_t o = 0;
      for (size_t i = 0; i < s.size(); i++) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[o++] = m;
          i++;
        } else {
          s[o++] = s[i];
        }
      }
      s.resize(o);
    }
  }
  return res;
}

}  // namespace pyllama
