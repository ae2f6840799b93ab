// flash_fwd_rows64.cu — kernel lab (README.md): the bf16 tensor-core flash forward with 64
// query rows a block at head size <= 64, against the library's 128.
//
//   flash_fwd_rows64 [--check] [--reps N]
//
// The variant: flash_fwd_tc_kernel<64, 1> (flash_tc.cuh), one 16-row m-tile a warp, where the
// library takes flash_fwd_tc_kernel<64, 2>: two m-tiles a warp, so each K / V fragment read
// from shared memory feeds two mma. ptxas (CUDA 13, sm_90): 124 registers, 45 KB of shared
// memory, 4 blocks an SM for the variant; 228 registers, 54 KB, 2 blocks for the library's.
// Each m-tile's arithmetic is its own, so the two give the same bits (checked here).
// History: an option of the library (BackendOptions.flash_fwd_rows = 64,
// PYLLAMA_CUDA_FLASH_FWD_ROWS=64) from commit 5ad4504 until it moved here, never timed on a
// GPU (docs/CUDA.md, "The kernel lab"). Whether 4 blocks of 64 rows beat 2 of 128 is what the
// timing below says: variant / library < 1 means the variant is faster.
#include <string>
#include <vector>

#include "flash_tc.cuh"
#include "lab.cuh"

namespace {

using pyllama::gpu::bf16;

// The variant's launcher: flash_attention_forward's tensor-core path with MT = 1 at HS <= 64.
void flash_forward_rows64(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, int NKV, int HS,
                          cudaStream_t stream) {
  using namespace pyllama::gpu;
  check_shape(B, T, NH, NKV, HS, "flash_forward_rows64");
  PYLLAMA_CHECK(HS <= 64, pyllama::ValueError, "flash_forward_rows64: head size " << HS << " > 64");
  if (B == 0 || T == 0) return;
  launch_fwd_tc<64, 1>(out, lse, qkv, B, T, NH, NKV, HS, stream);
}

// out and lse of the library's forward and the variant on the same inputs: bit-equal, and
// within bf16 of the double reference. mis: qkv starts `mis` elements into its buffer (the
// scalar load path).
void check_case(int B, int T, int NH, int NKV, int HS, int mis = 0) {
  using namespace pyllama::gpu;
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T, NL = (size_t)B * NH * T;
  const auto qkv = lab::randn<bf16>(N * QKVD + mis, 1000u * B + 10u * T + HS);
  std::vector<double> rout, rlse, rdq;
  lab::attention_reference(rout, rlse, rdq, lab::to_d(std::vector<bf16>(qkv.begin() + mis, qkv.end())),
                           std::vector<double>(N * C, 0.0), B, T, NH, NKV, HS);
  lab::Buf<bf16> dqkv(qkv), out_lib(N * C), out_var(N * C);
  lab::Buf<float> lse_lib(NL), lse_var(NL);
  flash_attention_forward<bf16>(out_lib.p, lse_lib.p, dqkv.p + mis, B, T, NH, NKV, HS, nullptr, true);
  CUDA_CHECK_LAUNCH();
  flash_forward_rows64(out_var.p, lse_var.p, dqkv.p + mis, B, T, NH, NKV, HS, nullptr);
  CUDA_CHECK_LAUNCH();
  const auto ol = out_lib.host(), ov = out_var.host();
  const auto ll = lse_lib.host(), lv = lse_var.host();
  const std::string what = "rows64 " + lab::shape(B, T, NH, NKV, HS) + (mis ? " misaligned" : "");
  lab::report_exact(what + " out, lse bit-equal to the library's 128-row forward",
                    lab::same_bits(ol, ov) && lab::same_bits(ll, lv));
  lab::report(what + " out vs double", lab::rel_err(ov, rout), 1e-2);
  lab::report(what + " lse vs double", lab::rel_err(lv, rlse), 1e-5);
}

void time_case(int B, int T, int NH, int NKV, int HS, int reps) {
  using namespace pyllama::gpu;
  const int C = NH * HS, QKVD = C + 2 * NKV * HS;
  const size_t N = (size_t)B * T, NL = (size_t)B * NH * T;
  lab::Buf<bf16> qkv(lab::randn<bf16>(N * QKVD, 7)), out_lib(N * C), out_var(N * C);
  lab::Buf<float> lse_lib(NL), lse_var(NL);
  const float lib = lab::time_ms(
      [&] { flash_attention_forward<bf16>(out_lib.p, lse_lib.p, qkv.p, B, T, NH, NKV, HS, nullptr, true); }, reps);
  const float var =
      lab::time_ms([&] { flash_forward_rows64(out_var.p, lse_var.p, qkv.p, B, T, NH, NKV, HS, nullptr); }, reps);
  lab::report_exact("rows64 " + lab::shape(B, T, NH, NKV, HS) + " bit-equal after timing",
                    lab::same_bits(out_lib.host(), out_var.host()));
  lab::print_time("flash forward (128 -> 64 rows a block)", lab::shape(B, T, NH, NKV, HS), lib, var);
}

}  // namespace

int main(int argc, char** argv) {
  const lab::Options opt = lab::parse(argc, argv, "flash_fwd_rows64");
  try {
    lab::print_device();
    if (!pyllama::gpu::flash_attention_uses_tensor_cores(64)) {
      std::printf("skip: bf16 flash attention does not run on tensor cores here (sm_80+ needed)\nLAB OK\n");
      return 0;
    }
    // T not a multiple of a block (several blocks, the last partial), T = 1, GQA / MQA / MHA,
    // head sizes below 64 (zero-padded to 16), a misaligned qkv (the scalar loads)
    check_case(1, 300, 2, 1, 64);
    check_case(2, 70, 4, 2, 64);
    check_case(1, 130, 2, 1, 12);
    check_case(3, 1, 4, 1, 32);
    check_case(1, 128, 2, 2, 64);
    check_case(1, 40, 2, 1, 64, 1);
    if (!opt.check_only) {
      time_case(16, 1024, 12, 12, 64, opt.reps);  // bench/gpu.py's 124M model (bf16 training, 16 x 1024)
      time_case(4, 4096, 32, 8, 64, opt.reps);
      time_case(32, 512, 16, 16, 32, opt.reps);
      time_case(1, 8192, 8, 8, 64, opt.reps);
    }
  } catch (const std::exception& e) {
    lab::report(std::string("threw: ") + e.what(), INFINITY, 0);
  }
  return lab::finish("flash_fwd_rows64");
}
