// device.cu — CUDA runtime queries and device memory (see cuda_device.h). Every CUDA
// call is checked; a failing device query means "no usable GPU", never an abort.
#include "common.cuh"
#include "cuda_device.h"

namespace pyllama {

int cuda_runtime_device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error state
    return 0;
  }
  return n;
}

void* cuda_malloc(size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
  return p;
}

void cuda_free(void* p) noexcept {
  if (p) cudaFree(p);
}

void cuda_copy(void* dst, const void* src, size_t bytes, CudaCopy kind) {
  const cudaMemcpyKind k = kind == CudaCopy::host_to_device   ? cudaMemcpyHostToDevice
                           : kind == CudaCopy::device_to_host ? cudaMemcpyDeviceToHost
                                                              : cudaMemcpyDeviceToDevice;
  if (!bytes) return;
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, k));
  // cudaMemcpy returns before a device-to-device copy, or the DMA of a pageable host-to-device
  // copy, has finished; wait, so the copy is synchronous as documented (and a cuda tensor's
  // __cuda_array_interface__ can say stream None: nothing left to wait for).
  if (kind != CudaCopy::device_to_host) CUDA_CHECK(cudaStreamSynchronize(0));
}

void cuda_zero(void* p, size_t bytes) {
  if (bytes) {
    CUDA_CHECK(cudaMemset(p, 0, bytes));
    CUDA_CHECK(cudaStreamSynchronize(0));  // the legacy stream, as cudaMemcpy uses
  }
}

}  // namespace pyllama
