// backends.h — the whole library in one call: registers every backend this build has
// (cpu, and cuda when compiled in) with make_model / move_model, and reports what the
// build has and what the machine offers now. The only file that knows every backend.
//
//   pyllama::register_backends();                          // once, at start-up (idempotent)
//   auto model = pyllama::load_pretrained("my-model", "cpu");
//   pyllama::BuildInfo bi = pyllama::build_info();
//   printf("%s simd=%s cuda=%d\n", bi.version.c_str(), bi.simd.c_str(), (int)bi.cuda);
#pragma once
#include <string>

namespace pyllama {

void register_backends();

struct BuildInfo {
  std::string version;
  bool cuda = false;            // CUDA kernels compiled in
  std::string cuda_archs;       // e.g. "80,90"
  bool cuda_available = false;  // a GPU is usable now
  std::string simd;             // "avx512", "avx2" or "generic" (what the CPU kernels dispatch to)
  bool openmp = false;
  int threads = 1;
};

BuildInfo build_info();  // registers the backends first

}  // namespace pyllama
