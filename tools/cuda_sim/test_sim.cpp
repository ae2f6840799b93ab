// test_sim.cpp — the emulator's own built-ins, on toy kernels written here: the shuffle
// variants (with width), shuffles in 2-D blocks, atomics, dynamic and static shared
// memory, and the launch-configuration errors a GPU would report.
#include "check.h"

using namespace chk;

namespace {

void shuffles(int* out) {  // block (16, 4): lane = linear index % 32
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = t & 31;
  int* o = out + t * 6;
  o[0] = __shfl_sync(0xffffffffu, t * 10, 3);
  o[1] = __shfl_sync(0xffffffffu, t * 10, 5, 8);
  o[2] = __shfl_xor_sync(0xffffffffu, t, 9);
  o[3] = __shfl_down_sync(0xffffffffu, t, 3, 16);
  o[4] = __shfl_up_sync(0xffffffffu, t, 2);
  double d = lane;
  for (int k = 16; k > 0; k >>= 1) d += __shfl_down_sync(0xffffffffu, d, k);
  o[5] = (int)__shfl_sync(0xffffffffu, d, 0);
}

void shared_and_atomics(double* sum, float* out) {
  float* dyn = reinterpret_cast<float*>(::sim::dyn_smem());
  auto& st = ::sim::shared_var<int[4]>(__LINE__);
  dyn[threadIdx.x] = (float)threadIdx.x;
  if (threadIdx.x < 4) st[threadIdx.x] = (int)threadIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = dyn[blockDim.x - 1 - threadIdx.x] + st[threadIdx.x & 3];
  atomicAdd(sum, 1.0);
}

}  // namespace

SIM_TEST(sim_builtins) {
  std::vector<int> out(64 * 6, -1);
  ::sim::launch(::sim::Cfg(1, dim3(16, 4)), "shuffles", nullptr, [&] { shuffles(out.data()); });
  bool ok = true;
  for (int t = 0; t < 64; t++) {
    const int lane = t & 31, base = t - lane;
    const int* o = out.data() + t * 6;
    ok &= o[0] == (base + 3) * 10;
    ok &= o[1] == (base + (lane & ~7) + 5) * 10;
    ok &= o[2] == base + (lane ^ 9);
    ok &= o[3] == ((lane & 15) + 3 < 16 ? t + 3 : t);
    ok &= o[4] == (lane >= 2 ? t - 2 : t);
    ok &= o[5] == 496;  // 0 + 1 + ... + 31
  }
  report_exact("sim __shfl_sync / xor / down / up with width, 2-D block", ok);

  std::vector<double> sum(1, 0.0);
  std::vector<float> o2(3 * 64, NAN);
  ::sim::launch(::sim::Cfg(3, 64, 64 * sizeof(float)), "shared_and_atomics", nullptr,
                [&] { shared_and_atomics(sum.data(), o2.data()); });
  bool ok2 = sum[0] == 192.0;
  for (int i = 0; i < 3 * 64; i++) ok2 &= o2[i] == (float)(63 - i % 64 + (i % 64 & 3));
  report_exact("sim dynamic + static shared memory, atomicAdd(double)", ok2);

  // configurations a GPU refuses: the next cudaGetLastError reports them
  (void)cudaGetLastError();
  ::sim::launch(::sim::Cfg(1, 1025), "too_many_threads", nullptr, [] {});
  const bool e1 = cudaGetLastError() == cudaErrorInvalidConfiguration;
  ::sim::launch(::sim::Cfg(dim3(1, 65536), 32), "grid_y_too_large", nullptr, [] {});
  const bool e2 = cudaGetLastError() == cudaErrorInvalidConfiguration;
  static int tag;
  ::sim::launch(::sim::Cfg(1, 32, 64 * 1024), "no_opt_in", &tag, [] {});
  const bool e3 = cudaGetLastError() != cudaSuccess;
  cudaFuncSetAttribute(&tag, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  ::sim::launch(::sim::Cfg(1, 32, 64 * 1024), "opted_in", &tag, [] {});
  const bool e4 = cudaGetLastError() == cudaSuccess;
  report_exact("sim launch checks (1025 threads, grid.y 65536, 64 KB without / with opt-in)", e1 && e2 && e3 && e4);
}
