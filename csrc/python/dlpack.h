// dlpack.h — the DLPack exchange structs (the stable, unversioned "dltensor" ABI of the
// DLPack specification, dmlc/dlpack), declared here from the spec so the binding can hand
// core tensors to numpy / torch / cupy without a copy (Tensor.__dlpack__).
#pragma once
#include <cstdint>

extern "C" {

enum PyllamaDLDeviceType : int32_t { kPyllamaDLCPU = 1, kPyllamaDLCUDA = 2 };
enum PyllamaDLDataTypeCode : uint8_t { kPyllamaDLInt = 0, kPyllamaDLUInt = 1, kPyllamaDLFloat = 2, kPyllamaDLBfloat = 4 };

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; nullptr means compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

}  // extern "C"
