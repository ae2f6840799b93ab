// test_decode.cpp — cuda/decode.cu (the T = 1 decode step): RoPE fused with the KV-cache
// store, split-K flash-decoding attention and its merge, the skinny GEMV (128-bit loads),
// the fused residual + RMSNorm and the row argmax, against double-precision references.
#include "check.h"
#include "decode.cuh"

using namespace chk;
using namespace pyllama::gpu;

namespace {

// cos/sin tables (max_len, HS/2) as rope_table computes them (theta 10000)
void tables(std::vector<float>& c, std::vector<float>& s, int max_len, int HS) {
  const int half = HS / 2;
  c.resize((size_t)max_len * half);
  s.resize(c.size());
  for (int p = 0; p < max_len; p++)
    for (int i = 0; i < half; i++) {
      const double a = p * std::pow(10000.0, -2.0 * i / HS);
      c[(size_t)p * half + i] = (float)std::cos(a);
      s[(size_t)p * half + i] = (float)std::sin(a);
    }
}

// B rows in distinct slots of S, at positions pos; caches (L, S, NKV, max_len, HS), layer l.
template <typename T>
void rope_store_case(int B, int NH, int NKV, int HS, int max_len, int S, int L, int layer) {
  Rng r(B * 7 + NH * 11 + HS);
  const int QKVD = (NH + 2 * NKV) * HS, half = HS / 2;
  auto qkv = randn<T>((size_t)B * QKVD, r);
  const long long layer_stride = (long long)S * NKV * max_len * HS;
  auto kc = randn<T>((size_t)L * layer_stride, r), vc = randn<T>((size_t)L * layer_stride, r);
  std::vector<int32_t> slots(B), pos(B);
  for (int b = 0; b < B; b++) {
    slots[b] = (S - 1 - b) % S;
    pos[b] = b == 0 ? max_len - 1 : r.integer(0, max_len - 1);
  }
  std::vector<float> ct, st;
  tables(ct, st, max_len, HS);
  auto rq = to_d(qkv), rk = to_d(kc), rv = to_d(vc);
  for (int b = 0; b < B; b++)
    for (int hh = 0; hh < NH + 2 * NKV; hh++)
      for (int i = 0; i < half; i++) {
        const size_t x = (size_t)b * QKVD + (size_t)hh * HS;
        const double c = ct[(size_t)pos[b] * half + i], s = st[(size_t)pos[b] * half + i];
        const double a = f(qkv[x + i]), bb = f(qkv[x + i + half]);
        const double r0 = a * c - bb * s, r1 = bb * c + a * s;
        if (hh < NH) {
          rq[x + i] = r0;
          rq[x + i + half] = r1;
        } else {
          const int kh = hh < NH + NKV ? hh - NH : hh - NH - NKV;
          const size_t d = layer * layer_stride + (((size_t)slots[b] * NKV + kh) * max_len + pos[b]) * HS;
          if (hh < NH + NKV) {
            rk[d + i] = r0;
            rk[d + i + half] = r1;
          } else {
            rv[d + i] = a;
            rv[d + i + half] = bb;
          }
        }
      }
  void* kvp[2] = {kc.data(), vc.data()};
  decode_rope_store<T>(qkv.data(), kvp, layer * layer_stride, slots.data(), pos.data(), ct.data(), st.data(), B, NH,
                       NKV, HS, max_len, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string w = fmt("decode_rope_store %s B=%d NH=%d NKV=%d HS=%d max_len=%d", tname<T>(), B, NH, NKV, HS,
                            max_len);
  report(w + " q", rel_err(qkv, rq), tol_of<T>(1e-6));
  report(w + " k cache", rel_err(kc, rk), tol_of<T>(1e-6));
  report(w + " v cache", rel_err(vc, rv), 0);
}

template <typename T>
void attention_case(int B, int NH, int NKV, int HS, int max_len, int splits, std::vector<int> pos_in = {}) {
  Rng r(B * 13 + NH * 5 + HS * 3 + max_len + splits);
  const int QKVD = (NH + 2 * NKV) * HS, S = B + 1, L = 2, layer = 1;
  const long long layer_stride = (long long)S * NKV * max_len * HS;
  auto qkv = randn<T>((size_t)B * QKVD, r);
  auto kc = randn<T>((size_t)L * layer_stride, r), vc = randn<T>((size_t)L * layer_stride, r);
  std::vector<int32_t> slots(B), pos(B);
  for (int b = 0; b < B; b++) {
    slots[b] = (b * 2 + 1) % S;
    pos[b] = b < (int)pos_in.size() ? pos_in[b] : r.integer(0, max_len - 1);
  }
  if (splits == 0) splits = decode_attention_splits(B, NH, max_len, 132);
  std::vector<double> ref((size_t)B * NH * HS);
  const double scale = 1.0 / std::sqrt((double)HS);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      const int kvh = h / (NH / NKV);
      const size_t base = layer * layer_stride + ((size_t)slots[b] * NKV + kvh) * max_len * HS;
      std::vector<double> s(pos[b] + 1);
      double mx = -1e300;
      for (int j = 0; j <= pos[b]; j++) {
        double d = 0;
        for (int i = 0; i < HS; i++) d += f(qkv[(size_t)b * QKVD + h * HS + i]) * f(kc[base + (size_t)j * HS + i]);
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int i = 0; i < HS; i++) {
        double o = 0;
        for (int j = 0; j <= pos[b]; j++) o += s[j] * f(vc[base + (size_t)j * HS + i]);
        ref[((size_t)b * NH + h) * HS + i] = o / sum;
      }
    }
  auto out = nans<T>((size_t)B * NH * HS);
  auto scratch = nans<float>((size_t)decode_attention_scratch(B, NH, HS, splits));
  void* kvp[2] = {kc.data(), vc.data()};
  const long long before = sim::launches();
  decode_attention<T>(out.data(), scratch.data(), qkv.data(), kvp, layer * layer_stride, slots.data(), pos.data(), B,
                      NH, NKV, HS, max_len, splits, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string w = fmt("decode_attention %s B=%d NH=%d NKV=%d HS=%d max_len=%d splits=%d pos0=%d", tname<T>(),
                            B, NH, NKV, HS, max_len, splits, pos[0]);
  report(w, rel_err(out, ref), tol_of<T>(2e-6));
  report_exact(w + " launches", sim::launches() - before == (splits > 1 ? 2 : 1));
}

template <typename T>
void gemv_case(int B, int IN, int OUT, bool misalign = false) {
  Rng r(B * 3 + IN + OUT);
  auto xs = randn<T>((size_t)B * IN + 1, r), w = randn<T>((size_t)OUT * IN, r);
  const T* x = xs.data() + (misalign ? 1 : 0);
  std::vector<double> ref((size_t)B * OUT);
  for (int b = 0; b < B; b++)
    for (int o = 0; o < OUT; o++) {
      double d = 0;
      for (int i = 0; i < IN; i++) d += f(x[(size_t)b * IN + i]) * f(w[(size_t)o * IN + i]);
      ref[(size_t)b * OUT + o] = d;
    }
  auto y = nans<T>((size_t)B * OUT);
  const bool fits = skinny_gemv_fits(x, w.data(), B, IN, (int)sizeof(T));
  Gemm g;
  decode_linear<T>(g, true, y.data(), x, w.data(), B, IN, OUT, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string kname = sim::last_kernel();
  const std::string wh = fmt("decode_linear %s B=%d IN=%d OUT=%d%s (%s)", tname<T>(), B, IN, OUT,
                             misalign ? " misaligned x" : "", kname.c_str());
  report(wh, rel_err(y, ref), tol_of<T>(2e-6));
  report_exact(wh + " kernel choice", fits == (kname.find("skinny") != std::string::npos));
}

template <typename T>
void residual_norm_case(int B, int C) {
  Rng r(B + C * 3);
  auto x = randn<T>((size_t)B * C, r), add = randn<T>((size_t)B * C, r), w = randn<T>(C, r);
  std::vector<double> rx((size_t)B * C), ro((size_t)B * C), rr(B);
  for (int b = 0; b < B; b++) {
    double ss = 0;
    for (int i = 0; i < C; i++) {
      const size_t k = (size_t)b * C + i;
      rx[k] = f(from<T>((float)(f(x[k]) + f(add[k]))));  // rounded to T, as residual_forward
      ss += rx[k] * rx[k];
    }
    rr[b] = 1.0 / std::sqrt(ss / C + 1e-5);
    for (int i = 0; i < C; i++) ro[(size_t)b * C + i] = f(w[i]) * rx[(size_t)b * C + i] * rr[b];
  }
  auto out = nans<T>((size_t)B * C);
  auto rstd = nans<float>(B);
  decode_residual_rmsnorm<T>(x.data(), add.data(), out.data(), rstd.data(), w.data(), B, C, 1e-5f, nullptr);
  CUDA_CHECK_LAUNCH();
  const std::string wh = fmt("decode_residual_rmsnorm %s B=%d C=%d", tname<T>(), B, C);
  report(wh + " x", rel_err(x, rx), tol_of<T>(1e-6));
  report(wh + " out", rel_err(out, ro), tol_of<T>(2e-6));
  report(wh + " rstd", rel_err(rstd, rr), 2e-6);
}

void argmax_case(int R, int V) {
  Rng r(R * 17 + V);
  std::vector<float> x((size_t)R * V);
  for (auto& v : x) v = (float)r.integer(-20, 20);  // many ties
  std::vector<int32_t> ref(R);
  for (int i = 0; i < R; i++) {
    float* row = x.data() + (size_t)i * V;
    switch (i % 4) {
      case 1: row[r.integer(0, V - 1)] = NAN; row[r.integer(0, V - 1)] = NAN; break;  // first NaN wins
      case 2: for (int j = 0; j < V; j++) row[j] = -INFINITY; break;
      case 3: row[V - 1] = 1e30f; break;
      default: break;
    }
    int best = 0;
    for (int j = 1; j < V; j++) {
      if (std::isnan(row[best])) break;
      if (std::isnan(row[j]) || row[j] > row[best]) best = j;
    }
    ref[i] = best;
  }
  std::vector<int32_t> out(R, -7);
  argmax_rows(out.data(), x.data(), R, V, nullptr);
  CUDA_CHECK_LAUNCH();
  report_exact(fmt("argmax_rows R=%d V=%d", R, V), out == ref);
}

}  // namespace

SIM_TEST(decode_rope_store) {
  rope_store_case<float>(3, 4, 2, 12, 9, 4, 2, 1);
  rope_store_case<bf16>(2, 8, 2, 64, 20, 3, 1, 0);
  rope_store_case<float>(1, 2, 1, 128, 5, 1, 3, 2);
}

SIM_TEST(decode_attention) {
  // one split: the block writes out directly
  attention_case<float>(2, 4, 2, 12, 40, 1);
  attention_case<bf16>(2, 4, 2, 12, 40, 1);  // bf16 HS 12: scalar loads (12 % 8 != 0)
  attention_case<float>(1, 2, 1, 64, 33, 1, {0});
  attention_case<bf16>(3, 4, 4, 128, 30, 1);
  // several splits and the merge (later splits of short rows are empty)
  attention_case<float>(2, 4, 1, 64, 700, 0, {699, 5});
  attention_case<bf16>(2, 4, 2, 128, 600, 0, {599, 300});
  attention_case<float>(1, 2, 2, 100, 300, 4, {257});
  attention_case<bf16>(1, 2, 1, 100, 300, 3, {299});
  attention_case<bf16>(1, 2, 2, 256, 520, 0, {519});
  attention_case<float>(1, 1, 1, 256, 70, 3, {69});
  attention_case<float>(3, 6, 2, 12, 50, 5, {0, 49, 17});
  // a lane (G = 1) or a few lanes per key
  attention_case<float>(2, 2, 1, 4, 300, 2, {299, 130});
  attention_case<bf16>(2, 2, 2, 8, 90, 1);
  attention_case<float>(1, 3, 1, 1, 40, 1);
  attention_case<bf16>(1, 2, 1, 6, 260, 0, {259});
  attention_case<float>(1, 4, 2, 200, 100, 2, {99});
  attention_case<bf16>(1, 2, 2, 252, 64, 1);
  // bf16 128-bit loads over few keys per split (a lost key would show above bf16 rounding)
  attention_case<bf16>(2, 4, 2, 64, 60, 4, {59, 20});
  attention_case<bf16>(1, 2, 1, 16, 12, 3, {11});
}

SIM_TEST(decode_linear) {
  for (int B = 1; B <= 5; B++) gemv_case<float>(B, 72, 37);
  for (int B = 1; B <= 4; B++) gemv_case<bf16>(B, 528, 21);
  gemv_case<bf16>(2, 20, 9);         // IN not a multiple of 8: the tiled GEMM
  gemv_case<float>(1, 64, 11, true);  // misaligned x: the tiled GEMM
  gemv_case<bf16>(3, 1032, 70);
}

SIM_TEST(decode_residual_rmsnorm) {
  residual_norm_case<float>(3, 40);
  residual_norm_case<float>(2, 1000);
  residual_norm_case<bf16>(4, 300);
  residual_norm_case<bf16>(1, 7);
}

SIM_TEST(decode_argmax) {
  argmax_case(8, 1);
  argmax_case(8, 37);
  argmax_case(5, 3001);
}
