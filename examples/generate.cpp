// Placeholder until the model lands (replaced in the core issue).
#include <cstdio>
#include "runtime.h"
int main() { std::printf("pyllama %s\n", pyllama::build_info().version.c_str()); return 0; }
