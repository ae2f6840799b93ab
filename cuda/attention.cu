// attention.cu — causal grouped-query attention (see attention_* in csrc/ops.h)
// and the KV-cache pieces of generation.
//
// One warp per (row n, query head h). The warp stages its q (or dy) row in shared
// memory as float; lanes take keys s = lane, lane+32, ...; the HS-wide outputs
// are held as HS/32 accumulators per lane (HS <= kMaxHeadSize, checked by the model).
// The same forward kernel serves training (keys are rows of qkv) and the KV cache
// (keys are rows of a cache slot): only the strides differ.
#include "kernels.cuh"

namespace pyllama {
namespace gpu {

namespace {

constexpr int kWarps = 4;  // warps per block
constexpr int kAcc = kMaxHeadSize / 32;

template <typename T>
struct AttnFwdArgs {
  T* out;  // row n, head h: out + n*out_ld + h*HS
  long long out_ld;
  float* p;  // probabilities of (b, h, t): p + b*p_bs + h*p_hs + t*p_ts, keys 0..nk-1
  long long p_bs, p_hs, p_ts;
  const T* q;  // row n, head h: q + n*q_ld + h*HS
  long long q_ld;
  const T* k;  // key s of (sequence b, kv head kh): k + slot(b)*kv_bs + kh*kv_hs + s*kv_ss
  const T* v;  // likewise
  long long kv_bs, kv_hs, kv_ss;
  const int32_t* slots;  // slot(b) = slots[b], or b when null
  const int32_t* pos;    // keys 0..pos[n] when not null, else 0..t (causal)
  int B, T_, NH, group, HS;  // T_: sequence length (T is the element type)
  float scale;
};

template <typename T>
__global__ void __launch_bounds__(32 * kWarps) attention_forward_kernel(AttnFwdArgs<T> a) {
  extern __shared__ float smem[];  // kWarps * HS floats
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const long long row = (long long)blockIdx.x * kWarps + wib;  // (n, h), h fastest
  if (row >= (long long)a.B * a.T_ * a.NH) return;             // the whole warp leaves
  const int h = (int)(row % a.NH);
  const long long n = row / a.NH;
  const int b = (int)(n / a.T_), t = (int)(n % a.T_);
  const int kvh = h / a.group;
  const int nk = (a.pos ? a.pos[n] : t) + 1;

  float* qs = smem + wib * a.HS;
  const T* q = a.q + n * a.q_ld + (long long)h * a.HS;
  for (int i = lane; i < a.HS; i += 32) qs[i] = to_f(q[i]);
  __syncwarp();

  const long long kvoff = (long long)(a.slots ? a.slots[b] : b) * a.kv_bs + (long long)kvh * a.kv_hs;
  const T* kb = a.k + kvoff;
  const T* vb = a.v + kvoff;
  float* p = a.p + b * a.p_bs + h * a.p_hs + t * a.p_ts;

  float mx = -INFINITY;
  for (int s = lane; s < nk; s += 32) {
    const T* kr = kb + s * a.kv_ss;
    float d = 0.f;
    for (int i = 0; i < a.HS; i++) d += qs[i] * to_f(kr[i]);
    d *= a.scale;
    p[s] = d;
    mx = fmaxf(mx, d);
  }
  mx = warp_max(mx);
  float sum = 0.f;
  for (int s = lane; s < nk; s += 32) {
    const float e = expf(p[s] - mx);
    p[s] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  const float inv = 1.f / sum;
  for (int s = lane; s < nk; s += 32) p[s] *= inv;
  __syncwarp();  // every lane reads every p[s] below

  float acc[kAcc];
#pragma unroll
  for (int j = 0; j < kAcc; j++) acc[j] = 0.f;
  for (int s = 0; s < nk; s++) {
    const float ps = p[s];
    const T* vr = vb + s * a.kv_ss;
#pragma unroll
    for (int j = 0; j < kAcc; j++) {
      const int i = j * 32 + lane;
      if (i < a.HS) acc[j] += ps * to_f(vr[i]);
    }
  }
  T* o = a.out + n * a.out_ld + (long long)h * a.HS;
#pragma unroll
  for (int j = 0; j < kAcc; j++) {
    const int i = j * 32 + lane;
    if (i < a.HS) o[i] = from_f<T>(acc[j]);
  }
}

// Backward, part 1: one warp per (n, h). ds (into datt) = p * (dp - sum(p dp)) * scale with
// dp[s] = dy . v_s; then dq = sum_s ds[s] k_s (assigned).
template <typename T>
__global__ void __launch_bounds__(32 * kWarps)
    attention_backward_dq_kernel(T* dqkv, float* datt, const T* dout, const T* qkv, const float* att, int B, int T_,
                                 int NH, int NKV, int HS, float scale) {
  extern __shared__ float smem[];  // kWarps * HS floats
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const long long row = (long long)blockIdx.x * kWarps + wib;
  if (row >= (long long)B * T_ * NH) return;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const int h = (int)(row % NH);
  const long long n = row / NH;
  const int b = (int)(n / T_), t = (int)(n % T_);
  const int kvh = h / group;

  float* dys = smem + wib * HS;
  const T* dy = dout + n * C + (long long)h * HS;
  for (int i = lane; i < HS; i += 32) dys[i] = to_f(dy[i]);
  __syncwarp();

  const long long prow = (((long long)b * NH + h) * T_ + t) * T_;
  const float* p = att + prow;
  float* ds = datt + prow;
  const T* seq = qkv + (long long)b * T_ * QKVD;  // row s of this sequence: seq + s*QKVD
  float dot = 0.f;
  for (int s = lane; s <= t; s += 32) {
    const T* vr = seq + (long long)s * QKVD + C + KVD + kvh * HS;
    float d = 0.f;
    for (int i = 0; i < HS; i++) d += dys[i] * to_f(vr[i]);
    ds[s] = d;
    dot += p[s] * d;
  }
  dot = warp_sum(dot);
  for (int s = lane; s <= t; s += 32) ds[s] = p[s] * (ds[s] - dot) * scale;
  __syncwarp();  // every lane reads every ds[s] below

  float acc[kAcc];
#pragma unroll
  for (int j = 0; j < kAcc; j++) acc[j] = 0.f;
  for (int s = 0; s <= t; s++) {
    const float d = ds[s];
    const T* kr = seq + (long long)s * QKVD + C + kvh * HS;
#pragma unroll
    for (int j = 0; j < kAcc; j++) {
      const int i = j * 32 + lane;
      if (i < HS) acc[j] += d * to_f(kr[i]);
    }
  }
  T* dq = dqkv + n * QKVD + (long long)h * HS;
#pragma unroll
  for (int j = 0; j < kAcc; j++) {
    const int i = j * 32 + lane;
    if (i < HS) dq[i] = from_f<T>(acc[j]);
  }
}

// Backward, part 2: one warp per (b, kv head, key position s):
// dk_s = sum_{h in group, t >= s} ds[h, t, s] q_{t,h};  dv_s = sum p[h, t, s] dy_{t,h} (assigned).
template <typename T>
__global__ void __launch_bounds__(32 * kWarps)
    attention_backward_dkv_kernel(T* dqkv, const float* datt, const T* dout, const T* qkv, const float* att, int B,
                                  int T_, int NH, int NKV, int HS) {
  const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
  const long long row = (long long)blockIdx.x * kWarps + wib;  // (b, kvh, s), s fastest
  if (row >= (long long)B * NKV * T_) return;
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD, group = NH / NKV;
  const int s = (int)(row % T_);
  const int kvh = (int)((row / T_) % NKV);
  const int b = (int)(row / ((long long)T_ * NKV));

  float acck[kAcc], accv[kAcc];
#pragma unroll
  for (int j = 0; j < kAcc; j++) acck[j] = accv[j] = 0.f;
  for (int h = kvh * group; h < (kvh + 1) * group; h++) {
    const long long hbase = ((long long)b * NH + h) * T_ * T_;
    for (int t = s; t < T_; t++) {
      const long long off = hbase + (long long)t * T_ + s;
      const float pp = att[off], dd = datt[off];
      const T* qr = qkv + ((long long)b * T_ + t) * QKVD + (long long)h * HS;
      const T* dyr = dout + ((long long)b * T_ + t) * C + (long long)h * HS;
#pragma unroll
      for (int j = 0; j < kAcc; j++) {
        const int i = j * 32 + lane;
        if (i < HS) {
          acck[j] += dd * to_f(qr[i]);
          accv[j] += pp * to_f(dyr[i]);
        }
      }
    }
  }
  T* dk = dqkv + ((long long)b * T_ + s) * QKVD + C + (long long)kvh * HS;
  T* dv = dk + KVD;
#pragma unroll
  for (int j = 0; j < kAcc; j++) {
    const int i = j * 32 + lane;
    if (i < HS) {
      dk[i] = from_f<T>(acck[j]);
      dv[i] = from_f<T>(accv[j]);
    }
  }
}

template <typename T>
__global__ void kv_store_kernel(T* kc, T* vc, const T* qkv, const int32_t* slots, const int32_t* pos, int B, int T_,
                                int NH, int NKV, int HS, int max_len) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD;
  const long long total = (long long)B * T_ * KVD;
  const long long slot_stride = (long long)NKV * max_len * HS;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long n = idx / KVD;
    const int rem = (int)(idx % KVD);
    const int kh = rem / HS, i = rem % HS;
    const int b = (int)(n / T_);
    const long long dst = (long long)slots[b] * slot_stride + ((long long)kh * max_len + pos[n]) * HS + i;
    kc[dst] = qkv[n * QKVD + C + rem];
    vc[dst] = qkv[n * QKVD + C + KVD + rem];
  }
}

template <typename T>
__global__ void kv_gather_kernel(T* dst, const T* src, const int32_t* src_slots, int layers, int n_slots,
                                 long long slot_elems) {
  const long long total = (long long)layers * n_slots * slot_elems;
  for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long e = idx % slot_elems;
    const long long li = idx / slot_elems;  // l * n_slots + i
    const int i = (int)(li % n_slots);
    const long long l = li / n_slots;
    dst[idx] = src[(l * n_slots + src_slots[i]) * slot_elems + e];
  }
}

template <typename T>
void launch_forward(const AttnFwdArgs<T>& a, cudaStream_t stream) {
  const long long rows = (long long)a.B * a.T_ * a.NH;
  if (rows <= 0) return;
  const unsigned blocks = (unsigned)((rows + kWarps - 1) / kWarps);
  const size_t smem = sizeof(float) * kWarps * a.HS;
  attention_forward_kernel<T><<<blocks, 32 * kWarps, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

template <typename T>
void attention_forward(T* out, float* att, const T* qkv, int B, int T_, int NH, int NKV, int HS, cudaStream_t stream) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD;
  AttnFwdArgs<T> a;
  a.out = out;
  a.out_ld = C;
  a.p = att;
  a.p_bs = (long long)NH * T_ * T_;
  a.p_hs = (long long)T_ * T_;
  a.p_ts = T_;
  a.q = qkv;
  a.q_ld = QKVD;
  a.k = qkv + C;
  a.v = qkv + C + KVD;
  a.kv_bs = (long long)T_ * QKVD;
  a.kv_hs = HS;
  a.kv_ss = QKVD;
  a.slots = nullptr;
  a.pos = nullptr;
  a.B = B;
  a.T_ = T_;
  a.NH = NH;
  a.group = NH / NKV;
  a.HS = HS;
  a.scale = 1.0f / sqrtf((float)HS);
  launch_forward(a, stream);
}

template <typename T>
void attention_backward(T* dqkv, float* datt, const T* dout, const T* qkv, const float* att, int B, int T_, int NH,
                        int NKV, int HS, cudaStream_t stream) {
  const long long rows = (long long)B * T_ * NH;
  if (rows <= 0) return;
  const float scale = 1.0f / sqrtf((float)HS);
  attention_backward_dq_kernel<T><<<(unsigned)((rows + kWarps - 1) / kWarps), 32 * kWarps,
                                    sizeof(float) * kWarps * HS, stream>>>(dqkv, datt, dout, qkv, att, B, T_, NH, NKV,
                                                                           HS, scale);
  CUDA_CHECK_LAUNCH();
  const long long kvrows = (long long)B * NKV * T_;
  attention_backward_dkv_kernel<T><<<(unsigned)((kvrows + kWarps - 1) / kWarps), 32 * kWarps, 0, stream>>>(
      dqkv, datt, dout, qkv, att, B, T_, NH, NKV, HS);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void attention_kv_forward(T* out, float* scores, const T* qkv, const T* kcache, const T* vcache,
                          const int32_t* slots, const int32_t* pos, int B, int T_, int NH, int NKV, int HS,
                          int max_len, cudaStream_t stream) {
  const int C = NH * HS, KVD = NKV * HS, QKVD = C + 2 * KVD;
  AttnFwdArgs<T> a;
  a.out = out;
  a.out_ld = C;
  a.p = scores;  // (B*T, NH, max_len): (b, h, t) at ((b*T + t)*NH + h)*max_len
  a.p_bs = (long long)T_ * NH * max_len;
  a.p_hs = max_len;
  a.p_ts = (long long)NH * max_len;
  a.q = qkv;
  a.q_ld = QKVD;
  a.k = kcache;
  a.v = vcache;
  a.kv_bs = (long long)NKV * max_len * HS;
  a.kv_hs = (long long)max_len * HS;
  a.kv_ss = HS;
  a.slots = slots;
  a.pos = pos;
  a.B = B;
  a.T_ = T_;
  a.NH = NH;
  a.group = NH / NKV;
  a.HS = HS;
  a.scale = 1.0f / sqrtf((float)HS);
  launch_forward(a, stream);
}

template <typename T>
void kv_store(T* kcache, T* vcache, const T* qkv, const int32_t* slots, const int32_t* pos, int B, int T_, int NH,
              int NKV, int HS, int max_len, cudaStream_t stream) {
  const long long total = (long long)B * T_ * NKV * HS;
  if (total <= 0) return;
  kv_store_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(kcache, vcache, qkv, slots, pos, B, T_, NH, NKV, HS,
                                                               max_len);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void kv_gather(T* dst, const T* src, const int32_t* src_slots, int layers, int n_slots, long long slot_elems,
               cudaStream_t stream) {
  const long long total = (long long)layers * n_slots * slot_elems;
  if (total <= 0) return;
  kv_gather_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(dst, src, src_slots, layers, n_slots, slot_elems);
  CUDA_CHECK_LAUNCH();
}

#define PYLLAMA_ATTENTION_INSTANTIATE(T)                                                                              \
  template void attention_forward<T>(T*, float*, const T*, int, int, int, int, int, cudaStream_t);                   \
  template void attention_backward<T>(T*, float*, const T*, const T*, const float*, int, int, int, int, int,         \
                                      cudaStream_t);                                                                 \
  template void attention_kv_forward<T>(T*, float*, const T*, const T*, const T*, const int32_t*, const int32_t*,    \
                                        int, int, int, int, int, int, cudaStream_t);                                 \
  template void kv_store<T>(T*, T*, const T*, const int32_t*, const int32_t*, int, int, int, int, int, int,          \
                            cudaStream_t);                                                                           \
  template void kv_gather<T>(T*, const T*, const int32_t*, int, int, long long, cudaStream_t);
PYLLAMA_ATTENTION_INSTANTIATE(float)
PYLLAMA_ATTENTION_INSTANTIATE(bf16)

}  // namespace gpu
}  // namespace pyllama
