// test_cpu_twin.cpp — the float kernels against their CPU twins of the core (csrc/ops.h,
// csrc/adamw.h, linked into the emulator: ops_impl.cpp's generic variant, no OpenMP), on one
// awkward shape each: what tests/gpu compares on a GPU, so a difference in semantics
// (accumulate vs assign, pairing, ignored rows, decay order, scaling) shows here first.
#include "adamw_cpu.h"
#include "check.h"
#include "ops.h"
#include "rope.h"

using namespace chk;
namespace gpu = pyllama::gpu;
namespace cpu = pyllama;

namespace {

std::vector<float> rnd(size_t n, Rng& r, double sd = 1.0) { return randn<float>(n, r, sd); }
void same(const std::string& what, const std::vector<float>& g, const std::vector<float>& c, double tol = 2e-6) {
  report("cpu twin " + what, rel_err(g, to_d(c)), tol);
}

}  // namespace

SIM_TEST(cpu_twin) {
  Rng r(2024);
  const int N = 37, C = 70, I = 45, V = 91;
  {  // rmsnorm
    auto x = rnd((size_t)N * C, r), w = rnd(C, r), dy = rnd((size_t)N * C, r), dx0 = rnd((size_t)N * C, r),
         dw0 = rnd(C, r);
    std::vector<float> go((size_t)N * C), gr(N), co(go.size()), cr(N);
    auto gdx = dx0, cdx = dx0, gdw = dw0, cdw = dw0;
    gpu::rmsnorm_forward<float>(go.data(), gr.data(), x.data(), w.data(), N, C, 1e-5f, nullptr);
    std::vector<float> part(gpu::rmsnorm_backward_partial_floats(C));
    gpu::rmsnorm_backward<float>(gdx.data(), gdw.data(), part.data(), dy.data(), x.data(), w.data(), gr.data(), N, C,
                                 nullptr);
    cpu::rmsnorm_forward(co.data(), cr.data(), x.data(), w.data(), N, C, 1e-5f);
    cpu::rmsnorm_backward(cdx.data(), cdw.data(), dy.data(), x.data(), w.data(), cr.data(), N, C);
    same("rmsnorm out", go, co);
    same("rmsnorm rstd", gr, cr);
    same("rmsnorm dinp", gdx, cdx, 1e-5);
    same("rmsnorm dw", gdw, cdw, 1e-5);
  }
  {  // linear
    const int IN = 33, OUT = 19;
    auto x = rnd((size_t)N * IN, r), w = rnd((size_t)OUT * IN, r), dy = rnd((size_t)N * OUT, r),
         dw0 = rnd((size_t)OUT * IN, r);
    std::vector<float> gy((size_t)N * OUT), cy(gy.size()), gdx((size_t)N * IN, NAN), cdx(gdx.size());
    auto gdw = dw0, cdw = dw0;
    gpu::Gemm g;
    gpu::linear_forward<float>(g, gy.data(), x.data(), w.data(), N, IN, OUT, nullptr);
    gpu::linear_backward<float>(g, gdx.data(), gdw.data(), dy.data(), x.data(), w.data(), N, IN, OUT, nullptr);
    cpu::linear_forward(cy.data(), x.data(), w.data(), N, IN, OUT);
    cpu::linear_backward(cdx.data(), cdw.data(), dy.data(), x.data(), w.data(), N, IN, OUT);
    same("linear y", gy, cy, 1e-5);
    same("linear dx", gdx, cdx, 1e-5);
    same("linear dw", gdw, cdw, 1e-5);
  }
  {  // rope (tables from the core), q and k heads of qkv rows, forward then inverse
    const int NH = 4, NKV = 2, HS = 12, maxT = 50, ld = (NH + 2 * NKV) * HS;
    std::vector<float> ct((size_t)maxT * HS / 2), st(ct.size());
    cpu::rope_table(ct.data(), st.data(), maxT, HS, 10000.f);
    std::vector<int32_t> pos(N);
    for (auto& p : pos) p = r.integer(0, maxT - 1);
    auto x = rnd((size_t)N * ld, r);
    for (int inv = 0; inv < 2; inv++) {
      auto gx = x, cx = x;
      gpu::rope_apply<float>(gx.data(), ld, pos.data(), ct.data(), st.data(), N, NH + NKV, HS, inv, nullptr);
      cpu::rope_apply(cx.data(), ld, pos.data(), ct.data(), st.data(), N, NH + NKV, HS, inv);
      same(inv ? "rope inverse" : "rope", gx, cx);
    }
  }
  {  // attention: naive and flash on the GPU side, the core's flash and dense
    const int B = 2, T = 23, NH = 4, NKV = 2, HS = 12, QKVD = (NH + 2 * NKV) * HS;
    auto qkv = rnd((size_t)B * T * QKVD, r), dy = rnd((size_t)B * T * NH * HS, r);
    std::vector<float> scratch(cpu::attention_scratch_floats(T)), cout_((size_t)B * T * NH * HS),
        clse((size_t)B * NH * T), cdq((size_t)B * T * QKVD);
    cpu::attention_forward_flash(cout_.data(), clse.data(), scratch.data(), qkv.data(), B, T, NH, NKV, HS);
    cpu::attention_backward_flash(cdq.data(), scratch.data(), dy.data(), qkv.data(), clse.data(), B, T, NH, NKV, HS);
    std::vector<float> catt((size_t)B * NH * T * T), cout2(cout_.size());
    cpu::attention_forward(cout2.data(), catt.data(), qkv.data(), B, T, NH, NKV, HS);
    auto go = nans<float>(cout_.size()), glse = nans<float>(clse.size()), gdq = nans<float>(cdq.size()),
         gds = nans<float>(clse.size());
    gpu::flash_attention_forward<float>(go.data(), glse.data(), qkv.data(), B, T, NH, NKV, HS, nullptr);
    gpu::flash_attention_backward<float>(gdq.data(), gds.data(), dy.data(), go.data(), qkv.data(), glse.data(), B, T,
                                         NH, NKV, HS, nullptr);
    same("flash out", go, cout_, 1e-5);
    same("flash lse", glse, clse, 1e-5);
    same("flash dqkv", gdq, cdq, 1e-5);
    auto no = nans<float>(cout_.size()), natt = nans<float>(catt.size()), ndq = nans<float>(cdq.size()),
         ndatt = nans<float>(catt.size());
    gpu::attention_forward<float>(no.data(), natt.data(), qkv.data(), B, T, NH, NKV, HS, nullptr);
    gpu::attention_backward<float>(ndq.data(), ndatt.data(), dy.data(), qkv.data(), natt.data(), B, T, NH, NKV, HS,
                                   nullptr);
    same("naive out", no, cout2, 1e-5);
    same("naive dqkv", ndq, cdq, 1e-5);
  }
  {  // swiglu
    auto gu = rnd((size_t)N * 2 * I, r, 2.0), dh = rnd((size_t)N * I, r);
    std::vector<float> gh((size_t)N * I), ch(gh.size()), gd((size_t)N * 2 * I), cd(gd.size());
    gpu::swiglu_forward<float>(gh.data(), gu.data(), N, I, nullptr);
    gpu::swiglu_backward<float>(gd.data(), dh.data(), gu.data(), N, I, nullptr);
    cpu::swiglu_forward(ch.data(), gu.data(), N, I);
    cpu::swiglu_backward(cd.data(), dh.data(), gu.data(), N, I);
    same("swiglu h", gh, ch, 1e-5);
    same("swiglu dgu", gd, cd, 1e-5);
  }
  {  // embedding
    std::vector<int32_t> tok(N);
    for (auto& t : tok) t = r.integer(0, V - 1);
    tok[3] = tok[4];
    auto wte = rnd((size_t)V * C, r), dout = rnd((size_t)N * C, r), dw0 = rnd((size_t)V * C, r);
    std::vector<float> go((size_t)N * C), co(go.size());
    auto gdw = dw0, cdw = dw0;
    gpu::embedding_forward<float>(go.data(), tok.data(), wte.data(), N, C, nullptr);
    std::vector<int32_t> groups;
    const int U = gpu::group_tokens(tok.data(), N, &groups);
    gpu::embedding_backward<float>(gdw.data(), dout.data(), groups.data(), N, U, C, nullptr);
    cpu::embedding_forward(co.data(), tok.data(), wte.data(), N, C);
    cpu::embedding_backward(cdw.data(), dout.data(), tok.data(), N, C, V);
    same("embedding out", go, co, 0);
    same("embedding dwte", gdw, cdw);
  }
  {  // cross-entropy (the GPU's total is the sum of counted rows' losses)
    auto logits = rnd((size_t)N * V, r, 3.0);
    std::vector<int32_t> tg(N);
    for (int n = 0; n < N; n++) tg[n] = n % 5 == 1 ? -100 : r.integer(0, V - 1);
    std::vector<float> gl(N), cl(N), gd((size_t)N * V), cd(gd.size());
    std::vector<double> row(N), total(1);
    int count = 0;
    const double closs = cpu::crossentropy_forward(cl.data(), logits.data(), tg.data(), N, V, &count);
    gpu::crossentropy_forward<float>(gl.data(), row.data(), total.data(), logits.data(), tg.data(), N, V, nullptr);
    gpu::crossentropy_backward<float>(gd.data(), logits.data(), gl.data(), tg.data(), 0.5f, N, V, nullptr);
    cpu::crossentropy_backward(cd.data(), logits.data(), cl.data(), tg.data(), 0.5f, N, V);
    same("crossentropy lse", gl, cl, 1e-6);
    report("cpu twin crossentropy loss", std::fabs(total[0] - closs) / std::fabs(closs), 1e-6);
    same("crossentropy dlogits", gd, cd, 1e-5);
  }
  {  // residual
    auto a = rnd(1000, r), b = rnd(1000, r);
    std::vector<float> g(1000), c(1000);
    gpu::residual_forward<float>(g.data(), a.data(), b.data(), 1000, nullptr);
    cpu::residual_forward(c.data(), a.data(), b.data(), 1000);
    same("residual", g, c, 0);
  }
  {  // AdamW (segments merged into runs as model_cuda.cu does), global norm, clip
    const long long n = 777;
    auto p = rnd(n, r), m = rnd(n, r, 0.1), g = rnd(n, r);
    std::vector<float> v(n);
    for (auto& x : v) x = (float)std::fabs(r.normal(0.01));
    const cpu::AdamWSegment segs[] = {{0, 100, true}, {100, 0, false}, {100, 300, false}, {400, 377, true}};
    cpu::AdamWHyper h;
    h.lr = 3e-3f;
    const int step = 7;
    auto cp = p, cm = m, cv = v, gp = p, gm = m, gv = v;
    cpu::adamw_step(cp.data(), cm.data(), cv.data(), g.data(), n, segs, 4, h, step);
    const std::vector<int64_t> starts = {0, 100, 400};
    const std::vector<int32_t> dec = {1, 0, 1};
    const double bc1 = 1.0 - std::pow((double)h.beta1, (double)step), bc2 = 1.0 - std::pow((double)h.beta2, (double)step);
    gpu::AdamWScalars sc;
    sc.step_size = (float)((double)h.lr / bc1);
    sc.inv_bc2_sqrt = (float)(1.0 / std::sqrt(bc2));
    sc.one_minus_b1 = 1.f - h.beta1;
    sc.one_minus_b2 = 1.f - h.beta2;
    sc.beta2 = h.beta2;
    sc.eps = h.eps;
    sc.decay_factor = (float)(1.0 - (double)h.lr * h.weight_decay);
    gpu::adamw_update<float>(gp.data(), gm.data(), gv.data(), g.data(), nullptr, n, starts.data(), dec.data(), 3, sc,
                             nullptr);
    same("adamw params", gp, cp, 1e-6);
    same("adamw m", gm, cm, 1e-6);
    same("adamw v", gv, cv, 1e-6);
    std::vector<double> partials(gpu::kNormBlocks), norm(1);
    auto gg = g, cg = g;
    gpu::global_norm(norm.data(), partials.data(), gg.data(), n, nullptr);
    gpu::clip_by_norm(gg.data(), norm.data(), 1.0, n, nullptr);
    const double cn = cpu::clip_grad_norm(cg.data(), n, 1.0);
    report("cpu twin global_norm", std::fabs(norm[0] - cn) / cn, 1e-12);
    same("clip", gg, cg, 1e-7);
  }
}
