// device.cu — CUDA runtime queries. Every CUDA call is checked; a failing
// query means "no usable GPU", never an abort.
#include <cuda_runtime.h>

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

}  // namespace pyllama
