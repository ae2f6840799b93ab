// tokenizer.cpp — encoding, decoding and the .tiktoken format.
//
// Encoding a piece follows tiktoken: a piece that is itself a token is one id;
// otherwise adjacent parts are merged, always the pair whose concatenation has the
// lowest rank (leftmost on ties), until no adjacent pair is a token. Short pieces
// use the O(n^2) scan over a small array; long ones a heap with lazy deletion (the
// same merge order in O(n log n)). Pieces that needed merging are cached per thread.
#include "tokenizer.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <exception>
#include <mutex>
#include <queue>
#include <thread>

#ifdef _WIN32
#include <process.h>
#define getpid _getpid
using pid_t = int;
#else
#include <unistd.h>
#endif

#include "common.h"

namespace pyllama {

namespace {

constexpr uint32_t kNone = 0xFFFFFFFFu;
constexpr uint32_t kHole = 0xFFFFFFFFu;  // dec_ length of an id that has no token
constexpr size_t kSmallPiece = 128;      // bytes: longer pieces use the heap merge
constexpr size_t kCacheMaxPiece = 256;   // bytes: longer pieces are not cached
constexpr size_t kCacheMaxEntries = 1 << 16;

std::atomic<uint64_t> g_next_uid{1};

// ---------------------------------------------------------------- base64 (declared in tokenizer.h)

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

struct B64Table {
  int8_t v[256];
  B64Table() {
    std::fill(v, v + 256, -1);
    for (int i = 0; i < 64; i++) v[(uint8_t)kB64[i]] = (int8_t)i;
  }
};
const B64Table kB64Dec;

}  // namespace

bool b64_decode(std::string_view s, std::string& out) {
  out.clear();
  if (s.empty() || s.size() % 4) return false;
  for (size_t i = 0; i < s.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; j++) {
      uint8_t c = s[i + j];
      if (c == '=') {
        if (i + 4 != s.size() || j < 2) return false;
        pad++;
        v[j] = 0;
      } else {
        if (pad) return false;  // data after padding
        v[j] = kB64Dec.v[c];
        if (v[j] < 0) return false;
      }
    }
    uint32_t x = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out.push_back(char(x >> 16));
    if (pad < 2) out.push_back(char((x >> 8) & 0xFF));
    if (pad < 1) out.push_back(char(x & 0xFF));
  }
  return true;
}

void b64_encode(std::string_view s, std::string& out) {
  size_t i = 0;
  for (; i + 3 <= s.size(); i += 3) {
    uint32_t x = (uint32_t(uint8_t(s[i])) << 16) | (uint32_t(uint8_t(s[i + 1])) << 8) | uint8_t(s[i + 2]);
    out += kB64[x >> 18];
    out += kB64[(x >> 12) & 63];
    out += kB64[(x >> 6) & 63];
    out += kB64[x & 63];
  }
  size_t rest = s.size() - i;
  if (rest) {
    uint32_t x = uint32_t(uint8_t(s[i])) << 16;
    if (rest == 2) x |= uint32_t(uint8_t(s[i + 1])) << 8;
    out += kB64[x >> 18];
    out += kB64[(x >> 12) & 63];
    out += rest == 2 ? kB64[(x >> 6) & 63] : '=';
    out += '=';
  }
}

namespace {

// ---------------------------------------------------------------- per-thread piece cache

struct PieceCache {
  uint64_t owner = 0;
  ByteMap<uint64_t> map;       // piece -> (offset into toks << 16) | count
  std::vector<uint32_t> toks;
};
thread_local PieceCache t_cache;

// Worker threads for encode_batch, kept between calls so their piece caches stay warm,
// waiting on a condition variable (no spinning) between batches. One batch runs at a
// time; a call that finds the pool busy encodes on its own thread. Never destroyed
// (the threads are detached and simply end with the process); a child process after
// fork() gets a fresh pool, since the parent's threads do not exist there.
class BatchPool {
 public:
  static BatchPool& get() {
    static std::mutex mu;
    static BatchPool* pool = nullptr;
    std::lock_guard<std::mutex> g(mu);
    if (!pool || pool->pid_ != getpid()) pool = new BatchPool();
    return *pool;
  }
  // Runs fn on n threads (the caller is one); false (nothing run) when the pool is busy.
  bool run(int n, const std::function<void()>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> g(mu_);
      while (int(n_threads_) < n - 1) {
        std::thread(&BatchPool::loop, this, n_threads_++).detach();
      }
      job_ = &fn;
      want_ = n - 1;
      done_ = 0;
      gen_++;
    }
    cv_.notify_all();
    fn();
    std::unique_lock<std::mutex> g(mu_);
    done_cv_.wait(g, [&] { return done_ == want_; });
    job_ = nullptr;
    return true;
  }

 private:
  BatchPool() : pid_(getpid()) {}
  void loop(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
      cv_.wait(g, [&] { return gen_ != seen; });
      seen = gen_;
      if (index >= want_) continue;  // not needed for this batch
      const std::function<void()>* job = job_;
      g.unlock();
      (*job)();
      g.lock();
      if (++done_ == want_) done_cv_.notify_all();
    }
  }
  pid_t pid_;
  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  int n_threads_ = 0, want_ = 0, done_ = 0;
  uint64_t gen_ = 0;
  const std::function<void()>* job_ = nullptr;
};

}  // namespace

// ---------------------------------------------------------------- special-token search

// Finds the first occurrence of any of a set of special tokens: candidate offsets are
// those whose byte can start a token (memchr when only one byte can); at a candidate,
// one hash lookup per distinct token length, longest first.
struct SpecialMatcher {
  ByteMap<uint32_t> ids;          // token text -> id
  std::vector<size_t> lengths;    // distinct token lengths, longest first
  bool first[256] = {};
  int distinct_first = 0;
  uint8_t only_first = 0;

  SpecialMatcher(const std::vector<SpecialToken>& specials, const std::vector<uint32_t>& want) {
    for (const SpecialToken& s : specials) {
      if (std::find(want.begin(), want.end(), s.id) == want.end()) continue;
      ids.insert(s.text.data(), s.text.size(), s.id);
      if (std::find(lengths.begin(), lengths.end(), s.text.size()) == lengths.end()) lengths.push_back(s.text.size());
      uint8_t c = s.text[0];
      if (!first[c]) distinct_first++, only_first = c;
      first[c] = true;
    }
    std::sort(lengths.begin(), lengths.end(), std::greater<size_t>());
  }
  // (offset, id, length) of the first match at or after `from`; offset npos when none.
  struct Hit {
    size_t pos;
    uint32_t id;
    size_t len;
  };
  Hit find(std::string_view text, size_t from) const {
    const char* s = text.data();
    size_t n = text.size();
    if (ids.size() == 0) return {std::string_view::npos, 0, 0};
    for (size_t i = from; i < n; i++) {
      if (distinct_first == 1) {
        const void* hit = std::memchr(s + i, only_first, n - i);
        if (!hit) break;
        i = static_cast<const char*>(hit) - s;
      } else if (!first[(uint8_t)s[i]]) {
        continue;
      }
      for (size_t len : lengths)
        if (len <= n - i)
          if (const uint32_t* id = ids.find(s + i, len)) return {i, *id, len};
    }
    return {std::string_view::npos, 0, 0};
  }
};

// ---------------------------------------------------------------- .tiktoken files

std::vector<std::string> parse_tiktoken(std::string_view contents) {
  std::vector<std::pair<uint64_t, std::string>> rows;
  size_t pos = 0, line_no = 0;
  std::string tok;
  while (pos < contents.size()) {
    size_t eol = contents.find('\n', pos);
    if (eol == std::string_view::npos) eol = contents.size();
    std::string_view line = contents.substr(pos, eol - pos);
    pos = eol + 1;
    line_no++;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    size_t sp = line.find(' ');
    PYLLAMA_CHECK(sp != std::string_view::npos && sp > 0, ValueError,
                  "malformed .tiktoken vocabulary, line " << line_no << ": expected '<base64 token> <rank>'");
    std::string_view b64 = line.substr(0, sp), num = line.substr(sp + 1);
    PYLLAMA_CHECK(b64_decode(b64, tok), ValueError,
                  "malformed .tiktoken vocabulary, line " << line_no << ": invalid base64 '" << b64 << "'");
    PYLLAMA_CHECK(!num.empty() && num.size() <= 10 && std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; }),
                  ValueError, "malformed .tiktoken vocabulary, line " << line_no << ": invalid rank '" << num << "'");
    uint64_t r = std::stoull(std::string(num));
    rows.emplace_back(r, tok);
  }
  PYLLAMA_CHECK(!rows.empty(), ValueError, "malformed .tiktoken vocabulary: no tokens");
  std::vector<std::string> tokens(rows.size());
  std::vector<char> seen(rows.size(), 0);
  ByteMap<uint64_t> uniq;
  for (size_t i = 0; i < rows.size(); i++) {
    uint64_t r = rows[i].first;
    PYLLAMA_CHECK(r < rows.size(), ValueError,
                  "malformed .tiktoken vocabulary: ranks must be 0.." << rows.size() - 1 << " without gaps, but line "
                      << i + 1 << " has rank " << r);
    PYLLAMA_CHECK(!seen[r], ValueError, "malformed .tiktoken vocabulary: duplicate rank " << r);
    seen[r] = 1;
    auto ins = uniq.insert(rows[i].second.data(), rows[i].second.size(), r);
    PYLLAMA_CHECK(ins.second, ValueError,
                  "malformed .tiktoken vocabulary: ranks " << *ins.first << " and " << r << " have the same token");
    tokens[r] = std::move(rows[i].second);
  }
  return tokens;
}

std::string format_tiktoken(const std::vector<std::string>& tokens) {
  std::string out;
  out.reserve(tokens.size() * 16);
  for (size_t r = 0; r < tokens.size(); r++) {
    b64_encode(tokens[r], out);
    out += ' ';
    out += std::to_string(r);
    out += '\n';
  }
  return out;
}

// ---------------------------------------------------------------- Tokenizer

Tokenizer::Tokenizer(std::vector<std::string> tokens, std::optional<Pattern> pattern, std::vector<SpecialToken> specials)
    : pattern_(pattern), n_ranks_(tokens.size()), specials_(std::move(specials)), uid_(g_next_uid++) {
  PYLLAMA_CHECK(tokens.size() < kHole, ValueError, "too many tokens");
  size_t n_ids = tokens.size();
  for (const SpecialToken& s : specials_) {
    PYLLAMA_CHECK(!s.text.empty(), ValueError, "a special token is the empty string");
    PYLLAMA_CHECK(s.id >= tokens.size(), ValueError,
                  "special token '" << s.text << "' has id " << s.id << ", which is the rank of a regular token (ranks are 0.."
                                    << tokens.size() - 1 << ")");
    PYLLAMA_CHECK(s.id < kHole, ValueError, "special token id " << s.id << " is too large");
    n_ids = std::max<size_t>(n_ids, size_t(s.id) + 1);
  }
  dec_.assign(n_ids, {0, kHole});
  for (uint32_t r = 0; r < tokens.size(); r++) {
    const std::string& t = tokens[r];
    PYLLAMA_CHECK(!t.empty(), ValueError, "token of rank " << r << " is empty");
    auto ins = ranks_.insert(t.data(), t.size(), r);
    PYLLAMA_CHECK(ins.second, ValueError, "ranks " << *ins.first << " and " << r << " have the same token");
    dec_[r] = {static_cast<uint32_t>(dec_arena_.size()), static_cast<uint32_t>(t.size())};
    dec_arena_ += t;
  }
  for (int b = 0; b < 256; b++) {
    char c = static_cast<char>(b);
    PYLLAMA_CHECK(ranks_.find(&c, 1), ValueError,
                  "the vocabulary lacks the single-byte token 0x" << std::hex << b << ": byte-level BPE needs all 256");
  }
  for (size_t i = 0; i < specials_.size(); i++) {
    const SpecialToken& s = specials_[i];
    PYLLAMA_CHECK(dec_[s.id].second == kHole, ValueError, "two special tokens have id " << s.id);
    for (size_t j = 0; j < i; j++)
      PYLLAMA_CHECK(specials_[j].text != s.text, ValueError, "special token '" << s.text << "' is listed twice");
    dec_[s.id] = {static_cast<uint32_t>(dec_arena_.size()), static_cast<uint32_t>(s.text.size())};
    dec_arena_ += s.text;
    all_special_ids_.push_back(s.id);
  }
  std::sort(all_special_ids_.begin(), all_special_ids_.end());
  all_specials_ = std::make_shared<const SpecialMatcher>(specials_, all_special_ids_);
}

std::string_view Tokenizer::token_bytes(uint32_t id) const {
  PYLLAMA_CHECK(id < dec_.size() && dec_[id].second != kHole, IndexError,
                "token id " << id << " is not in the vocabulary (n_vocab " << dec_.size() << ")");
  return std::string_view(dec_arena_.data() + dec_[id].first, dec_[id].second);
}

int64_t Tokenizer::rank_of(std::string_view bytes) const {
  const uint32_t* r = ranks_.find(bytes.data(), bytes.size());
  return r ? int64_t(*r) : -1;
}

void Tokenizer::bpe_small(const char* p, size_t n, std::vector<uint32_t>& out) const {
  uint32_t st[kSmallPiece + 1], rk[kSmallPiece + 1];
  for (size_t i = 0; i + 1 < n; i++) {
    st[i] = uint32_t(i);
    rk[i] = rank2(p + i, 2);
  }
  st[n - 1] = uint32_t(n - 1);
  rk[n - 1] = kNone;
  st[n] = uint32_t(n);
  rk[n] = kNone;
  size_t m = n + 1;  // part starts, plus the end
  for (;;) {
    uint32_t best = kNone;
    size_t i = 0;
    for (size_t k = 0; k + 1 < m; k++)
      if (rk[k] < best) best = rk[k], i = k;
    if (best == kNone) break;
    if (i > 0) rk[i - 1] = i + 2 < m ? rank2(p + st[i - 1], st[i + 2] - st[i - 1]) : kNone;
    rk[i] = i + 3 < m ? rank2(p + st[i], st[i + 3] - st[i]) : kNone;
    std::memmove(st + i + 1, st + i + 2, (m - i - 2) * sizeof(uint32_t));
    std::memmove(rk + i + 1, rk + i + 2, (m - i - 2) * sizeof(uint32_t));
    m--;
  }
  for (size_t k = 0; k + 1 < m; k++) out.push_back(rank2(p + st[k], st[k + 1] - st[k]));
}

void Tokenizer::bpe_large(const char* p, size_t n, std::vector<uint32_t>& out) const {
  // Parts are named by their start byte. nxt[s]: start of the next part (n after the last).
  std::vector<uint32_t> nxt(n + 1), prv(n + 1);
  std::vector<char> alive(n + 1, 1);
  for (size_t i = 0; i <= n; i++) {
    nxt[i] = uint32_t(i + 1);
    prv[i] = uint32_t(i ? i - 1 : 0);
  }
  struct Cand {
    uint32_t rank, left, end;  // merging the two parts spanning [left, end) gives `rank`
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  for (size_t i = 0; i + 1 < n; i++) {
    uint32_t r = rank2(p + i, 2);
    if (r != kNone) heap.push({r, uint32_t(i), uint32_t(i + 2)});
  }
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    uint32_t l = c.left;
    if (!alive[l] || nxt[l] >= n || nxt[nxt[l]] != c.end) continue;  // stale
    uint32_t mid = nxt[l];
    alive[mid] = 0;
    nxt[l] = c.end;
    if (c.end < n) {
      prv[c.end] = l;
      uint32_t e2 = nxt[c.end];
      uint32_t r = rank2(p + l, e2 - l);
      if (r != kNone) heap.push({r, l, e2});
    }
    if (l > 0) {
      uint32_t pl = prv[l];
      uint32_t r = rank2(p + pl, c.end - pl);
      if (r != kNone) heap.push({r, pl, c.end});
    }
  }
  for (uint32_t s = 0; s < n; s = nxt[s]) out.push_back(rank2(p + s, nxt[s] - s));
}

void Tokenizer::bpe(const char* p, size_t n, std::vector<uint32_t>& out) const {
  if (n <= kSmallPiece)
    bpe_small(p, n, out);
  else
    bpe_large(p, n, out);
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<uint32_t>& out) const {
  const char* p = piece.data();
  size_t n = piece.size();
  if (n == 0) return;
  if (const uint32_t* r = ranks_.find(p, n)) {
    out.push_back(*r);
    return;
  }
  if (n > kCacheMaxPiece) {
    bpe(p, n, out);
    return;
  }
  PieceCache& cache = t_cache;
  if (cache.owner != uid_) {
    cache.map.clear();
    cache.toks.clear();
    cache.owner = uid_;
  }
  if (const uint64_t* hit = cache.map.find(p, n)) {
    const uint32_t* t = cache.toks.data() + (*hit >> 16);
    out.insert(out.end(), t, t + (*hit & 0xFFFF));
    return;
  }
  size_t before = out.size();
  bpe(p, n, out);
  if (cache.map.size() >= kCacheMaxEntries) {
    cache.map.clear();
    cache.toks.clear();
  }
  uint64_t off = cache.toks.size();
  cache.toks.insert(cache.toks.end(), out.begin() + before, out.end());
  cache.map.insert(p, n, (off << 16) | uint64_t(out.size() - before));
}

void Tokenizer::encode_ordinary_into(std::string_view text, std::vector<uint32_t>& out) const {
  PYLLAMA_CHECK(pattern_.has_value(), ValueError,
                "this tokenizer uses a custom regex pattern: split the text first and call encode_pieces");
  PieceScanner scan(*pattern_, text);
  std::string_view piece;
  while (scan.next(piece)) encode_piece(piece, out);
}

std::vector<uint32_t> Tokenizer::encode_ordinary(std::string_view text) const {
  std::vector<uint32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_ordinary_into(text, out);
  return out;
}

std::shared_ptr<const SpecialMatcher> Tokenizer::matcher(const std::vector<uint32_t>& ids) const {
  if (ids == all_special_ids_) return all_specials_;
  return std::make_shared<const SpecialMatcher>(specials_, ids);
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text, const std::vector<uint32_t>& allowed) const {
  if (allowed.empty()) return encode_ordinary(text);
  std::shared_ptr<const SpecialMatcher> m = matcher(allowed);
  std::vector<uint32_t> out;
  out.reserve(text.size() / 3 + 4);
  size_t pos = 0;
  for (;;) {
    SpecialMatcher::Hit hit = m->find(text, pos);
    size_t end = hit.pos == std::string_view::npos ? text.size() : hit.pos;
    encode_ordinary_into(text.substr(pos, end - pos), out);
    if (hit.pos == std::string_view::npos) break;
    out.push_back(hit.id);
    pos = hit.pos + hit.len;
  }
  return out;
}

std::vector<uint32_t> Tokenizer::encode_pieces(const std::vector<std::string_view>& pieces) const {
  std::vector<uint32_t> out;
  for (std::string_view p : pieces) encode_piece(p, out);
  return out;
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                           const std::vector<uint32_t>& allowed, int threads) const {
  std::vector<std::vector<uint32_t>> out(texts.size());
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  threads = int(std::min<size_t>(size_t(threads), texts.size()));
  size_t total = 0;
  for (std::string_view t : texts) total += t.size();
  if (threads <= 1 || total < (1u << 16)) {  // small batches: threads cost more than they save
    for (size_t i = 0; i < texts.size(); i++) out[i] = encode(texts[i], allowed);
    return out;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr err;
  std::mutex err_mu;
  auto work = [&]() {
    try {
      for (size_t i; (i = next.fetch_add(1)) < texts.size();) out[i] = encode(texts[i], allowed);
    } catch (...) {
      std::lock_guard<std::mutex> g(err_mu);
      if (!err) err = std::current_exception();
      next = texts.size();
    }
  };
  std::function<void()> job = work;
  if (!BatchPool::get().run(threads, job)) work();
  if (err) std::rethrow_exception(err);
  return out;
}

std::pair<size_t, uint32_t> Tokenizer::find_special(std::string_view text, const std::vector<uint32_t>& ids) const {
  SpecialMatcher::Hit hit = matcher(ids)->find(text, 0);
  return {hit.pos, hit.id};
}

std::string Tokenizer::decode_bytes(const uint32_t* ids, size_t n) const {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += token_bytes(ids[i]).size();
  std::string out;
  out.reserve(total);
  for (size_t i = 0; i < n; i++) {
    const auto& d = dec_[ids[i]];
    out.append(dec_arena_.data() + d.first, d.second);
  }
  return out;
}

std::string Tokenizer::decode_bytes(const int64_t* ids, size_t n) const {
  std::vector<uint32_t> v(n);
  for (size_t i = 0; i < n; i++) {
    PYLLAMA_CHECK(ids[i] >= 0 && uint64_t(ids[i]) < dec_.size(), IndexError,
                  "token id " << ids[i] << " is not in the vocabulary (n_vocab " << dec_.size() << ")");
    v[i] = uint32_t(ids[i]);
  }
  return decode_bytes(v.data(), n);
}

std::string Tokenizer::to_tiktoken() const {
  std::vector<std::string> toks(n_ranks_);
  for (size_t r = 0; r < n_ranks_; r++) toks[r] = std::string(token_bytes(uint32_t(r)));
  return format_tiktoken(toks);
}

std::vector<std::array<uint32_t, 3>> Tokenizer::hf_merges() const {
  std::vector<std::array<uint32_t, 3>> merges;
  std::vector<std::array<uint32_t, 3>> local;
  for (uint32_t r = 0; r < n_ranks_; r++) {
    std::string_view t = token_bytes(r);
    if (t.size() < 2) continue;
    local.clear();
    for (size_t k = 1; k < t.size(); k++) {
      const uint32_t* a = ranks_.find(t.data(), k);
      const uint32_t* b = a ? ranks_.find(t.data() + k, t.size() - k) : nullptr;
      if (a && b) local.push_back({*a, *b, r});
    }
    std::sort(local.begin(), local.end());
    merges.insert(merges.end(), local.begin(), local.end());
  }
  return merges;
}

}  // namespace pyllama
