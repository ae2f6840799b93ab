// runtime.h — what the core was built with and what the machine offers now.
//
//   pyllama::BuildInfo bi = pyllama::build_info();
//   printf("%s simd=%s threads=%d\n", bi.version.c_str(), bi.simd.c_str(), bi.threads);
#pragma once
#include <string>

namespace pyllama {

struct BuildInfo {
  std::string version;
  bool cuda = false;          // CUDA kernels compiled in
  std::string cuda_archs;     // e.g. "80;90"
  bool cuda_available = false;  // a GPU is usable now
  std::string simd;           // "avx512", "avx2" or "generic" (what the kernels dispatch to)
  bool openmp = false;
  int threads = 1;
};

BuildInfo build_info();
int num_threads();
void set_num_threads(int n);  // n >= 1; throws ValueError otherwise
// Which SIMD path the CPU kernels take: 2 = AVX-512, 1 = AVX2+FMA, 0 = portable.
int simd_level();
int cuda_device_count();  // 0 without the CUDA backend or without a GPU

}  // namespace pyllama
