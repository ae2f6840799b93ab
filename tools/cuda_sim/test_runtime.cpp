// test_runtime.cpp — the emulated runtime (sim_host.cpp, sim_cublas.cpp, sim_nccl.cpp) that
// the PYLLAMA_CUDA=SIM build runs the whole backend on: that its deferred streams really
// hide results from a host that did not wait, that capture takes kernel arguments at the
// launch and refuses synchronous calls, and that bad copies, frees and cuBLAS calls fail.
#include <cublas_v2.h>

#include <tuple>

#include "check.h"

using namespace chk;

extern "C" int ncclGetUniqueId(void*);
extern "C" int ncclCommInitRank(void**, int, struct SimId, int);
extern "C" int ncclCommInitRankConfig(void**, int, struct SimId, int, void*);
extern "C" int ncclCommGetAsyncError(void*, int*);
extern "C" int ncclCommAbort(void*);
extern "C" int ncclAllReduce(const void*, void*, size_t, int, int, void*, cudaStream_t);

namespace {

void fill(float* p, int n, float v) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}
// what prep.py makes of fill<<<1, 64, 0, s>>>(p, n, v)
void launch_fill(cudaStream_t s, float* p, int n, float v) {
  ::sim::launch(::sim::Cfg(dim3(1), dim3(64), 0, s), "fill", (const void*)&fill,
                [a = std::make_tuple(p, n, v)] { std::apply(fill, a); });
}
bool all_equal(const std::vector<float>& x, float v) {
  for (float e : x)
    if (!(e == v)) return false;
  return true;
}
bool all_nan(const std::vector<float>& x) {
  for (float e : x)
    if (!std::isnan(e)) return false;
  return true;
}

}  // namespace

struct SimId {
  char internal[128];
};

SIM_TEST(sim_runtime_deferred_streams) {
  ::sim::set_deferred(true);
  const int n = 40;
  float* d = nullptr;
  cudaStream_t s = nullptr;
  bool ok = cudaMalloc(&d, n * sizeof(float)) == cudaSuccess && cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess;
  std::vector<float> h(n, 0.f);
  // a kernel on a non-blocking stream, then a synchronous copy (legacy stream): the copy
  // does not wait for the other stream, so it sees the NaN fill of cudaMalloc
  launch_fill(s, d, n, 1.f);
  ok = ok && cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess && all_nan(h);
  ok = ok && cudaStreamSynchronize(s) == cudaSuccess &&
       cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess && all_equal(h, 1.f);
  report_exact("sim deferred stream: a synchronous copy does not wait for a non-blocking stream", ok);
  // an async copy into pinned memory is done only after the stream is waited for
  float* pin = nullptr;
  bool ok2 = cudaMallocHost(&pin, n * sizeof(float)) == cudaSuccess;
  for (int i = 0; i < n; i++) pin[i] = 5.f;
  launch_fill(s, d, n, 2.f);
  ok2 = ok2 && cudaMemcpyAsync(pin, d, n * sizeof(float), cudaMemcpyDeviceToHost, s) == cudaSuccess;
  ok2 = ok2 && all_equal(std::vector<float>(pin, pin + n), 5.f);
  cudaEvent_t ev = nullptr;
  ok2 = ok2 && cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) == cudaSuccess &&
        cudaEventRecord(ev, s) == cudaSuccess && cudaEventQuery(ev) == cudaSuccess;
  ok2 = ok2 && all_equal(std::vector<float>(pin, pin + n), 2.f);
  report_exact("sim deferred stream: pinned results appear only after an event query / sync", ok2);
  // capture: arguments taken at the launch; a synchronous call invalidates the capture
  cudaGraph_t g = nullptr;
  cudaGraphExec_t ex = nullptr;
  float v = 3.f;
  bool ok3 = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  launch_fill(s, d, n, v);
  v = 4.f;
  ok3 = ok3 && cudaStreamEndCapture(s, &g) == cudaSuccess && g && cudaGraphInstantiate(&ex, g, 0) == cudaSuccess;
  launch_fill(s, d, n, 7.f);
  ok3 = ok3 && cudaGraphLaunch(ex, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess &&
        cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess && all_equal(h, 3.f);
  cudaGraph_t g2 = nullptr;
  void* extra = nullptr;
  ok3 = ok3 && cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  ok3 = ok3 && cudaMalloc(&extra, 16) == cudaErrorStreamCaptureUnsupported;
  ok3 = ok3 && cudaStreamEndCapture(s, &g2) == cudaErrorStreamCaptureInvalidated && g2 == nullptr;
  ok3 = ok3 && cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeThreadLocal) != cudaSuccess;
  cudaGraphExecDestroy(ex);
  cudaGraphDestroy(g);
  report_exact("sim capture: arguments at the launch, replay, cudaMalloc invalidates, no legacy capture", ok3);
  // bad copies and frees fail as CUDA calls
  std::vector<float> h2(n);
  bool ok4 = cudaMemcpy(h2.data(), h.data(), n * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidMemcpyDirection;
  ok4 = ok4 && cudaMemcpy(d, h.data(), (n + 1) * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue;
  ok4 = ok4 && cudaFree(h2.data()) == cudaErrorInvalidDevicePointer;
  ok4 = ok4 && cudaMemsetAsync(h2.data(), 0, 4, s) == cudaErrorInvalidValue;
  report_exact("sim copies in the wrong direction or past an allocation, frees of host memory fail", ok4);
  // cuBLAS: C = A B (column-major 3x2 = 3x4 * 4x2), deferred; bad calls refused
  cublasHandle_t hb = nullptr;
  float *A = nullptr, *B = nullptr, *C = nullptr;
  std::vector<float> ha(12), hbm(8), hc(6);
  for (int i = 0; i < 12; i++) ha[i] = 0.5f * i - 2.f;
  for (int i = 0; i < 8; i++) hbm[i] = 1.f - 0.25f * i;
  bool ok5 = cublasCreate(&hb) == CUBLAS_STATUS_SUCCESS && cublasSetStream(hb, s) == CUBLAS_STATUS_SUCCESS &&
             cudaMalloc(&A, 48) == cudaSuccess && cudaMalloc(&B, 32) == cudaSuccess && cudaMalloc(&C, 24) == cudaSuccess &&
             cudaMemcpy(A, ha.data(), 48, cudaMemcpyHostToDevice) == cudaSuccess &&
             cudaMemcpy(B, hbm.data(), 32, cudaMemcpyHostToDevice) == cudaSuccess;
  const float one = 1.f, zero = 0.f;
  ok5 = ok5 && cublasGemmEx(hb, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, CUDA_R_32F, 3, B, CUDA_R_32F, 4, &zero, C,
                            CUDA_R_32F, 3, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
  ok5 = ok5 && cudaMemcpy(hc.data(), C, 24, cudaMemcpyDeviceToHost) == cudaSuccess && all_nan(hc);  // not run yet
  ok5 = ok5 && cudaStreamSynchronize(s) == cudaSuccess && cudaMemcpy(hc.data(), C, 24, cudaMemcpyDeviceToHost) == cudaSuccess;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 2; j++) {
      double ref = 0;
      for (int l = 0; l < 4; l++) ref += (double)ha[i + 3 * l] * hbm[l + 4 * j];
      ok5 = ok5 && std::fabs(hc[i + 3 * j] - ref) < 1e-5;
    }
  ok5 = ok5 && cublasGemmEx(hb, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, CUDA_R_32F, 2, B, CUDA_R_32F, 4, &zero, C,
                            CUDA_R_32F, 3, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE;
  ok5 = ok5 && cublasGemmEx(hb, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 4, &one, A, CUDA_R_32F, 3, B, CUDA_R_32F, 4, &zero,
                            hc.data(), CUDA_R_32F, 3, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE;
  ok5 = ok5 && cublasGemmEx(hb, CUBLAS_OP_N, CUBLAS_OP_N, 4, 2, 4, &one, A, CUDA_R_32F, 4, B, CUDA_R_32F, 4, &zero, C,
                            CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE;
  cublasDestroy(hb);
  report_exact("sim cuBLAS GemmEx: product on the stream, leading dimension / host C / overrun refused", ok5);
  // one-rank NCCL: an out-of-place all-reduce copies, on the stream; two ranks are refused
  SimId id;
  void* comm = nullptr;
  void* comm2 = nullptr;
  bool ok6 = ncclGetUniqueId(&id) == 0 && ncclCommInitRank(&comm, 1, id, 0) == 0 && comm;
  struct {
    size_t size;
    unsigned magic, version;
    int blocking;
  } cfg{sizeof cfg, 0xcafebeef, 21400, 0};
  int async = -1;
  ok6 = ok6 && ncclCommInitRankConfig(&comm2, 2, id, 0, &cfg) == 7 && ncclCommGetAsyncError(comm2, &async) == 0 &&
        async == 7 && ncclAllReduce(A, C, 6, 7, 0, comm2, s) == 5 && ncclCommAbort(comm2) == 0;
  ok6 = ok6 && ncclAllReduce(A, C, 6, 7, 0, comm, s) == 0 && cudaStreamSynchronize(s) == cudaSuccess &&
        cudaMemcpy(hc.data(), C, 24, cudaMemcpyDeviceToHost) == cudaSuccess;
  for (int i = 0; i < 6; i++) ok6 = ok6 && hc[i] == ha[i];
  ok6 = ok6 && ncclAllReduce(A, hc.data(), 6, 7, 0, comm, s) == 4;  // host buffer
  report_exact("sim NCCL: one rank all-reduce on the stream; two ranks stay in progress; host buffers refused", ok6);
  cudaFree(A);
  cudaFree(B);
  cudaFree(C);
  cudaFreeHost(pin);
  cudaEventDestroy(ev);
  cudaFree(d);
  cudaStreamDestroy(s);
  ::sim::set_deferred(false);
}
