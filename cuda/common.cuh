// common.cuh — what every CUDA file of the backend shares: error checks that
// throw (never exit or abort), the element types, and warp/block reductions.
//
//   CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));     // throws pyllama::CudaError
//   my_kernel<<<grid, block, 0, stream>>>(...);
//   CUDA_CHECK_LAUNCH();                                  // launch-configuration errors
//
// A failing check throws pyllama::CudaError (a std::runtime_error, RuntimeError in
// Python) whose message names the call, the CUDA error, the file and the line.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "cuda_device.h"  // CudaError

#ifdef PYLLAMA_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

namespace pyllama {

[[noreturn]] inline void cuda_throw(cudaError_t err, const char* expr, const char* file, int line) {
  std::ostringstream ss;
  ss << "CUDA error " << cudaGetErrorName(err) << " (" << cudaGetErrorString(err) << ") in " << expr << " at "
     << file << ":" << line;
  throw CudaError(ss.str());
}

#ifdef PYLLAMA_HAVE_CUBLAS
[[noreturn]] inline void cublas_throw(cublasStatus_t st, const char* expr, const char* file, int line) {
  std::ostringstream ss;
  ss << "cuBLAS error " << cublasGetStatusName(st) << " (" << cublasGetStatusString(st) << ") in " << expr
     << " at " << file << ":" << line;
  throw CudaError(ss.str());
}
#endif

}  // namespace pyllama

#define CUDA_CHECK(expr)                                                     \
  do {                                                                       \
    cudaError_t pyllama_cuda_err_ = (expr);                                  \
    if (pyllama_cuda_err_ != cudaSuccess) {                                  \
      (void)cudaGetLastError(); /* clear a non-sticky error */               \
      ::pyllama::cuda_throw(pyllama_cuda_err_, #expr, __FILE__, __LINE__);   \
    }                                                                        \
  } while (0)

// After a <<<...>>> launch: reports bad launch configurations (grid, block, shared memory).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#ifdef PYLLAMA_HAVE_CUBLAS
#define CUBLAS_CHECK(expr)                                                   \
  do {                                                                       \
    cublasStatus_t pyllama_cublas_st_ = (expr);                              \
    if (pyllama_cublas_st_ != CUBLAS_STATUS_SUCCESS)                         \
      ::pyllama::cublas_throw(pyllama_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)
#endif

namespace pyllama {
namespace gpu {

using bf16 = __nv_bfloat16;

// Loads and stores convert to and from float; all arithmetic is in float.
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// Every lane of the warp must call these (full mask).
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every
// thread must call it; every thread gets the result. `shared` holds 32 values.
template <typename F>
__device__ __forceinline__ F block_sum(F v, F* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  F r = lane < nwarps ? shared[lane] : F(0);
  return warp_sum(r);
}
__device__ __forceinline__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? shared[lane] : -INFINITY;
  return warp_max(r);
}

// 128-bit packs: kPack<T> consecutive elements (4 float or 8 bf16) in one load or store,
// converted to and from float. The caller guarantees 16-byte alignment (aligned16 on the
// host for the base pointers, and row lengths that are multiples of kPack<T>).
template <typename T>
constexpr int kPack = 16 / (int)sizeof(T);

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The kPack<T> elements of a 128-bit word as floats (a word loaded ahead, or load_pack's).
template <typename T>
__device__ __forceinline__ void unpack(const uint4& t, float* o) {
  const unsigned u[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    if constexpr (sizeof(T) == 4) {
      o[k] = __uint_as_float(u[k]);
    } else {  // little endian: the lower half is the first element
      o[2 * k] = __uint_as_float(u[k] << 16);
      o[2 * k + 1] = __uint_as_float(u[k] & 0xffff0000u);
    }
  }
}
__device__ __forceinline__ void load_pack(const float* p, float* o) {
  unpack<float>(*reinterpret_cast<const uint4*>(p), o);
}
__device__ __forceinline__ void load_pack(const bf16* p, float* o) {
  unpack<bf16>(*reinterpret_cast<const uint4*>(p), o);
}
__device__ __forceinline__ void store_pack(float* p, const float* v) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_pack(bf16* p, const float* v) {
  unsigned u[4];
#pragma unroll
  for (int k = 0; k < 4; k++)
    u[k] = (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k])) |
           ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k + 1])) << 16);
  *reinterpret_cast<uint4*>(p) = make_uint4(u[0], u[1], u[2], u[3]);
}

// Blocks for a 1-D grid over n items, at most `cap` blocks (grid-stride loops cover the rest).
inline unsigned grid_for(long long n, int threads, long long cap = 65535LL * 16) {
  long long g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g);
}

}  // namespace gpu
}  // namespace pyllama
