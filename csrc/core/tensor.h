// tensor.h — the core's n-dimensional array.
//
// A Tensor is a dtype, a shape, a device tag and a pointer to row-major,
// contiguous storage. Storage is reference-counted and may be owned by the
// tensor (Tensor::empty) or borrowed from someone else (Tensor::wrap, used for
// zero-copy numpy interop; the keep-alive handle keeps the owner alive).
//
//   pyllama::Tensor x = pyllama::Tensor::empty({2, 3}, pyllama::DType::float32);
//   float* p = x.data<float>();            // 6 floats, row-major
//   pyllama::Tensor v = x.view({3, 2});    // same storage, new shape
//   pyllama::Tensor g = x.to(pyllama::Device::cuda);  // a copy in GPU memory (CUDA builds)
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace pyllama {

enum class DType : int { float32 = 0, bfloat16 = 1, int32 = 2, uint16 = 3, uint32 = 4, int64 = 5 };
enum class Device : int { cpu = 0, cuda = 1 };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);
DType dtype_from_name(const std::string& name);  // throws ValueError on unknown names
const char* device_name(Device d);
// Device memory for Tensor storage, supplied by the backend of that device when it registers
// (the core itself allocates host memory only). Copies and fills are synchronous.
struct DeviceMemoryOps {
  void* (*alloc)(size_t bytes, int index) = nullptr;  // on device `index`; throws on failure
  void (*free)(void* p) noexcept = nullptr;
  void (*zero)(void* p, size_t bytes, int index) = nullptr;
  // kind: 0 host to device, 1 device to host, 2 device to device; index: the device side's
  // (the destination's for device to device)
  void (*copy)(void* dst, const void* src, size_t bytes, int kind, int index) = nullptr;
  int (*device_count)() = nullptr;
};
void register_device_memory(Device d, const DeviceMemoryOps& ops);
Device device_from_name(const std::string& name);  // "cpu", "cuda", "cuda:N" (the index: device_index_from_name)
int device_index_from_name(const std::string& name);  // N of "cuda:N"; 0 for "cpu" and "cuda"

class Tensor {
 public:
  Tensor() = default;
  // A new tensor with uninitialised storage owned by the tensor.
  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device device = Device::cpu, int index = 0);
  static Tensor zeros(const std::vector<int64_t>& shape, DType dtype, Device device = Device::cpu, int index = 0);
  // A tensor over memory owned by someone else; `keepalive` is held as long as
  // any tensor shares the storage.
  static Tensor wrap(void* data, const std::vector<int64_t>& shape, DType dtype,
                     std::shared_ptr<void> keepalive, Device device = Device::cpu, int index = 0);

  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int device_index() const { return device_index_; }  // which GPU (0 on the CPU)
  std::string device_str() const;                      // "cpu", "cuda" (GPU 0) or "cuda:N"
  const std::vector<int64_t>& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int dim) const;
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }

  void* raw() const { return data_; }
  template <typename T>
  T* data() const { return static_cast<T*>(data_); }

  // Same storage, new shape with the same number of elements.
  Tensor view(const std::vector<int64_t>& shape) const;
  // A copy with its own storage.
  Tensor clone() const;
  // A copy on `device` (cpu <-> cuda, or a copy on the same device). Synchronous.
  // Throws ValueError without the CUDA backend or without a GPU.
  Tensor to(Device device, int index = 0) const;
  // Conversions between float32 and bfloat16 (round to nearest even); other pairs throw.
  Tensor to_dtype(DType dt) const;
  std::string repr() const;

  // Throws ValueError / TypeError naming `what` when the tensor does not match.
  void check(DType dt, int ndim, const char* what) const;

 private:
  DType dtype_ = DType::float32;
  Device device_ = Device::cpu;
  int device_index_ = 0;
  std::vector<int64_t> shape_;
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
};

// bfloat16 helpers (storage is uint16_t).
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t h);

}  // namespace pyllama
