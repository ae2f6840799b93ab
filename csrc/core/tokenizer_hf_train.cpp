// tokenizer_hf_train.cpp — learning a character-level BPE over counted words, the way the `tokenizers`
// BpeTrainer / WordPieceTrainer do: every character seen starts in the vocabulary, characters after the
// first of a word carry the continuing-subword prefix ("##" for WordPiece), and the most frequent
// adjacent pair is merged until the vocabulary is full. See tokenizer_hf.h.
#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>

#include "tokenizer.h"  // ByteMap
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
  // Pair counts kept up to date: a merge recounts only the words that hold the pair. The best pair
  // comes from a heap of (count, pair) entries, stale ones skipped (an entry is pushed whenever a
  // pair's count changes): the highest count, ties to the smaller pair text "left right".
  auto key = [](uint32_t a, uint32_t b) { return (uint64_t(a) << 32) | b; };
  std::unordered_map<uint64_t, uint64_t> counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words that held it (may repeat)
  auto add_pairs = [&](uint32_t wi, int64_t sign, std::vector<uint64_t>* touched) {
    const std::vector<uint32_t>& s = syms[wi];
    for (size_t i = 0; i + 1 < s.size(); i++) {
      uint64_t k = key(s[i], s[i + 1]);
      uint64_t& c = counts[k];
      c = sign > 0 ? c + words[wi].second : c - words[wi].second;
      if (sign > 0) where[k].push_back(wi);
      if (touched) touched->push_back(k);
    }
  };
  for (uint32_t wi = 0; wi < syms.size(); wi++) add_pairs(wi, 1, nullptr);
  // "a b" < "c d" on the texts without building them
  auto text_less = [&](uint64_t x, uint64_t y) {
    const std::string* xs[2] = {&res.vocab[x >> 32], &res.vocab[x & 0xFFFFFFFFu]};
    const std::string* ys[2] = {&res.vocab[y >> 32], &res.vocab[y & 0xFFFFFFFFu]};
    size_t xp = 0, xi = 0, yp = 0, yi = 0;  // part (0 left, 1 space, 2 right) and offset in it
    auto next = [](const std::string* const* parts, size_t& part, size_t& i, int& c) {
      while (part < 3) {
        if (part == 1) {
          part = 2;
          i = 0;
          c = ' ';
          return true;
        }
        const std::string& t = *parts[part / 2];
        if (i < t.size()) {
          c = static_cast<unsigned char>(t[i++]);
          return true;
        }
        part++;
        i = 0;
      }
      return false;
    };
    for (;;) {
      int cx = 0, cy = 0;
      bool hx = next(xs, xp, xi, cx), hy = next(ys, yp, yi, cy);
      if (!hx || !hy) return !hx && hy;
      if (cx != cy) return cx < cy;
    }
  };
  struct Entry {
    uint64_t count, pair;
  };
  auto worse = [&](const Entry& x, const Entry& y) {  // heap order: y comes out first
    return x.count != y.count ? x.count < y.count : text_less(y.pair, x.pair);
  };
  std::vector<Entry> heap;
  for (auto& [k, c] : counts)
    if (c) heap.push_back({c, k});
  std::make_heap(heap.begin(), heap.end(), worse);
  const uint64_t min_count = std::max<uint64_t>(min_frequency, 1);
  std::vector<uint32_t> stamp(syms.size(), 0);
  std::vector<uint64_t> touched;
  for (uint32_t round = 1; res.vocab.size() < vocab_size; round++) {
    uint64_t best = 0;
    bool found = false;
    while (!heap.empty()) {
      Entry top = heap.front();
      std::pop_heap(heap.begin(), heap.end(), worse);
      heap.pop_back();
      auto it = counts.find(top.pair);
      if (it == counts.end() || it->second != top.count) continue;  // stale
      if (top.count >= min_count) {
        best = top.pair;
        found = true;
      }
      break;
    }
    if (!found) break;
    uint32_t a = static_cast<uint32_t>(best >> 32), b = static_cast<uint32_t>(best & 0xFFFFFFFFu);
    std::string merged = res.vocab[a] + strip(res.vocab[b]);
    uint32_t m = add(merged);
    res.merges.emplace_back(res.vocab[a], res.vocab[b]);
    std::vector<uint32_t> holders;
    holders.swap(where[best]);
    touched.clear();
    for (uint32_t wi : holders) {
      if (stamp[wi] == round) continue;  // listed twice
      stamp[wi] = round;
      std::vector<uint32_t>& s = syms[wi];
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; i++) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;  // merged away since it was listed
      add_pairs(wi, -1, &touched);
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
      add_pairs(wi, 1, &touched);
    }
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t k : touched) {
      auto it = counts.find(k);
      if (it->second == 0) {
        counts.erase(it);
        continue;
      }
      heap.push_back({it->second, k});
      std::push_heap(heap.begin(), heap.end(), worse);
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
  ByteMap<uint32_t> index;  // piece -> position in pieces
  std::vector<std::string> pieces;
  std::vector<double> logp;
  std::vector<uint8_t> is_char;
  std::vector<uint32_t> seed;  // the piece's position among the seed pieces (pieces are only ever dropped)
  size_t max_bytes = 0;
  void rebuild() {
    index.clear();
    max_bytes = 0;
    for (size_t i = 0; i < pieces.size(); i++) {
      index.insert(pieces[i].data(), pieces[i].size(), static_cast<uint32_t>(i));
      max_bytes = std::max(max_bytes, pieces[i].size());
    }
  }
  // Position of the piece w[a, e), or -1.
  int64_t find(const std::string& w, size_t a, size_t e) const {
    const uint32_t* p = index.find(w.data() + a, e - a);
    return p ? int64_t(*p) : -1;
  }
};

// A word's lattice: the edges (chars [i, j) are a piece), by end, then start.
struct Edge {
  uint32_t i, j, piece;
};

// The edges of every word over the seed pieces, found once (by seed position); a model's lattice
// of a word is the edges whose piece it still has.
struct SeedLattices {
  std::vector<Edge> edges;
  std::vector<size_t> start;     // word w's edges are [start[w], start[w + 1])
  std::vector<uint32_t> n_chars;  // by word
  SeedLattices(const UnigramModel& seeds, const std::vector<std::pair<std::string, uint64_t>>& words) {
    for (auto& [w, c] : words) {
      std::vector<size_t> off = char_offsets(w);
      size_t n = off.size() - 1;
      start.push_back(edges.size());
      n_chars.push_back(static_cast<uint32_t>(n));
      for (size_t j = 1; j <= n; j++) {
        size_t i = j;
        while (i > 0 && off[j] - off[i - 1] <= seeds.max_bytes) i--;
        for (; i < j; i++) {
          int64_t p = seeds.find(w, off[i], off[j]);
          if (p >= 0) edges.push_back({uint32_t(i), uint32_t(j), seeds.seed[size_t(p)]});
        }
      }
    }
    start.push_back(edges.size());
  }
};

// Buffers reused from word to word.
struct Lattice {
  std::vector<Edge> edges;
  std::vector<double> alpha, beta;
};

// Forward-backward over the lattice of word w: adds count * P(piece used) into expected, returns log Z.
// pos[seed]: the model's position of a seed piece (kGone when dropped).
constexpr uint32_t kGone = 0xFFFFFFFFu;
double word_expectations(const UnigramModel& m, const SeedLattices& seeds, size_t w, const std::vector<uint32_t>& pos,
                         double count, std::vector<double>& expected, Lattice& l) {
  size_t n = seeds.n_chars[w];
  l.edges.clear();
  for (size_t k = seeds.start[w]; k < seeds.start[w + 1]; k++) {
    Edge e = seeds.edges[k];
    e.piece = pos[e.piece];
    if (e.piece != kGone) l.edges.push_back(e);
  }
  std::vector<double>& alpha = l.alpha;
  std::vector<double>& beta = l.beta;
  alpha.assign(n + 1, -INFINITY);
  beta.assign(n + 1, -INFINITY);
  alpha[0] = 0;
  for (const Edge& e : l.edges) alpha[e.j] = log_add(alpha[e.j], alpha[e.i] + m.logp[e.piece]);
  beta[n] = 0;
  for (size_t k = l.edges.size(); k-- > 0;) {
    const Edge& e = l.edges[k];
    beta[e.i] = log_add(beta[e.i], beta[e.j] + m.logp[e.piece]);
  }
  double z = alpha[n];
  if (z == -INFINITY) return z;
  for (const Edge& e : l.edges) expected[e.piece] += count * std::exp(alpha[e.i] + m.logp[e.piece] + beta[e.j] - z);
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
      int64_t p = m.find(s, off[i], off[j]);
      if (p < 0 || size_t(p) == skip) continue;
      best[j] = std::max(best[j], best[i] + m.logp[size_t(p)]);
    }
  }
  return best[n];
}

}  // namespace

std::vector<UnigramPiece> train_unigram(const std::vector<std::pair<std::string, uint64_t>>& words, size_t vocab_size,
                                        size_t max_piece_chars, size_t seed_size) {
  PYLLAMA_CHECK(vocab_size > 0, ValueError, "train_unigram: vocab_size must be positive");
  // ---- seed: every substring up to max_piece_chars, by frequency x length; every character kept.
  ByteMap<double> freq;
  std::map<std::string, double> chars;
  for (auto& [w, c] : words) {
    std::vector<size_t> off = char_offsets(w);
    size_t n = off.size() - 1;
    for (size_t i = 0; i < n; i++) {
      chars[w.substr(off[i], off[i + 1] - off[i])] += double(c);
      for (size_t j = i + 2; j <= n && j - i <= max_piece_chars; j++)
        *freq.insert(w.data() + off[i], off[j] - off[i], 0.0).first += double(c);
    }
  }
  std::vector<std::pair<double, std::string>> cand;
  freq.for_each([&](std::string_view s, double f) {
    if (f >= 2) cand.emplace_back(f * double(char_offsets(std::string(s)).size() - 1), std::string(s));
  });
  std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  if (cand.size() > seed_size) cand.resize(seed_size);
  UnigramModel m;
  double total = 0;
  for (auto& [s, f] : chars) {
    m.pieces.push_back(s);
    m.logp.push_back(f);
    m.is_char.push_back(1);
    m.seed.push_back(static_cast<uint32_t>(m.seed.size()));
    total += f;
  }
  for (auto& [score, s] : cand) {
    double f = *freq.find(s.data(), s.size());
    m.pieces.push_back(s);
    m.logp.push_back(f);
    m.is_char.push_back(0);
    m.seed.push_back(static_cast<uint32_t>(m.seed.size()));
    total += f;
  }
  for (double& v : m.logp) v = std::log(v) - std::log(total);
  m.rebuild();
  // ---- EM rounds, each followed by pruning to 3/4 (never below vocab_size, never a character).
  const SeedLattices seeds(m, words);
  std::vector<uint32_t> pos(m.pieces.size());
  Lattice lattice;
  auto expectations = [&](std::vector<double>& expected) {
    std::fill(pos.begin(), pos.end(), kGone);
    for (size_t i = 0; i < m.pieces.size(); i++) pos[m.seed[i]] = static_cast<uint32_t>(i);
    for (size_t w = 0; w < words.size(); w++) word_expectations(m, seeds, w, pos, double(words[w].second), expected, lattice);
  };
  for (int round = 0; round < 64; round++) {
    for (int sub = 0; sub < 2; sub++) {
      std::vector<double> expected(m.pieces.size(), 0.0);
      expectations(expected);
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
        next.seed.push_back(m.seed[i]);
      }
      next.rebuild();
      m = std::move(next);
    }
    if (m.pieces.size() <= vocab_size) break;
    // loss of removing piece i: its frequency times how much worse its best split without it is
    std::vector<double> expected(m.pieces.size(), 0.0);
    expectations(expected);
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
        next.seed.push_back(m.seed[i]);
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
