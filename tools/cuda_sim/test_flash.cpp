// test_flash.cpp — cuda/flash_attention.cu (and flash_tc.cuh): flash_attention_forward /
// _backward (SIMT for float and bf16, tensor cores for bf16 with HS <= 128) against a
// double-precision causal GQA attention (out, lse, dqkv), through the public launchers (DMAX
// from HS). The kernel lab's flash variants (cuda/lab/) are checked by their own programs,
// which run.sh runs too.
#include "check.h"
#include "ref_attention.h"

using namespace chk;

namespace {

// The backward with the inverse RoPE (flash_attention_backward's `rope`): in the kernels'
// stores for tensor cores with HS % 16 == 0 (launches unchanged), else rope_apply after (one
// more). Positions out of order (pos[n] = 5 n + 3 mod maxT), so a wrong row's angle shows.
template <typename T>
void check_rope(const std::string& what, const std::vector<T>& qkv, const std::vector<T>& dy, const std::vector<T>& out,
                const std::vector<float>& lse, const std::vector<double>& rdq, int B, int T_, int NH, int NKV, int HS,
                double tol, bool tc, int launches) {
  using namespace pyllama::gpu;
  const int QKVD = (NH + 2 * NKV) * HS, half = HS / 2, maxT = 2 * T_ + 3;
  const size_t N = (size_t)B * T_, NL = (size_t)B * NH * T_;
  std::vector<int32_t> pos(N);
  for (size_t n = 0; n < N; n++) pos[n] = (int32_t)((5 * n + 3) % maxT);
  std::vector<float> ct((size_t)maxT * half), st((size_t)maxT * half);
  for (int p = 0; p < maxT; p++)
    for (int i = 0; i < half; i++) {
      const double a = p * std::pow(10000.0, -2.0 * i / HS);
      ct[(size_t)p * half + i] = (float)std::cos(a);
      st[(size_t)p * half + i] = (float)std::sin(a);
    }
  std::vector<double> ref(rdq);  // q and k heads rotated back: (a, b) -> (a c + b s, b c - a s)
  for (size_t n = 0; n < N; n++)
    for (int h = 0; h < NH + NKV; h++)
      for (int i = 0; i < half; i++) {
        double* v = ref.data() + n * QKVD + (size_t)h * HS;
        const double c = ct[(size_t)pos[n] * half + i], sn = st[(size_t)pos[n] * half + i];
        const double a = v[i], b = v[i + half];
        v[i] = a * c + b * sn;
        v[i + half] = b * c - a * sn;
      }
  const RopeTables rope{pos.data(), ct.data(), st.data()};
  const bool fused = tc && std::is_same<T, bf16>::value && HS % 16 == 0 && HS <= 128;
  auto dq = nans<T>(N * QKVD);
  auto dsum = nans<float>(NL);
  const long long before = sim::launches();
  flash_attention_backward<T>(dq.data(), dsum.data(), dy.data(), out.data(), qkv.data(), lse.data(), B, T_, NH, NKV,
                              HS, nullptr, tc, rope);
  CUDA_CHECK_LAUNCH();
  const std::string w = what + " with RoPE";
  report(w + " dqkv", rel_err(dq, ref), tol * 4);
  report_exact(w + fmt(" launches (%d)", launches + (fused ? 0 : 1)),
               sim::launches() - before == launches + (fused ? 0 : 1));
}

// mis: qkv and dout start `mis` elements into their buffers (not 16-byte aligned: the
// scalar load paths)
template <typename T>
void run_case(int B, int T_, int NH, int NKV, int HS, double tol, bool tc = false, int mis = 0, bool rope = false) {
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T_, NL = (size_t)B * NH * T_;
  Rng r(B * 1000 + T_ * 10 + HS);
  auto qkv0 = randn<T>(N * QKVD + mis, r), dy0 = randn<T>(N * C + mis, r);
  const std::vector<T> qkv(qkv0.begin() + mis, qkv0.end()), dy(dy0.begin() + mis, dy0.end());
  std::vector<double> rout, rlse, rdq;
  reference(rout, rlse, rdq, to_d(qkv), to_d(dy), B, T_, NH, NKV, HS);
  auto out = nans<T>(N * C), dq = nans<T>(N * QKVD);
  auto lse = nans<float>(NL), dsum = nans<float>(NL);
  using namespace pyllama::gpu;
  const long long before = sim::launches();
  flash_attention_forward<T>(out.data(), lse.data(), qkv0.data() + mis, B, T_, NH, NKV, HS, nullptr, tc);
  CUDA_CHECK_LAUNCH();
  flash_attention_backward<T>(dq.data(), dsum.data(), dy0.data() + mis, out.data(), qkv0.data() + mis, lse.data(), B, T_, NH, NKV,
                              HS, nullptr, tc);
  CUDA_CHECK_LAUNCH();
  const std::string what = fmt("flash %s%s B=%d T=%d NH=%d NKV=%d HS=%d%s", tname<T>(), tc ? "-tc" : "", B, T_, NH,
                               NKV, HS, mis ? " misaligned" : "");
  report(what + " out", rel_err(out, rout), tol);
  report(what + " lse", rel_err(lse, rlse), 1e-5);
  report(what + " dqkv", rel_err(dq, rdq), tol * 4);
  report_exact(what + " launches (4)", sim::launches() - before == 4);
  if (rope) check_rope<T>(what, qkv, dy, out, lse, rdq, B, T_, NH, NKV, HS, tol, tc, 3);
}

}  // namespace

SIM_TEST(flash_attention) {
  run_case<float>(2, 37, 4, 2, 12, 2e-6);
  run_case<float>(1, 70, 2, 1, 64, 2e-6);
  run_case<float>(3, 1, 4, 1, 64, 2e-6);
  run_case<float>(1, 65, 2, 2, 32, 2e-6);
  run_case<float>(2, 9, 2, 2, 128, 2e-6);
  run_case<float>(1, 100, 3, 3, 80, 2e-6);
  run_case<float>(1, 77, 4, 2, 256, 2e-6);
  run_case<float>(1, 33, 2, 1, 130, 2e-6);
  run_case<float>(2, 3, 3, 1, 5, 2e-6);
  run_case<float>(1, 64, 2, 1, 64, 2e-6);  // T a multiple of every block
  run_case<bf16>(1, 128, 2, 2, 64, 1e-2, true);
  run_case<bf16>(2, 70, 4, 2, 64, 1e-2);
  run_case<bf16>(1, 45, 2, 2, 128, 1e-2);
  run_case<bf16>(2, 70, 4, 2, 64, 1e-2, true);
  run_case<bf16>(1, 130, 2, 1, 12, 1e-2, true);
  run_case<bf16>(3, 1, 4, 1, 32, 1e-2, true);
  run_case<bf16>(1, 45, 2, 2, 128, 1e-2, true);
  run_case<bf16>(1, 100, 3, 3, 80, 1e-2, true);
  run_case<bf16>(1, 200, 3, 1, 64, 1e-2, true);
  run_case<bf16>(1, 7, 2, 1, 100, 1e-2, true);
  // HS 64 forward: three blocks of 128 rows (2 m-tiles per warp), the last one partial;
  // 5 key blocks through the double buffers
  run_case<bf16>(1, 300, 2, 1, 64, 1e-2, true);
  run_case<float>(1, 40, 2, 1, 64, 2e-6, false, 1);
  run_case<bf16>(1, 40, 2, 1, 64, 1e-2, true, 1);
  run_case<bf16>(1, 40, 2, 1, 64, 1e-2, false, 3);
  // the inverse RoPE of dq and dk in the backward's stores (tensor cores, HS % 16 == 0: a
  // pair partner HS / 16 fragments on) or by rope_apply after (the other paths)
  run_case<bf16>(2, 70, 4, 2, 64, 1e-2, true, 0, true);
  run_case<bf16>(1, 50, 2, 1, 48, 1e-2, true, 0, true);
  run_case<bf16>(1, 45, 2, 2, 128, 1e-2, true, 0, true);
  run_case<bf16>(1, 100, 3, 3, 80, 1e-2, true, 0, true);
  run_case<bf16>(1, 130, 2, 1, 12, 1e-2, true, 0, true);
  run_case<bf16>(2, 70, 4, 2, 64, 1e-2, false, 0, true);
  run_case<float>(1, 65, 2, 2, 32, 2e-6, false, 0, true);
}
