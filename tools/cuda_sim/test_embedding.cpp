// test_embedding.cpp — cuda/embedding.cu: embedding_forward (gather) and
// embedding_backward (rows grouped by token by group_tokens: repeated tokens add up into
// dwte, in position order).
#include "check.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void case_(int N, int C, int V) {
  Rng r(N + C * 3 + V);
  auto wte = randn<T>((size_t)V * C, r), dout = randn<T>((size_t)N * C, r);
  std::vector<int32_t> tok(N);
  for (auto& t : tok) t = r.integer(0, V - 1);
  tok[0] = V - 1;
  if (N > 2) tok[2] = tok[1];  // a repeat
  std::vector<float> dw((size_t)V * C);
  for (auto& v : dw) v = (float)r.normal();
  std::vector<double> ro((size_t)N * C), rdw = to_d(dw);
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) {
      ro[(size_t)n * C + c] = f(wte[(size_t)tok[n] * C + c]);
      rdw[(size_t)tok[n] * C + c] += f(dout[(size_t)n * C + c]);
    }
  auto out = nans<T>((size_t)N * C);
  embedding_forward<T>(out.data(), tok.data(), wte.data(), N, C, nullptr);
  CUDA_CHECK_LAUNCH();
  std::vector<int32_t> groups;
  const int U = group_tokens(tok.data(), N, &groups);
  const auto dw0 = dw;
  embedding_backward<T>(dw.data(), dout.data(), groups.data(), N, U, C, nullptr);
  CUDA_CHECK_LAUNCH();
  auto dw2 = dw0;  // again, on an odd launch (the emulator then runs the blocks in reverse order)
  embedding_backward<T>(dw2.data(), dout.data(), groups.data(), N, U, C, nullptr);
  CUDA_CHECK_LAUNCH();
  bool same = true;
  for (size_t i = 0; i < dw.size(); i++) same = same && bits_of(dw2[i]) == bits_of(dw[i]);
  report_exact(fmt("embedding %s N=%d C=%d V=%d backward: same bits with the blocks in the other order", tname<T>(),
                   N, C, V), same);
  const std::string w = fmt("embedding %s N=%d C=%d V=%d", tname<T>(), N, C, V);
  report(w + " forward", rel_err(out, ro), 0);
  report(w + " backward", rel_err(dw, rdw), 2e-6);
}

}  // namespace

SIM_TEST(embedding) {
  case_<float>(7, 13, 5);
  case_<bf16>(40, 33, 3);
  case_<float>(1, 300, 100);
  case_<float>(200, 20, 7);  // every token many times (rows summed in position order)
}
