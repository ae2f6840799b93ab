#include "backends.h"

#include <mutex>

#include "backend.h"
#include "model.h"    // the CPU backend
#include "runtime.h"  // threads
#ifdef PYLLAMA_HAVE_CUDA
#include "model_cuda.h"  // the CUDA backend (plain C++ header)
#endif

namespace pyllama {

void register_backends() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_cpu_backend();
#ifdef PYLLAMA_HAVE_CUDA
    register_cuda_backend();
#endif
  });
}

BuildInfo build_info() {
  register_backends();
  BuildInfo b;
#ifdef PYLLAMA_VERSION
  b.version = PYLLAMA_VERSION;
#endif
  b.cuda = backend_available("cuda");
  b.cuda_archs = backend_archs("cuda");
  b.cuda_available = backend_device_count("cuda") > 0;
  b.simd = backend_archs("cpu");
#ifdef PYLLAMA_HAVE_OPENMP
  b.openmp = true;
#endif
  b.threads = num_threads();
  return b;
}

}  // namespace pyllama
