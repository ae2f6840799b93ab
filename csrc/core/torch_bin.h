// torch_bin.h — PyTorch checkpoint files (pytorch_model.bin, torch.save of a state dict) read
// WITHOUT running pickled code. A .bin file is a pickle program; Python's unpickler would call
// whatever functions it names (os.system included). This reader runs a small pickle machine
// that knows only the opcodes and the few calls a state dict uses, and refuses every other
// call by name before anything happens:
//
//   callable:  torch._utils._rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
//              _rebuild_parameter, _rebuild_parameter_with_state; collections.OrderedDict
//   values:    torch.<Type>Storage (FloatStorage, HalfStorage, BFloat16Storage, ...), torch.<dtype>
//              (torch.float32, ...), torch.UntypedStorage, only inside persistent ids / arguments
//
// Two layouts: the zip archive torch.save writes since 1.6 (`<prefix>/data.pkl`, the storages
// in `<prefix>/data/<key>`, `<prefix>/byteorder`; entries must be stored, not compressed; zip64
// read) and the legacy stream (magic number, protocol version, sys_info, the object, the
// storage keys, then each storage as an int64 element count and its bytes).
//
//   pyllama::TorchBinFile f("pytorch_model.bin");                  // mmap; pickle checked
//   for (const auto& e : f.entries()) ...                           // name, dtype, shape
//   f.read_float32(*f.find("model.norm.weight"), dst, true);        // F32/F16/BF16 -> float32
//
// The top-level object must be a dict (or OrderedDict) of name -> tensor. Tensors may share a
// storage (tied weights) at any offset and have any non-negative strides (gathered on read);
// dtype names follow safetensors ("F32", "F16", "BF16", "F64", "I64", ...); only the first
// three load, the others are refused naming the tensor and the dtype. Every error names the
// file. Big-endian files are refused by name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "llama_config.h"  // ParamInfo

namespace pyllama {

struct TorchBinEntry {
  std::string name;
  std::string dtype;  // safetensors spelling: "F32", "F16", "BF16", "F64", "I64", "BOOL", ...
  std::vector<int64_t> shape, stride;  // stride in elements
  uint64_t storage_begin = 0;  // byte offset of the storage's first element in the image
  uint64_t storage_numel = 0;  // elements in the storage
  uint64_t offset = 0;         // the tensor's storage offset, in elements
  size_t numel() const;
};

// The entries of a .bin image (bytes, size): pickle run under the allowed set, every tensor
// checked against its storage. `what` names the file in errors (ValueError).
std::vector<TorchBinEntry> parse_torch_bin(const char* bytes, size_t size, const std::string& what);

// One entry of an image as float32 into dst (numel floats; strides gathered): F32 copied, F16 and
// BF16 converted exactly; any other dtype is a ValueError naming it. check_finite: NaN/Inf refused.
void torch_bin_to_float32(const char* bytes, const TorchBinEntry& e, float* dst, bool check_finite,
                          const std::string& what);

class TorchBinFile {
 public:
  explicit TorchBinFile(const std::string& path);  // IOError / ValueError
  ~TorchBinFile();
  TorchBinFile(const TorchBinFile&) = delete;
  TorchBinFile& operator=(const TorchBinFile&) = delete;

  const std::vector<TorchBinEntry>& entries() const { return entries_; }
  const TorchBinEntry* find(const std::string& name) const;  // nullptr when absent
  void read_float32(const TorchBinEntry& e, float* dst, bool check_finite) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const char* base_ = nullptr;  // the mapped file
  size_t size_ = 0;
  std::vector<TorchBinEntry> entries_;
  std::map<std::string, size_t> index_;
};

// The weights of a model from .bin files (one, or a checkpoint's shards) into dst, with the
// same matching rules as safetensors (WeightMatcher; load_weight_files in checkpoint.h reads both) (names, shapes, missing/unexpected tensors).
void load_torch_bin_weights(const std::vector<std::string>& files, const std::vector<ParamInfo>& infos, bool tied,
                            float* dst, bool check_finite);

}  // namespace pyllama
