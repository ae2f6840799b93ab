// main.cpp — runs the drivers' checks (all, or those whose name contains argv[1]) and
// prints ALL OK when every one passed.
#include <chrono>
#include <cstdarg>
#include <cstring>
#include <utility>

#include "check.h"

namespace chk {
int checks = 0, failures = 0;
static std::vector<std::pair<const char*, void (*)()>>& registry() {
  static std::vector<std::pair<const char*, void (*)()>> r;
  return r;
}
Reg::Reg(const char* name, void (*fn)()) { registry().emplace_back(name, fn); }
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}
}  // namespace chk

int main(int argc, char** argv) {
  for (auto& [name, fn] : chk::registry()) {
    if (argc > 1 && !std::strstr(name, argv[1])) continue;
    std::printf("== %s\n", name);
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      fn();
    } catch (const std::exception& e) {
      chk::report(std::string(name) + " threw: " + e.what(), INFINITY, 0);
    }
    std::printf("   (%s: %.1f s)\n", name, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("%d checks, %d failed\n", chk::checks, chk::failures);
  std::printf(chk::failures == 0 && chk::checks > 0 ? "ALL OK\n" : "SOME FAILED\n");
  return chk::failures == 0 ? 0 : 1;
}
