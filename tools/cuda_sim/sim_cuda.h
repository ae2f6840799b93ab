// sim_cuda.h — the CUDA built-ins the kernels of cuda/ use, emulated on the CPU (see
// run.sh). Force-included before every prepared .cu file (prep.py), and reached through
// the stand-ins include/cuda_runtime.h and include/cuda_bf16.h.
//
// Execution model (sim_runtime.cpp): the blocks of a launch run one after another; the
// threads of a block are fibers (ucontext) on one OS thread, switched only at barriers, so
// runs are deterministic. __syncthreads() is a block barrier that fails when the threads
// wait at different lines, when one of them has exited, or on a deadlock; warp shuffles
// and __syncwarp are warp barriers with the same checks (a full-mask shuffle needs all 32
// lanes alive). Shared memory (dynamic: exactly the launch's bytes; static: one heap
// object per __shared__ variable) is filled with 0xff bytes (float and double NaN) at each
// block start. Launch configurations are checked like the driver does (block <= 1024
// threads, grid.y/z <= 65535, dynamic shared memory <= the opt-in limit); a bad one makes
// the next cudaGetLastError() fail, as on a GPU.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>

#define PYLLAMA_CUDA_SIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__
#define __align__(n) alignas(n)
#define __constant__ static

// ---------------------------------------------------------------- vector types
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// the current fiber's coordinates (set by the scheduler at every switch)
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------- bf16
struct __nv_bfloat16 {
  unsigned short __x;
};
using nv_bfloat16 = __nv_bfloat16;
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = (uint32_t)h.__x << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(unsigned short)((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{(unsigned short)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }

// ---------------------------------------------------------------- math and bit casts
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __int_as_float(int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline int __float_as_int(float f) {
  int u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
using std::isfinite;
using std::isinf;
using std::isnan;
// CUDA's min/max take mixed integer types
template <typename A, typename B>
inline auto min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return (C)a < (C)b ? (C)a : (C)b;
}
template <typename A, typename B>
inline auto max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return (C)a < (C)b ? (C)b : (C)a;
}
[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "SIM ERROR: __trap()\n");
  std::abort();
}

// ---------------------------------------------------------------- barriers, shuffles
namespace sim {
void sync_block(int line);                 // __syncthreads
void sync_warp(int line);                  // __syncwarp and the two halves of a shuffle
void* dyn_smem();                          // the launch's dynamic shared memory
void* static_shared(size_t bytes, int key);  // one object per __shared__ variable and block
uint64_t* shfl_slot(int lane);             // lane's exchange slot in the current warp
int lane_alive(int lane);                  // 1 when lane of the current warp is running
int lane_id();                             // the linear thread index of the block, mod 32
int warp_id();                             // and divided by 32
[[noreturn]] void fail(const char* fmt, ...);

template <typename T>
T& shared_var(int key) {
  return *static_cast<T*>(static_shared(sizeof(T), key));
}

template <typename T>
T shfl_from(unsigned mask, T v, int src_lane, int line) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 64 bits");
  const int lane = lane_id();
  if (mask != 0xffffffffu) fail("shuffle with a partial mask 0x%x (not emulated) at line %d", mask, line);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  *shfl_slot(lane) = bits;
  sync_warp(1000000 + line);
  if (!lane_alive(src_lane)) fail("shuffle at line %d reads lane %d, which has exited or does not exist", line, src_lane);
  const uint64_t got = *shfl_slot(src_lane);
  sync_warp(2000000 + line);
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
}  // namespace sim

#define __syncthreads() ::sim::sync_block(__LINE__)
#define __syncwarp(...) ::sim::sync_warp(__LINE__)
#define __shfl_sync(mask, v, src, ...) ::sim::shfl_sync_(mask, v, src, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, o, ...) ::sim::shfl_xor_sync_(mask, v, o, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::sim::shfl_down_sync_(mask, v, d, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::sim::shfl_up_sync_(mask, v, d, __LINE__, ##__VA_ARGS__)
namespace sim {
template <typename T>
T shfl_sync_(unsigned mask, T v, int src, int line, int width = 32) {
  const int lane = lane_id();
  return shfl_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)), line);
}
template <typename T>
T shfl_xor_sync_(unsigned mask, T v, int o, int line, int width = 32) {
  const int lane = lane_id();
  const int src = lane ^ o;
  // a source outside the lane's width-segment reads the lane's own value
  return shfl_from(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane, line);
}
template <typename T>
T shfl_down_sync_(unsigned mask, T v, unsigned d, int line, int width = 32) {
  const int lane = lane_id(), seg = lane & ~(width - 1);
  const int src = lane + (int)d;
  return shfl_from(mask, v, src < seg + width ? src : lane, line);
}
template <typename T>
T shfl_up_sync_(unsigned mask, T v, unsigned d, int line, int width = 32) {
  const int lane = lane_id(), seg = lane & ~(width - 1);
  const int src = lane - (int)d;
  return shfl_from(mask, v, src >= seg ? src : lane, line);
}
}  // namespace sim

// ---------------------------------------------------------------- atomics
// Fibers switch only at barriers, so a read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}

// Blocks run one after another and memory is one array, so every write is visible to the
// next block: a fence does nothing and an L2-only load is a plain load.
inline void __threadfence() {}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

// ---------------------------------------------------------------- tensor cores (bf16)
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, emulated from the PTX ISA fragment
// layout (flash_attention.cu leaves bf16_bits and mma16816 to the emulator).
namespace pyllama {
namespace gpu {
inline uint16_t bf16_bits(__nv_bfloat16 x) { return x.__x; }
void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
}  // namespace gpu
}  // namespace pyllama

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16 (PTX ISA): N 8 x 8 matrices of
// 16-bit elements, row j of matrix i at the shared address given by lane 8 i + j (16-byte
// aligned; the other lanes' addresses are ignored). Lane l receives in register i the
// elements (row l / 4, columns 2 (l % 4) + {0, 1}) of matrix i, low half first; with
// .trans the elements (rows 2 (l % 4) + {0, 1}, column l / 4). Whole warp.
//
// cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_bytes (+ commit_group,
// wait_group N): the copy is emulated at the wait that completes its group (src read at
// issue), and the destination holds NaN (0xff bytes) in between, so reading it before
// wait_group + __syncthreads shows; src_bytes < bytes zero-fills the rest. A thread that
// exits with copies not waited for is an error.
namespace sim {
void ldmatrix(uint32_t* r, int n, bool trans, const void* p, int line);
void cp_async(void* dst, const void* src, int bytes, int src_bytes, int line);
void cp_async_commit();
void cp_async_wait(int n);
}  // namespace sim
namespace pyllama {
namespace gpu {
#define PYLLAMA_SIM_LDSM(name, n, t) \
  inline void name(uint32_t(&r)[n], const void* p) { ::sim::ldmatrix(r, n, t, p, __LINE__); }
PYLLAMA_SIM_LDSM(ldsm_x1, 1, false)
PYLLAMA_SIM_LDSM(ldsm_x2, 2, false)
PYLLAMA_SIM_LDSM(ldsm_x4, 4, false)
PYLLAMA_SIM_LDSM(ldsm_x1_t, 1, true)
PYLLAMA_SIM_LDSM(ldsm_x2_t, 2, true)
PYLLAMA_SIM_LDSM(ldsm_x4_t, 4, true)
#undef PYLLAMA_SIM_LDSM
// 16 bytes (.cg) / 4 bytes (.ca); zero-filled when !valid (src_bytes 0; src not read)
inline void cp_async16(void* dst, const void* src, bool valid) { ::sim::cp_async(dst, src, 16, valid ? 16 : 0, 0); }
inline void cp_async4(void* dst, const void* src, bool valid) { ::sim::cp_async(dst, src, 4, valid ? 4 : 0, 0); }
inline void cp_async_commit() { ::sim::cp_async_commit(); }
template <int N>
inline void cp_async_wait() { ::sim::cp_async_wait(N); }
}  // namespace gpu
}  // namespace pyllama

// ---------------------------------------------------------------- host runtime
// sim_host.cpp: one emulated H200 (device 0). Device and pinned memory are host memory,
// registered so that copies in the wrong direction, frees of unknown pointers and leaks
// show. Work on a stream (launches, async copies and sets, cuBLAS calls) runs at once in
// the kernel tests (immediate mode); in the PYLLAMA_CUDA=SIM extension (deferred mode,
// sim::set_deferred) it waits in its stream's queue until the host synchronises with that
// stream (cudaStreamSynchronize, cudaEventQuery of an event recorded there,
// cudaDeviceSynchronize, cudaFree / cudaFreeHost, or a synchronous cudaMemcpy / cudaMemset,
// which wait for the legacy stream 0 only), so a host that reads a result before waiting
// for it reads stale memory, and work on two streams with no synchronisation between them
// runs in the order that is worst for it. Stream capture records the work into a graph
// (kernel arguments taken at capture, as CUDA does); synchronous calls during a capture
// invalidate it.
struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;
struct CUgraph_st;
using cudaGraph_t = CUgraph_st*;
struct CUgraphExec_st;
using cudaGraphExec_t = CUgraphExec_st*;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorLaunchOutOfResources = 7,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureImplicit = 906,
};
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMultiProcessorCount = 16,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1, cudaStreamCaptureModeRelaxed = 2 };
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventDisableTiming = 2;
struct cudaFuncAttributes {
  int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion;
  size_t sharedSizeBytes, maxDynamicSharedSizeBytes;
};
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int dev);
cudaError_t cudaMalloc(void** p, size_t n);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t n);
cudaError_t cudaFreeHost(void* p);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
template <typename T>
cudaError_t cudaMallocHost(T** p, size_t n) { return cudaMallocHost(reinterpret_cast<void**>(p), n); }
cudaError_t cudaMemset(void* p, int v, size_t n);
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s = nullptr);
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t st = nullptr);
// device-to-device only (what cuda/ uses): height rows of width bytes, row pitches in bytes
cudaError_t cudaMemcpy2DAsync(void* d, size_t dpitch, const void* s, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind k, cudaStream_t st = nullptr);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);  // 0: no GPU clock here
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1, cudaStreamCaptureStatusInvalidated = 2 };
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
namespace sim {
cudaError_t func_set_attribute(const void* f, int attr, int value);
cudaError_t func_get_attributes(cudaFuncAttributes* fa, const void* f);
// Work on stream s: run now (immediate mode), queue it (deferred mode) or record it into
// the capture of s. Returns the error of an enqueue a capture refuses.
cudaError_t enqueue(cudaStream_t s, const char* what, std::function<void()> op);
void set_deferred(bool on);  // off by default (the kernel tests read results at once)
// whether [p, p + bytes) lies inside one device allocation
bool is_device(const void* p, size_t bytes);
// bytes of device memory allocated now, and the number of live allocations
size_t device_bytes();
size_t device_allocations();
// counters of the host's requests (sim_host.cpp: kernel_launches, cublas_calls,
// graph_launches, host_waits, copies_*); counter_name(i) lists them (nullptr past the end)
long long counter(const char* name);
const char* counter_name(int i);
}  // namespace sim
template <typename F>
cudaError_t cudaFuncSetAttribute(F* f, cudaFuncAttribute a, int v) {
  return ::sim::func_set_attribute(reinterpret_cast<const void*>(f), (int)a, v);
}
template <typename F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* fa, F* f) {
  return ::sim::func_get_attributes(fa, reinterpret_cast<const void*>(f));
}

// ---------------------------------------------------------------- launches
// prep.py rewrites  kernel<<<grid, block, smem, stream>>>(args);  into
//   ::sim::launch(::sim::Cfg(grid, block, smem, stream), "kernel", (const void*)&kernel,
//                 [sim_args = std::make_tuple(args)] { std::apply(kernel, sim_args); });
// the arguments are evaluated at the launch (as CUDA does), the kernel runs when its
// stream's work runs (see above).
#include <tuple>
namespace sim {
struct Cfg {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), smem(s), stream(st) {}
};
void launch(const Cfg& cfg, const char* name, const void* fn, std::function<void()> body);
// counters for the drivers: launches so far, and the names of the last ones
long long launches();
const char* last_kernel();
}  // namespace sim
