// sim_nccl.cpp — NCCL for the PYLLAMA_CUDA=SIM build: the functions cuda/nccl.cu resolves
// with dlsym, exported from the extension itself, so that pointing PYLLAMA_NCCL_LIBRARY at
// the extension's own file (pyllama._core.__file__) loads them. The emulator has one device
// and no peers: a communicator of one rank completes at once, and its all-reduce (sum or
// average) and broadcast copy the send buffer to the receive buffer as work on the given
// stream, checked against the registered device memory. A communicator of more ranks waits
// for peers that never come, as NCCL does when a rank is missing: a non-blocking creation
// stays ncclInProgress (until aborted), a blocking one never returns.
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "sim_cuda.h"

#define SIM_NCCL_API extern "C" __attribute__((visibility("default")))

namespace {
constexpr int kSuccess = 0, kInvalidArgument = 4, kInvalidUsage = 5, kInProgress = 7;
constexpr int kFloat32 = 7, kFloat64 = 8, kBfloat16 = 9;  // ncclDataType_t
constexpr int kSum = 0, kAvg = 4;                         // ncclRedOp_t
struct Id {
  char internal[128];
};
const char kMagic[] = "pyllama-sim-nccl";
std::string last_error;
int fail(int code, const std::string& why) {
  last_error = why;
  return code;
}
size_t type_size(int t) { return t == kFloat64 ? 8 : t == kFloat32 ? 4 : t == kBfloat16 ? 2 : 0; }
int copy(const void* send, void* recv, size_t count, int type, cudaStream_t stream, const char* what) {
  const size_t bytes = count * type_size(type);
  if (!type_size(type)) return fail(kInvalidArgument, std::string(what) + ": unsupported data type");
  if (!bytes) return kSuccess;
  if (!sim::is_device(send, bytes) || !sim::is_device(recv, bytes))
    return fail(kInvalidArgument, std::string(what) + ": a buffer is not inside one device allocation");
  if (send == recv) return kSuccess;
  const cudaError_t e = sim::enqueue(stream, what, [send, recv, bytes] { std::memmove(recv, send, bytes); });
  return e == cudaSuccess ? kSuccess : fail(1, std::string(what) + ": " + cudaGetErrorName(e));
}
}  // namespace

struct ncclComm {
  bool pending = false;  // waiting for peers (never completes)
};

namespace {
struct Config {  // the head of ncclConfig_t (NCCL 2.14)
  size_t size;
  unsigned magic, version;
  int blocking;
};
}  // namespace

SIM_NCCL_API int ncclGetVersion(int* v) {
  *v = 23200;  // reports itself as 2.32.0
  return kSuccess;
}
SIM_NCCL_API int ncclGetUniqueId(Id* id) {
  std::memset(id, 0, sizeof *id);
  std::memcpy(id->internal, kMagic, sizeof kMagic);
  return kSuccess;
}
SIM_NCCL_API int ncclCommInitRankConfig(ncclComm** comm, int nranks, Id id, int rank, void* config) {
  if (std::memcmp(id.internal, kMagic, sizeof kMagic) != 0)
    return fail(kInvalidArgument, "the unique id does not come from this library's ncclGetUniqueId");
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(kInvalidArgument, "rank " + std::to_string(rank) + " of " + std::to_string(nranks));
  const bool blocking = !config || static_cast<const Config*>(config)->blocking != 0;
  if (nranks > 1) {  // the other ranks cannot join an emulated device
    last_error = "waiting for " + std::to_string(nranks - 1) + " peer rank(s) (the emulator has one device)";
    if (blocking)
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    *comm = new ncclComm{true};
    return kInProgress;
  }
  *comm = new ncclComm;
  return kSuccess;
}
SIM_NCCL_API int ncclCommInitRank(ncclComm** comm, int nranks, Id id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}
SIM_NCCL_API int ncclCommDestroy(ncclComm* c) {
  delete c;
  return kSuccess;
}
SIM_NCCL_API int ncclCommAbort(ncclComm* c) {
  delete c;
  return kSuccess;
}
SIM_NCCL_API int ncclCommGetAsyncError(ncclComm* c, int* e) {
  *e = c && c->pending ? kInProgress : kSuccess;
  return kSuccess;
}
SIM_NCCL_API const char* ncclGetErrorString(int r) {
  switch (r) {
    case kSuccess: return "no error";
    case kInvalidArgument: return "invalid argument";
    case kInvalidUsage: return "invalid usage";
  }
  return "emulator error";
}
SIM_NCCL_API const char* ncclGetLastError(ncclComm*) { return last_error.c_str(); }
SIM_NCCL_API int ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, ncclComm* comm,
                               cudaStream_t stream) {
  if (!comm || comm->pending) return fail(kInvalidUsage, "ncclAllReduce: communicator not ready");
  if (op != kSum && op != kAvg) return fail(kInvalidArgument, "ncclAllReduce: the emulator knows sum and avg");
  return copy(send, recv, count, type, stream, "ncclAllReduce");  // the sum (or mean) over one rank
}
SIM_NCCL_API int ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, ncclComm* comm,
                               cudaStream_t stream) {
  if (!comm || comm->pending) return fail(kInvalidUsage, "ncclBroadcast: communicator not ready");
  if (root != 0) return fail(kInvalidArgument, "ncclBroadcast: root must be 0 in a world of one");
  return copy(send, recv, count, type, stream, "ncclBroadcast");
}
SIM_NCCL_API int ncclGroupStart() { return kSuccess; }
SIM_NCCL_API int ncclGroupEnd() { return kSuccess; }
