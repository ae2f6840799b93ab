// runtime.h — the CPU backend's threads and SIMD level (what the build has overall:
// build_info() in all/backends.h).
//
//   pyllama::set_num_threads(2);
//   int level = pyllama::simd_level();   // 2 AVX-512, 1 AVX2+FMA, 0 portable
#pragma once
#include <string>

namespace pyllama {

int num_threads();
void set_num_threads(int n);  // n >= 1; throws ValueError otherwise
// Which SIMD path the CPU kernels take: 2 = AVX-512, 1 = AVX2+FMA, 0 = portable.
int simd_level();

}  // namespace pyllama
