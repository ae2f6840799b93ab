// nccl.cu — NCCL loaded at run time, and the communicator the data-parallel trainer
// uses (see nccl.h). No NCCL header is included: the handful of types, enum values and
// the config prefix used below are declared here, checked against NCCL's nccl.h (2.32).
#include <dlfcn.h>

#include <atomic>
#include <climits>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <sstream>
#include <system_error>
#include <thread>

#include "common.cuh"
#include "model_cuda.h"
#include "nccl.h"

namespace pyllama {
namespace {

// ------------------------------------------------------------------ NCCL's ABI (the part used)
using nccl_result = int;  // ncclResult_t
constexpr nccl_result kSuccess = 0, kUnhandledCudaError = 1, kInProgress = 7;
constexpr size_t kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
struct UniqueId {
  char internal[kUniqueIdBytes];
};
using nccl_comm = struct ncclComm*;  // opaque (ncclComm_t)
constexpr int kMinVersion = 21400;   // 2.14: non-blocking communicators (ncclAvg: 2.10)

// ncclConfig_t as NCCL 2.14 defined it (NCCL copies `size` bytes of it over its defaults and
// reads only the fields that existed in `version`; later fields keep their defaults).
constexpr int kConfigUndefInt = INT_MIN;  // NCCL_CONFIG_UNDEF_INT
struct Config214 {
  size_t size;
  unsigned int magic;    // NCCL_API_MAGIC
  unsigned int version;  // NCCL_VERSION(2, 14, 0)
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char* netName;
};
constexpr unsigned int kApiMagic = 0xcafebeef;
constexpr unsigned int kConfigVersion = 21400;

const char* result_name(nccl_result r) {
  static const char* names[] = {"ncclSuccess",       "ncclUnhandledCudaError", "ncclSystemError",
                                "ncclInternalError", "ncclInvalidArgument",    "ncclInvalidUsage",
                                "ncclRemoteError",   "ncclInProgress",         "ncclTimeout"};
  return r >= 0 && r < 9 ? names[r] : "unknown ncclResult_t";
}

struct Api {
  void* handle = nullptr;
  std::string path;
  nccl_result (*GetVersion)(int*) = nullptr;
  nccl_result (*GetUniqueId)(UniqueId*) = nullptr;
  nccl_result (*CommInitRank)(nccl_comm*, int, UniqueId, int) = nullptr;
  nccl_result (*CommInitRankConfig)(nccl_comm*, int, UniqueId, int, Config214*) = nullptr;
  nccl_result (*CommDestroy)(nccl_comm) = nullptr;
  nccl_result (*CommAbort)(nccl_comm) = nullptr;
  nccl_result (*CommGetAsyncError)(nccl_comm, nccl_result*) = nullptr;
  const char* (*GetErrorString)(nccl_result) = nullptr;
  const char* (*GetLastError)(nccl_comm) = nullptr;  // optional (2.13+)
  nccl_result (*AllReduce)(const void*, void*, size_t, int, int, nccl_comm, cudaStream_t) = nullptr;
  nccl_result (*Broadcast)(const void*, void*, size_t, int, int, nccl_comm, cudaStream_t) = nullptr;
  nccl_result (*GroupStart)() = nullptr;
  nccl_result (*GroupEnd)() = nullptr;
  int version = 0;
};

std::mutex g_load_mu;
Api g_api;                          // written once under g_load_mu, then read-only
std::atomic<bool> g_loaded{false};  // published after g_api is complete

const Api& api() {
  if (!g_loaded.load(std::memory_order_acquire))
    throw NcclError("NCCL is not loaded: call pyllama.distributed.load_nccl() first (it finds libnccl.so.2; "
                    "pip install nvidia-nccl-cu13, or set PYLLAMA_NCCL_LIBRARY to its path)");
  return g_api;
}

std::string describe(nccl_result r, nccl_comm comm = nullptr) {  // name (string; NCCL's last error)
  std::ostringstream ss;
  ss << result_name(r) << " (" << (g_api.GetErrorString ? g_api.GetErrorString(r) : "?");
  if (g_api.GetLastError) {  // its argument is unused by NCCL; NULL is allowed
    const char* last = g_api.GetLastError(comm);
    if (last && *last) ss << "; NCCL's last error: " << last;
  }
  ss << ")";
  return ss.str();
}

[[noreturn]] void nccl_throw(nccl_result r, nccl_comm comm, const char* expr, const char* file, int line) {
  std::ostringstream ss;
  ss << "NCCL error " << describe(r, comm) << " in " << expr << " at " << file << ":" << line;
  throw NcclError(ss.str());
}

// A synchronous NCCL call must return ncclSuccess (ncclInProgress only on non-blocking communicators,
// which this file does not create).
#define NCCL_CHECK(comm, expr)                                                    \
  do {                                                                            \
    nccl_result pyllama_nccl_r_ = (expr);                                         \
    if (pyllama_nccl_r_ != kSuccess) nccl_throw(pyllama_nccl_r_, comm, #expr, __FILE__, __LINE__); \
  } while (0)

template <typename F>
bool resolve(void* h, const char* name, F& fn, std::string& missing) {
  dlerror();
  void* p = dlsym(h, name);
  if (!p) {
    if (!missing.empty()) missing += ", ";
    missing += name;
    return false;
  }
  fn = reinterpret_cast<F>(p);
  return true;
}

// Grow-only page-locked host buffer and device buffer (for staging host data).
struct Staging {
  void* host = nullptr;
  void* dev = nullptr;
  size_t bytes = 0;
  void reserve(size_t n) {
    if (n <= bytes) return;
    release();
    CUDA_CHECK(cudaMallocHost(&host, n));
    CUDA_CHECK(cudaMalloc(&dev, n));
    bytes = n;
  }
  void release() noexcept {
    if (host) cudaFreeHost(host);
    if (dev) cudaFree(dev);
    host = dev = nullptr;
    bytes = 0;
  }
};

// ncclCommAbort on a helper thread, waited for at most `limit_s` seconds: some NCCL
// versions have been seen to hang in it (NVIDIA/nccl#829), and nothing here may hang.
// Returns false when it did not return in time (the thread is left running).
bool abort_bounded(nccl_comm c, double limit_s) {
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  auto st = std::make_shared<State>();
  try {
    std::thread([st, c]() {
      g_api.CommAbort(c);  // result ignored: the communicator is being given up
      {
        std::lock_guard<std::mutex> lock(st->mu);
        st->done = true;
      }
      st->cv.notify_all();
    }).detach();
  } catch (const std::system_error&) {  // no thread: abort here
    g_api.CommAbort(c);
    return true;
  }
  std::unique_lock<std::mutex> lock(st->mu);
  return st->cv.wait_for(lock, std::chrono::duration<double>(limit_s), [&] { return st->done; });
}
constexpr double kAbortLimitS = 15.0;

size_t type_size(NcclType t) {
  switch (t) {
    case NcclType::float32: return 4;
    case NcclType::float64: return 8;
    case NcclType::bfloat16: return 2;
  }
  throw ValueError("NCCL: unknown data type");
}

}  // namespace

// ------------------------------------------------------------------ loading

std::string nccl_load(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(g_load_mu);
  if (g_loaded.load()) return g_api.path;
  if (candidates.empty())
    throw NcclError("nccl_load: no candidate paths for libnccl.so.2 (pip install nvidia-nccl-cu13, or set "
                    "PYLLAMA_NCCL_LIBRARY)");
  std::ostringstream why;
  for (const std::string& path : candidates) {
    dlerror();
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      why << "\n  " << path << ": " << (e ? e : "dlopen failed");
      continue;
    }
    Api a;
    std::string missing;
    resolve(h, "ncclGetVersion", a.GetVersion, missing);
    resolve(h, "ncclGetUniqueId", a.GetUniqueId, missing);
    resolve(h, "ncclCommInitRank", a.CommInitRank, missing);
    resolve(h, "ncclCommInitRankConfig", a.CommInitRankConfig, missing);
    resolve(h, "ncclCommDestroy", a.CommDestroy, missing);
    resolve(h, "ncclCommAbort", a.CommAbort, missing);
    resolve(h, "ncclCommGetAsyncError", a.CommGetAsyncError, missing);
    resolve(h, "ncclGetErrorString", a.GetErrorString, missing);
    resolve(h, "ncclAllReduce", a.AllReduce, missing);
    resolve(h, "ncclBroadcast", a.Broadcast, missing);
    resolve(h, "ncclGroupStart", a.GroupStart, missing);
    resolve(h, "ncclGroupEnd", a.GroupEnd, missing);
    if (!missing.empty()) {
      why << "\n  " << path << ": loaded, but it does not export " << missing << " (not an NCCL library?)";
      dlclose(h);
      continue;
    }
    std::string unused;
    resolve(h, "ncclGetLastError", a.GetLastError, unused);
    int v = 0;
    if (a.GetVersion(&v) != kSuccess || v < kMinVersion) {
      why << "\n  " << path << ": NCCL version " << v << " is too old (pyllama needs 2.14 or newer)";
      dlclose(h);
      continue;
    }
    a.handle = h;  // never closed: communicators and NCCL's own threads use it until exit
    a.path = path;
    a.version = v;
    g_api = a;
    g_loaded.store(true, std::memory_order_release);
    return path;
  }
  throw NcclError("could not load the NCCL library; tried:" + why.str() +
                  "\nInstall it with `pip install nvidia-nccl-cu13` (CUDA 13), or set PYLLAMA_NCCL_LIBRARY to the "
                  "full path of libnccl.so.2");
}

bool nccl_loaded() { return g_loaded.load(std::memory_order_acquire); }
std::string nccl_loaded_path() { return nccl_loaded() ? g_api.path : std::string(); }
int nccl_version() { return api().version; }

std::string nccl_unique_id() {
  const Api& a = api();
  UniqueId id;
  std::memset(&id, 0, sizeof id);
  NCCL_CHECK(nullptr, a.GetUniqueId(&id));
  return std::string(id.internal, kUniqueIdBytes);
}

// ------------------------------------------------------------------ the communicator

struct NcclComm::Impl {
  nccl_comm comm = nullptr;
  int rank = 0, world = 1, dev = 0;
  bool blocking = false;  // false: NCCL calls return ncclInProgress instead of blocking (see settle)
  double timeout_s = 0;
  std::string failure;  // non-empty: aborted/destroyed/failed
  cudaEvent_t done = nullptr;
  cudaStream_t own_stream = nullptr;  // for host-data collectives
  Staging staging;
  std::mutex mu;  // one operation at a time

  void use() const { CUDA_CHECK(cudaSetDevice(dev)); }

  void check_usable(const std::string& what) const {
    if (!failure.empty()) throw NcclError(what + ": the NCCL communicator is no longer usable (" + failure + ")");
  }

  // ncclCommAbort (bounded); returns a note when it did not return in time.
  std::string abort_now(const std::string& why) {
    if (failure.empty()) failure = why;
    if (!comm) return "";
    nccl_comm c = comm;
    comm = nullptr;
    if (abort_bounded(c, kAbortLimitS)) return "";
    std::ostringstream ss;
    ss << " (ncclCommAbort did not return within " << kAbortLimitS << " s; it was left running)";
    failure += ss.str();
    return ss.str();
  }

  [[noreturn]] void fail(const std::string& what, const std::string& why) {
    std::ostringstream ss;
    ss << what << " (NCCL, rank " << rank << " of " << world << ", GPU " << dev << ") " << why
       << "; the communicator was aborted";
    const std::string msg = ss.str();
    throw NcclError(msg + abort_now(msg));
  }

  // A non-success result of an enqueueing call: abort and throw with NCCL's text.
  void enqueue_check(nccl_result r, const std::string& what, const char* expr, int line) {
    if (r == kSuccess || r == kInProgress) return;
    std::ostringstream ss;
    ss << "failed: NCCL error " << describe(r, comm) << " in " << expr << " at " << __FILE__ << ":" << line;
    fail(what, ss.str());
  }

  using Clock = std::chrono::steady_clock;

  [[noreturn]] void timed_out(const std::string& what) {
    std::ostringstream ss;
    ss << "did not complete within " << timeout_s << " s (TrainConfig.dist_timeout_s): another rank died, "
       << "hangs or is much slower";
    fail(what, ss.str());
  }

  // Between polls: spin briefly, then sleep (ranks may share CPU cores); the deadline.
  void pause(long spins, Clock::time_point t0, const std::string& what) {
    if (timeout_s > 0 && std::chrono::duration<double>(Clock::now() - t0).count() > timeout_s) timed_out(what);
    if (spins < 200)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(spins < 5000 ? 100 : 1000));
  }

  // The communicator's state: ncclSuccess, ncclInProgress, or an error (then abort and throw).
  nccl_result state(const std::string& what) {
    nccl_result st = kSuccess;
    nccl_result r = g_api.CommGetAsyncError(comm, &st);
    if (r != kSuccess) st = r;
    if (st != kSuccess && st != kInProgress) {
      std::ostringstream ss;
      ss << "failed: NCCL asynchronous error " << describe(st, comm) << " (a peer died, the network failed, or "
         << "the ranks' calls do not match), detected at " << __FILE__ << ":" << __LINE__;
      fail(what, ss.str());
    }
    return st;
  }

  // Non-blocking communicators: an NCCL call may return ncclInProgress before its work is
  // queued on the stream; poll until it is (nothing may be queued or recorded after it before).
  void settle(Clock::time_point t0, const std::string& what) {
    if (blocking) return;
    for (long spins = 0; state(what) == kInProgress; spins++) pause(spins, t0, what);
  }

  // Poll until everything queued on `stream` so far is done, an asynchronous NCCL error
  // shows up, or the deadline (counted from t0) passes.
  void wait(cudaStream_t stream, Clock::time_point t0, const std::string& what) {
    CUDA_CHECK(cudaEventRecord(done, stream));
    for (long spins = 0;; spins++) {
      cudaError_t e = cudaEventQuery(done);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) {
        cudaGetLastError();
        std::ostringstream ss;
        ss << "failed: CUDA error " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e)
           << ") while waiting, at " << __FILE__ << ":" << __LINE__;
        fail(what, ss.str());
      }
      state(what);
      pause(spins, t0, what);
    }
  }
};

namespace {
// Blocking creation: shared between the constructor and its helper thread.
struct InitState {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false, abandoned = false;
  nccl_result result = kSuccess;
  std::string error;  // CUDA error, or NCCL's last-error text (thread-local in NCCL: read on that thread)
  nccl_comm comm = nullptr;
};

std::string init_name(int rank, int world, int device, bool blocking) {
  std::ostringstream ss;
  ss << "NCCL communicator creation (" << (blocking ? "ncclCommInitRank" : "ncclCommInitRankConfig, non-blocking")
     << ", rank " << rank << " of " << world << ", GPU " << device << ")";
  return ss.str();
}

std::string init_timeout_text(double timeout_s) {
  std::ostringstream ss;
  ss << " did not complete within " << timeout_s << " s: another rank did not join (it died, hangs, or got a "
     << "different unique id), or the ranks cannot reach each other over the network (see NCCL_SOCKET_IFNAME, "
     << "NCCL_DEBUG=INFO)";
  return ss.str();
}
}  // namespace

NcclComm::NcclComm(const std::string& unique_id, int rank, int world_size, int device, double timeout_s,
                   bool blocking)
    : impl_(std::make_unique<Impl>()) {
  const Api& a = api();
  PYLLAMA_CHECK(unique_id.size() == kUniqueIdBytes, ValueError,
                "NCCL unique id must be " << kUniqueIdBytes << " bytes (from nccl_unique_id() on rank 0), got "
                                          << unique_id.size());
  PYLLAMA_CHECK(world_size >= 1, ValueError, "NCCL world_size must be >= 1, got " << world_size);
  PYLLAMA_CHECK(rank >= 0 && rank < world_size, ValueError,
                "NCCL rank must be in [0, " << world_size << "), got " << rank);
  PYLLAMA_CHECK(timeout_s >= 0, ValueError, "NCCL timeout_s must be >= 0 (0: no deadline), got " << timeout_s);
  const int ndev = cuda_runtime_device_count();
  if (ndev == 0) throw NcclError("NCCL needs a CUDA GPU, and none is usable in this process");
  PYLLAMA_CHECK(device >= 0 && device < ndev, ValueError,
                "NCCL device " << device << " does not exist: " << ndev << " GPU(s) visible (the device is "
                               << "LOCAL_RANK; start at most one rank per visible GPU on each node)");
  Impl& m = *impl_;
  m.rank = rank;
  m.world = world_size;
  m.dev = device;
  m.timeout_s = timeout_s;
  m.blocking = blocking;
  m.use();  // NCCL binds the communicator to the calling thread's current device
  const std::string name = init_name(rank, world_size, device, blocking);

  UniqueId id;
  std::memcpy(id.internal, unique_id.data(), kUniqueIdBytes);
  if (!blocking) {
    // Returns at once; the state reads ncclInProgress until every rank has joined, and the
    // communicator can be aborted meanwhile (nothing is left behind at the deadline).
    Config214 cfg{sizeof(Config214), kApiMagic, kConfigVersion, /*blocking=*/0, kConfigUndefInt, kConfigUndefInt,
                  kConfigUndefInt, nullptr};
    nccl_comm c = nullptr;
    nccl_result r = a.CommInitRankConfig(&c, world_size, id, rank, &cfg);
    if (r != kSuccess && r != kInProgress) {
      std::ostringstream ss;
      ss << name << " failed: NCCL error " << describe(r, c) << " at " << __FILE__ << ":" << __LINE__;
      if (c) abort_bounded(c, kAbortLimitS);
      throw NcclError(ss.str());
    }
    if (!c) throw NcclError(name + " failed: NCCL returned no communicator");
    m.comm = c;
    const auto t0 = Impl::Clock::now();
    for (long spins = 0;; spins++) {
      nccl_result st = kSuccess;
      nccl_result q = a.CommGetAsyncError(c, &st);
      if (q != kSuccess) st = q;
      if (st == kSuccess) break;
      if (st != kInProgress) {
        std::ostringstream ss;
        ss << name << " failed: NCCL error " << describe(st, c) << " at " << __FILE__ << ":" << __LINE__;
        const std::string msg = ss.str();
        throw NcclError(msg + m.abort_now(msg));
      }
      if (timeout_s > 0 && std::chrono::duration<double>(Impl::Clock::now() - t0).count() > timeout_s) {
        const std::string msg = name + init_timeout_text(timeout_s) + "; the communicator was aborted";
        throw NcclError(msg + m.abort_now(msg));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(spins < 1000 ? 200 : 2000));
    }
  } else {
    // ncclCommInitRank blocks until every rank joined: run it on a helper thread and give up
    // at the deadline (the thread is then left blocked in NCCL until the process exits).
    auto st = std::make_shared<InitState>();
    std::thread([st, id, rank, world_size, device, &a]() {
      nccl_comm c = nullptr;
      nccl_result r = kUnhandledCudaError;
      std::string err;
      cudaError_t ce = cudaSetDevice(device);
      if (ce == cudaSuccess) {
        r = a.CommInitRank(&c, world_size, id, rank);
        const char* last = (r != kSuccess && a.GetLastError) ? a.GetLastError(nullptr) : nullptr;
        if (last) err = last;
      } else {
        err = std::string("CUDA error ") + cudaGetErrorName(ce) + " (" + cudaGetErrorString(ce) +
              ") in cudaSetDevice";
      }
      bool abandoned;
      {
        std::lock_guard<std::mutex> lock(st->mu);
        st->done = true;
        st->result = r;
        st->comm = c;
        st->error = err;
        abandoned = st->abandoned;
      }
      st->cv.notify_all();
      if (abandoned && c) a.CommAbort(c);  // the constructor gave up: nobody will use it
    }).detach();

    std::unique_lock<std::mutex> lock(st->mu);
    auto ready = [&] { return st->done; };
    if (timeout_s > 0) {
      auto deadline = Impl::Clock::now() + std::chrono::duration<double>(timeout_s);
      if (!st->cv.wait_until(lock, deadline, ready)) {
        st->abandoned = true;
        throw NcclError(name + init_timeout_text(timeout_s));
      }
    } else {
      st->cv.wait(lock, ready);
    }
    if (st->result != kSuccess) {
      std::ostringstream ss;
      ss << name << " failed: NCCL error " << result_name(st->result) << " ("
         << (g_api.GetErrorString ? g_api.GetErrorString(st->result) : "?");
      if (!st->error.empty()) ss << "; " << st->error;
      ss << ") at " << __FILE__ << ":" << __LINE__;
      if (st->comm) abort_bounded(st->comm, kAbortLimitS);
      throw NcclError(ss.str());
    }
    m.comm = st->comm;
  }
  try {
    CUDA_CHECK(cudaEventCreateWithFlags(&m.done, cudaEventDisableTiming));
    CUDA_CHECK(cudaStreamCreateWithFlags(&m.own_stream, cudaStreamNonBlocking));
  } catch (...) {
    m.abort_now("set-up failed");
    if (m.done) cudaEventDestroy(m.done);
    throw;
  }
}

NcclComm::~NcclComm() {
  Impl& m = *impl_;
  // ncclCommAbort, not ncclCommDestroy: every collective was waited for, so it only frees
  // resources, and it cannot block on peers that are gone (at interpreter exit, say).
  m.abort_now("destroyed");
  if (cudaSetDevice(m.dev) == cudaSuccess) {
    if (m.done) cudaEventDestroy(m.done);
    if (m.own_stream) cudaStreamDestroy(m.own_stream);
    m.staging.release();
  }
}

int NcclComm::rank() const { return impl_->rank; }
int NcclComm::world_size() const { return impl_->world; }
int NcclComm::device() const { return impl_->dev; }
double NcclComm::timeout_s() const { return impl_->timeout_s; }
void NcclComm::set_timeout_s(double t) {
  PYLLAMA_CHECK(t >= 0, ValueError, "NCCL timeout_s must be >= 0 (0: no deadline), got " << t);
  impl_->timeout_s = t;
}
bool NcclComm::usable() const { return impl_->failure.empty(); }
bool NcclComm::blocking() const { return impl_->blocking; }
std::string NcclComm::failure() const { return impl_->failure; }

void NcclComm::allreduce_grads(Model& model, NcclOp op, double* extra, int n_extra,
                               const std::string& what) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.check_usable(what);
  PYLLAMA_CHECK(model.device() == "cuda:" + std::to_string(m.dev), ValueError,
                what << ": the model is on " << model.device() << ", the NCCL communicator on GPU " << m.dev);
  PYLLAMA_CHECK(n_extra >= 0 && (n_extra == 0 || extra != nullptr), ValueError, what << ": bad extra values");
  PYLLAMA_CHECK(op == NcclOp::sum || op == NcclOp::avg, ValueError, what << ": op must be sum or avg");
  m.use();
  const auto t0 = Impl::Clock::now();
  cudaStream_t s = static_cast<cudaStream_t>(model.stream());
  const size_t xbytes = (size_t)n_extra * sizeof(double);
  if (n_extra) {
    m.staging.reserve(xbytes);
    std::memcpy(m.staging.host, extra, xbytes);
    CUDA_CHECK(cudaMemcpyAsync(m.staging.dev, m.staging.host, xbytes, cudaMemcpyHostToDevice, s));
  }
  float* g = model.grads_device();
  const size_t n = model.num_parameters();
  m.enqueue_check(g_api.GroupStart(), what, "ncclGroupStart()", __LINE__);
  m.enqueue_check(g_api.AllReduce(g, g, n, (int)NcclType::float32, (int)op, m.comm, s), what,
                  "ncclAllReduce(grads, float32)", __LINE__);
  if (n_extra)
    m.enqueue_check(g_api.AllReduce(m.staging.dev, m.staging.dev, (size_t)n_extra, (int)NcclType::float64,
                                    (int)NcclOp::sum, m.comm, s),
                    what, "ncclAllReduce(extra, float64)", __LINE__);
  m.enqueue_check(g_api.GroupEnd(), what, "ncclGroupEnd()", __LINE__);
  m.settle(t0, what);
  if (n_extra) CUDA_CHECK(cudaMemcpyAsync(m.staging.host, m.staging.dev, xbytes, cudaMemcpyDeviceToHost, s));
  m.wait(s, t0, what);
  if (n_extra) std::memcpy(extra, m.staging.host, xbytes);
}

void NcclComm::broadcast_params(Model& model, int root, const std::string& what) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.check_usable(what);
  PYLLAMA_CHECK(root >= 0 && root < m.world, ValueError,
                what << ": broadcast root " << root << " does not exist (world size " << m.world << ")");
  PYLLAMA_CHECK(model.device() == "cuda:" + std::to_string(m.dev), ValueError,
                what << ": the model is on " << model.device() << ", the NCCL communicator on GPU " << m.dev);
  m.use();
  const auto t0 = Impl::Clock::now();
  cudaStream_t s = static_cast<cudaStream_t>(model.stream());
  float* p = model.params_device();
  m.enqueue_check(g_api.Broadcast(p, p, model.num_parameters(), (int)NcclType::float32, root, m.comm, s), what,
                  "ncclBroadcast(params, float32)", __LINE__);
  m.settle(t0, what);
  model.params_written();
  m.wait(s, t0, what);
}

void NcclComm::allreduce_host(void* data, size_t count, NcclType type, NcclOp op, const std::string& what) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.check_usable(what);
  PYLLAMA_CHECK(op == NcclOp::sum || op == NcclOp::avg, ValueError, what << ": op must be sum or avg");
  const size_t bytes = count * type_size(type);
  if (count == 0) return;
  PYLLAMA_CHECK(data != nullptr, ValueError, what << ": null data");
  m.use();
  const auto t0 = Impl::Clock::now();
  cudaStream_t s = m.own_stream;
  m.staging.reserve(bytes);
  std::memcpy(m.staging.host, data, bytes);
  CUDA_CHECK(cudaMemcpyAsync(m.staging.dev, m.staging.host, bytes, cudaMemcpyHostToDevice, s));
  m.enqueue_check(g_api.AllReduce(m.staging.dev, m.staging.dev, count, (int)type, (int)op, m.comm, s), what,
                  "ncclAllReduce(host data)", __LINE__);
  m.settle(t0, what);
  CUDA_CHECK(cudaMemcpyAsync(m.staging.host, m.staging.dev, bytes, cudaMemcpyDeviceToHost, s));
  m.wait(s, t0, what);
  std::memcpy(data, m.staging.host, bytes);
}

void NcclComm::abort() {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  m.abort_now("aborted (NcclComm.abort)");
}

void NcclComm::destroy() {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  if (!m.comm) return;
  nccl_comm c = m.comm;
  m.comm = nullptr;
  if (m.failure.empty()) m.failure = "destroyed (NcclComm.destroy)";
  if (cudaSetDevice(m.dev) != cudaSuccess) {
    cudaGetLastError();
    abort_bounded(c, kAbortLimitS);
    return;
  }
  // Every collective of this class was waited for, so nothing is pending.
  nccl_result r = g_api.CommDestroy(c);
  if (r != kSuccess && r != kInProgress) nccl_throw(r, nullptr, "ncclCommDestroy(comm)", __FILE__, __LINE__);
}

}  // namespace pyllama
