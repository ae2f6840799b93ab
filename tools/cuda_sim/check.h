// check.h — what the per-file drivers (test_*.cpp) share: random inputs rounded to the
// element type, NaN-filled outputs (every element must be written), errors against
// double-precision references, and the report lines ("ok   ..." / "FAIL ...") that run.sh
// and tests/test_cuda_sim.py read. A driver registers its checks with SIM_TEST(name).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels.cuh"

namespace chk {

using bf16 = __nv_bfloat16;
inline double f(float x) { return x; }
inline double f(double x) { return x; }
inline double f(bf16 x) { return __bfloat162float(x); }
inline double f(int x) { return x; }
template <typename T>
T from(double x) {
  if constexpr (std::is_same_v<T, bf16>) return __float2bfloat16_rn((float)x);
  else return (T)x;
}
template <typename T>
const char* tname() {
  return std::is_same_v<T, bf16> ? "bf16" : std::is_same_v<T, float> ? "f32 " : "f64 ";
}
template <typename T>
double tol_of(double f32_tol = 2e-6) {  // relative error expected of T outputs
  return std::is_same_v<T, bf16> ? 1e-2 : f32_tol;
}

struct Rng {
  std::mt19937 g;
  explicit Rng(unsigned seed) : g(seed) {}
  double normal(double sd = 1.0) { return std::normal_distribution<double>(0.0, sd)(g); }
  double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(g); }
  int integer(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); }  // inclusive
};

template <typename T>
std::vector<T> randn(size_t n, Rng& r, double sd = 1.0) {
  std::vector<T> v(n);
  for (auto& x : v) x = from<T>(r.normal(sd));
  return v;
}
template <typename T>
std::vector<T> nans(size_t n) {
  return std::vector<T>(n, from<T>(NAN));
}
template <typename T>
std::vector<double> to_d(const std::vector<T>& v) {
  std::vector<double> d(v.size());
  for (size_t i = 0; i < v.size(); i++) d[i] = f(v[i]);
  return d;
}

// the bit pattern of an element (NaN compares equal to the same NaN)
inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline uint32_t bits_of(bf16 x) { return x.__x; }
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (bits_of(a[i]) != bits_of(b[i])) return false;
  return true;
}

// max |got - ref| / max |ref| (infinite when got has a non-finite element where ref is finite)
template <typename T>
double rel_err(const std::vector<T>& got, const std::vector<double>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double e = 0, sc = 1e-30;
  for (size_t i = 0; i < ref.size(); i++) {
    const double g = f(got[i]);
    if (!std::isfinite(g)) {
      if (std::isfinite(ref[i])) return INFINITY;
      continue;
    }
    e = std::max(e, std::fabs(g - ref[i]));
    sc = std::max(sc, std::fabs(ref[i]));
  }
  return e / sc;
}

extern int checks, failures;
// one line per check: "ok   what: err" or "FAIL what: err (tolerance tol)"
inline bool report(const std::string& what, double err, double tol) {
  const bool ok = err <= tol;  // false for NaN
  checks++;
  if (!ok) failures++;
  std::printf("%s %s: %.2e%s\n", ok ? "ok  " : "FAIL", what.c_str(), err, ok ? "" : "  (above tolerance)");
  std::fflush(stdout);
  return ok;
}
inline bool report_exact(const std::string& what, bool same) { return report(what, same ? 0.0 : 1.0, 0.0); }

struct Reg {
  Reg(const char* name, void (*fn)());
};
std::string fmt(const char* f, ...);

}  // namespace chk

#define SIM_TEST(name)                             \
  static void name();                              \
  static ::chk::Reg sim_reg_##name(#name, name); \
  static void name()
