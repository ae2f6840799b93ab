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
  std::vector<int> counters((size_t)B * NH, 0);
  void* kvp[2] = {kc.data(), vc.data()};
  const std::string w = fmt("decode_attention %s B=%d NH=%d NKV=%d HS=%d max_len=%d splits=%d pos0=%d", tname<T>(),
                            B, NH, NKV, HS, max_len, splits, pos[0]);
  std::vector<T> first;
  for (int rep = 0; rep < 2; rep++) {  // twice, as graph replays run it: the counters must be back at 0
    const long long before = sim::launches();
    decode_attention<T>(out.data(), scratch.data(), counters.data(), qkv.data(), kvp, layer * layer_stride,
                        slots.data(), pos.data(), B, NH, NKV, HS, max_len, splits, false, nullptr);
    CUDA_CHECK_LAUNCH();
    if (rep == 0) {
      report(w, rel_err(out, ref), tol_of<T>(2e-6));
      report_exact(w + " one launch (merge in the last block)", sim::launches() - before == 1);
      first = out;
    } else {
      report_exact(w + " second run equal", same_bits(out, first));
    }
    report_exact(w + " counters back at 0", std::all_of(counters.begin(), counters.end(), [](int c) { return c == 0; }));
  }
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

// ---- fused matmuls (fused_gemv) against the unfused kernels they replace: equal bits.
template <typename T>
std::vector<T> normed(const std::vector<T>& x, const std::vector<T>& w, int B, int C) {
  // rmsnorm(x) * w with the arithmetic of the decode path (residual_rmsnorm with a zero add)
  std::vector<T> xc = x, zero((size_t)B * C, from<T>(0.f)), out((size_t)B * C);
  std::vector<float> rstd(B);
  decode_residual_rmsnorm<T>(xc.data(), zero.data(), out.data(), rstd.data(), w.data(), B, C, 1e-5f, nullptr);
  CUDA_CHECK_LAUNCH();
  return out;
}

template <typename T>
std::vector<T> skinny(const std::vector<T>& x, const std::vector<T>& w, int B, int IN, int OUT) {
  std::vector<T> y((size_t)B * OUT);
  Gemm g;
  decode_linear<T>(g, true, y.data(), x.data(), w.data(), B, IN, OUT, nullptr);
  CUDA_CHECK_LAUNCH();
  return y;
}

template <typename T>
void fused_rope_case(int B, int C, int NH, int NKV, int HS, int max_len, int max_blocks = 0) {
  Rng r(B * 31 + C + NH * 7 + HS);
  const int QKVD = (NH + 2 * NKV) * HS, S = B + 2, L = 2, layer = 1;
  const long long layer_stride = (long long)S * NKV * max_len * HS;
  auto x = randn<T>((size_t)B * C, r), nw = randn<T>(C, r), W = randn<T>((size_t)QKVD * C, r, 0.2);
  auto kc = randn<T>((size_t)L * layer_stride, r), vc = randn<T>((size_t)L * layer_stride, r);
  std::vector<int32_t> slots(B), pos(B);
  for (int b = 0; b < B; b++) {
    slots[b] = (b * 3 + 1) % S;
    pos[b] = r.integer(0, max_len - 1);
  }
  std::vector<float> ct, st;
  tables(ct, st, max_len, HS);
  // unfused: norm, matmul, RoPE + store
  auto qkv_ref = skinny(normed(x, nw, B, C), W, B, C, QKVD);
  auto kc_ref = kc, vc_ref = vc;
  void* kvr[2] = {kc_ref.data(), vc_ref.data()};
  decode_rope_store<T>(qkv_ref.data(), kvr, layer * layer_stride, slots.data(), pos.data(), ct.data(), st.data(), B,
                       NH, NKV, HS, max_len, nullptr);
  CUDA_CHECK_LAUNCH();
  auto qkv = nans<T>((size_t)B * QKVD);
  void* kvp[2] = {kc.data(), vc.data()};
  FusedGemv<T> a;
  a.W = W.data(), a.x = x.data(), a.nw = nw.data(), a.eps = 1e-5f, a.IN = C, a.units = QKVD / 2, a.OUT = QKVD;
  a.y = qkv.data(), a.kvp = kvp, a.layer_off = layer * layer_stride, a.slots = slots.data(), a.pos = pos.data();
  a.cos_t = ct.data(), a.sin_t = st.data(), a.NH = NH, a.NKV = NKV, a.HS = HS, a.max_len = max_len;
  a.max_blocks = max_blocks;
  fused_gemv<T>(kEpiRope, a, B, false, nullptr);
  CUDA_CHECK_LAUNCH();
  bool q_same = true;
  for (int b = 0; b < B; b++)
    for (int i = 0; i < NH * HS; i++)
      q_same &= bits_of(qkv[(size_t)b * QKVD + i]) == bits_of(qkv_ref[(size_t)b * QKVD + i]);
  const std::string w = fmt("fused_gemv rope %s B=%d C=%d NH=%d NKV=%d HS=%d max_blocks=%d", tname<T>(), B, C, NH,
                            NKV, HS, max_blocks);
  report_exact(w + " q equal to norm+matmul+rope", q_same);
  report_exact(w + " k cache equal", same_bits(kc, kc_ref));
  report_exact(w + " v cache equal", same_bits(vc, vc_ref));
}

template <typename T>
void fused_residual_case(int B, int IN, int OUT) {
  Rng r(B * 5 + IN * 3 + OUT);
  auto x = randn<T>((size_t)B * OUT, r), in = randn<T>((size_t)B * IN, r), W = randn<T>((size_t)OUT * IN, r, 0.1);
  auto tmp = skinny(in, W, B, IN, OUT);
  auto x_ref = x;
  std::vector<T> ln((size_t)B * OUT), ones(OUT, from<T>(1.f));
  std::vector<float> rstd(B);
  decode_residual_rmsnorm<T>(x_ref.data(), tmp.data(), ln.data(), rstd.data(), ones.data(), B, OUT, 1e-5f, nullptr);
  CUDA_CHECK_LAUNCH();
  FusedGemv<T> a;
  a.W = W.data(), a.x = in.data(), a.IN = IN, a.units = OUT, a.OUT = OUT, a.y = x.data();
  fused_gemv<T>(kEpiResidual, a, B, false, nullptr);
  CUDA_CHECK_LAUNCH();
  report_exact(fmt("fused_gemv residual %s B=%d IN=%d OUT=%d equal to matmul+residual", tname<T>(), B, IN, OUT),
               same_bits(x, x_ref));
}

template <typename T>
void fused_swiglu_case(int B, int C, int I, int max_blocks = 0) {
  Rng r(B * 11 + C + I * 5);
  auto x = randn<T>((size_t)B * C, r), nw = randn<T>(C, r), W = randn<T>((size_t)2 * I * C, r, 0.3);
  auto gu = skinny(normed(x, nw, B, C), W, B, C, 2 * I);
  std::vector<T> h_ref((size_t)B * I);
  swiglu_forward<T>(h_ref.data(), gu.data(), B, I, nullptr);
  CUDA_CHECK_LAUNCH();
  auto h = nans<T>((size_t)B * I);
  FusedGemv<T> a;
  a.W = W.data(), a.x = x.data(), a.nw = nw.data(), a.eps = 1e-5f, a.IN = C, a.units = I, a.OUT = I, a.y = h.data();
  a.max_blocks = max_blocks;
  fused_gemv<T>(kEpiSwiGLU, a, B, false, nullptr);
  CUDA_CHECK_LAUNCH();
  report_exact(fmt("fused_gemv swiglu %s B=%d C=%d I=%d max_blocks=%d equal to norm+matmul+swiglu", tname<T>(), B, C,
                   I, max_blocks),
               same_bits(h, h_ref));
}

template <typename T>
void fused_logits_case(int B, int C, int V, bool ties, int max_blocks = 0) {
  Rng r(B * 13 + C + V);
  auto x = randn<T>((size_t)B * C, r), nw = randn<T>(C, r), W = randn<T>((size_t)V * C, r);
  if (ties)  // two equal dominant rows: the first index must win
    for (int i = 0; i < C; i++) W[(size_t)(V - 1) * C + i] = W[(size_t)(V / 3) * C + i] = from<T>(f(nw[i]) * 4.f);
  auto logits_ref = skinny(normed(x, nw, B, C), W, B, C, V);
  std::vector<float> lf_ref((size_t)B * V);
  for (size_t i = 0; i < lf_ref.size(); i++) lf_ref[i] = (float)f(logits_ref[i]);
  std::vector<int32_t> am_ref(B);
  argmax_rows(am_ref.data(), lf_ref.data(), B, V, nullptr);
  CUDA_CHECK_LAUNCH();
  auto logits = nans<T>((size_t)B * V);
  auto lf = nans<float>((size_t)B * V);
  auto part = nans<float>(2 * (size_t)fused_argmax_blocks(V, max_blocks) * B);
  std::vector<int32_t> am(B, -7);
  int counter = 0;
  FusedGemv<T> a;
  a.W = W.data(), a.x = x.data(), a.nw = nw.data(), a.eps = 1e-5f, a.IN = C, a.units = V, a.OUT = V;
  a.y = logits.data(), a.yf = lf.data(), a.argmax = am.data(), a.part = part.data(), a.counter = &counter;
  a.max_blocks = max_blocks;
  // the greedy feed: each run writes its argmax into tok and the ring, advances pos and step
  std::vector<int32_t> tok(B, -1), pos(B), ring(3 * B, -1);
  for (int b = 0; b < B; b++) pos[b] = 10 * b;
  int32_t step = 0;
  a.feed.tok = tok.data(), a.feed.pos = pos.data(), a.feed.ring = ring.data(), a.feed.step = &step;
  a.feed.ring_cap = 3;
  const std::string w = fmt("fused_gemv logits %s B=%d C=%d V=%d%s max_blocks=%d", tname<T>(), B, C, V,
                            ties ? " ties" : "", max_blocks);
  for (int rep = 0; rep < 2; rep++) {
    std::fill(am.begin(), am.end(), -7);
    fused_gemv<T>(kEpiStore, a, B, false, nullptr);
    CUDA_CHECK_LAUNCH();
    if (rep == 0) {
      report_exact(w + " logits equal to norm+matmul", same_bits(logits, logits_ref));
      report_exact(w + " float copy equal", same_bits(lf, lf_ref));
    }
    report_exact(w + fmt(" argmax equal to argmax_rows (run %d)", rep + 1), am == am_ref);
    report_exact(w + " counter back at 0", counter == 0);
  }
  bool fed = step == 2 && tok == am_ref;
  for (int b = 0; b < B; b++)
    fed = fed && pos[b] == 10 * b + 2 && ring[b] == am_ref[b] && ring[B + b] == am_ref[b] && ring[2 * B + b] == -1;
  report_exact(w + " greedy feed (tokens, positions, ring, step)", fed);
}

}  // namespace

SIM_TEST(decode_fused_gemv) {
  // rope: q rotated, k and v into the caches; GQA and MHA; IN below and above the prefetch
  fused_rope_case<float>(1, 40, 4, 2, 8, 9);
  fused_rope_case<bf16>(2, 64, 2, 1, 32, 12);
  fused_rope_case<bf16>(4, 1040, 4, 4, 16, 5);
  fused_rope_case<float>(3, 24, 3, 1, 4, 7);
  fused_rope_case<bf16>(2, 264, 4, 2, 16, 6, 1);  // one block: each warp several pairs
  fused_residual_case<float>(1, 72, 37);
  fused_residual_case<bf16>(2, 2056, 19);
  fused_residual_case<bf16>(4, 128, 9);
  fused_residual_case<float>(3, 600, 8);
  fused_swiglu_case<float>(2, 40, 24);
  fused_swiglu_case<bf16>(1, 768, 20);
  fused_swiglu_case<bf16>(4, 136, 33);
  fused_swiglu_case<float>(1, 2056, 40, 2);
  fused_logits_case<float>(1, 40, 37, false);
  fused_logits_case<bf16>(2, 64, 3001, false);
  fused_logits_case<bf16>(3, 32, 2500, true);
  fused_logits_case<float>(4, 24, 9, true);
  // fewer blocks than rows: each warp loops over several rows (the prefetch serves the first)
  fused_logits_case<bf16>(1, 768, 3001, false, 7);
  fused_logits_case<float>(2, 40, 1000, true, 3);
  fused_logits_case<bf16>(4, 64, 300, true, 1);
  report_exact("fused_gemv_fits: 5 rows go to the unfused path", !fused_gemv_fits(5, 64, 2, true));
  report_exact("fused_gemv_fits: bf16 IN 20 (not whole 16-byte chunks)", !fused_gemv_fits(1, 20, 2, false));
  report_exact("fused_gemv_fits: 4 normalised rows of 8192 bf16 exceed 48 KiB", !fused_gemv_fits(4, 8192, 2, true));
  report_exact("fused_gemv_fits: 1 row of 8192 bf16", fused_gemv_fits(1, 8192, 2, true));
  report_exact("fused_gemv_fits: 4 rows of 6144 bf16 (exactly 48 KiB) leave no room for the static scratch",
               !fused_gemv_fits(4, 6144, 2, true));
  report_exact("fused_gemv_fits: 4 rows of 6016 bf16 (47 KiB)", fused_gemv_fits(4, 6016, 2, true));
}

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
