// test_attention.cpp — cuda/attention.cu (naive training attention forward/backward, the
// KV-cache attention, kv_store, kv_gather) against double-precision references. (The GEMM
// attention moved to the kernel lab, cuda/lab/attention_gemm.cu, whose own checks run.sh runs.)
#include "check.h"
#include "ref_attention.h"

using namespace chk;
using namespace pyllama::gpu;

namespace {

template <typename T>
void naive_case(int B, int T_, int NH, int NKV, int HS) {
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T_;
  Rng r(B * 100 + T_ + HS * 7);
  auto qkv = randn<T>(N * QKVD, r), dy = randn<T>(N * C, r);
  std::vector<double> rout, rlse, rdq, rp;
  reference(rout, rlse, rdq, to_d(qkv), to_d(dy), B, T_, NH, NKV, HS, &rp);
  auto out = nans<T>(N * C), dq = nans<T>(N * QKVD);
  auto att = nans<float>((size_t)B * NH * T_ * T_), datt = nans<float>(att.size());
  attention_forward<T>(out.data(), att.data(), qkv.data(), B, T_, NH, NKV, HS, nullptr);
  CUDA_CHECK_LAUNCH();
  attention_backward<T>(dq.data(), datt.data(), dy.data(), qkv.data(), att.data(), B, T_, NH, NKV, HS, nullptr);
  CUDA_CHECK_LAUNCH();
  std::vector<float> lower;  // the entries on and below the diagonal
  std::vector<double> rlower;
  for (size_t bh = 0; bh < (size_t)B * NH; bh++)
    for (int t = 0; t < T_; t++)
      for (int j = 0; j <= t; j++) {
        lower.push_back(att[(bh * T_ + t) * T_ + j]);
        rlower.push_back(rp[(bh * T_ + t) * T_ + j]);
      }
  const std::string w = fmt("attention naive %s B=%d T=%d NH=%d NKV=%d HS=%d", tname<T>(), B, T_, NH, NKV, HS);
  report(w + " out", rel_err(out, rout), tol_of<T>(2e-6));
  report(w + " att", rel_err(lower, rlower), 2e-6);
  report(w + " dqkv", rel_err(dq, rdq), tol_of<T>(2e-6) * 4);
}

// KV cache of one layer (S, NKV, max_len, HS): rows n = b*T + t of qkv, at positions pos[n]
// of slot slots[b]; kv_store writes their k, v, then attention_kv_forward attends to 0..pos[n].
template <typename T>
void kv_case(int B, int T_, int NH, int NKV, int HS, int max_len) {
  const int S = B + 2, C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD;
  const size_t N = (size_t)B * T_, slot = (size_t)NKV * max_len * HS;
  Rng r(B * 31 + T_ * 3 + HS + max_len);
  auto qkv = randn<T>(N * QKVD, r);
  auto kc = randn<T>(S * slot, r), vc = randn<T>(S * slot, r);
  std::vector<int32_t> slots(B), pos(N);
  for (int b = 0; b < B; b++) {
    slots[b] = S - 1 - 2 * b;
    const int p0 = r.integer(0, max_len - T_);
    for (int t = 0; t < T_; t++) pos[(size_t)b * T_ + t] = p0 + t;
  }
  auto rk = to_d(kc), rv = to_d(vc);
  for (size_t n = 0; n < N; n++)
    for (int e = 0; e < KVD; e++) {
      const size_t d = slots[n / T_] * slot + ((size_t)(e / HS) * max_len + pos[n]) * HS + e % HS;
      rk[d] = f(qkv[n * QKVD + C + e]);
      rv[d] = f(qkv[n * QKVD + C + KVD + e]);
    }
  kv_store<T>(kc.data(), vc.data(), qkv.data(), slots.data(), pos.data(), B, T_, NH, NKV, HS, max_len, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string w = fmt("kv %s B=%d T=%d NH=%d NKV=%d HS=%d max_len=%d", tname<T>(), B, T_, NH, NKV, HS, max_len);
  report(w + " kv_store k", rel_err(kc, rk), 0);
  report(w + " kv_store v", rel_err(vc, rv), 0);
  std::vector<double> ref(N * C);
  const double scale = 1.0 / std::sqrt((double)HS);
  for (size_t n = 0; n < N; n++)
    for (int h = 0; h < NH; h++) {
      const size_t base = slots[n / T_] * slot + (size_t)(h / (NH / NKV)) * max_len * HS;
      std::vector<double> s(pos[n] + 1);
      double mx = -1e300, sum = 0;
      for (int j = 0; j <= pos[n]; j++) {
        double d = 0;
        for (int i = 0; i < HS; i++) d += f(qkv[n * QKVD + h * HS + i]) * rk[base + (size_t)j * HS + i];
        mx = std::max(mx, s[j] = d * scale);
      }
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int i = 0; i < HS; i++) {
        double o = 0;
        for (int j = 0; j <= pos[n]; j++) o += s[j] * rv[base + (size_t)j * HS + i];
        ref[n * C + h * HS + i] = o / sum;
      }
    }
  auto out = nans<T>(N * C);
  auto scores = nans<float>(N * NH * max_len);
  attention_kv_forward<T>(out.data(), scores.data(), qkv.data(), kc.data(), vc.data(), slots.data(), pos.data(), B, T_,
                          NH, NKV, HS, max_len, nullptr);
  CUDA_CHECK_LAUNCH();
  report(w + " attention_kv_forward", rel_err(out, ref), tol_of<T>(2e-6));
}

template <typename T>
void gather_case(int layers, int n_slots, long long slot_elems) {
  Rng r(layers * 7 + n_slots + (int)slot_elems);
  auto src = randn<T>((size_t)layers * n_slots * slot_elems, r);
  auto dst = nans<T>(src.size());
  std::vector<int32_t> ss(n_slots);
  for (int i = 0; i < n_slots; i++) ss[i] = r.integer(0, n_slots - 1);
  std::vector<double> ref(src.size());
  for (int l = 0; l < layers; l++)
    for (int i = 0; i < n_slots; i++)
      for (long long e = 0; e < slot_elems; e++)
        ref[((size_t)l * n_slots + i) * slot_elems + e] = f(src[((size_t)l * n_slots + ss[i]) * slot_elems + e]);
  kv_gather<T>(dst.data(), src.data(), ss.data(), layers, n_slots, slot_elems, nullptr);
  CUDA_CHECK_LAUNCH();
  report(fmt("kv_gather %s layers=%d n_slots=%d slot_elems=%lld", tname<T>(), layers, n_slots, slot_elems),
         rel_err(dst, ref), 0);
}

}  // namespace

SIM_TEST(attention_naive) {
  naive_case<float>(2, 37, 4, 2, 12);
  naive_case<float>(1, 70, 2, 1, 64);
  naive_case<float>(3, 1, 4, 1, 64);
  naive_case<bf16>(1, 20, 2, 2, 128);
  naive_case<float>(1, 9, 2, 1, 256);
  naive_case<bf16>(2, 5, 3, 1, 5);
}

SIM_TEST(attention_kv) {
  kv_case<float>(2, 3, 4, 2, 12, 50);
  kv_case<bf16>(1, 1, 2, 1, 64, 40);
  kv_case<float>(3, 2, 2, 2, 128, 70);
  kv_case<bf16>(2, 5, 8, 2, 100, 37);
  gather_case<float>(2, 3, 77);
  gather_case<bf16>(3, 4, 1000);
}
