// tokenizer_hf_train.cpp — learning a character-level BPE over counted words, the way the `tokenizers`
// BpeTrainer / WordPieceTrainer do: every character seen starts in the vocabulary, characters after the
// first of a word carry the continuing-subword prefix ("##" for WordPiece), and the most frequent
// adjacent pair is merged until the vocabulary is full. See tokenizer_hf.h.
#include <algorithm>
#include <cmath>
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

// ------------------------------------------------------------------ Unigram (EM + pruning)

namespace pyllama {

namespace {

// The code point boundaries of s: off[i] is the byte offset of char i; off[n] = s.size().
std::vector<size_t> char_offsets(const std::string& s) {
  std::vector<size_t> off;
  for (size_t i = 0; i < s.size(); i += u8_char_len(s, i)) off.push_back(i);
  off.push_back(s.size());
  return off;
}

double log_add(double a, double b) {
  if (a < b) std::swap(a, b);
  return b == -INFINITY ? a : a + std::log1p(std::exp(b - a));
}

// ψ(x), the digamma function (SentencePiece's M-step uses it for a Bayesian estimate).
double digamma(double x) {
  double r = 0;
  while (x < 7) {
    r -= 1 / x;
    x += 1;
  }
  x -= 0.5;
  double xx = 1 / x, xx2 = xx * xx, xx4 = xx2 * xx2;
  return r + std::log(x) + (1.0 / 24) * xx2 - (7.0 / 960) * xx4 + (31.0 / 8064) * xx4 * xx2 -
         (127.0 / 30720) * xx4 * xx4;
}

struct UnigramModel {
  std::unordered_map<std::string, size_t> index;  // piece -> position in pieces
  std::vector<std::string> pieces;
  std::vector<double> logp;
  std::vector<uint8_t> is_char;
  size_t max_bytes = 0;
  void rebuild() {
    index.clear();
    max_bytes = 0;
    for (size_t i = 0; i < pieces.size(); i++) {
      index.emplace(pieces[i], i);
      max_bytes = std::max(max_bytes, pieces[i].size());
    }
  }
};

// Forward-backward over the lattice of one word: adds count * P(piece used) into expected, returns log Z.
double word_expectations(const UnigramModel& m, const std::string& w, double count, std::vector<double>& expected) {
  std::vector<size_t> off = char_offsets(w);
  size_t n = off.size() - 1;
  std::vector<std::vector<std::pair<size_t, size_t>>> ends(n + 1);  // ends[j]: (start char, piece)
  for (size_t i = 0; i < n; i++)
    for (size_t j = i + 1; j <= n && off[j] - off[i] <= m.max_bytes; j++) {
      auto it = m.index.find(w.substr(off[i], off[j] - off[i]));
      if (it != m.index.end()) ends[j].emplace_back(i, it->second);
    }
  std::vector<double> alpha(n + 1, -INFINITY), beta(n + 1, -INFINITY);
  alpha[0] = 0;
  for (size_t j = 1; j <= n; j++)
    for (auto [i, p] : ends[j]) alpha[j] = log_add(alpha[j], alpha[i] + m.logp[p]);
  beta[n] = 0;
  for (size_t j = n; j > 0; j--)
    for (auto [i, p] : ends[j]) beta[i] = log_add(beta[i], beta[j] + m.logp[p]);
  double z = alpha[n];
  if (z == -INFINITY) return z;
  for (size_t j = 1; j <= n; j++)
    for (auto [i, p] : ends[j]) expected[p] += count * std::exp(alpha[i] + m.logp[p] + beta[j] - z);
  return z;
}

// Best segmentation score of s with piece `skip` left out (Viterbi), or -inf.
double viterbi_without(const UnigramModel& m, const std::string& s, size_t skip) {
  std::vector<size_t> off = char_offsets(s);
  size_t n = off.size() - 1;
  std::vector<double> best(n + 1, -INFINITY);
  best[0] = 0;
  for (size_t i = 0; i < n; i++) {
    if (best[i] == -INFINITY) continue;
    for (size_t j = i + 1; j <= n && off[j] - off[i] <= m.max_bytes; j++) {
      auto it = m.index.find(s.substr(off[i], off[j] - off[i]));
      if (it == m.index.end() || it->second == skip) continue;
      best[j] = std::max(best[j], best[i] + m.logp[it->second]);
    }
  }
  return best[n];
}

}  // namespace

std::vector<UnigramPiece> train_unigram(const std::vector<std::pair<std::string, uint64_t>>& words, size_t vocab_size,
                                        size_t max_piece_chars, size_t seed_size) {
  PYLLAMA_CHECK(vocab_size > 0, ValueError, "train_unigram: vocab_size must be positive");
  // ---- seed: every substring up to max_piece_chars, by frequency x length; every character kept.
  std::unordered_map<std::string, double> freq;
  std::map<std::string, double> chars;
  for (auto& [w, c] : words) {
    std::vector<size_t> off = char_offsets(w);
    size_t n = off.size() - 1;
    for (size_t i = 0; i < n; i++) {
      chars[w.substr(off[i], off[i + 1] - off[i])] += double(c);
      for (size_t j = i + 2; j <= n && j - i <= max_piece_chars; j++) freq[w.substr(off[i], off[j] - off[i])] += double(c);
    }
  }
  std::vector<std::pair<double, std::string>> cand;
  for (auto& [s, f] : freq)
    if (f >= 2) cand.emplace_back(f * double(char_offsets(s).size() - 1), s);
  std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  if (cand.size() > seed_size) cand.resize(seed_size);
  UnigramModel m;
  double total = 0;
  for (auto& [s, f] : chars) {
    m.pieces.push_back(s);
    m.logp.push_back(f);
    m.is_char.push_back(1);
    total += f;
  }
  for (auto& [score, s] : cand) {
    m.pieces.push_back(s);
    m.logp.push_back(freq[s]);
    m.is_char.push_back(0);
    total += freq[s];
  }
  for (double& v : m.logp) v = std::log(v) - std::log(total);
  m.rebuild();
  // ---- EM rounds, each followed by pruning to 3/4 (never below vocab_size, never a character).
  for (int round = 0; round < 64; round++) {
    for (int sub = 0; sub < 2; sub++) {
      std::vector<double> expected(m.pieces.size(), 0.0);
      for (auto& [w, c] : words) word_expectations(m, w, double(c), expected);
      double sum = 0;
      for (size_t i = 0; i < expected.size(); i++)
        if (expected[i] >= 0.5 || m.is_char[i]) sum += std::max(expected[i], 0.5);
      double dsum = digamma(sum);
      UnigramModel next;
      for (size_t i = 0; i < m.pieces.size(); i++) {
        if (expected[i] < 0.5 && !m.is_char[i]) continue;
        next.pieces.push_back(m.pieces[i]);
        next.logp.push_back(digamma(std::max(expected[i], 0.5)) - dsum);
        next.is_char.push_back(m.is_char[i]);
      }
      next.rebuild();
      m = std::move(next);
    }
    if (m.pieces.size() <= vocab_size) break;
    // loss of removing piece i: its frequency times how much worse its best split without it is
    std::vector<double> expected(m.pieces.size(), 0.0);
    for (auto& [w, c] : words) word_expectations(m, w, double(c), expected);
    std::vector<std::pair<double, size_t>> loss;
    for (size_t i = 0; i < m.pieces.size(); i++) {
      if (m.is_char[i]) continue;
      double alt = viterbi_without(m, m.pieces[i], i);
      double l = alt == -INFINITY ? INFINITY : expected[i] * (m.logp[i] - alt);
      loss.emplace_back(l, i);
    }
    std::sort(loss.begin(), loss.end(), [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
    size_t n_chars = m.pieces.size() - loss.size();
    size_t keep = std::max(vocab_size > n_chars ? vocab_size - n_chars : 0, (loss.size() * 3) / 4);
    if (keep >= loss.size()) break;
    std::vector<uint8_t> kept(m.pieces.size(), 0);
    for (size_t i = 0; i < m.pieces.size(); i++) kept[i] = m.is_char[i];
    for (size_t k = 0; k < keep; k++) kept[loss[k].second] = 1;
    UnigramModel next;
    for (size_t i = 0; i < m.pieces.size(); i++)
      if (kept[i]) {
        next.pieces.push_back(m.pieces[i]);
        next.logp.push_back(m.logp[i]);
        next.is_char.push_back(m.is_char[i]);
      }
    next.rebuild();
    m = std::move(next);
  }
  // ---- the final vocabulary: by score, best first (ties: the piece text); characters always in.
  std::vector<size_t> order(m.pieces.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return m.logp[a] != m.logp[b] ? m.logp[a] > m.logp[b] : m.pieces[a] < m.pieces[b];
  });
  std::vector<UnigramPiece> out;
  size_t n_chars = 0;
  for (uint8_t c : m.is_char) n_chars += c;
  size_t budget = vocab_size > n_chars ? vocab_size - n_chars : 0;
  for (size_t i : order) {
    if (!m.is_char[i]) {
      if (budget == 0) continue;
      budget--;
    }
    out.push_back({m.pieces[i], m.logp[i]});
  }
  return out;
}

}  // namespace pyllama
