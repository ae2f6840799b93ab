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

// ldmatrix: a 16 x 16 matrix of 16-bit values row * 256 + col in shared memory (row stride
// 24 elements), loaded by one warp as x4, x2, x1, each plain and .trans
constexpr int kLd = 24;
void ldmatrix_kernel(uint32_t* out) {  // out: 6 variants x 32 lanes x 4 registers
  uint16_t* m = reinterpret_cast<uint16_t*>(::sim::dyn_smem());
  const int lane = threadIdx.x;
  for (int e = lane; e < 16 * kLd; e += 32) m[e] = (uint16_t)((e / kLd) * 256 + e % kLd);
  __syncwarp();
  using namespace pyllama::gpu;
  // x4: lane l gives row l % 8 of matrix l / 8; matrix i at rows 8 (i & 1), columns 8 (i >> 1)
  const uint16_t* p4 = m + ((lane & 7) + 8 * ((lane >> 3) & 1)) * kLd + 8 * (lane >> 4);
  // x2: lanes 0..15 give rows 0..15 at column 0 (matrix 0 = rows 0..7, 1 = rows 8..15);
  // x1: lanes 0..7 give rows 4..11 at column 8; the other lanes' addresses are ignored
  const uint16_t* p2 = lane < 16 ? m + lane * kLd : nullptr;
  const uint16_t* p1 = lane < 8 ? m + (4 + lane) * kLd + 8 : nullptr;
  uint32_t r4[4], r2[2], r1[1];
  uint32_t* o = out + lane * 4;
  for (int i = 0; i < 6 * 32 * 4; i += 32 * 4) o[i] = o[i + 1] = o[i + 2] = o[i + 3] = 0xdeadbeefu;
  ldsm_x4(r4, p4);
  for (int i = 0; i < 4; i++) o[0 * 128 + i] = r4[i];
  ldsm_x4_t(r4, p4);
  for (int i = 0; i < 4; i++) o[1 * 128 + i] = r4[i];
  ldsm_x2(r2, p2);
  for (int i = 0; i < 2; i++) o[2 * 128 + i] = r2[i];
  ldsm_x2_t(r2, p2);
  for (int i = 0; i < 2; i++) o[3 * 128 + i] = r2[i];
  ldsm_x1(r1, p1);
  o[4 * 128] = r1[0];
  ldsm_x1_t(r1, p1);
  o[5 * 128] = r1[0];
}

// cp.async: thread t copies 16 bytes (4 ints) from src + 4 t, in two groups; reads the
// destination before and after each wait
void cp_async_kernel(const int* src, int* out) {  // out: 8 ints per thread
  int* sm = reinterpret_cast<int*>(::sim::dyn_smem()) + 12 * threadIdx.x;
  const int t = threadIdx.x;
  using namespace pyllama::gpu;
  cp_async16(sm, src + 4 * t, true);
  cp_async_commit();
  cp_async16(sm + 4, src + 4 * t, t % 2 == 0);  // odd threads: zero-filled
  cp_async4(sm + 8, src + 4 * t + 1, true);
  cp_async_commit();
  out[8 * t + 0] = sm[1];  // NaN bits: nothing waited for
  cp_async_wait<1>();      // the first group is done
  out[8 * t + 1] = sm[1];
  out[8 * t + 2] = sm[5];  // the second group still NaN
  cp_async_wait<0>();
  out[8 * t + 3] = sm[5];
  out[8 * t + 4] = sm[8];
}

}  // namespace

SIM_TEST(sim_ldmatrix_cp_async) {
  std::vector<uint32_t> o(6 * 32 * 4);
  ::sim::launch(::sim::Cfg(1, 32, 16 * kLd * 2), "ldmatrix", nullptr, [&] { ldmatrix_kernel(o.data()); });
  auto v = [](int row, int col) { return (uint32_t)(row * 256 + col); };
  auto pair = [](uint32_t lo, uint32_t hi) { return lo | hi << 16; };
  // hand-computed from the PTX ISA layout: lane 5 (row group 1, column pair 1)
  bool hand = o[0 * 128 + 5 * 4 + 0] == 0x01030102u    // x4 reg 0: row 1, columns 2, 3
              && o[0 * 128 + 5 * 4 + 3] == 0x090b090au  // x4 reg 3: row 9, columns 10, 11
              && o[1 * 128 + 5 * 4 + 0] == 0x03010201u  // .trans reg 0: rows 2, 3 of column 1
              && o[1 * 128 + 5 * 4 + 3] == 0x0b090a09u  // .trans reg 3: rows 10, 11 of column 9
              && o[4 * 128 + 5 * 4] == 0x050b050au      // x1: row 4 + 1, columns 8 + 2, 3
              && o[5 * 128 + 5 * 4] == 0x07090609u;     // x1 .trans: rows 4 + 2, 3 of column 9
  bool all = true;
  for (int l = 0; l < 32; l++) {
    const int g = l / 4, q = l % 4;
    const uint32_t* r = o.data() + l * 4;
    for (int i = 0; i < 4; i++) {
      const int r0 = 8 * (i & 1), c0 = 8 * (i >> 1);
      all &= r[i] == pair(v(r0 + g, c0 + 2 * q), v(r0 + g, c0 + 2 * q + 1));
      all &= r[128 + i] == pair(v(r0 + 2 * q, c0 + g), v(r0 + 2 * q + 1, c0 + g));
    }
    for (int i = 0; i < 2; i++) {
      all &= r[256 + i] == pair(v(8 * i + g, 2 * q), v(8 * i + g, 2 * q + 1));
      all &= r[384 + i] == pair(v(8 * i + 2 * q, g), v(8 * i + 2 * q + 1, g));
    }
    all &= r[258] == 0xdeadbeefu && r[512] == pair(v(4 + g, 8 + 2 * q), v(4 + g, 9 + 2 * q));
    all &= r[640] == pair(v(4 + 2 * q, 8 + g), v(5 + 2 * q, 8 + g));
  }
  report_exact("sim ldmatrix x1 / x2 / x4, plain and .trans (PTX ISA fragment layout)", hand && all);

  std::vector<int> src(4 * 64), out(8 * 64, 7);
  for (int i = 0; i < 4 * 64; i++) src[i] = 1000 + i;
  ::sim::launch(::sim::Cfg(1, 64, 64 * 12 * 4), "cp_async", nullptr, [&] { cp_async_kernel(src.data(), out.data()); });
  bool cp = true;
  for (int t = 0; t < 64; t++) {
    const int* r = out.data() + 8 * t;
    cp &= r[0] == -1 && r[1] == src[4 * t + 1] && r[2] == -1;
    cp &= r[3] == (t % 2 == 0 ? src[4 * t + 1] : 0) && r[4] == src[4 * t + 1];
  }
  report_exact("sim cp.async: NaN until wait_group N completes its group, zero fill", cp);
}

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
