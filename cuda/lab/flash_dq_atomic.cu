// flash_dq_atomic.cu — kernel lab (README.md): the bf16 tensor-core flash backward with dQ
// added by atomics in the dK/dV kernel, against the library's backward (a dQ kernel).
//
//   flash_dq_atomic [--check] [--reps N]
//
// The library's backward (flash_attention.cu) recomputes S = Q K^T and dP = dO V^T twice, in
// the dK/dV kernel and again in the dQ kernel: seven tile products against FlashAttention-2's
// five, the price of a deterministic dQ. The variant (head size <= 64, tensor cores) drops
// the dQ kernel: each dK/dV step also writes its dS^T tile (64 keys x 64 queries, bf16) to
// shared memory and, after a __syncthreads, each warp multiplies 16 query rows of dS (A
// fragments by ldmatrix.x4.trans of dS^T: mma_at) by the block's K and adds the 16 x HS result
// into a float (B, T, NH, HS) accumulator with atomicAdd; a zeroing kernel before and a bf16
// store after (with the inverse RoPE when asked) frame it. ptxas (CUDA 13, sm_90): 210
// registers, 64 KB of shared memory, 2 blocks an SM instead of 3. dQ's last bits vary from
// run to run (the order of the adds), so it could never be the default; dK and dV are the
// library's own arithmetic (checked bit-equal here).
// History: an option of the library (BackendOptions.flash_dq_atomic, PYLLAMA_CUDA_FLASH_DQ=atomic)
// from commit 584a7b0 until it moved here, never timed on a GPU (docs/CUDA.md, "The kernel
// lab"). The kernel below is the library's dK/dV kernel as it was then, kDQ = true being the
// variant; the building blocks (fragments, tiles, RoPE in registers) come from flash_tc.cuh.
// variant / library < 1 in the timing lines means the variant is faster.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "flash_tc.cuh"
#include "lab.cuh"

namespace pyllama {
namespace gpu {
namespace {

// acc[dt] += A (16 x 16 KT) Bk with A given transposed in shared memory: At row-major with
// rows = the k index (stride lda) and this warp's 16 m columns first; A fragments by
// ldmatrix.x4.trans (lane l gives row k = l % 8 + 8 (l / 16) at column m = 8 ((l / 8) % 2):
// matrices = a[0..3] as mma_rows loads them untransposed); Bk as in mma_frag. Whole warp.
template <int KT, int DT>
__device__ __forceinline__ void mma_at(float (&acc)[DT][4], const bf16* At, int lda, const bf16* Bk, int ldb,
                                       int HSP) {
  static_assert(DT % 2 == 0, "head-dim tiles go in pairs");
  const int lane = threadIdx.x & 31;
  const bf16* pa = At + ((lane & 7) + 8 * (lane >> 4)) * lda + 8 * ((lane >> 3) & 1);
  const bf16* pb = Bk + (lane & 15) * ldb + 8 * (lane >> 4);
#pragma unroll
  for (int kk = 0; kk < KT; kk++) {
    uint32_t a[4];
    ldsm_x4_t(a, pa + kk * 16 * lda);
#pragma unroll
    for (int dp = 0; dp < DT / 2; dp++) {
      if (dp * 16 >= HSP) break;  // the same for every lane
      uint32_t b[4];
      ldsm_x4_t(b, pb + kk * 16 * ldb + dp * 16);
      mma16816(acc[2 * dp], a, b[0], b[1]);
      mma16816(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// dS^T tile of the atomic-dQ variant (kTcKeys x QT bf16): row stride
template <int DMAX>
__host__ __device__ constexpr int tc_ds_ld() {
  return TcKV<DMAX>::QT + 8;
}

// K, V, 2 x (Q, dO, lse, dsum) (the library's kernel: tc_dkv_smem_bytes), dS^T
template <int DMAX, bool kDQ>
size_t dkv_dq_smem_bytes(int HS) {
  return tc_dkv_smem_bytes<DMAX>(HS) + (kDQ ? sizeof(bf16) * (size_t)kTcKeys * tc_ds_ld<DMAX>() : 0);
}

// grid (B * NKV, ceil(T / kTcKeys)): dK, dV of 64 keys (16 per warp) of kv head kvh, summed
// over the query heads of its group and the query rows >= the block's first key.
// kDQ (HS <= 64: QT = 64, a warp per 16 query rows): each step also adds dS K, its 64 keys'
// share of dQ, into dq_acc (B, T, NH, HS) float with atomicAdd (FlashAttention-2's way: no
// dQ kernel recomputing S and dP, but the order of the adds, and so dQ's last bits, varies).
template <int DMAX, bool kDQ>
__global__ void __launch_bounds__(kThreads)
    flash_bwd_dkv_tc_kernel(bf16* dqkv, float* dq_acc, const bf16* dout, const bf16* qkv, const float* lse,
                            const float* dsum, int T_, int NH, int NKV, int HS, float scale, RopeTables rope) {
  constexpr int QT = TcKV<DMAX>::QT, NT = QT / 8, DT = DMAX / 8;
  static_assert(!kDQ || QT == 4 * 16, "atomic dQ: a warp per 16 query rows of a step");
  extern __shared__ float4 smem4[];
  const int HSP = hs_pad16(HS), ld = HSP + 8;
  const int qtile = QT * ld;
  float* Ls = reinterpret_cast<float*>(smem4);  // 2 x QT: lse (natural log) of buffer i at Ls + i QT
  float* Ds = Ls + 2 * QT;                      // 2 x QT: dsum
  bf16* Ks = reinterpret_cast<bf16*>(Ds + 2 * QT);  // kTcKeys x ld
  bf16* Vs = Ks + kTcKeys * ld;                     // kTcKeys x ld
  bf16* QdOs = Vs + kTcKeys * ld;  // buffer i: Q at QdOs + 2 i qtile, dO at QdOs + (2 i + 1) qtile (QT x ld)
  bf16* dSs = QdOs + 4 * qtile;    // kDQ: dS^T, kTcKeys x QT (row stride tc_ds_ld)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
  const int kvh = blockIdx.x % NKV, b = blockIdx.x / NKV;
  const int k0 = blockIdx.y * kTcKeys;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const bf16* seq = qkv + (long long)b * T_ * QKVD;
  const bf16* dseq = dout + (long long)b * T_ * C;
  // steps: (head h of the group, QT query rows from q0 >= k0: rows before k0 see none of
  // these keys), step st = (h - kvh group) nq + (q0 - k0) / QT
  const int nq = (T_ - k0 + QT - 1) / QT, nsteps = group * nq;
  auto load_step = [&](int st) {  // Q, dO, lse, dsum of step st into buffer st % 2 (cp.async, one group)
    const int h = kvh * group + st / nq, q0 = k0 + (st % nq) * QT, buf = st & 1;
    const long long lrow = ((long long)b * NH + h) * T_;
    bf16* Qb = QdOs + 2 * buf * qtile;
    load_tile_bf16(Qb, ld, seq + (long long)h * HS, QKVD, q0, QT, T_, HS, HSP);
    load_tile_bf16(Qb + qtile, ld, dseq + (long long)h * HS, C, q0, QT, T_, HS, HSP);
    if (threadIdx.x < QT) {
      const int t = q0 + threadIdx.x;
      const bool ok = t < T_;  // else 0
      cp_async4(Ls + buf * QT + threadIdx.x, lse + (ok ? lrow + t : 0), ok);
      cp_async4(Ds + buf * QT + threadIdx.x, dsum + (ok ? lrow + t : 0), ok);
    }
    cp_async_commit();
  };

  load_tile_bf16(Ks, ld, seq + C + (long long)kvh * HS, QKVD, k0, kTcKeys, T_, HS, HSP);
  load_tile_bf16(Vs, ld, seq + C + KVD + (long long)kvh * HS, QKVD, k0, kTcKeys, T_, HS, HSP);
  load_step(0);  // one group with K, V
  const int key0 = k0 + warp * 16 + g, key1 = key0 + 8;  // this thread's two keys
  const float scale2 = scale * kLog2e;
  float dk[DT][4], dv[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[dt][e] = dv[dt][e] = 0.f;

  // double-buffered: step + 1 is copied (cp.async) while step is computed
  for (int step = 0; step < nsteps; step++) {
    const int q0 = k0 + (step % nq) * QT, buf = step & 1;
    cp_async_wait<0>();  // this thread's copies of this step (and K, V)
    __syncthreads();     // everyone's; and the previous step (the other buffer) is no longer read
    if (step + 1 < nsteps) load_step(step + 1);
    const bf16* Qs = QdOs + 2 * buf * qtile;
    const bf16* dOs = Qs + qtile;
    const float* Lb = Ls + buf * QT;
    const float* Db = Ds + buf * QT;

    // transposed scores: rows = this warp's 16 keys, columns = the QT query rows
    // query columns before this warp's first key see none of its keys: n-tiles below
    // nt_lo (8 queries each) are wholly masked
    const int nt_lo = max(0, k0 + warp * 16 - q0) / 8;
    float st[NT][4], dpt[NT][4];
    // (K, V fragments kept in registers: 221 instead of 168 registers at HS 64, 2 blocks
    // per SM instead of 3, for 8 of 72 ldmatrix per step: not done)
    mma_rows<NT>(st, Ks + warp * 16 * ld, ld, Qs, ld, HSP, nt_lo, NT);
    mma_rows<NT>(dpt, Vs + warp * 16 * ld, ld, dOs, ld, HSP, nt_lo, NT);
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) st[nt][e] = exp2f(fmaf(st[nt][e], scale2, -Lb[nt * 8 + 2 * q + (e & 1)] * kLog2e));
    // masking only where some query row of the step is before some key of this warp, or
    // past T_
    if (q0 < k0 + warp * 16 + 15 || q0 + QT > T_) {
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int t = q0 + nt * 8 + 2 * q + (e & 1);
          if (t >= T_ || ((e >> 1) ? key1 : key0) > t) st[nt][e] = 0.f;
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const float p = st[nt][e];                                                  // P^T
        dpt[nt][e] = p * (dpt[nt][e] - Db[nt * 8 + 2 * q + (e & 1)]) * scale;  // dS^T
      }
    mma_frag<NT / 2, DT>(dv, st, dOs, ld, HSP, nt_lo / 2, NT / 2);
    mma_frag<NT / 2, DT>(dk, dpt, Qs, ld, HSP, nt_lo / 2, NT / 2);
    if constexpr (kDQ) {
      // dS^T of the block's keys to shared memory (bf16, as the products round it; the
      // masked entries are 0), then warp w: dQ rows q0 + 16 w .. += dS K over the 64 keys
      constexpr int lds = tc_ds_ld<DMAX>();
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++)
          dSs[(warp * 16 + g + 8 * (e >> 1)) * lds + nt * 8 + 2 * q + (e & 1)] = from_f<bf16>(dpt[nt][e]);
      __syncthreads();  // (the next step's first __syncthreads keeps the tile until all have read it)
      float dq[DT][4];
#pragma unroll
      for (int dt = 0; dt < DT; dt++) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.f;
      mma_at<kTcKeys / 16, DT>(dq, dSs + warp * 16, lds, Ks, ld, HSP);
      const int h = kvh * group + step / nq;
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const int t = q0 + warp * 16 + g + 8 * half;
        if (t >= T_) continue;
        float* dst = dq_acc + (((long long)b * T_ + t) * NH + h) * HS;
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
#pragma unroll
          for (int e = 0; e < 2; e++) {
            const int d = dt * 8 + 2 * q + e;
            if (d < HS) atomicAdd(dst + d, dq[dt][2 * half + e]);
          }
      }
    }
  }

#pragma unroll
  for (int half = 0; half < 2; half++) {
    const int c = half ? key1 : key0;
    if (c >= T_) continue;
    if (rope.pos) {
      const long long p = rope.pos[(long long)b * T_ + c] * (long long)(HS / 2);
      rope_inverse_frag(dk, half, q, HS, rope.cos_t + p, rope.sin_t + p);
    }
    bf16* dkr = dqkv + ((long long)b * T_ + c) * QKVD + C + (long long)kvh * HS;
    bf16* dvr = dkr + KVD;
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int d = dt * 8 + 2 * q + e;
        if (d < HS) {
          dkr[d] = from_f<bf16>(dk[dt][2 * half + e]);
          dvr[d] = from_f<bf16>(dv[dt][2 * half + e]);
        }
      }
  }
}

__global__ void zero_kernel(float* p, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    p[i] = 0.f;
}

// dqkv's q part (B, T, QKVD: the first NH * HS of a row) = dq_acc (B, T, NH * HS) in bf16
__global__ void dq_store_kernel(bf16* dqkv, const float* dq_acc, long long n, int C, int QKVD) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const long long row = i / C;
    dqkv[row * QKVD + (i - row * C)] = from_f<bf16>(dq_acc[i]);
  }
}

// The same with the inverse RoPE (rope_apply's): one thread per pair (i, i + HS / 2) of a
// head, n = B * T * NH * (HS / 2) pairs.
__global__ void dq_store_rope_kernel(bf16* dqkv, const float* dq_acc, long long n, int NH, int HS, int QKVD,
                                     RopeTables rope) {
  const int half = HS / 2, rowp = NH * half;
  for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n; j += (long long)gridDim.x * blockDim.x) {
    const long long row = j / rowp;
    const int r = (int)(j - row * rowp), h = r / half, i = r - h * half;
    const long long p = rope.pos[row] * (long long)half;
    const float c = rope.cos_t[p + i], sn = rope.sin_t[p + i];
    const float* src = dq_acc + row * NH * HS + (long long)h * HS;
    const float a = src[i], b = src[i + half];
    bf16* dst = dqkv + row * QKVD + (long long)h * HS;
    dst[i] = from_f<bf16>(a * c + b * sn);
    dst[i + half] = from_f<bf16>(b * c - a * sn);
  }
}

}  // namespace
}  // namespace gpu
}  // namespace pyllama

namespace {

using pyllama::gpu::bf16;
using pyllama::gpu::RopeTables;

// The variant's backward: flash_attention_backward's tensor-core path (dsum, then the kernels,
// then rope_apply when the kernels cannot rotate in their stores) with dQ by atomics; dq_acc:
// (B, T, NH, HS) float scratch.
void flash_backward_dq_atomic(bf16* dqkv, float* dsum, float* dq_acc, const bf16* dout, const bf16* out,
                              const bf16* qkv, const float* lse, int B, int T_, int NH, int NKV, int HS,
                              cudaStream_t stream, const RopeTables& rope) {
  using namespace pyllama::gpu;
  check_shape(B, T_, NH, NKV, HS, "flash_backward_dq_atomic");
  PYLLAMA_CHECK(HS <= 64, pyllama::ValueError, "flash_backward_dq_atomic: head size " << HS << " > 64");
  if (B == 0 || T_ == 0) return;
  const long long rows = (long long)B * T_ * NH;
  const long long nblk = (rows + kThreads / 32 - 1) / (kThreads / 32);
  flash_bwd_dsum_kernel<bf16><<<(unsigned)nblk, kThreads, 0, stream>>>(dsum, dout, out, B, T_, NH, HS);
  CUDA_CHECK_LAUNCH();
  const bool fused = HS % 16 == 0;  // both columns of each RoPE pair in one thread
  const RopeTables r = fused ? rope : RopeTables();
  // the atomic-dQ branch of the library's launch_bwd_tc<64>, as it was
  const float scale = 1.0f / sqrtf((float)HS);
  const dim3 gkv = grid2((long long)B * NKV, (T_ + kTcKeys - 1) / kTcKeys, "flash attention backward");
  const long long n = (long long)B * T_ * NH * HS;
  const unsigned blocks = (unsigned)std::min<long long>((n + 255) / 256, 4096);
  zero_kernel<<<blocks, 256, 0, stream>>>(dq_acc, n);
  CUDA_CHECK_LAUNCH();
  const size_t bytes = dkv_dq_smem_bytes<64, true>(HS);
  prepare_smem(flash_bwd_dkv_tc_kernel<64, true>, bytes);
  flash_bwd_dkv_tc_kernel<64, true>
      <<<gkv, kThreads, bytes, stream>>>(dqkv, dq_acc, dout, qkv, lse, dsum, T_, NH, NKV, HS, scale, r);
  CUDA_CHECK_LAUNCH();
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  if (r.pos)
    dq_store_rope_kernel<<<blocks, 256, 0, stream>>>(dqkv, dq_acc, n / 2, NH, HS, QKVD, r);
  else
    dq_store_kernel<<<blocks, 256, 0, stream>>>(dqkv, dq_acc, n, C, QKVD);
  CUDA_CHECK_LAUNCH();
  if (rope.pos && !fused)  // dq and dk (adjacent heads in a row)
    rope_apply<bf16>(dqkv, QKVD, rope.pos, rope.cos_t, rope.sin_t, B * T_, NH + NKV, HS, true, stream);
}

// RoPE tables for positions pos[n] (T rows of HS / 2 cos and sin, base 10000), as the model's.
struct Rope {
  std::vector<int32_t> pos;
  std::vector<float> cs, sn;
  Rope(int B, int T, int HS, bool shuffled) : pos((size_t)B * T), cs((size_t)(2 * T + 3) * (HS / 2)), sn(cs.size()) {
    const int maxT = 2 * T + 3, half = HS / 2;
    for (size_t i = 0; i < pos.size(); i++) pos[i] = shuffled ? (int32_t)((5 * i + 3) % maxT) : (int32_t)(i % T);
    for (int p = 0; p < maxT; p++)
      for (int i = 0; i < half; i++) {
        const double a = p * std::pow(10000.0, -2.0 * i / HS);
        cs[(size_t)p * half + i] = (float)std::cos(a);
        sn[(size_t)p * half + i] = (float)std::sin(a);
      }
  }
};

// The library's forward gives out and lse; then its backward and the variant's on the same
// inputs: dK, dV bit-equal (the same arithmetic), dQ within bf16 rounding of the library's,
// and (without RoPE) dqkv within bf16 of the double reference.
void check_case(int B, int T, int NH, int NKV, int HS, bool rope, int mis = 0) {
  using namespace pyllama::gpu;
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T, NL = (size_t)B * NH * T;
  const unsigned seed = 1000u * B + 10u * T + HS;
  const auto qkv = lab::randn<bf16>(N * QKVD + mis, seed), dy = lab::randn<bf16>(N * C + mis, seed + 1);
  lab::Buf<bf16> dqkv(qkv), ddy(dy), out(N * C), dq_lib(N * QKVD), dq_var(N * QKVD);
  lab::Buf<float> lse(NL), dsum(NL), acc(N * C);
  const Rope tables(B, T, HS, true);
  lab::Buf<int32_t> pos(tables.pos);
  lab::Buf<float> cs(tables.cs), sn(tables.sn);
  const RopeTables rt = rope ? RopeTables{pos.p, cs.p, sn.p} : RopeTables();
  flash_attention_forward<bf16>(out.p, lse.p, dqkv.p + mis, B, T, NH, NKV, HS, nullptr, true);
  flash_attention_backward<bf16>(dq_lib.p, dsum.p, ddy.p + mis, out.p, dqkv.p + mis, lse.p, B, T, NH, NKV, HS, nullptr,
                                 true, rt);
  CUDA_CHECK_LAUNCH();
  dsum.fill_nan();
  flash_backward_dq_atomic(dq_var.p, dsum.p, acc.p, ddy.p + mis, out.p, dqkv.p + mis, lse.p, B, T, NH, NKV, HS,
                           nullptr, rt);
  CUDA_CHECK_LAUNCH();
  const auto gl = dq_lib.host(), gv = dq_var.host();
  std::vector<bf16> ql, qv, kvl, kvv;  // the q columns of each row; the k and v columns
  std::vector<double> qld;
  for (size_t n = 0; n < N; n++) {
    ql.insert(ql.end(), gl.begin() + n * QKVD, gl.begin() + n * QKVD + C);
    qv.insert(qv.end(), gv.begin() + n * QKVD, gv.begin() + n * QKVD + C);
    kvl.insert(kvl.end(), gl.begin() + n * QKVD + C, gl.begin() + (n + 1) * QKVD);
    kvv.insert(kvv.end(), gv.begin() + n * QKVD + C, gv.begin() + (n + 1) * QKVD);
  }
  const std::string what = "atomic dQ " + lab::shape(B, T, NH, NKV, HS) + (rope ? " with RoPE" : "") +
                           (mis ? " misaligned" : "");
  lab::report_exact(what + " dK, dV bit-equal to the library's", lab::same_bits(kvl, kvv));
  lab::report(what + " dQ vs the library's dQ kernel", lab::rel_err(qv, lab::to_d(ql)), 1e-2);
  if (!rope) {
    std::vector<double> rout, rlse, rdq;
    lab::attention_reference(rout, rlse, rdq, lab::to_d(std::vector<bf16>(qkv.begin() + mis, qkv.end())),
                             lab::to_d(std::vector<bf16>(dy.begin() + mis, dy.end())), B, T, NH, NKV, HS);
    lab::report(what + " dqkv vs double", lab::rel_err(gv, rdq), 4e-2);
  }
}

void time_case(int B, int T, int NH, int NKV, int HS, int reps) {
  using namespace pyllama::gpu;
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T, NL = (size_t)B * NH * T;
  lab::Buf<bf16> qkv(lab::randn<bf16>(N * QKVD, 7)), dy(lab::randn<bf16>(N * C, 8)), out(N * C), dq_lib(N * QKVD),
      dq_var(N * QKVD);
  lab::Buf<float> lse(NL), dsum(NL), acc(N * C);
  const Rope tables(B, T, HS, false);  // as the model trains: position t of each sequence
  lab::Buf<int32_t> pos(tables.pos);
  lab::Buf<float> cs(tables.cs), sn(tables.sn);
  const RopeTables rt{pos.p, cs.p, sn.p};
  flash_attention_forward<bf16>(out.p, lse.p, qkv.p, B, T, NH, NKV, HS, nullptr, true);
  const float lib = lab::time_ms(
      [&] {
        flash_attention_backward<bf16>(dq_lib.p, dsum.p, dy.p, out.p, qkv.p, lse.p, B, T, NH, NKV, HS, nullptr, true,
                                       rt);
      },
      reps);
  const float var = lab::time_ms(
      [&] {
        flash_backward_dq_atomic(dq_var.p, dsum.p, acc.p, dy.p, out.p, qkv.p, lse.p, B, T, NH, NKV, HS, nullptr, rt);
      },
      reps);
  const auto gl = dq_lib.host(), gv = dq_var.host();
  lab::report(std::string("atomic dQ ") + lab::shape(B, T, NH, NKV, HS) + " dqkv vs the library's after timing",
              lab::rel_err(gv, lab::to_d(gl)), 1e-2);
  lab::print_time("flash backward (dQ kernel -> atomic dQ)", lab::shape(B, T, NH, NKV, HS), lib, var);
}

}  // namespace

int main(int argc, char** argv) {
  const lab::Options opt = lab::parse(argc, argv, "flash_dq_atomic");
  try {
    lab::print_device();
    if (!pyllama::gpu::flash_attention_uses_tensor_cores(64)) {
      std::printf("skip: bf16 flash attention does not run on tensor cores here (sm_80+ needed)\nLAB OK\n");
      return 0;
    }
    // T not a multiple of 64 (several key blocks and query steps, the last partial), T = 1,
    // GQA / MQA / MHA, head sizes below 64, a misaligned qkv and dout (the scalar loads); the
    // inverse RoPE in the stores (HS a multiple of 16) or by rope_apply after (HS 12)
    check_case(2, 70, 4, 2, 64, false);
    check_case(2, 130, 3, 1, 12, false);
    check_case(1, 300, 2, 1, 64, false);
    check_case(1, 128, 2, 2, 64, false);
    check_case(3, 1, 4, 1, 32, false);
    check_case(1, 40, 2, 1, 64, false, 1);
    check_case(2, 70, 4, 2, 64, true);
    check_case(1, 50, 2, 1, 48, true);
    check_case(2, 130, 3, 1, 12, true);
    if (!opt.check_only) {
      time_case(16, 1024, 12, 12, 64, opt.reps);  // bench/gpu.py's 124M model (bf16 training, 16 x 1024)
      time_case(4, 4096, 32, 8, 64, opt.reps);
      time_case(32, 512, 16, 16, 32, opt.reps);
      time_case(8, 2048, 16, 4, 64, opt.reps);
    }
  } catch (const std::exception& e) {
    lab::report(std::string("threw: ") + e.what(), INFINITY, 0);
  }
  return lab::finish("flash_dq_atomic");
}
