// safetensors.h — the one reader of safetensors files, used by Python's from_pretrained
// and C++'s load_pretrained alike. A file: 8-byte little-endian header length, a JSON
// header mapping each tensor name to {dtype, shape, data_offsets: [begin, end)} relative
// to the end of the header (plus an optional "__metadata__" object), then the raw data.
//
//   pyllama::SafetensorsFile f("model.safetensors");              // mmap; header checked
//   for (const auto& e : f.entries()) ...                           // name, dtype, shape
//   f.read_float32(f.entry("model.norm.weight"), dst, true);        // F32/F16/BF16 -> float32
//
// Every check names the file and the tensor: a header longer than the file, offsets outside
// the data or that disagree with shape x dtype, overlapping tensors, a dtype pyllama does not
// load as weights (integers, bool, F64, F8...: refused, never cast), non-finite values.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "llama_config.h"  // ParamInfo

namespace pyllama {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as in the header: "F32", "F16", "BF16", "I8", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
  size_t numel() const;
};

// The header of a safetensors image (bytes, size): every entry checked against the data size.
// `what` names the file in errors.
std::vector<SafetensorsEntry> parse_safetensors_header(const char* bytes, size_t size, const std::string& what,
                                                       size_t* data_offset);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // IOError / ValueError
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr when absent
  // The tensor as float32 into dst (numel floats): F32 copied, F16 and BF16 converted exactly;
  // any other dtype is a ValueError naming it. check_finite: NaN or Inf is a ValueError too.
  void read_float32(const SafetensorsEntry& e, float* dst, bool check_finite) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const char* base_ = nullptr;  // the mapped file
  size_t size_ = 0;
  size_t data_offset_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
};

// The matching rule every checkpoint reader shares (safetensors, .bin): each parameter of the
// layout found exactly once with its shape; a tensor the layout does not have is refused by
// name, except rotary_emb.inv_freq buffers and, when `tied`, lm_head.weight.
class WeightMatcher {
 public:
  WeightMatcher(const std::vector<ParamInfo>& infos, bool tied);
  // The parameter a file's tensor fills, or nullptr for a tensor to skip; ValueError for an
  // unexpected tensor, one seen twice, or a shape that is not the config's.
  const ParamInfo* take(const std::string& name, const std::vector<int64_t>& shape, const std::string& file);
  // With tied embeddings, a file may still hold lm_head.weight: a buffer to read it into (else
  // nullptr), so that finish() can check it equals the embedding.
  float* tied_head(const std::string& name, const std::vector<int64_t>& shape);
  // ValueError naming the parameters no file held, or a tied lm_head.weight that differs from
  // the embedding in dst (transformers unties such a model; pyllama asks for the config to say so).
  void finish(const float* dst = nullptr) const;

 private:
  std::vector<float> head_;
  bool tied_;
  std::vector<ParamInfo> infos_;
  std::map<std::string, size_t> want_;
  std::map<std::string, std::string> seen_;  // name -> file
};

// IEEE half to float, exactly (subnormals, Inf, NaN).
float f16_to_float(uint16_t h);

// Converts one entry of a data section (after the header) to float32: the shared worker of
// SafetensorsFile::read_float32, exposed for in-memory images (tests, fuzzing).
void safetensors_to_float32(const char* data, const SafetensorsEntry& e, float* dst, bool check_finite,
                            const std::string& what);

}  // namespace pyllama
