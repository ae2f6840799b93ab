#include "tensor.h"

#include <cstdlib>
#include <cstring>

#include <mutex>

namespace pyllama {

namespace {
std::mutex g_mem_mu;
DeviceMemoryOps g_cuda_mem;  // registered by the CUDA backend

DeviceMemoryOps cuda_memory() {
  std::lock_guard<std::mutex> lock(g_mem_mu);
  return g_cuda_mem;
}
}  // namespace

void register_device_memory(Device d, const DeviceMemoryOps& ops) {
  PYLLAMA_CHECK(d == Device::cuda, ValueError, "device memory is registered for 'cuda' only");
  std::lock_guard<std::mutex> lock(g_mem_mu);
  g_cuda_mem = ops;
}

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::float32: return 4;
    case DType::bfloat16: return 2;
    case DType::int32: return 4;
    case DType::uint16: return 2;
    case DType::uint32: return 4;
    case DType::int64: return 8;
  }
  throw ValueError("unknown dtype");
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::float32: return "float32";
    case DType::bfloat16: return "bfloat16";
    case DType::int32: return "int32";
    case DType::uint16: return "uint16";
    case DType::uint32: return "uint32";
    case DType::int64: return "int64";
  }
  return "?";
}

DType dtype_from_name(const std::string& n) {
  if (n == "float32" || n == "f32") return DType::float32;
  if (n == "bfloat16" || n == "bf16") return DType::bfloat16;
  if (n == "int32" || n == "i32") return DType::int32;
  if (n == "uint16") return DType::uint16;
  if (n == "uint32") return DType::uint32;
  if (n == "int64") return DType::int64;
  throw ValueError("unknown dtype '" + n +
                   "': expected one of float32, bfloat16, int32, uint16, uint32, int64");
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

Device device_from_name(const std::string& n) {
  if (n == "cpu") return Device::cpu;
  device_index_from_name(n);  // checks the form
  return Device::cuda;
}

int device_index_from_name(const std::string& n) {
  if (n == "cpu" || n == "cuda") return 0;
  if (n.rfind("cuda:", 0) == 0 && n.size() > 5 && n.size() < 12 &&
      n.find_first_not_of("0123456789", 5) == std::string::npos)
    return std::stoi(n.substr(5));
  throw ValueError("unknown device '" + n + "': expected 'cpu', 'cuda' or 'cuda:N'");
}

std::string Tensor::device_str() const {
  if (device_ == Device::cpu) return "cpu";
  return device_index_ == 0 ? "cuda" : "cuda:" + std::to_string(device_index_);
}

int64_t Tensor::size(int dim) const {
  int nd = ndim();
  if (dim < 0) dim += nd;
  PYLLAMA_CHECK(dim >= 0 && dim < nd, IndexError, "dimension " << dim << " out of range for a " << nd << "-d tensor");
  return shape_[dim];
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return n;
}

static int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    PYLLAMA_CHECK(s >= 0, ValueError, "negative dimension " << s << " in tensor shape");
    n *= s;
  }
  return n;
}

// The CUDA memory operations, or a ValueError saying why there are none: no CUDA backend in
// this build, or no visible GPU.
static DeviceMemoryOps require_cuda(const char* what, int index = 0) {
  DeviceMemoryOps ops = cuda_memory();
  PYLLAMA_CHECK(ops.alloc, ValueError,
                what << ": this build of pyllama has no CUDA backend (pyllama.build_info()['cuda'] is False); "
                        "rebuild with nvcc on PATH (PYLLAMA_CUDA=ON) or keep the tensor on 'cpu'");
  const int n = ops.device_count ? ops.device_count() : 0;
  PYLLAMA_CHECK(n > 0, ValueError,
                what << ": no CUDA device is available (pyllama.build_info()['cuda_available'] is False); "
                        "keep the tensor on 'cpu'");
  PYLLAMA_CHECK(index >= 0 && index < n, ValueError,
                what << ": CUDA device " << index << " does not exist: this machine has " << n);
  return ops;
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device device, int index) {
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.device_index_ = device == Device::cpu ? 0 : index;
  t.shape_ = shape;
  size_t bytes = static_cast<size_t>(checked_numel(shape)) * dtype_size(dtype);
  if (device == Device::cuda) {
    const DeviceMemoryOps ops = require_cuda("a cuda tensor", index);
    void* p = ops.alloc(bytes, index);
    t.storage_ = std::shared_ptr<void>(p, ops.free);
    t.data_ = p;
    return t;
  }
  size_t alloc = ((bytes + 63) / 64) * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  if (!p) throw std::bad_alloc();
  t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data_ = p;
  return t;
}

Tensor Tensor::zeros(const std::vector<int64_t>& shape, DType dtype, Device device, int index) {
  Tensor t = empty(shape, dtype, device, index);
  if (device == Device::cuda) {
    require_cuda("a cuda tensor", index).zero(t.data_, t.nbytes(), index);
    return t;
  }
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

// Copies nbytes between two storages on the given devices (synchronous).
static void copy_bytes(void* dst, Device dst_dev, int dst_index, const void* src, Device src_dev, int src_index,
                       size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_dev == Device::cpu && src_dev == Device::cpu) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  const int kind = dst_dev == Device::cpu ? 1 : src_dev == Device::cpu ? 0 : 2;
  const int index = dst_dev == Device::cpu ? src_index : dst_index;
  require_cuda("copying a cuda tensor", index).copy(dst, src, nbytes, kind, index);
}

Tensor Tensor::to(Device device, int index) const {
  Tensor t = empty(shape_, dtype_, device, index);
  copy_bytes(t.data_, device, t.device_index_, data_, device_, device_index_, nbytes());
  return t;
}

Tensor Tensor::wrap(void* data, const std::vector<int64_t>& shape, DType dtype,
                    std::shared_ptr<void> keepalive, Device device, int index) {
  Tensor t;
  checked_numel(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.device_index_ = device == Device::cpu ? 0 : index;
  t.shape_ = shape;
  t.storage_ = std::move(keepalive);
  t.data_ = data;
  return t;
}

Tensor Tensor::view(const std::vector<int64_t>& shape) const {
  int64_t n = checked_numel(shape);
  PYLLAMA_CHECK(n == numel(), ValueError,
                "cannot view a tensor of " << numel() << " elements as one of " << n << " elements");
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::clone() const { return to(device_, device_index_); }

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

Tensor Tensor::to_dtype(DType dt) const {
  if (dt == dtype_) return clone();
  if (device_ != Device::cpu) return to(Device::cpu).to_dtype(dt).to(device_, device_index_);  // through the host
  Tensor out = empty(shape_, dt, device_);
  int64_t n = numel();
  if (dtype_ == DType::float32 && dt == DType::bfloat16) {
    const float* s = data<float>();
    uint16_t* d = out.data<uint16_t>();
    for (int64_t i = 0; i < n; i++) d[i] = float_to_bf16(s[i]);
  } else if (dtype_ == DType::bfloat16 && dt == DType::float32) {
    const uint16_t* s = data<uint16_t>();
    float* d = out.data<float>();
    for (int64_t i = 0; i < n; i++) d[i] = bf16_to_float(s[i]);
  } else {
    throw ValueError(std::string("conversion from ") + dtype_name(dtype_) + " to " + dtype_name(dt) +
                     " is not supported (only float32 <-> bfloat16)");
  }
  return out;
}

std::string Tensor::repr() const {
  std::ostringstream ss;
  ss << "Tensor(shape=(";
  for (size_t i = 0; i < shape_.size(); i++) ss << (i ? ", " : "") << shape_[i];
  if (shape_.size() == 1) ss << ",";
  ss << "), dtype=" << dtype_name(dtype_) << ", device=" << device_str() << ")";
  return ss.str();
}

void Tensor::check(DType dt, int nd, const char* what) const {
  PYLLAMA_CHECK(dtype_ == dt, TypeError,
                what << ": expected dtype " << dtype_name(dt) << ", got " << dtype_name(dtype_));
  PYLLAMA_CHECK(nd < 0 || ndim() == nd, ValueError,
                what << ": expected a " << nd << "-d tensor, got " << ndim() << "-d " << repr());
}

}  // namespace pyllama
