// flash_sim.cpp — CPU emulation of the kernels of cuda/flash_attention.cu (build and run
// with tools/cuda_sim/run.sh, which extracts the kernels into kernels_extracted.inc).
// Every CUDA thread of a block is an OS thread; __syncthreads is a block barrier that
// aborts when threads arrive from different lines; __shfl_xor_sync and
// mma.sync.m16n8k16 (from the PTX ISA fragment layout) exchange through per-warp
// buffers between warp barriers; shared memory is a malloc'd buffer of exactly the
// launch's size, filled with NaN at each block start (reads of unwritten shared memory
// show up); outputs start as NaN (every element must be written). Built with ASan and
// UBSan: out-of-bounds global or shared accesses and misaligned vector loads abort.
// Reference: plain double-precision causal GQA attention forward/backward.
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <vector>
#include <algorithm>
#include <cstdint>

struct uint3s { unsigned x, y, z; };
struct dim3 { unsigned x = 1, y = 1, z = 1; };

thread_local uint3s threadIdx, blockIdx;
dim3 gridDim;
float* sim_smem = nullptr;
using std::min;
using std::max;

// ---------------------------------------------------------------- barriers
struct Barrier {
  std::mutex mu;
  std::condition_variable cv;
  int n, count = 0, gen = 0;
  int line = -2;
  bool bad = false;
  explicit Barrier(int n_) : n(n_) {}
  void wait(int at) {
    std::unique_lock<std::mutex> lk(mu);
    if (count == 0) line = at;
    else if (line != at) {
      std::fprintf(stderr, "BARRIER MISMATCH: lines %d and %d\n", line, at);
      bad = true;
      std::abort();
    }
    const int g = gen;
    if (++count == n) {
      count = 0;
      gen++;
      cv.notify_all();
    } else {
      if (!cv.wait_for(lk, std::chrono::seconds(60), [&] { return gen != g; })) {
        std::fprintf(stderr, "BARRIER TIMEOUT at line %d (%d of %d arrived)\n", at, count, n);
        std::abort();
      }
    }
  }
};
Barrier* block_bar = nullptr;
Barrier* warp_bar[32];
float warp_buf[32][32];

#define __syncthreads() block_bar->wait(__LINE__)
float __shfl_xor_sync(unsigned, float v, int o) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  warp_buf[w][lane] = v;
  warp_bar[w]->wait(1000000 + __LINE__);
  const float r = warp_buf[w][lane ^ o];
  warp_bar[w]->wait(2000000 + __LINE__);
  return r;
}

// ---------------------------------------------------------------- types
struct bf16 {
  uint16_t bits;
};
inline float bf2f(bf16 x) {
  uint32_t u = (uint32_t)x.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bf16 f2bf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return bf16{(uint16_t)(u >> 16)};
}
inline float to_f(float x) { return x; }
inline float to_f(bf16 x) { return bf2f(x); }
template <typename T>
T from_f(float x);
template <>
float from_f<float>(float x) { return x; }
template <>
bf16 from_f<bf16>(float x) { return f2bf(x); }
inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
#define PYLLAMA_CUDA_SIM 1
inline uint16_t bf16_bits(bf16 x) { return x.bits; }
// mma.sync.m16n8k16.row.col f32.bf16.bf16.f32 as the PTX ISA lays the fragments out:
// each lane posts its registers, then computes its own C elements from the whole warp's.
struct MmaPost {
  uint32_t a[4], b[2];
};
MmaPost mma_post[4][32];
inline float lo_bf(uint32_t r) { return bf2f(bf16{(uint16_t)(r & 0xffff)}); }
inline float hi_bf(uint32_t r) { return bf2f(bf16{(uint16_t)(r >> 16)}); }
void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  MmaPost& me = mma_post[w][lane];
  for (int i = 0; i < 4; i++) me.a[i] = a[i];
  me.b[0] = b0;
  me.b[1] = b1;
  warp_bar[w]->wait(3000000 + __LINE__);
  auto A = [&](int row, int col) {  // A (16 x 16)
    const int g = row & 7, reg = (row >> 3) | ((col >> 3) << 1), q = (col & 7) >> 1;
    const uint32_t r = mma_post[w][g * 4 + q].a[reg];
    return (col & 1) ? hi_bf(r) : lo_bf(r);
  };
  auto B = [&](int k, int n) {  // B (16 x 8)
    const int q = (k & 7) >> 1, reg = k >> 3;
    const uint32_t r = mma_post[w][n * 4 + q].b[reg];
    return (k & 1) ? hi_bf(r) : lo_bf(r);
  };
  const int g = lane >> 2, q = lane & 3;
  for (int e = 0; e < 4; e++) {
    const int row = g + 8 * (e >> 1), col = 2 * q + (e & 1);
    double acc = c[e];
    for (int k = 0; k < 16; k++) acc += (double)A(row, k) * B(k, col);
    c[e] = (float)acc;
  }
  warp_bar[w]->wait(4000000 + __LINE__);
}
#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
constexpr int kMaxHeadSize = 256;

#include "kernels_extracted.inc"

// ---------------------------------------------------------------- launch
void sim_launch(dim3 grid, int threads, size_t smem_bytes, const std::function<void()>& body) {
  gridDim = grid;
  Barrier bb(threads);
  block_bar = &bb;
  std::vector<Barrier*> wb;
  for (int w = 0; w < threads / 32; w++) warp_bar[w] = new Barrier(32);
  sim_smem = (float*)std::malloc(std::max<size_t>(smem_bytes, 4));
  std::vector<std::thread> th;
  for (int t = 0; t < threads; t++)
    th.emplace_back([&, t] {
      threadIdx = {(unsigned)t, 0, 0};
      for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
          if (t == 0) {
            const float nan = NAN;
            for (size_t i = 0; i < smem_bytes / 4; i++) sim_smem[i] = nan;
          }
          bb.wait(-1);
          blockIdx = {bx, by, 0};
          body();
          bb.wait(-3);
        }
    });
  for (auto& x : th) x.join();
  std::free(sim_smem);
  for (int w = 0; w < threads / 32; w++) delete warp_bar[w];
}

// ---------------------------------------------------------------- reference
void reference(std::vector<double>& out, std::vector<double>& lse, std::vector<double>& dqkv,
               const std::vector<float>& qkv, const std::vector<float>& dy, int B, int T, int NH, int NKV, int HS) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const double scale = 1.0 / std::sqrt((double)HS);
  out.assign((size_t)B * T * C, 0);
  lse.assign((size_t)B * NH * T, 0);
  dqkv.assign((size_t)B * T * QKVD, 0);
  auto at = [&](int b, int t, int off) { return (size_t)(b * T + t) * QKVD + off; };
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      const int kvh = h / group;
      for (int t = 0; t < T; t++) {
        std::vector<double> s(t + 1), dp(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; j++) {
          double d = 0;
          for (int i = 0; i < HS; i++) d += (double)qkv[at(b, t, h * HS + i)] * qkv[at(b, j, C + kvh * HS + i)];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j <= t; j++) sum += std::exp(s[j] - mx);
        lse[(size_t)(b * NH + h) * T + t] = mx + std::log(sum);
        for (int j = 0; j <= t; j++) s[j] = std::exp(s[j] - mx) / sum;  // p
        for (int i = 0; i < HS; i++) {
          double o = 0;
          for (int j = 0; j <= t; j++) o += s[j] * qkv[at(b, j, C + KVD + kvh * HS + i)];
          out[(size_t)(b * T + t) * C + h * HS + i] = o;
        }
        double dot = 0;
        for (int j = 0; j <= t; j++) {
          double d = 0;
          for (int i = 0; i < HS; i++)
            d += (double)dy[(size_t)(b * T + t) * C + h * HS + i] * qkv[at(b, j, C + KVD + kvh * HS + i)];
          dp[j] = d;
          dot += s[j] * d;
        }
        for (int j = 0; j <= t; j++) {
          const double ds = s[j] * (dp[j] - dot) * scale;
          for (int i = 0; i < HS; i++) {
            dqkv[at(b, t, h * HS + i)] += ds * qkv[at(b, j, C + kvh * HS + i)];
            dqkv[at(b, j, C + kvh * HS + i)] += ds * qkv[at(b, t, h * HS + i)];
            dqkv[at(b, j, C + KVD + kvh * HS + i)] += s[j] * dy[(size_t)(b * T + t) * C + h * HS + i];
          }
        }
      }
    }
}

template <typename A>
double rel(const std::vector<A>& got, const std::vector<double>& ref) {
  double e = 0, sc = 1e-30;
  for (size_t i = 0; i < ref.size(); i++) {
    const double g = to_f(got[i]);
    if (!std::isfinite(g)) return INFINITY;
    e = std::max(e, std::fabs(g - ref[i]));
    sc = std::max(sc, std::fabs(ref[i]));
  }
  return e / sc;
}

template <typename T, int DMAX>
bool run_case(int B, int T_, int NH, int NKV, int HS, double tol, bool tc = false) {
  using namespace pyllama::gpu;
  using Cf = FlashCfg<DMAX>;
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T_, NL = (size_t)B * NH * T_;
  std::mt19937 g(B * 1000 + T_ * 10 + HS);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> qkv(N * QKVD), dy(N * C);
  for (auto& x : qkv) x = nd(g);
  for (auto& x : dy) x = nd(g);
  std::vector<T> qkvT(qkv.size()), dyT(dy.size());
  for (size_t i = 0; i < qkv.size(); i++) {
    qkvT[i] = from_f<T>(qkv[i]);
    qkv[i] = to_f(qkvT[i]);
  }
  for (size_t i = 0; i < dy.size(); i++) {
    dyT[i] = from_f<T>(dy[i]);
    dy[i] = to_f(dyT[i]);
  }
  std::vector<double> rout, rlse, rdq;
  reference(rout, rlse, rdq, qkv, dy, B, T_, NH, NKV, HS);

  std::vector<T> out(N * C, from_f<T>(NAN)), dq(N * QKVD, from_f<T>(NAN));
  std::vector<float> lse(NL, NAN), dsum(NL, NAN);
  const float scale = 1.0f / std::sqrt((float)HS);
  const unsigned nqb = (T_ + Cf::BR - 1) / Cf::BR, nkb = (T_ + Cf::BCKV - 1) / Cf::BCKV;
  if constexpr (sizeof(T) == 2) {
    if (tc) {
      sim_launch({(unsigned)(B * NH), (unsigned)((T_ + kTcRows - 1) / kTcRows), 1}, kThreads, tc_fwd_smem_bytes(HS),
                 [&] { flash_fwd_tc_kernel<DMAX>(out.data(), lse.data(), qkvT.data(), T_, NH, NKV, HS, scale); });
    }
  }
  if (!tc)
    sim_launch({(unsigned)(B * NH), nqb, 1}, kThreads, sizeof(float) * fwd_smem_floats<DMAX>(HS),
               [&] { flash_fwd_kernel<T, DMAX>(out.data(), lse.data(), qkvT.data(), T_, NH, NKV, HS, scale); });
  const long long rows = (long long)B * T_ * NH;
  sim_launch({(unsigned)((rows + 3) / 4), 1, 1}, kThreads, 0,
             [&] { flash_bwd_dsum_kernel<T>(dsum.data(), dyT.data(), out.data(), B, T_, NH, HS); });
  if constexpr (sizeof(T) == 2) {
    if (tc) {
      const unsigned nk = (T_ + kTcKeys - 1) / kTcKeys, nq = (T_ + kTcRows - 1) / kTcRows;
      sim_launch({(unsigned)(B * NKV), nk, 1}, kThreads, tc_dkv_smem_bytes<DMAX>(HS), [&] {
        flash_bwd_dkv_tc_kernel<DMAX>(dq.data(), dyT.data(), qkvT.data(), lse.data(), dsum.data(), T_, NH, NKV, HS,
                                      scale);
      });
      sim_launch({(unsigned)(B * NH), nq, 1}, kThreads, tc_dq_smem_bytes(HS), [&] {
        flash_bwd_dq_tc_kernel<DMAX>(dq.data(), dyT.data(), qkvT.data(), lse.data(), dsum.data(), T_, NH, NKV, HS,
                                     scale);
      });
    }
  }
  if (!tc) {
  sim_launch({(unsigned)(B * NKV), nkb, 1}, kThreads, sizeof(float) * dkv_smem_floats<DMAX>(HS), [&] {
    flash_bwd_dkv_kernel<T, DMAX>(dq.data(), dyT.data(), qkvT.data(), lse.data(), dsum.data(), T_, NH, NKV, HS,
                                  scale);
  });
  sim_launch({(unsigned)(B * NH), nqb, 1}, kThreads, sizeof(float) * dq_smem_floats<DMAX>(HS), [&] {
    flash_bwd_dq_kernel<T, DMAX>(dq.data(), dyT.data(), qkvT.data(), lse.data(), dsum.data(), T_, NH, NKV, HS, scale);
  });
  }
  const double eo = rel(out, rout), el = rel(lse, rlse), ed = rel(dq, rdq);
  const bool ok = eo <= tol && el <= 1e-5 && ed <= tol * 4;
  std::printf("%s %s%s DMAX=%d B=%d T=%d NH=%d NKV=%d HS=%d: out %.2e lse %.2e dqkv %.2e\n", ok ? "ok  " : "FAIL",
              sizeof(T) == 4 ? "f32 " : "bf16", tc ? "-tc" : "", DMAX, B, T_, NH, NKV, HS, eo, el, ed);
  return ok;
}

int main(int argc, char** argv) {
  bool ok = true;
  ok &= run_case<float, 64>(2, 37, 4, 2, 12, 2e-6);
  ok &= run_case<float, 64>(1, 70, 2, 1, 64, 2e-6);
  ok &= run_case<float, 64>(3, 1, 4, 1, 64, 2e-6);
  ok &= run_case<float, 64>(1, 65, 2, 2, 32, 2e-6);
  ok &= run_case<float, 128>(2, 9, 2, 2, 128, 2e-6);
  ok &= run_case<float, 128>(1, 100, 3, 3, 80, 2e-6);
  ok &= run_case<float, 256>(1, 77, 4, 2, 256, 2e-6);
  ok &= run_case<float, 256>(1, 33, 2, 1, 130, 2e-6);
  ok &= run_case<float, 64>(2, 3, 3, 1, 5, 2e-6);
  ok &= run_case<float, 64>(1, 64, 2, 1, 64, 2e-6);  // T a multiple of every block
  ok &= run_case<bf16, 64>(1, 128, 2, 2, 64, 1e-2, true);
  ok &= run_case<bf16, 64>(2, 70, 4, 2, 64, 1e-2);
  ok &= run_case<bf16, 128>(1, 45, 2, 2, 128, 1e-2);
  ok &= run_case<bf16, 64>(2, 70, 4, 2, 64, 1e-2, true);
  ok &= run_case<bf16, 64>(1, 130, 2, 1, 12, 1e-2, true);
  ok &= run_case<bf16, 64>(3, 1, 4, 1, 32, 1e-2, true);
  ok &= run_case<bf16, 128>(1, 45, 2, 2, 128, 1e-2, true);
  ok &= run_case<bf16, 128>(1, 100, 3, 3, 80, 1e-2, true);
  ok &= run_case<bf16, 64>(1, 200, 3, 1, 64, 1e-2, true);
  ok &= run_case<bf16, 128>(1, 7, 2, 1, 100, 1e-2, true);
  std::printf(ok ? "ALL OK\n" : "SOME FAILED\n");
  return ok ? 0 : 1;
}
