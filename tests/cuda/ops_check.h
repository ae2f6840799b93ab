// ops_check.h — a test harness, not part of the library: every CUDA launcher against its
// CPU twin (cpu/ops.h) on random float32 inputs. Built into the Python module (for
// tests/test_cuda.py) and tests/cpp/test_cuda_ops.cpp when the CUDA backend is.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace pyllama {

// (check name, max |gpu - cpu| / max |cpu|) pairs. Throws CudaError without a GPU. Every matmul
// back end the build has is checked.
std::vector<std::pair<std::string, double>> cuda_check_ops(unsigned seed = 1234);

}  // namespace pyllama
