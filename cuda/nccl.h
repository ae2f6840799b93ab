// nccl.h — NCCL collectives for data-parallel training on GPUs. Plain C++ (no CUDA
// or NCCL headers), so the binding file can include it.
//
// NCCL is not needed to build pyllama: the library is loaded at run time (dlopen) and
// the few functions used are looked up by name (dlsym), with the types they take
// declared in nccl.cu (checked against NCCL's nccl.h, 2.32). Python passes the
// candidate paths (pyllama.distributed: $PYLLAMA_NCCL_LIBRARY, else the
// nvidia-nccl-cu13 wheel's lib/libnccl.so.2, else plain libnccl.so.2).
//
//   pyllama::nccl_load({"/path/to/libnccl.so.2", "libnccl.so.2"});   // once per process
//   std::string id = pyllama::nccl_unique_id();                     // rank 0; 128 bytes to every rank
//   pyllama::NcclComm comm(id, rank, world_size, /*device=*/local_rank, /*timeout_s=*/300);
//   comm.broadcast_params(model, 0, "weight broadcast");            // every rank starts from rank 0's weights
//   comm.allreduce_grads(model, pyllama::NcclOp::avg, extra, 4, "gradient all-reduce");
//
// Every collective is queued on the model's own stream (Model::stream()) and
// then waited for by polling (ncclCommGetAsyncError until the call is queued, then
// cudaEventQuery) against the communicator's deadline; past it, or on an asynchronous
// NCCL error, the communicator is aborted (ncclCommAbort) and NcclError is thrown.
// Communicators are non-blocking (NCCL 2.14+) unless asked otherwise, so creation is
// polled under the same deadline. Nothing here exits or aborts the process. Errors name
// the NCCL call, NCCL's error string, the file and the line.
#pragma once
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyllama {

class Model;

// A failed, timed-out or unavailable NCCL operation (RuntimeError in Python: _core.NcclError).
struct NcclError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Load the NCCL library from the first candidate that loads and exports every needed
// function; returns that candidate. Once loaded, later calls return the loaded path at
// once. Throws NcclError listing each candidate and why it failed.
std::string nccl_load(const std::vector<std::string>& candidates);
bool nccl_loaded();
std::string nccl_loaded_path();  // "" before nccl_load succeeded
int nccl_version();              // e.g. 23203 for 2.32.3; throws NcclError when not loaded

// A new unique id (ncclGetUniqueId): 128 bytes that every rank passes to NcclComm.
std::string nccl_unique_id();

enum class NcclOp : int { sum = 0, avg = 4 };                          // ncclRedOp_t values
enum class NcclType : int { float32 = 7, float64 = 8, bfloat16 = 9 };  // ncclDataType_t values

class NcclComm {
 public:
  // A communicator on GPU `device`, created within timeout_s seconds (0: no deadline).
  // blocking=false (default): a non-blocking communicator (ncclCommInitRankConfig with
  // blocking=0): creation and every call return at once and are polled, so a missing rank
  // ends in ncclCommAbort at the deadline. blocking=true: ncclCommInitRank on a helper
  // thread that is abandoned at the deadline, and blocking collectives (a fallback).
  NcclComm(const std::string& unique_id, int rank, int world_size, int device, double timeout_s,
           bool blocking = false);
  ~NcclComm();  // ncclCommAbort (frees it without waiting for peers)
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const;
  int world_size() const;
  int device() const;
  double timeout_s() const;
  void set_timeout_s(double timeout_s);  // 0: no deadline
  bool usable() const;                   // false after abort(), destroy() or a failed collective
  bool blocking() const;
  std::string failure() const;           // why it is not usable ("" while usable)

  // In place over the model's flat float32 gradient buffer (sum or average over the
  // ranks), on the model's stream; `extra` (n_extra host doubles, may be null) is summed
  // over the ranks in the same NCCL group. Returns when both are complete.
  void allreduce_grads(Model& model, NcclOp op, double* extra, int n_extra, const std::string& what);
  // The model's flat float32 parameters from rank `root` to every rank (in place; the
  // bf16 compute copy is refreshed). Returns when complete.
  void broadcast_params(Model& model, int root, const std::string& what);
  // In place over `count` elements of host memory (staged through the GPU).
  void allreduce_host(void* data, size_t count, NcclType type, NcclOp op, const std::string& what);

  void abort();    // ncclCommAbort (cancels pending collectives); idempotent
  void destroy();  // ncclCommDestroy (may wait for the peers); idempotent; after abort() a no-op

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pyllama
