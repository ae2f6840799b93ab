// cuda_device.h — the CUDA backend's plain-C++ surface below the model: the error type,
// the device count, and device memory for the core's Tensor (Device::cuda storage).
// No CUDA headers, so any core file can include it (when PYLLAMA_HAVE_CUDA is defined).
//
//   void* p = pyllama::cuda_malloc(bytes);                 // throws CudaError
//   pyllama::cuda_copy(p, host, bytes, pyllama::CudaCopy::host_to_device);
//   std::shared_ptr<void> storage(p, pyllama::cuda_free);  // a Tensor's storage
#pragma once
#include <cstddef>
#include <stdexcept>

namespace pyllama {

// A failed CUDA runtime or cuBLAS call: the message names the call, the error, the file and the line.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int cuda_runtime_device_count();  // 0 when no usable GPU (never throws)

enum class CudaCopy : int { host_to_device = 0, device_to_host = 1, device_to_device = 2 };

void* cuda_malloc(size_t bytes);      // on the current device; throws CudaError
void cuda_free(void* p) noexcept;     // nullptr is fine; errors are ignored (for deleters)
// Synchronous copy (waits for the device); throws CudaError.
void cuda_copy(void* dst, const void* src, size_t bytes, CudaCopy kind);
// Synchronous fill of device memory with zero bytes; throws CudaError.
void cuda_zero(void* p, size_t bytes);

// Device memory held by LlamaModelCuda buffers (every model of the process; cuBLAS-internal
// memory, CUDA graphs and pinned host buffers not included): now, and the most since the
// last reset (a reset sets the peak to the current bytes).
size_t cuda_bytes_allocated();
size_t cuda_peak_bytes_allocated();
void cuda_reset_peak_bytes_allocated();

}  // namespace pyllama
