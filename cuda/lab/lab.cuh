// lab.cuh — what the kernel lab's programs share (cuda/lab/README.md): the command line,
// device buffers, random inputs rounded to the element type, errors against a reference,
// report lines, CUDA-event timing, and a double-precision causal GQA attention.
//
//   int main(int argc, char** argv) {
//     const lab::Options opt = lab::parse(argc, argv, "flash_fwd_rows64");
//     lab::print_device();  // exits with 77 (skip) without a usable GPU
//     ... lab::report("what", err, tol); ... lab::time_ms([&] { launch(...); }, opt.reps) ...
//     return lab::finish("flash_fwd_rows64");
//   }
//
// `--check` runs the correctness checks only (small, awkward shapes: what the CPU emulator
// runs, tools/cuda_sim/run.sh); without it a program also times the library's default and
// the variant on several sizes. Report lines are those of tools/cuda_sim ("ok   ..." /
// "FAIL ...", then "N checks, M failed"), so run.sh reads them the same way.
// Host code only (no kernels here): tools/cuda_sim compiles it as it is.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels.cuh"  // the library's launchers; common.cuh: CUDA_CHECK, bf16

namespace lab {

using pyllama::gpu::bf16;

struct Options {
  bool check_only = false;  // --check: correctness only (small shapes), no timing
  int reps = 20;            // --reps N: timed runs per measurement (after one warm-up)
};

inline Options parse(int argc, char** argv, const char* prog) {
  Options o;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--check")) {
      o.check_only = true;
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      o.reps = std::max(1, std::atoi(argv[++i]));
    } else {
      std::printf("usage: %s [--check] [--reps N]\n"
                  "  checks the variant against the library's default kernel and a double-precision\n"
                  "  reference; without --check also times both (CUDA events) and prints the ratio\n",
                  prog);
      std::exit(2);
    }
  }
  return o;
}

// ---------------------------------------------------------------- results
inline int& checks() {
  static int n = 0;
  return n;
}
inline int& failures() {
  static int n = 0;
  return n;
}
// "ok   what: err" or "FAIL what: err (above tolerance tol)"; false for NaN
inline bool report(const std::string& what, double err, double tol) {
  const bool ok = err <= tol;
  checks()++;
  if (!ok) failures()++;
  std::printf("%s %s: %.2e%s\n", ok ? "ok  " : "FAIL", what.c_str(), err, ok ? "" : "  (above tolerance)");
  std::fflush(stdout);
  return ok;
}
inline bool report_exact(const std::string& what, bool same) { return report(what, same ? 0.0 : 1.0, 0.0); }
inline int finish(const char* prog) {
  std::printf("%s: %d checks, %d failed\n", prog, checks(), failures());
  std::printf(failures() == 0 && checks() > 0 ? "LAB OK\n" : "LAB FAILED\n");
  return failures() == 0 && checks() > 0 ? 0 : 1;
}
inline std::string shape(int B, int T, int NH, int NKV, int HS) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "B=%d T=%d NH=%d NKV=%d HS=%d", B, T, NH, NKV, HS);
  return buf;
}

// ---------------------------------------------------------------- elements
inline double to_d(float x) { return x; }
inline double to_d(bf16 x) { return __bfloat162float(x); }
template <typename T>
T from_d(double x) {
  if constexpr (std::is_same<T, bf16>::value) return __float2bfloat16_rn((float)x);
  else return (T)x;
}
inline uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline uint32_t bits(bf16 x) {
  uint16_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
template <typename T>
std::vector<double> to_d(const std::vector<T>& v) {
  std::vector<double> d(v.size());
  for (size_t i = 0; i < v.size(); i++) d[i] = to_d(v[i]);
  return d;
}
// normal(0, sd) values rounded to T (so a double reference sees the same inputs)
template <typename T>
std::vector<T> randn(size_t n, unsigned seed, double sd = 1.0) {
  std::mt19937 g(seed);
  std::normal_distribution<double> nd(0.0, sd);
  std::vector<T> v(n);
  for (auto& x : v) x = from_d<T>(nd(g));
  return v;
}
// uniform values in [-1, 1) rounded to T, quickly (xorshift64*): inputs of the large timed sizes
template <typename T>
std::vector<T> randu(size_t n, unsigned seed) {
  uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
  std::vector<T> v(n);
  for (auto& e : v) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    e = from_d<T>((double)((x * 0x2545f4914f6cdd1dull) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
  }
  return v;
}
// max |got - ref| / max |ref| over the elements (infinite when got is not finite where ref is)
template <typename T>
double rel_err(const std::vector<T>& got, const std::vector<double>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double e = 0, sc = 1e-30;
  for (size_t i = 0; i < ref.size(); i++) {
    const double g = to_d(got[i]);
    if (!std::isfinite(g)) {
      if (std::isfinite(ref[i])) return INFINITY;
      continue;
    }
    e = std::max(e, std::fabs(g - ref[i]));
    sc = std::max(sc, std::fabs(ref[i]));
  }
  return e / sc;
}
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (bits(a[i]) != bits(b[i])) return false;
  return true;
}

// ---------------------------------------------------------------- device buffers
// n elements of device memory, from a host vector or NaN-filled (0xff bytes: an element the
// kernel should write and does not shows); freed with the object.
template <typename T>
struct Buf {
  T* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t count) : n(count) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)));
    CUDA_CHECK(cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T)));
  }
  explicit Buf(const std::vector<T>& v) : Buf(v.size()) {
    CUDA_CHECK(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  std::vector<T> host() const {
    std::vector<T> v(n);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void fill_nan() { CUDA_CHECK(cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T))); }
};

// ---------------------------------------------------------------- timing
// Milliseconds per call of fn (which queues work on `stream`): one warm-up call, then reps
// calls between two CUDA events. (0 on the CPU emulator, which keeps no GPU clock.)
template <typename F>
float time_ms(F&& fn, int reps, cudaStream_t stream = nullptr) {
  fn();
  CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  CUDA_CHECK(cudaEventRecord(e0, stream));
  for (int i = 0; i < reps; i++) fn();
  CUDA_CHECK(cudaEventRecord(e1, stream));
  CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / reps;
}
// "time <what> <size>: library <a> ms, variant <b> ms, variant / library = <b / a>"
inline void print_time(const char* what, const std::string& size, float lib_ms, float var_ms) {
  std::printf("time %s %s: library %.4f ms, variant %.4f ms, variant / library = %.3f\n", what, size.c_str(), lib_ms,
              var_ms, lib_ms > 0.f ? var_ms / lib_ms : 0.0);
  std::fflush(stdout);
}
// The device the program runs on, printed; without a usable one the program says so and exits
// with 77 (CTest's skip code here).
inline void print_device() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("skip: no usable CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    std::exit(77);
  }
  int dev = 0, major = 0, minor = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  std::printf("# device %d: sm_%d%d, %d SMs\n", dev, major, minor, sms);
}

// ---------------------------------------------------------------- attention reference
// Double-precision causal grouped-query attention in the training layout (qkv (B, T, QKVD)
// rows q | k | v, QKVD = (NH + 2 NKV) HS): out (B, T, NH*HS), lse (B, NH, T) (natural log of
// the scaled scores' exp sum) and, given dy (B, T, NH*HS), dqkv (B, T, QKVD).
inline void attention_reference(std::vector<double>& out, std::vector<double>& lse, std::vector<double>& dqkv,
                                const std::vector<double>& qkv, const std::vector<double>& dy, int B, int T, int NH,
                                int NKV, int HS) {
  const int C = NH * HS, QKVD = C + 2 * NKV * HS, group = NH / NKV;
  const double scale = 1.0 / std::sqrt((double)HS);
  out.assign((size_t)B * T * C, 0);
  lse.assign((size_t)B * NH * T, 0);
  dqkv.assign((size_t)B * T * QKVD, 0);
  auto at = [&](int b, int t, int col) { return ((size_t)b * T + t) * QKVD + col; };
  std::vector<double> p(T), dp(T);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      const int qc = h * HS, kc = C + (h / group) * HS, vc = C + NKV * HS + (h / group) * HS;
      for (int t = 0; t < T; t++) {
        double mx = -INFINITY;
        for (int j = 0; j <= t; j++) {
          double s = 0;
          for (int d = 0; d < HS; d++) s += qkv[at(b, t, qc + d)] * qkv[at(b, j, kc + d)];
          p[j] = s * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int j = 0; j <= t; j++) sum += std::exp(p[j] - mx);
        const double l = mx + std::log(sum);
        lse[((size_t)b * NH + h) * T + t] = l;
        for (int j = 0; j <= t; j++) p[j] = std::exp(p[j] - l);
        double* o = out.data() + ((size_t)b * T + t) * C + qc;
        for (int j = 0; j <= t; j++)
          for (int d = 0; d < HS; d++) o[d] += p[j] * qkv[at(b, j, vc + d)];
        // backward: dv += p dy, dp = dy . v, ds = p (dp - sum p dp), dq += ds k scale, dk += ds q scale
        const double* g = dy.data() + ((size_t)b * T + t) * C + qc;
        double pdp = 0;
        for (int j = 0; j <= t; j++) {
          double s = 0;
          for (int d = 0; d < HS; d++) s += g[d] * qkv[at(b, j, vc + d)];
          dp[j] = s;
          pdp += p[j] * s;
        }
        for (int j = 0; j <= t; j++) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          for (int d = 0; d < HS; d++) {
            dqkv[at(b, j, vc + d)] += p[j] * g[d];
            dqkv[at(b, t, qc + d)] += ds * qkv[at(b, j, kc + d)];
            dqkv[at(b, j, kc + d)] += ds * qkv[at(b, t, qc + d)];
          }
        }
      }
    }
}

}  // namespace lab
