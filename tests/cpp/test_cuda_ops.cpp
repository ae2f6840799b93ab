// test_cuda_ops.cpp — every CUDA kernel against its CPU twin (cuda/ops_check.cu).
// Reports a skip to CTest (exit code 77, SKIP_RETURN_CODE in CMakeLists.txt) when the CUDA
// backend is not built or no GPU is usable.
#include <cstdio>

#include "backend.h"
#include "backends.h"
#ifdef PYLLAMA_HAVE_CUDA
#include "model_cuda.h"
#include "ops_check.h"
#endif

constexpr int kSkip = 77;  // CTest's SKIP_RETURN_CODE for this test

int main() {
#ifndef PYLLAMA_HAVE_CUDA
  std::printf("SKIP: built without the CUDA backend (PYLLAMA_CUDA=OFF or no nvcc)\n");
  return kSkip;
#else
  pyllama::register_backends();
  if (pyllama::backend_device_count("cuda") == 0) {
    std::printf("SKIP: no usable CUDA device\n");
    return kSkip;
  }
  int failures = 0;
  try {
    for (const auto& r : pyllama::cuda_check_ops(1234)) {
      const bool ok = r.second <= 1e-4;
      std::printf("%s %-48s rel err %.3e\n", ok ? "ok  " : "FAIL", r.first.c_str(), r.second);
      failures += !ok;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: %s\n", e.what());
    return 1;
  }
  std::printf("%s\n", failures ? "FAILED" : "all CUDA kernels match the CPU");
  return failures ? 1 : 0;
#endif
}
