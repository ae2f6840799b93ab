// ops_check.cu — a test harness (not in the library): every CUDA launcher against its CPU twin (cpu/ops.h, cpu/matmul.h)
// on random float32 inputs with awkward sizes (head sizes below and above a warp,
// sequence lengths above a warp, rows that are not multiples of a block). Each check
// reports max |gpu - cpu| / max |cpu|; the model-level tests cover the compositions.
// Called by tests/cpp/test_cuda_ops.cpp and pytest (pyllama._core.cuda_check_ops).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels.cuh"
#include "matmul.h"
#include "model_cuda.h"
#include "ops_check.h"
#include "ops.h"
#include "rope.h"
#include "runtime.h"

namespace pyllama {

using gpu::bf16;

namespace {

template <typename T>
std::vector<T> zeros(size_t n) {
  return std::vector<T>(n, T(0.f));
}

struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};

template <typename T>
struct Dev {
  std::unique_ptr<T, CudaFree> p;
  size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    void* q = nullptr;
    CUDA_CHECK(cudaMalloc(&q, std::max<size_t>(1, n) * sizeof(T)));
    p.reset(static_cast<T*>(q));
    if (n) CUDA_CHECK(cudaMemcpy(q, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  T* get() const { return p.get(); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    CUDA_CHECK(cudaDeviceSynchronize());
    if (n) CUDA_CHECK(cudaMemcpy(h.data(), p.get(), n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

struct Rand {
  std::mt19937 g;
  std::vector<float> normal(size_t n, float std = 1.f) {
    std::normal_distribution<float> d(0.f, std);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
  }
  std::vector<int32_t> ints(size_t n, int lo, int hi) {  // [lo, hi)
    std::uniform_int_distribution<int> d(lo, hi - 1);
    std::vector<int32_t> v(n);
    for (auto& x : v) x = d(g);
    return v;
  }
};

// max |a - b| / max |b| over the elements where mask (if given) is true
double rel_err(const std::vector<float>& a, const std::vector<float>& b, const std::vector<char>* mask = nullptr) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < b.size(); i++) {
    if (mask && !(*mask)[i]) continue;
    if (!std::isfinite(a[i])) return INFINITY;
    err = std::max(err, std::fabs((double)a[i] - b[i]));
    scale = std::max(scale, std::fabs((double)b[i]));
  }
  return err / scale;
}

using Results = std::vector<std::pair<std::string, double>>;

void check_rmsnorm(Rand& r, Results& out) {
  const int N = 37, C = 100;
  auto x = r.normal((size_t)N * C), w = r.normal(C), dy = r.normal((size_t)N * C);
  auto dx0 = r.normal((size_t)N * C), dw0 = r.normal(C);
  std::vector<float> y(N * C), rstd(N), dx = dx0, dw = dw0;
  rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
  Dev<float> dx_(x), dw_(w), ddy(dy), dy_(zeros<float>(N * C)), drstd(zeros<float>(N)), ddx(dx0),
      ddw(dw0), part(zeros<float>(gpu::rmsnorm_backward_partial_floats(C)));
  gpu::rmsnorm_forward<float>(dy_.get(), drstd.get(), dx_.get(), dw_.get(), N, C, 1e-5f, 0);
  gpu::rmsnorm_backward<float>(ddx.get(), ddw.get(), part.get(), ddy.get(), dx_.get(), dw_.get(), drstd.get(), N, C,
                               0);
  out.push_back({"rmsnorm_forward.out", rel_err(dy_.host(), y)});
  out.push_back({"rmsnorm_forward.rstd", rel_err(drstd.host(), rstd)});
  out.push_back({"rmsnorm_backward.dinp(+=)", rel_err(ddx.host(), dx)});
  out.push_back({"rmsnorm_backward.dw(+=)", rel_err(ddw.host(), dw)});
}

void check_rope(Rand& r, Results& out) {
  const int N = 37, nheads = 3, HS = 12, ld = nheads * HS + 5, maxT = 50;
  std::vector<float> cs(maxT * HS / 2), sn(maxT * HS / 2);
  rope_table(cs.data(), sn.data(), maxT, HS, 10000.f);
  auto x = r.normal((size_t)N * ld);
  auto pos = r.ints(N, 0, maxT);
  for (int inv = 0; inv < 2; inv++) {
    std::vector<float> ref = x;
    rope_apply(ref.data(), ld, pos.data(), cs.data(), sn.data(), N, nheads, HS, inv != 0);
    Dev<float> dxx(x), dcs(cs), dsn(sn);
    Dev<int32_t> dpos(pos);
    gpu::rope_apply<float>(dxx.get(), ld, dpos.get(), dcs.get(), dsn.get(), N, nheads, HS, inv != 0, 0);
    out.push_back({inv ? "rope_apply.inverse" : "rope_apply", rel_err(dxx.host(), ref)});
  }
}

void check_attention(Rand& r, Results& out, int B, int T, int NH, int NKV, int HS) {
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T, ATT = (size_t)B * NH * T * T;
  auto qkv = r.normal(N * QKVD), dy = r.normal(N * C);
  std::vector<float> y(N * C), att(ATT, 0.f), dqkv(N * QKVD), scratch((size_t)attention_scratch_floats(T));
  attention_forward(y.data(), att.data(), qkv.data(), B, T, NH, NKV, HS);
  attention_backward(dqkv.data(), scratch.data(), dy.data(), qkv.data(), att.data(), B, T, NH, NKV, HS);
  Dev<float> dq(qkv), ddy(dy), dy_(zeros<float>(N * C)), datt(zeros<float>(ATT)),
      ddatt(zeros<float>(ATT)), ddq(zeros<float>(N * QKVD));
  gpu::attention_forward<float>(dy_.get(), datt.get(), dq.get(), B, T, NH, NKV, HS, 0);
  gpu::attention_backward<float>(ddq.get(), ddatt.get(), ddy.get(), dq.get(), datt.get(), B, T, NH, NKV, HS, 0);
  std::vector<char> lower(ATT);
  for (size_t i = 0; i < ATT; i++) lower[i] = (i % T) <= ((i / T) % T);  // s <= t
  const std::string tag = "(B" + std::to_string(B) + ",T" + std::to_string(T) + ",NH" + std::to_string(NH) + ",NKV" +
                          std::to_string(NKV) + ",HS" + std::to_string(HS) + ")";
  out.push_back({"attention_forward.out" + tag, rel_err(dy_.host(), y)});
  out.push_back({"attention_forward.att" + tag, rel_err(datt.host(), att, &lower)});
  out.push_back({"attention_backward.dqkv" + tag, rel_err(ddq.host(), dqkv)});
}

std::string shape_tag(int B, int T, int NH, int NKV, int HS) {
  return "(B" + std::to_string(B) + ",T" + std::to_string(T) + ",NH" + std::to_string(NH) + ",NKV" +
         std::to_string(NKV) + ",HS" + std::to_string(HS) + ")";
}

std::vector<float> bf16_to_float_vec(const std::vector<bf16>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); i++) y[i] = __bfloat162float(x[i]);
  return y;
}
std::vector<bf16> float_to_bf16_vec(const std::vector<float>& x) {  // round to nearest even
  std::vector<bf16> y(x.size());
  for (size_t i = 0; i < x.size(); i++) y[i] = __float2bfloat16(x[i]);
  return y;
}
// x rounded to bf16 in place (the values a bf16 kernel sees, for a float reference)
void round_to_bf16(std::vector<float>& x) { x = bf16_to_float_vec(float_to_bf16_vec(x)); }

// The flash kernels (what the model trains with) against the CPU core's flash ops
// (same lse layout) and, when `naive` is set, against the naive GPU kernels; twice in
// a row to check the backward is deterministic (bitwise equal).
void check_flash(Rand& r, Results& out, int B, int T, int NH, int NKV, int HS, bool naive) {
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T, NL = (size_t)B * NH * T;
  auto qkv = r.normal(N * QKVD), dy = r.normal(N * C);
  std::vector<float> y(N * C), lse(NL), dqkv(N * QKVD), scratch((size_t)attention_scratch_floats(T));
  attention_forward_flash(y.data(), lse.data(), scratch.data(), qkv.data(), B, T, NH, NKV, HS);
  attention_backward_flash(dqkv.data(), scratch.data(), dy.data(), qkv.data(), lse.data(), B, T, NH, NKV, HS);
  Dev<float> dq(qkv), ddy(dy), dout(zeros<float>(N * C)), dlse(zeros<float>(NL)), dsum(zeros<float>(NL)),
      ddq(zeros<float>(N * QKVD));
  gpu::flash_attention_forward<float>(dout.get(), dlse.get(), dq.get(), B, T, NH, NKV, HS, 0);
  gpu::flash_attention_backward<float>(ddq.get(), dsum.get(), ddy.get(), dout.get(), dq.get(), dlse.get(), B, T, NH,
                                       NKV, HS, 0);
  const std::string tag = shape_tag(B, T, NH, NKV, HS);
  const auto gout = dout.host(), gdq = ddq.host();
  out.push_back({"flash_attention_forward.out" + tag, rel_err(gout, y)});
  out.push_back({"flash_attention_forward.lse" + tag, rel_err(dlse.host(), lse)});
  out.push_back({"flash_attention_backward.dqkv" + tag, rel_err(gdq, dqkv)});
  {  // again, into a dirty buffer: assigned, and bitwise the same
    Dev<float> ddq2(r.normal(N * QKVD));
    gpu::flash_attention_backward<float>(ddq2.get(), dsum.get(), ddy.get(), dout.get(), dq.get(), dlse.get(), B, T,
                                         NH, NKV, HS, 0);
    const auto g2 = ddq2.host();
    bool same = true;
    for (size_t i = 0; i < g2.size(); i++) same = same && std::memcmp(&g2[i], &gdq[i], sizeof(float)) == 0;
    out.push_back({"flash_attention_backward.bitwise_repeatable" + tag, same ? 0.0 : 1.0});
  }
  if (naive) {  // the naive GPU kernels on the same inputs
    const size_t ATT = (size_t)B * NH * T * T;
    Dev<float> nout(zeros<float>(N * C)), natt(zeros<float>(ATT)), ndatt(zeros<float>(ATT)),
        ndq(zeros<float>(N * QKVD));
    gpu::attention_forward<float>(nout.get(), natt.get(), dq.get(), B, T, NH, NKV, HS, 0);
    gpu::attention_backward<float>(ndq.get(), ndatt.get(), ddy.get(), dq.get(), natt.get(), B, T, NH, NKV, HS, 0);
    out.push_back({"flash_vs_naive.out" + tag, rel_err(gout, nout.host())});
    out.push_back({"flash_vs_naive.dqkv" + tag, rel_err(gdq, ndq.host())});
  }
}

// bf16 flash kernels against the CPU on the same (bf16-rounded) inputs: outputs are
// rounded to bf16 and the backward's rowsum(dout * out) reads the rounded out, so
// the bound is a few bf16 ulps of the largest value (reported as 0 within it).
// rope: the backward also applies the inverse RoPE to dq and dk (against the CPU's flash
// backward then rope_apply), positions at random.
void check_flash_bf16(Rand& r, Results& out, int B, int T, int NH, int NKV, int HS, bool tensor_cores,
                      bool rope = false) {
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T, NL = (size_t)B * NH * T;
  auto qkv = r.normal(N * QKVD), dy = r.normal(N * C);
  const std::vector<bf16> qkv16 = float_to_bf16_vec(qkv), dy16 = float_to_bf16_vec(dy);
  qkv = bf16_to_float_vec(qkv16);
  dy = bf16_to_float_vec(dy16);
  std::vector<float> y(N * C), lse(NL), dqkv(N * QKVD), scratch((size_t)attention_scratch_floats(T));
  attention_forward_flash(y.data(), lse.data(), scratch.data(), qkv.data(), B, T, NH, NKV, HS);
  attention_backward_flash(dqkv.data(), scratch.data(), dy.data(), qkv.data(), lse.data(), B, T, NH, NKV, HS);
  const int maxT = T + 7;
  std::vector<float> cs((size_t)maxT * (HS / 2)), sn((size_t)maxT * (HS / 2));
  rope_table(cs.data(), sn.data(), maxT, HS, 10000.f);
  const auto pos = rope ? r.ints(N, 0, maxT) : std::vector<int32_t>(N, 0);
  if (rope) rope_apply(dqkv.data(), QKVD, pos.data(), cs.data(), sn.data(), (int)N, NH + NKV, HS, true);
  Dev<bf16> dq(qkv16), ddy(dy16), dout(zeros<bf16>(N * C)), ddq(zeros<bf16>(N * QKVD));
  Dev<float> dlse(zeros<float>(NL)), dsum(zeros<float>(NL));
  Dev<float> dcs(cs), dsn(sn);
  Dev<int32_t> dpos(pos);
  gpu::flash_attention_forward<bf16>(dout.get(), dlse.get(), dq.get(), B, T, NH, NKV, HS, 0, tensor_cores);
  gpu::flash_attention_backward<bf16>(ddq.get(), dsum.get(), ddy.get(), dout.get(), dq.get(), dlse.get(), B, T, NH,
                                      NKV, HS, 0, tensor_cores,
                                      rope ? gpu::RopeTables{dpos.get(), dcs.get(), dsn.get()} : gpu::RopeTables());
  const std::string tag =
      std::string(tensor_cores ? ".tc" : ".simt") + (rope ? ".rope" : "") + shape_tag(B, T, NH, NKV, HS);
  auto within = [](double e, double bound) { return e <= bound ? 0.0 : e; };
  out.push_back({"flash_attention_forward.bf16.out(<=2^-7)" + tag,
                 within(rel_err(bf16_to_float_vec(dout.host()), y), 1.0 / 128)});
  out.push_back({"flash_attention_forward.bf16.lse" + tag, rel_err(dlse.host(), lse)});
  out.push_back({"flash_attention_backward.bf16.dqkv(<=2^-5)" + tag,
                 within(rel_err(bf16_to_float_vec(ddq.host()), dqkv), 1.0 / 32)});
}

// The KV-cache pieces: store the k/v of a prefill into shuffled slots, attend from the
// cache, compare with the training attention; then gather slots.
void check_kv(Rand& r, Results& out) {
  const int B = 3, T = 41, NH = 4, NKV = 2, HS = 64, S = 5, L = 2, maxlen = 48;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD;
  const size_t N = (size_t)B * T;
  auto qkv = r.normal(N * QKVD);
  std::vector<float> y(N * C), att((size_t)B * NH * T * T);
  attention_forward(y.data(), att.data(), qkv.data(), B, T, NH, NKV, HS);
  std::vector<int32_t> slots = {4, 0, 2}, pos(N);
  for (size_t n = 0; n < N; n++) pos[n] = (int32_t)(n % T);
  const size_t slot_elems = (size_t)NKV * maxlen * HS, layer = (size_t)S * slot_elems;
  Dev<float> dq(qkv), dkc(zeros<float>(L * layer)), dvc(zeros<float>(L * layer)), dout(zeros<float>(N * C)),
      dscores(zeros<float>(N * NH * maxlen));
  Dev<int32_t> dslots(slots), dpos(pos);
  // layer 1 of the caches, as the model addresses it
  gpu::kv_store<float>(dkc.get() + layer, dvc.get() + layer, dq.get(), dslots.get(), dpos.get(), B, T, NH, NKV, HS,
                       maxlen, 0);
  gpu::attention_kv_forward<float>(dout.get(), dscores.get(), dq.get(), dkc.get() + layer, dvc.get() + layer,
                                   dslots.get(), dpos.get(), B, T, NH, NKV, HS, maxlen, 0);
  out.push_back({"attention_kv_forward(prefill)", rel_err(dout.host(), y)});
  // the cache holds k and v at (slot, head, position)
  auto kc = dkc.host();
  std::vector<float> got, ref;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int kh = 0; kh < NKV; kh++)
        for (int i = 0; i < HS; i++) {
          got.push_back(kc[layer + slots[b] * slot_elems + ((size_t)kh * maxlen + t) * HS + i]);
          ref.push_back(qkv[((size_t)b * T + t) * QKVD + C + kh * HS + i]);
        }
  out.push_back({"kv_store.k", rel_err(got, ref)});
  // gather: slot i takes slot src[i], in every layer
  std::vector<int32_t> src = {2, 2, 4, 0, 1};
  Dev<float> dtmp(zeros<float>(L * layer));
  Dev<int32_t> dsrc(src);
  gpu::kv_gather<float>(dtmp.get(), dkc.get(), dsrc.get(), L, S, (long long)slot_elems, 0);
  auto gathered = dtmp.host();
  std::vector<float> expect(L * layer);
  for (int l = 0; l < L; l++)
    for (int i = 0; i < S; i++)
      std::copy(kc.begin() + (l * S + src[i]) * slot_elems, kc.begin() + (l * S + src[i] + 1) * slot_elems,
                expect.begin() + (l * S + i) * slot_elems);
  out.push_back({"kv_gather", rel_err(gathered, expect)});
  // one decode step for sequence 1 (slot 0) at position T: q from a new row, keys 0..T
  auto row = r.normal(QKVD);
  std::vector<float> q1(row);
  std::vector<int32_t> s1 = {0}, p1 = {T};
  Dev<float> drow(q1), dout1(zeros<float>(C)), dsc1(zeros<float>(NH * maxlen));
  Dev<int32_t> ds1(s1), dp1(p1);
  gpu::kv_store<float>(dkc.get() + layer, dvc.get() + layer, drow.get(), ds1.get(), dp1.get(), 1, 1, NH, NKV, HS,
                       maxlen, 0);
  gpu::attention_kv_forward<float>(dout1.get(), dsc1.get(), drow.get(), dkc.get() + layer, dvc.get() + layer,
                                   ds1.get(), dp1.get(), 1, 1, NH, NKV, HS, maxlen, 0);
  // reference: sequence 1's T rows plus the new row, through the training attention
  std::vector<float> seq((size_t)(T + 1) * QKVD);
  std::copy(qkv.begin() + (size_t)T * QKVD, qkv.begin() + (size_t)2 * T * QKVD, seq.begin());
  std::copy(row.begin(), row.end(), seq.begin() + (size_t)T * QKVD);
  std::vector<float> y1((size_t)(T + 1) * C), att1((size_t)NH * (T + 1) * (T + 1));
  attention_forward(y1.data(), att1.data(), seq.data(), 1, T + 1, NH, NKV, HS);
  std::vector<float> last(y1.begin() + (size_t)T * C, y1.end());
  out.push_back({"attention_kv_forward(decode step)", rel_err(dout1.host(), last)});
}

void check_swiglu(Rand& r, Results& out) {
  const int N = 37, I = 50;
  auto gu = r.normal((size_t)N * 2 * I, 2.f), dh = r.normal((size_t)N * I);
  std::vector<float> h(N * I), dgu(N * 2 * I);
  swiglu_forward(h.data(), gu.data(), N, I);
  swiglu_backward(dgu.data(), dh.data(), gu.data(), N, I);
  Dev<float> dgu_in(gu), ddh(dh), dh_(zeros<float>(N * I)), ddgu(zeros<float>(N * 2 * I));
  gpu::swiglu_forward<float>(dh_.get(), dgu_in.get(), N, I, 0);
  gpu::swiglu_backward<float>(ddgu.get(), ddh.get(), dgu_in.get(), N, I, 0);
  out.push_back({"swiglu_forward", rel_err(dh_.host(), h)});
  out.push_back({"swiglu_backward", rel_err(ddgu.host(), dgu)});
}

void check_embedding(Rand& r, Results& out) {
  const int N = 37, C = 20, V = 11;  // repeated tokens: the scatter must add
  auto wte = r.normal((size_t)V * C), dy = r.normal((size_t)N * C), dw0 = r.normal((size_t)V * C);
  auto tok = r.ints(N, 0, V);
  std::vector<float> y(N * C), dw = dw0;
  embedding_forward(y.data(), tok.data(), wte.data(), N, C);
  embedding_backward(dw.data(), dy.data(), tok.data(), N, C, V);
  Dev<float> dwte(wte), ddy(dy), dy_(zeros<float>(N * C)), ddw(dw0);
  Dev<int32_t> dtok(tok);
  std::vector<int32_t> groups;
  const int U = gpu::group_tokens(tok.data(), N, &groups);
  Dev<int32_t> dgroups(groups);
  gpu::embedding_forward<float>(dy_.get(), dtok.get(), dwte.get(), N, C, 0);
  gpu::embedding_backward<float>(ddw.get(), ddy.get(), dgroups.get(), N, U, C, 0);
  out.push_back({"embedding_forward", rel_err(dy_.host(), y)});
  out.push_back({"embedding_backward(+=)", rel_err(ddw.host(), dw)});
}

void check_crossentropy(Rand& r, Results& out) {
  const int N = 37, V = 1000;
  auto logits = r.normal((size_t)N * V, 3.f);
  auto tgt = r.ints(N, 0, V);
  tgt[3] = tgt[20] = -100;
  std::vector<float> lse(N), dl(N * V);
  int count = 0;
  const double total = crossentropy_forward(lse.data(), logits.data(), tgt.data(), N, V, &count);
  crossentropy_backward(dl.data(), logits.data(), lse.data(), tgt.data(), 1.f / count, N, V);
  Dev<float> dlog(logits), dlse(zeros<float>(N));
  Dev<double> drow(zeros<double>(N)), dtot(zeros<double>(1));
  Dev<int32_t> dtgt(tgt);
  gpu::crossentropy_forward<float>(dlse.get(), drow.get(), dtot.get(), dlog.get(), dtgt.get(), N, V, 0);
  out.push_back({"crossentropy_forward.lse", rel_err(dlse.host(), lse)});
  out.push_back({"crossentropy_forward.total", std::fabs(dtot.host()[0] - total) / std::max(1.0, std::fabs(total))});
  gpu::crossentropy_backward<float>(dlog.get(), dlog.get(), dlse.get(), dtgt.get(), 1.f / count, N, V, 0);  // in place
  out.push_back({"crossentropy_backward(in place)", rel_err(dlog.host(), dl)});
}

void check_matmul(Rand& r, Results& out, gpu::Gemm& gemm) {
  const std::string which = gemm.backend();
  const int M = 37, N = 45, K = 70;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int beta = 0; beta < 2; beta++) {
        const int lda = ta ? M + 3 : K + 1, ldb = tb ? K + 2 : N + 4, ldc = N + 5;
        auto A = r.normal((size_t)(ta ? K : M) * lda), Bm = r.normal((size_t)(tb ? N : K) * ldb);
        auto C0 = r.normal((size_t)M * ldc);
        std::vector<float> Cref = C0;
        sgemm_reference(ta, tb, M, N, K, A.data(), lda, Bm.data(), ldb, (float)beta, Cref.data(), ldc);
        Dev<float> dA(A), dB(Bm), dC(C0);
        gemm.run<float, float>(ta, tb, M, N, K, dA.get(), lda, dB.get(), ldb, (float)beta, dC.get(), ldc, 0);
        std::vector<char> mask((size_t)M * ldc);
        for (size_t i = 0; i < mask.size(); i++) mask[i] = (int)(i % ldc) < N;
        auto got = dC.host();
        // the padding columns must be untouched
        double pad = 0;
        for (size_t i = 0; i < mask.size(); i++)
          if (!mask[i]) pad = std::max(pad, (double)std::fabs(got[i] - C0[i]));
        out.push_back({"matmul." + which + (ta ? ".tA" : ".nA") + (tb ? "tB" : "nB") + (beta ? ".beta1" : ".beta0"),
                       std::max(rel_err(got, Cref, &mask), pad)});
      }
  // D = x W^T + R (linear_forward_add, the residual adds), R apart from D or D itself, a
  // padded row stride; float exact, bf16 within its rounding (inputs rounded first)
  for (int bf = 0; bf < 2; bf++)
    for (int inplace = 0; inplace < 2; inplace++) {
      const int rows = 29, in = 72, outf = 40, ldc = outf + 8;
      auto x = r.normal((size_t)rows * in), w = r.normal((size_t)outf * in), res = r.normal((size_t)rows * ldc);
      if (bf)
        for (auto* v : {&x, &w, &res}) round_to_bf16(*v);
      std::vector<float> ref = res;
      sgemm_reference(false, true, rows, outf, in, x.data(), in, w.data(), in, 1.f, ref.data(), ldc);
      std::vector<float> got;
      std::vector<float> d0((size_t)rows * ldc, NAN);  // D's prior contents must not matter
      if (bf) {
        Dev<bf16> dx(float_to_bf16_vec(x)), dw(float_to_bf16_vec(w)), dr(float_to_bf16_vec(res)),
            dd(float_to_bf16_vec(d0));
        bf16* D = inplace ? dr.get() : dd.get();
        gemm.run_add<bf16, bf16>(false, true, rows, outf, in, dx.get(), in, dw.get(), in, dr.get(), D, ldc, 0);
        got = bf16_to_float_vec((inplace ? dr : dd).host());
        if (!inplace && bf16_to_float_vec(dr.host()) != res) got.assign(got.size(), NAN);  // R unchanged
      } else {
        Dev<float> dx(x), dw(w), dr(res), dd(d0);
        float* D = inplace ? dr.get() : dd.get();
        gemm.run_add<float, float>(false, true, rows, outf, in, dx.get(), in, dw.get(), in, dr.get(), D, ldc, 0);
        got = (inplace ? dr : dd).host();
        if (!inplace && dr.host() != res) got.assign(got.size(), NAN);
      }
      std::vector<char> mask((size_t)rows * ldc);
      for (size_t i = 0; i < mask.size(); i++) mask[i] = (int)(i % ldc) < outf;
      double e = rel_err(got, ref, &mask);
      if (bf) e = e <= 1.0 / 256 ? 0.0 : e;
      out.push_back({"matmul." + which + ".add" + (bf ? ".bf16(<=2^-8)" : ".float") + (inplace ? ".in_place" : ""), e});
    }
  // bf16 inputs, float output accumulated (the weight gradients: dW += dy^T x)
  {
    const int M = 33, N = 41, K = 96;
    auto A = r.normal((size_t)K * M), Bm = r.normal((size_t)K * N), C0 = r.normal((size_t)M * N);
    std::vector<float> ref = C0;
    round_to_bf16(A);
    round_to_bf16(Bm);
    sgemm_reference(true, false, M, N, K, A.data(), M, Bm.data(), N, 1.f, ref.data(), N);
    Dev<bf16> dA(float_to_bf16_vec(A)), dB(float_to_bf16_vec(Bm));
    Dev<float> dC(C0);
    gemm.run<bf16, float>(true, false, M, N, K, dA.get(), M, dB.get(), N, 1.f, dC.get(), N, 0);
    out.push_back({"matmul." + which + ".bf16_in_float_out.beta1", rel_err(dC.host(), ref)});
  }
}

void check_adamw_and_norm(Rand& r, Results& out) {
  const long long n = 5000;
  auto p = r.normal(n), g = r.normal(n), m = r.normal(n, 0.1f), v = r.normal(n, 0.1f);
  for (auto& x : v) x = std::fabs(x);
  // runs: [0, 1200) decay, [1200, 1300) no decay, [1300, n) decay
  std::vector<int64_t> starts = {0, 1200, 1300};
  std::vector<int32_t> decay = {1, 0, 1};
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const int step = 3;
  const gpu::AdamWScalars s = gpu::AdamWScalars::make(lr, b1, b2, eps, wd, step);
  std::vector<float> pr = p, mr = m, vr = v;
  for (long long i = 0; i < n; i++) {  // torch.optim.AdamW, written out
    const bool d = i < 1200 || i >= 1300;
    const float pi = pr[i] * (d ? s.decay_factor : 1.f);
    mr[i] = mr[i] + s.one_minus_b1 * (g[i] - mr[i]);
    vr[i] = vr[i] * b2 + s.one_minus_b2 * g[i] * g[i];
    pr[i] = pi - s.step_size * (mr[i] / (std::sqrt(vr[i]) * s.inv_bc2_sqrt + eps));
  }
  Dev<float> dp(p), dg(g), dm(m), dv(v);
  Dev<int64_t> dst(starts);
  Dev<int32_t> ddec(decay);
  Dev<bf16> dwc(zeros<bf16>(n));
  gpu::adamw_update<bf16>(dp.get(), dm.get(), dv.get(), dg.get(), dwc.get(), n, dst.get(), ddec.get(), 3, s, 0);
  out.push_back({"adamw.params", rel_err(dp.host(), pr)});
  out.push_back({"adamw.exp_avg", rel_err(dm.host(), mr)});
  out.push_back({"adamw.exp_avg_sq", rel_err(dv.host(), vr)});
  {
    auto wc = dwc.host();
    std::vector<float> wcf(n);
    for (long long i = 0; i < n; i++) wcf[i] = __bfloat162float(wc[i]);
    const double e = rel_err(wcf, pr);
    out.push_back({"adamw.bf16_copy(<=2^-8)", e <= 1.0 / 256 ? 0.0 : e});
  }
  double ss = 0;
  for (float x : g) ss += (double)x * x;
  const double norm = std::sqrt(ss);
  Dev<double> dn(zeros<double>(1)), dpart(zeros<double>(gpu::kNormBlocks));
  gpu::global_norm(dn.get(), dpart.get(), dg.get(), n, 0);
  out.push_back({"global_norm", std::fabs(dn.host()[0] - norm) / norm});
  gpu::clip_by_norm(dg.get(), dn.get(), norm / 2, n, 0);
  std::vector<float> gc = g;
  const float c = (float)((norm / 2) / (norm + 1e-6));
  for (auto& x : gc) x *= c;
  out.push_back({"clip_by_norm", rel_err(dg.host(), gc)});
}

void check_elementwise(Rand& r, Results& out) {
  const long long n = 1000;
  auto a = r.normal(n), b = r.normal(n);
  std::vector<float> s(n);
  for (long long i = 0; i < n; i++) s[i] = a[i] + b[i];
  Dev<float> da(a), db(b);
  gpu::residual_forward<float>(da.get(), da.get(), db.get(), n, 0);  // aliasing out == a
  out.push_back({"residual_forward", rel_err(da.host(), s)});
  // bf16 round trip: within bf16 rounding
  Dev<bf16> dh(zeros<bf16>(n));
  Dev<float> back(zeros<float>(n));
  gpu::convert<bf16, float>(dh.get(), db.get(), n, 0);
  gpu::convert<float, bf16>(back.get(), dh.get(), n, 0);
  const double e = rel_err(back.host(), b);
  out.push_back({"convert.bf16_roundtrip(<=2^-8)", e <= 1.0 / 256 ? 0.0 : e});
}

}  // namespace

std::vector<std::pair<std::string, double>> cuda_check_ops(unsigned seed) {
  PYLLAMA_CHECK(cuda_runtime_device_count() > 0, CudaError, "cuda_check_ops: no CUDA device is available");
  Rand r{std::mt19937(seed)};
  Results out;
  check_rmsnorm(r, out);
  check_rope(r, out);
  check_attention(r, out, 2, 37, 4, 2, 12);
  check_attention(r, out, 1, 70, 2, 1, 64);
  check_attention(r, out, 2, 9, 2, 2, 128);
  check_kv(r, out);
  // flash: T not a multiple of the blocks (32/64 query rows, 16/32/64 keys), T = 1,
  // GQA, MQA, MHA, head sizes 12/32/64/80/128/256 (all three kernel variants)
  check_flash(r, out, 2, 37, 4, 2, 12, true);
  check_flash(r, out, 1, 70, 2, 1, 64, true);
  check_flash(r, out, 2, 9, 2, 2, 128, true);
  check_flash(r, out, 3, 1, 4, 1, 64, true);
  check_flash(r, out, 2, 130, 6, 2, 32, true);
  check_flash(r, out, 1, 100, 3, 3, 80, true);
  check_flash(r, out, 1, 77, 4, 2, 256, true);
  check_flash(r, out, 1, 300, 4, 2, 64, false);
  // which bf16 path the ".tc" entries below took (the value is not an error)
  out.push_back({std::string("flash_attention.bf16_tensor_cores_") +
                     (gpu::flash_attention_uses_tensor_cores(64) ? "on" : "off"),
                 0.0});
  for (int tc = 0; tc < 2; tc++) {  // tensor cores (HS <= 128, sm_80+) and SIMT
    check_flash_bf16(r, out, 2, 70, 4, 2, 64, tc != 0);
    check_flash_bf16(r, out, 1, 100, 2, 2, 128, tc != 0);
    check_flash_bf16(r, out, 2, 130, 3, 1, 12, tc != 0);
    check_flash_bf16(r, out, 1, 1, 2, 2, 80, tc != 0);
    check_flash_bf16(r, out, 1, 200, 2, 1, 256, tc != 0);  // above 128: SIMT either way
    // the inverse RoPE in the backward: in the stores (HS 64, 128) or by rope_apply after
    // (HS 12, SIMT)
    check_flash_bf16(r, out, 2, 70, 4, 2, 64, tc != 0, true);
    check_flash_bf16(r, out, 1, 100, 2, 2, 128, tc != 0, true);
    check_flash_bf16(r, out, 2, 130, 3, 1, 12, tc != 0, true);
  }
  check_swiglu(r, out);
  check_embedding(r, out);
  check_crossentropy(r, out);
  {
    for (const char* backend : {"tiled", "cublas", "cublaslt"}) {  // every back end this build has
#ifndef PYLLAMA_HAVE_CUBLAS
      if (std::string(backend) != "tiled") continue;
#endif
      gpu::Gemm each(backend);
      Dev<char> ws(std::vector<char>(size_t(4) << 20));  // as the model gives its Gemm (cuBLAS may use it)
      each.set_workspace(ws.get(), ws.n);
      check_matmul(r, out, each);
    }
  }
  check_adamw_and_norm(r, out);
  check_elementwise(r, out);
  CUDA_CHECK(cudaDeviceSynchronize());
  return out;
}

}  // namespace pyllama
