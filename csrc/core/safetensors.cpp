#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <thread>
#include <sstream>

#include "common.h"
#include "json.h"
#include "llama_config.h"  // ParamInfo
#include "tensor.h"  // bf16_to_float

namespace pyllama {

float f16_to_float(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp((float)mant, -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp((float)(mant | 0x400), (int)exp - 25);
  return sign ? -v : v;
}

namespace {

size_t dtype_bytes(const std::string& dt) {
  if (dt == "F64" || dt == "I64" || dt == "U64") return 8;
  if (dt == "F32" || dt == "I32" || dt == "U32") return 4;
  if (dt == "F16" || dt == "BF16" || dt == "I16" || dt == "U16") return 2;
  if (dt == "I8" || dt == "U8" || dt == "BOOL" || dt == "F8_E4M3" || dt == "F8_E5M2") return 1;
  return 0;
}

}  // namespace

size_t SafetensorsEntry::numel() const {
  size_t n = 1;
  for (int64_t s : shape) n *= (size_t)s;
  return n;
}

std::vector<SafetensorsEntry> parse_safetensors_header(const char* bytes, size_t size, const std::string& what,
                                                       size_t* data_offset) {
  PYLLAMA_CHECK(size >= 8, ValueError, "'" << what << "' is too short to be a safetensors file (" << size << " bytes)");
  uint64_t hlen = 0;
  for (int k = 7; k >= 0; k--) hlen = (hlen << 8) | (unsigned char)bytes[k];
  PYLLAMA_CHECK(hlen <= size - 8, ValueError,
                "'" << what << "': the header length (" << hlen << " bytes) exceeds the file size (" << size
                    << "): not a safetensors file, or a truncated one");
  Json header;
  try {
    header = Json::parse(std::string(bytes + 8, (size_t)hlen));
  } catch (const ValueError& e) {
    throw ValueError("'" + what + "': the safetensors header is not valid JSON: " + e.what());
  }
  PYLLAMA_CHECK(header.kind() == Json::Kind::object, ValueError,
                "'" << what << "': the safetensors header must be a JSON object");
  const uint64_t data_size = size - 8 - hlen;
  *data_offset = (size_t)(8 + hlen);
  std::vector<SafetensorsEntry> out;
  for (const auto& kv : header.items()) {
    if (kv.first == "__metadata__") continue;
    const Json& t = kv.second;
    const std::string at = "'" + what + "', tensor '" + kv.first + "'";
    PYLLAMA_CHECK(t.kind() == Json::Kind::object && t.has("dtype") && t.has("shape") && t.has("data_offsets"),
                  ValueError, at << ": a header entry needs dtype, shape and data_offsets");
    SafetensorsEntry e;
    e.name = kv.first;
    PYLLAMA_CHECK(t["dtype"].kind() == Json::Kind::string, ValueError, at << ": dtype must be a string");
    e.dtype = t["dtype"].as_string();
    const size_t elt = dtype_bytes(e.dtype);
    PYLLAMA_CHECK(elt, ValueError, at << ": unknown dtype '" << e.dtype << "'");
    const Json& shape = t["shape"];
    PYLLAMA_CHECK(shape.kind() == Json::Kind::array && shape.size() <= 8, ValueError,
                  at << ": shape must be an array of at most 8 sizes");
    uint64_t numel = 1;
    for (size_t d = 0; d < shape.size(); d++) {
      PYLLAMA_CHECK(shape.at(d).kind() == Json::Kind::number, ValueError, at << ": shape holds a non-number");
      const int64_t s = shape.at(d).as_int();
      PYLLAMA_CHECK(s >= 0 && (uint64_t)s <= data_size, ValueError, at << ": shape size " << s << " is impossible");
      e.shape.push_back(s);
      numel = s == 0 ? 0 : numel * (uint64_t)s;
      PYLLAMA_CHECK(numel <= data_size, ValueError, at << ": the shape holds more elements than the file has bytes");
    }
    const Json& offs = t["data_offsets"];
    PYLLAMA_CHECK(offs.kind() == Json::Kind::array && offs.size() == 2 &&
                      offs.at(0).kind() == Json::Kind::number && offs.at(1).kind() == Json::Kind::number,
                  ValueError, at << ": data_offsets must be [begin, end]");
    const int64_t b = offs.at(0).as_int(), en = offs.at(1).as_int();
    PYLLAMA_CHECK(b >= 0 && en >= b && (uint64_t)en <= data_size, ValueError,
                  at << ": data_offsets [" << b << ", " << en << "] fall outside the data (" << data_size
                     << " bytes): a truncated or corrupt file");
    PYLLAMA_CHECK((uint64_t)(en - b) == numel * elt, ValueError,
                  at << ": data_offsets span " << (en - b) << " bytes but shape x " << e.dtype << " needs "
                     << numel * elt);
    e.begin = (uint64_t)b;
    e.end = (uint64_t)en;
    out.push_back(std::move(e));
  }
  // tensors must not overlap (the format lays them out back to back)
  std::vector<const SafetensorsEntry*> order;
  for (const auto& e : out) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin < b->begin || (a->begin == b->begin && a->end < b->end);
  });
  for (size_t i = 1; i < order.size(); i++)
    PYLLAMA_CHECK(order[i]->begin >= order[i - 1]->end || order[i - 1]->begin == order[i - 1]->end ||
                      order[i]->begin == order[i]->end,
                  ValueError,
                  "'" << what << "': tensors '" << order[i - 1]->name << "' and '" << order[i]->name
                      << "' overlap in the data");
  return out;
}

namespace {
// Converts [lo, hi) of a tensor to float32; returns the first non-finite index (or hi) when checking.
size_t convert_range(const char* src, const std::string& dtype, float* dst, size_t lo, size_t hi, bool check_finite) {
  if (dtype == "F32") {
    std::memcpy(dst + lo, src + 4 * lo, (hi - lo) * 4);
  } else {
    const bool bf = dtype == "BF16";
    for (size_t i = lo; i < hi; i++) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = bf ? bf16_to_float(h) : f16_to_float(h);
    }
  }
  if (check_finite)
    for (size_t i = lo; i < hi; i++)
      if (!std::isfinite(dst[i])) return i;
  return hi;
}
}  // namespace

void safetensors_to_float32(const char* data, const SafetensorsEntry& e, float* dst, bool check_finite,
                            const std::string& what) {
  const size_t n = e.numel();
  const char* src = data + e.begin;
  if (e.dtype != "F32" && e.dtype != "F16" && e.dtype != "BF16")
    throw ValueError("'" + what + "', tensor '" + e.name + "' has dtype " + e.dtype +
                     ": pyllama loads float32, float16 and bfloat16 weights; integer, bool, float64 and "
                     "8-bit tensors are refused rather than cast (convert the checkpoint's floats)");
  // Big tensors in parallel chunks (the conversion and the page faults of the mapped file and
  // of the destination): a 1B model's 3 GB of bf16 is mostly such tensors.
  const size_t kChunk = size_t(1) << 20;
  const unsigned hw = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  const unsigned nth = n >= 2 * kChunk ? (unsigned)std::min<size_t>(hw, n / kChunk) : 1;
  size_t bad = n;
  if (nth <= 1) {
    bad = convert_range(src, e.dtype, dst, 0, n, check_finite);
  } else {
    std::vector<size_t> first(nth, n);
    std::vector<std::thread> pool;
    const size_t per = (n + nth - 1) / nth;
    for (unsigned t = 0; t < nth; t++) {
      const size_t lo = std::min(n, t * per), hi = std::min(n, lo + per);
      pool.emplace_back([&, t, lo, hi] {
        size_t b = convert_range(src, e.dtype, dst, lo, hi, check_finite);
        first[t] = b < hi ? b : n;
      });
    }
    for (auto& th : pool) th.join();
    for (size_t b : first) bad = std::min(bad, b);
  }
  PYLLAMA_CHECK(!(check_finite && bad < n), ValueError,
                "'" << what << "', tensor '" << e.name << "' holds " << dst[bad < n ? bad : 0] << " at element "
                    << bad << ": the weights are not finite (a corrupt or diverged checkpoint)");
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  PYLLAMA_CHECK(fd >= 0, IOError, "cannot open '" << path << "': " << std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IOError("'" + path + "' is not a regular file");
  }
  size_ = (size_t)st.st_size;
  if (size_ > 0) {
#ifdef MAP_POPULATE
    const int populate = MAP_POPULATE;  // every byte is read: map the pages in one go, not one fault each
#else
    const int populate = 0;
#endif
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | populate, fd, 0);
    ::close(fd);
    PYLLAMA_CHECK(p != MAP_FAILED, IOError, "cannot map '" << path << "': " << std::strerror(errno));
    base_ = static_cast<const char*>(p);
  } else {
    ::close(fd);
  }
  try {
    entries_ = parse_safetensors_header(base_ ? base_ : "", size_, path, &data_offset_);
  } catch (...) {
    if (base_) ::munmap(const_cast<char*>(base_), size_);
    throw;
  }
  for (size_t i = 0; i < entries_.size(); i++) index_[entries_[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() {
  if (base_) ::munmap(const_cast<char*>(base_), size_);
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void SafetensorsFile::read_float32(const SafetensorsEntry& e, float* dst, bool check_finite) const {
  safetensors_to_float32(base_ + data_offset_, e, dst, check_finite, path_);
}

WeightMatcher::WeightMatcher(const std::vector<ParamInfo>& infos, bool tied) : tied_(tied), infos_(infos) {
  for (size_t i = 0; i < infos_.size(); i++) want_[infos_[i].name] = i;
}

const ParamInfo* WeightMatcher::take(const std::string& name, const std::vector<int64_t>& shape,
                                     const std::string& path) {
  auto it = want_.find(name);
  if (it == want_.end()) {
    const bool inv_freq = name.size() >= 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
    if (inv_freq || (tied_ && name == "lm_head.weight")) return nullptr;  // (tied_head checks the latter)
    throw ValueError("'" + path + "' holds an unexpected tensor '" + name + "' for this config");
  }
  const ParamInfo& p = infos_[it->second];
  PYLLAMA_CHECK(!seen_.count(name), ValueError,
                "tensor '" << name << "' is in both '" << seen_.at(name) << "' and '" << path << "'");
  bool same = shape.size() == p.shape.size();
  for (size_t d = 0; same && d < p.shape.size(); d++) same = shape[d] == p.shape[d];
  if (!same) {
    std::ostringstream got, exp;
    for (size_t d = 0; d < shape.size(); d++) got << (d ? ", " : "") << shape[d];
    for (size_t d = 0; d < p.shape.size(); d++) exp << (d ? ", " : "") << p.shape[d];
    throw ValueError("tensor '" + name + "' in '" + path + "' has shape (" + got.str() + "), expected (" +
                     exp.str() + ") from config.json");
  }
  seen_[name] = path;
  return &p;
}

float* WeightMatcher::tied_head(const std::string& name, const std::vector<int64_t>& shape) {
  if (!tied_ || name != "lm_head.weight") return nullptr;
  const ParamInfo& emb = infos_[want_.at("model.embed_tokens.weight")];
  PYLLAMA_CHECK(shape == emb.shape, ValueError,
                "lm_head.weight's shape differs from model.embed_tokens.weight's in a tied model");
  head_.assign(emb.numel, 0.f);
  return head_.data();
}

void WeightMatcher::finish(const float* dst) const {
  if (!head_.empty() && dst) {
    const ParamInfo& emb = infos_[want_.at("model.embed_tokens.weight")];
    for (size_t i = 0; i < emb.numel; i++)
      PYLLAMA_CHECK(head_[i] == dst[emb.offset + i] || (std::isnan(head_[i]) && std::isnan(dst[emb.offset + i])),
                    ValueError,
                    "config.json sets tie_word_embeddings, but the checkpoint's lm_head.weight differs from "
                    "model.embed_tokens.weight (first at element "
                        << i << "); transformers would not tie them and would use lm_head.weight. Set "
                                "\"tie_word_embeddings\": false in config.json to load the model that way");
  }
  std::vector<std::string> missing;
  for (const auto& p : infos_)
    if (!seen_.count(p.name)) missing.push_back(p.name);
  if (!missing.empty()) {
    std::ostringstream m;
    m << "the checkpoint lacks " << missing.size() << " tensor(s), e.g. ";
    for (size_t i = 0; i < missing.size() && i < 3; i++) m << (i ? ", " : "") << "'" << missing[i] << "'";
    throw ValueError(m.str());
  }
}

}  // namespace pyllama
