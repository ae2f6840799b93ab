#include "runtime.h"

#include <cstdlib>

#include "common.h"
#ifdef PYLLAMA_HAVE_OPENMP
#include <omp.h>
#endif

namespace pyllama {

static int detect_simd() {
  const char* env = std::getenv("PYLLAMA_SIMD");  // force a lower level for testing: generic|avx2|avx512
  int best = 0;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
  if (best == 1 && __builtin_cpu_supports("avx512f")) best = 2;
#endif
  if (env) {
    std::string s(env);
    int want = s == "generic" ? 0 : s == "avx2" ? 1 : s == "avx512" ? 2 : best;
    if (want < best) best = want;
  }
  return best;
}

int simd_level() {
  static int level = detect_simd();
  return level;
}

int num_threads() {
#ifdef PYLLAMA_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  PYLLAMA_CHECK(n >= 1, ValueError, "set_num_threads: n must be >= 1, got " << n);
#ifdef PYLLAMA_HAVE_OPENMP
  omp_set_num_threads(n);
#endif
}

}  // namespace pyllama
