// The CPU ops against simple reference loops, and every backward op against
// central finite differences of its forward op (loss = sum(out * r), r random).
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "matmul.h"
#include "model.h"
#include "ops.h"
#include "rope.h"
#include "tensor.h"
#include "test_util.h"

using namespace pyllama;
using Vec = std::vector<float>;

static std::mt19937 rng(1234);
static Vec randn(size_t n, float s = 1.f) {
  std::normal_distribution<float> d(0.f, s);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
static double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += (double)a[i] * b[i];
  return s;
}

// Numerical gradient of f (a scalar function of x) at x, by central differences.
static Vec numgrad(Vec& x, const std::function<double()>& f, float h = 1e-2f) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    float keep = x[i];
    x[i] = keep + h;
    double fp = f();
    x[i] = keep - h;
    double fm = f();
    x[i] = keep;
    g[i] = (float)((fp - fm) / (2 * h));
  }
  return g;
}

static void test_matmul() {
  int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {37, 50, 300}, {150, 70, 33}, {6, 16, 256}, {145, 1030, 17}, {1, 300, 77}, {3, 130, 300}, {4, 64, 16}};
  for (auto& s : shapes) {
    int M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (float beta : {0.f, 1.f}) {
          Vec A = randn((size_t)M * K), B = randn((size_t)K * N), C0 = randn((size_t)M * N);
          Vec C = C0, R = C0;
          int lda = ta ? M : K, ldb = tb ? K : N;
          sgemm(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, C.data(), N);
          sgemm_reference(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, beta, R.data(), N);
          char what[96];
          std::snprintf(what, sizeof what, "sgemm M=%d N=%d K=%d ta=%d tb=%d beta=%g", M, N, K, ta, tb, beta);
          allclose(C.data(), R.data(), (long)C.size(), 1e-4f * std::sqrt((float)K), 1e-4f, what);
        }
  }
  CHECK_THROWS(sgemm(false, false, 1, 1, 1, nullptr, 1, nullptr, 1, 0.5f, nullptr, 1), ValueError);
  // bf16 weights: the product equals the float32 product of the rounded weights
  for (int M : {1, 3}) {
    int N = 77, K = 133;
    Vec A = randn((size_t)M * K), W = randn((size_t)N * K), C((size_t)M * N), R((size_t)M * N);
    std::vector<uint16_t> Wb(W.size());
    for (size_t i = 0; i < W.size(); i++) {
      Wb[i] = float_to_bf16(W[i]);
      W[i] = bf16_to_float(Wb[i]);
    }
    sgemm_bf16_nt(M, N, K, A.data(), K, Wb.data(), K, C.data(), N);
    sgemm_reference(false, true, M, N, K, A.data(), K, W.data(), K, 0.f, R.data(), N);
    allclose(C.data(), R.data(), (long)C.size(), 1e-4f, 1e-4f, "sgemm_bf16_nt");
  }
}

static void test_rmsnorm() {
  int N = 3, C = 8;
  Vec x = randn(N * C), w = randn(C), r = randn(N * C), out(N * C), rstd(N);
  auto f = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    return dot(out, r);
  };
  f();
  for (int n = 0; n < N; n++) {  // reference
    double ss = 0;
    for (int i = 0; i < C; i++) ss += (double)x[n * C + i] * x[n * C + i];
    double rs = 1 / std::sqrt(ss / C + 1e-5);
    for (int i = 0; i < C; i++) CHECK(std::fabs(out[n * C + i] - w[i] * x[n * C + i] * rs) < 1e-5);
  }
  Vec dx(N * C, 0.f), dw(C, 0.f);
  rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  Vec ndx = numgrad(x, f), ndw = numgrad(w, f);
  allclose(dx.data(), ndx.data(), N * C, 5e-3f, 1e-2f, "rmsnorm dx");
  allclose(dw.data(), ndw.data(), C, 5e-3f, 1e-2f, "rmsnorm dw");
}

static void test_swiglu() {
  int N = 4, I = 6;
  Vec gu = randn(N * 2 * I), r = randn(N * I), h(N * I);
  auto f = [&] {
    swiglu_forward(h.data(), gu.data(), N, I);
    return dot(h, r);
  };
  f();
  for (int n = 0; n < N; n++)
    for (int i = 0; i < I; i++) {
      float g = gu[n * 2 * I + i], u = gu[n * 2 * I + I + i];
      CHECK(std::fabs(h[n * I + i] - g / (1 + std::exp(-g)) * u) < 1e-5);
    }
  Vec dgu(N * 2 * I);
  swiglu_backward(dgu.data(), r.data(), gu.data(), N, I);
  Vec n = numgrad(gu, f);
  allclose(dgu.data(), n.data(), N * 2 * I, 5e-3f, 1e-2f, "swiglu dgu");
}

static void test_rope() {
  int N = 5, HS = 8, NHh = 2, maxT = 16;
  Vec cs(maxT * HS / 2), sn(maxT * HS / 2);
  rope_table(cs.data(), sn.data(), maxT, HS, 10000.f);
  std::vector<int32_t> pos = {0, 1, 2, 7, 15};
  Vec x = randn(N * NHh * HS), y = x;
  rope_apply(y.data(), NHh * HS, pos.data(), cs.data(), sn.data(), N, NHh, HS, false);
  for (int n = 0; n < N; n++)  // reference: rotate-half with angle pos / 10000^(2i/HS)
    for (int h = 0; h < NHh; h++)
      for (int i = 0; i < HS / 2; i++) {
        double ang = pos[n] / std::pow(10000.0, 2.0 * i / HS);
        float a = x[n * NHh * HS + h * HS + i], b = x[n * NHh * HS + h * HS + i + HS / 2];
        CHECK(std::fabs(y[n * NHh * HS + h * HS + i] - (a * std::cos(ang) - b * std::sin(ang))) < 1e-4);
        CHECK(std::fabs(y[n * NHh * HS + h * HS + i + HS / 2] - (b * std::cos(ang) + a * std::sin(ang))) < 1e-4);
      }
  rope_apply(y.data(), NHh * HS, pos.data(), cs.data(), sn.data(), N, NHh, HS, true);  // the inverse
  allclose(y.data(), x.data(), (long)x.size(), 1e-5f, 1e-5f, "rope inverse");
}

static void test_attention() {
  int B = 1, T = 70, NH = 2, NKV = 1, HS = 4, QKVD = (NH + 2 * NKV) * HS;
  Vec qkv = randn((size_t)B * T * QKVD), out((size_t)B * T * NH * HS), att((size_t)B * NH * T * T);
  Vec r = randn(out.size());
  auto f = [&] {
    attention_forward(out.data(), att.data(), qkv.data(), B, T, NH, NKV, HS);
    return dot(out, r);
  };
  f();
  // reference: explicit softmax(q k^T / sqrt(HS)) v per head, causal
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < T; t++) {
        int kh = h / (NH / NKV);
        std::vector<double> s(t + 1);
        double mx = -1e30, sum = 0;
        for (int u = 0; u <= t; u++) {
          double d = 0;
          for (int i = 0; i < HS; i++)
            d += qkv[(b * T + t) * QKVD + h * HS + i] * qkv[(b * T + u) * QKVD + NH * HS + kh * HS + i];
          s[u] = d / std::sqrt((double)HS);
          mx = std::max(mx, s[u]);
        }
        for (int u = 0; u <= t; u++) sum += s[u] = std::exp(s[u] - mx);
        for (int i = 0; i < HS; i++) {
          double o = 0;
          for (int u = 0; u <= t; u++) o += s[u] / sum * qkv[(b * T + u) * QKVD + (NH + NKV) * HS + kh * HS + i];
          CHECK(std::fabs(out[(b * T + t) * NH * HS + h * HS + i] - o) < 1e-5);
        }
      }
  Vec dqkv(qkv.size()), scratch(64 * T * T);
  attention_backward(dqkv.data(), scratch.data(), r.data(), qkv.data(), att.data(), B, T, NH, NKV, HS);
  Vec n = numgrad(qkv, f);
  allclose(dqkv.data(), n.data(), (long)qkv.size(), 5e-3f, 1e-2f, "attention dqkv");
  // the flash variant (lse only, probabilities recomputed) equals the dense one
  Vec out2(out.size()), lse((size_t)B * NH * T), dqkv2(qkv.size()), scr2((size_t)attention_scratch_floats(T));
  attention_forward(out.data(), att.data(), qkv.data(), B, T, NH, NKV, HS);
  attention_forward_flash(out2.data(), lse.data(), scr2.data(), qkv.data(), B, T, NH, NKV, HS);
  allclose(out2.data(), out.data(), (long)out.size(), 1e-6f, 1e-5f, "flash attention out");
  attention_backward_flash(dqkv2.data(), scr2.data(), r.data(), qkv.data(), lse.data(), B, T, NH, NKV, HS);
  allclose(dqkv2.data(), dqkv.data(), (long)dqkv.size(), 1e-6f, 1e-4f, "flash attention dqkv");
}

static void test_crossentropy() {
  int N = 4, V = 7;
  Vec logits = randn(N * V), lse(N);
  std::vector<int32_t> tg = {3, -100, 0, 6};
  int count = 0;
  auto f = [&] { return crossentropy_forward(lse.data(), logits.data(), tg.data(), N, V, &count); };
  double loss = f();
  CHECK(count == 3);
  double ref = 0;
  for (int n = 0; n < N; n++) {
    if (tg[n] < 0) continue;
    double s = 0;
    for (int v = 0; v < V; v++) s += std::exp((double)logits[n * V + v]);
    ref += std::log(s) - logits[n * V + tg[n]];
  }
  CHECK(std::fabs(loss - ref) < 1e-5);
  Vec d(N * V);
  crossentropy_backward(d.data(), logits.data(), lse.data(), tg.data(), 1.f, N, V);
  Vec n = numgrad(logits, f, 1e-2f);
  allclose(d.data(), n.data(), N * V, 5e-3f, 1e-2f, "crossentropy dlogits");
}

// The whole model: a directional derivative of the loss against the backward pass.
static void test_model_gradient() {
  LlamaConfig c;
  c.vocab_size = 23; c.hidden_size = 16; c.intermediate_size = 24; c.num_hidden_layers = 2;
  c.num_attention_heads = 4; c.num_key_value_heads = 2; c.max_position_embeddings = 16;
  LlamaModel m(c);
  m.init_weights(3);
  for (size_t i = 0; i < m.num_parameters(); i++) m.params()[i] *= 10;  // larger weights, larger gradients
  std::vector<int32_t> tok = {1, 5, 7, 2, 9, 22, 0, 3}, lab = {0, 4, 6, 2, -100, 1, 8, 3};
  auto ids = [](std::vector<int32_t>& v, int64_t B, int64_t T) {
    return Tensor::wrap(v.data(), {B, T}, DType::int32, nullptr);
  };
  m.zero_grad();
  m.forward(ids(tok, 2, 4), ids(lab, 2, 4));
  m.backward(1.f);
  Vec g(m.grads(), m.grads() + m.num_parameters());
  Vec dir = randn(m.num_parameters());
  double norm = std::sqrt(dot(dir, dir));
  for (auto& d : dir) d = (float)(d / norm);  // a unit direction
  double h = 1e-2;
  Vec p0(m.params(), m.params() + m.num_parameters());
  for (size_t i = 0; i < p0.size(); i++) m.params()[i] = p0[i] + (float)h * dir[i];
  double lp = m.forward(ids(tok, 2, 4), ids(lab, 2, 4));
  for (size_t i = 0; i < p0.size(); i++) m.params()[i] = p0[i] - (float)h * dir[i];
  double lm = m.forward(ids(tok, 2, 4), ids(lab, 2, 4));
  double num = (lp - lm) / (2 * h), ana = dot(g, dir);
  std::printf("model directional derivative: analytic %.6f numeric %.6f\n", ana, num);
  CHECK(std::fabs(num - ana) <= 2e-2 * std::fabs(ana) + 1e-3);
  std::vector<int32_t> long_seq(17, 1);
  CHECK_THROWS(m.forward(ids(long_seq, 1, 17)), ValueError);       // past max_position_embeddings
  std::vector<int32_t> bad = {1, 99};
  CHECK_THROWS(m.forward(ids(bad, 1, 2)), ValueError);             // id outside the vocabulary
  CHECK_THROWS(m.forward(ids(tok, 2, 4), ids(lab, 4, 2)), ValueError);  // labels of another shape
  std::vector<float> fl(8);
  CHECK_THROWS(m.forward(Tensor::wrap(fl.data(), {2, 4}, DType::float32, nullptr)), TypeError);  // not int32
}

int main() {
  test_matmul();
  test_rmsnorm();
  test_swiglu();
  test_rope();
  test_attention();
  test_crossentropy();
  test_model_gradient();
  return test_summary("test_ops");
}
