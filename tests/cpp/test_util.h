// Tiny test harness for the C++ tests: failures are counted and make main return 1.
#pragma once
#include <cmath>
#include <cstdio>

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                         \
  do {                                                                      \
    g_checks++;                                                             \
    if (!(cond)) {                                                          \
      g_failures++;                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                       \
  } while (0)

#define CHECK_THROWS(expr, Exc)                                             \
  do {                                                                      \
    g_checks++;                                                             \
    bool thrown_ = false;                                                   \
    try {                                                                   \
      (void)(expr);                                                         \
    } catch (const Exc&) {                                                  \
      thrown_ = true;                                                       \
    } catch (...) {                                                         \
    }                                                                       \
    if (!thrown_) {                                                         \
      g_failures++;                                                         \
      std::fprintf(stderr, "%s:%d: expected %s from %s\n", __FILE__, __LINE__, #Exc, #expr); \
    }                                                                       \
  } while (0)

// |a - b| <= atol + rtol * |b| for every element; reports the worst element.
static bool allclose(const float* a, const float* b, long n, float atol, float rtol, const char* what) {
  long worst = -1;
  double worst_excess = 0;
  for (long i = 0; i < n; i++) {
    double err = std::fabs((double)a[i] - b[i]);
    double tol = atol + rtol * std::fabs((double)b[i]);
    if (!(err <= tol) && (worst < 0 || err - tol > worst_excess)) {
      worst = i;
      worst_excess = err - tol;
    }
  }
  g_checks++;
  if (worst >= 0) {
    g_failures++;
    std::fprintf(stderr, "%s: mismatch at %ld: got %g want %g\n", what, worst, a[worst], b[worst]);
    return false;
  }
  return true;
}

static int test_summary(const char* name) {
  std::printf("%s: %d checks, %d failures\n", name, g_checks, g_failures);
  return g_failures ? 1 : 0;
}
