// sim_host.cpp — the CUDA runtime API of the emulator (see sim_cuda.h, "host runtime"):
// one device, registered device and pinned allocations, streams whose work is queued until
// the host synchronises with them (deferred mode), events, stream capture and graphs.
// Every call takes one process-wide lock: the emulated device is shared by all threads.
#include <cstdarg>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "sim_cuda.h"

namespace sim {
cudaError_t sticky = cudaSuccess;  // what the next cudaGetLastError returns
}

namespace {

struct Op {
  unsigned long long seq;  // enqueue order over all streams (cudaDeviceSynchronize runs them in it)
  const char* what;
  std::function<void()> fn;
};

}  // namespace

struct CUstream_st {
  unsigned flags = cudaStreamDefault;
  std::vector<Op> queue;         // deferred work not run yet
  bool capturing = false;
  cudaError_t capture_error = cudaSuccess;  // what invalidated the capture
  std::vector<Op> captured;
};
struct CUevent_st {
  cudaStream_t stream = nullptr;
  unsigned long long seq = 0;  // the work before it: seq <= this
  bool recorded = false;
};
struct CUgraph_st {
  std::vector<Op> ops;
};
struct CUgraphExec_st {
  std::vector<Op> ops;
};

namespace {

std::recursive_mutex& mu() {
  static std::recursive_mutex m;
  return m;
}
#define SIM_LOCK std::lock_guard<std::recursive_mutex> sim_lock_(mu())

#ifdef PYLLAMA_SIM_DEFERRED
bool deferred = true;
#else
bool deferred = false;
#endif
int current_device = 0;
unsigned long long next_seq = 1;
CUstream_st legacy;  // stream 0 (the legacy default stream: blocking)
std::set<CUstream_st*> streams;      // created and not destroyed
std::set<CUevent_st*> events;
std::map<const char*, size_t> device_mem;  // start -> bytes
std::map<const char*, size_t> pinned_mem;
size_t device_total = 0;
CUstream_st* capturing = nullptr;  // the stream being captured (one at a time)

// what the host asked of the device (sim_counters): kernel launches and cuBLAS calls
// enqueued outside a capture, graph launches, host waits (any call that returns only after
// device work: synchronisations, event queries, synchronous or pageable device-to-host
// copies, frees), copies by direction
enum Counter { kKernels, kCublas, kGraphs, kWaits, kD2H, kH2D, kD2D, kCounters };
long long counters[kCounters] = {};
const char* const counter_names[kCounters] = {"kernel_launches", "cublas_calls", "graph_launches", "host_waits",
                                              "copies_device_to_host", "copies_host_to_device",
                                              "copies_device_to_device"};

cudaError_t report(cudaError_t e, const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "sim: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  return e;
}

CUstream_st* resolve(cudaStream_t s) { return s ? s : &legacy; }
bool valid_stream(CUstream_st* s) { return s == &legacy || streams.count(s); }

// the allocation of `table` holding [p, p + n), or nullptr
const std::pair<const char* const, size_t>* find(const std::map<const char*, size_t>& table, const void* p,
                                                 size_t n) {
  const char* c = static_cast<const char*>(p);
  auto it = table.upper_bound(c);
  if (it == table.begin()) return nullptr;
  --it;
  if (c >= it->first && c < it->first + std::max<size_t>(it->second, 1)) {
    if ((size_t)(c - it->first) + n > it->second) return nullptr;
    return &*it;
  }
  return nullptr;
}
bool on_device(const void* p) { return find(device_mem, p, 0) != nullptr; }

void run_ops(std::vector<Op>& ops) {
  std::vector<Op> now;
  now.swap(ops);
  for (auto& op : now) op.fn();
}
// run a stream's queued work up to (and with) seq; the legacy stream also runs the
// blocking streams' earlier work first (it waits for them, and they for it)
void flush(CUstream_st* s, unsigned long long upto = ~0ull) {
  if (s == &legacy) {
    for (CUstream_st* o : streams)
      if (!(o->flags & cudaStreamNonBlocking)) flush(o, upto);
  }
  std::vector<Op> run, keep;
  for (auto& op : s->queue) (op.seq <= upto ? run : keep).push_back(std::move(op));
  s->queue.swap(keep);
  run_ops(run);
}
void flush_all() {
  for (;;) {  // in enqueue order over all streams
    CUstream_st* first = legacy.queue.empty() ? nullptr : &legacy;
    for (CUstream_st* o : streams)
      if (!o->queue.empty() && (!first || o->queue.front().seq < first->queue.front().seq)) first = o;
    if (!first) return;
    Op op = std::move(first->queue.front());
    first->queue.erase(first->queue.begin());
    op.fn();
  }
}

// a call CUDA refuses while this thread captures a stream: invalidates the capture
cudaError_t refuse_in_capture(const char* call) {
  if (!capturing) return cudaSuccess;
  if (capturing->capture_error == cudaSuccess) {
    report(cudaErrorStreamCaptureUnsupported, "%s during stream capture: the capture is invalidated", call);
    capturing->capture_error = cudaErrorStreamCaptureUnsupported;
  }
  return cudaErrorStreamCaptureUnsupported;
}

cudaError_t enqueue_locked(cudaStream_t st, const char* what, std::function<void()> fn) {
  CUstream_st* s = resolve(st);
  if (!valid_stream(s)) return report(cudaErrorInvalidResourceHandle, "%s on a destroyed or unknown stream", what);
  if (capturing && s == capturing) {
    s->captured.push_back({0, what, std::move(fn)});
    return cudaSuccess;
  }
  if (capturing && s == &legacy) {  // the legacy stream would wait for the capturing one
    if (capturing->capture_error == cudaSuccess) {
      report(cudaErrorStreamCaptureImplicit, "%s on the legacy stream during a capture: the capture is invalidated",
             what);
      capturing->capture_error = cudaErrorStreamCaptureImplicit;
    }
    return cudaErrorStreamCaptureImplicit;
  }
  if (std::strncmp(what, "cublas", 6) == 0) counters[kCublas]++;
  else if (std::strncmp(what, "cuda", 4) != 0 && std::strncmp(what, "nccl", 4) != 0) counters[kKernels]++;
  if (!deferred) {
    fn();
    return cudaSuccess;
  }
  s->queue.push_back({next_seq++, what, std::move(fn)});
  return cudaSuccess;
}

// checks a copy's direction and bounds against the registered allocations
cudaError_t check_copy(void* d, const void* s, size_t n, cudaMemcpyKind& k) {
  const bool dd = on_device(d), sd = on_device(s);
  if (k == cudaMemcpyDefault) k = dd ? (sd ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                     : (sd ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  const bool want_dd = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
  const bool want_sd = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
  if (dd != want_dd || sd != want_sd)
    return report(cudaErrorInvalidMemcpyDirection,
                  "cudaMemcpy kind %d, but the destination is %s memory and the source %s memory", (int)k,
                  dd ? "device" : "host", sd ? "device" : "host");
  if (dd && !find(device_mem, d, n))
    return report(cudaErrorInvalidValue, "copy of %zu bytes runs past the end of the destination allocation", n);
  if (sd && !find(device_mem, s, n))
    return report(cudaErrorInvalidValue, "copy of %zu bytes runs past the end of the source allocation", n);
  return cudaSuccess;
}

// an async copy on stream st; pageable host memory is read at once (the driver stages
// it) and written at once after waiting for the stream (as CUDA returns only then)
// (k: cudaMemcpyDefault is resolved in place)
cudaError_t copy_async(void* d, const void* s, size_t n, cudaMemcpyKind& k, cudaStream_t st, const char* what) {
  if (cudaError_t e = check_copy(d, s, n, k)) return e;
  if (!n) return cudaSuccess;
  if (!(capturing && resolve(st) == capturing))
    counters[k == cudaMemcpyDeviceToHost ? kD2H : k == cudaMemcpyHostToDevice ? kH2D : kD2D]++;
  const bool pageable_src = k == cudaMemcpyHostToDevice && !find(pinned_mem, s, n);
  const bool pageable_dst = k == cudaMemcpyDeviceToHost && !find(pinned_mem, d, n);
  if ((pageable_src || pageable_dst) && capturing && resolve(st) == capturing) return refuse_in_capture(what);
  if (pageable_src) {
    auto data = std::make_shared<std::vector<char>>(static_cast<const char*>(s), static_cast<const char*>(s) + n);
    return enqueue_locked(st, what, [d, data] { std::memcpy(d, data->data(), data->size()); });
  }
  if (pageable_dst) {
    CUstream_st* q = resolve(st);
    if (!valid_stream(q)) return report(cudaErrorInvalidResourceHandle, "%s on a destroyed or unknown stream", what);
    counters[kWaits]++;
    flush(q);
    std::memcpy(d, s, n);
    return cudaSuccess;
  }
  return enqueue_locked(st, what, [d, s, n] { std::memmove(d, s, n); });
}

}  // namespace

namespace sim {
cudaError_t enqueue(cudaStream_t s, const char* what, std::function<void()> op) {
  SIM_LOCK;
  return enqueue_locked(s, what, std::move(op));
}
void set_deferred(bool on) {
  SIM_LOCK;
  if (!on) flush_all();
  deferred = on;
}
size_t device_bytes() {
  SIM_LOCK;
  return device_total;
}
long long counter(const char* name) {
  SIM_LOCK;
  for (int i = 0; i < kCounters; i++)
    if (std::strcmp(name, counter_names[i]) == 0) return counters[i];
  return -1;
}
const char* counter_name(int i) { return i >= 0 && i < kCounters ? counter_names[i] : nullptr; }
size_t device_allocations() {
  SIM_LOCK;
  return device_mem.size();
}
bool is_device(const void* p, size_t bytes) {
  SIM_LOCK;
  return find(device_mem, p, bytes) != nullptr;
}
}  // namespace sim

// ---------------------------------------------------------------- errors and devices
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
  }
  return "cudaError";
}
const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
cudaError_t cudaGetLastError() {
  SIM_LOCK;
  const cudaError_t e = sim::sticky;
  sim::sticky = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  SIM_LOCK;
  return sim::sticky;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  SIM_LOCK;
  *d = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  SIM_LOCK;
  if (d != 0) return report(cudaErrorInvalidDevice, "cudaSetDevice(%d): the emulator has one device, 0", d);
  current_device = d;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  switch (a) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 232448; break;  // H100 / H200
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// ---------------------------------------------------------------- memory
namespace {
constexpr size_t kDeviceMemory = 141ull << 30;  // an H200's 141 GiB: more fails as cudaMalloc does
cudaError_t alloc(std::map<const char*, size_t>& table, void** p, size_t n, const char* call) {
  if (cudaError_t e = refuse_in_capture(call)) return e;
  if (&table == &device_mem && n > kDeviceMemory - device_total) return cudaErrorMemoryAllocation;
  void* q = nullptr;
  if (posix_memalign(&q, 256, n ? n : 1) != 0) return cudaErrorMemoryAllocation;
  std::memset(q, 0xff, n);  // NaN: reading memory never written shows
  table[static_cast<const char*>(q)] = n;
  if (&table == &device_mem) device_total += n;
  *p = q;
  return cudaSuccess;
}
cudaError_t release(std::map<const char*, size_t>& table, void* p, const char* call) {
  if (!p) return cudaSuccess;
  if (cudaError_t e = refuse_in_capture(call)) return e;
  auto it = table.find(static_cast<const char*>(p));
  if (it == table.end()) return report(cudaErrorInvalidDevicePointer, "%s of a pointer it did not allocate", call);
  counters[kWaits]++;
  flush_all();  // frees wait for the device
  if (&table == &device_mem) device_total -= it->second;
  table.erase(it);
  std::free(p);
  return cudaSuccess;
}
}  // namespace
cudaError_t cudaMalloc(void** p, size_t n) {
  SIM_LOCK;
  return alloc(device_mem, p, n, "cudaMalloc");
}
cudaError_t cudaFree(void* p) {
  SIM_LOCK;
  return release(device_mem, p, "cudaFree");
}
cudaError_t cudaMallocHost(void** p, size_t n) {
  SIM_LOCK;
  return alloc(pinned_mem, p, n, "cudaMallocHost");
}
cudaError_t cudaFreeHost(void* p) {
  SIM_LOCK;
  return release(pinned_mem, p, "cudaFreeHost");
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s) {
  SIM_LOCK;
  if (!n) return cudaSuccess;
  if (!find(device_mem, p, n)) return report(cudaErrorInvalidValue, "cudaMemsetAsync of %zu bytes outside device memory", n);
  return enqueue_locked(s, "cudaMemsetAsync", [p, v, n] { std::memset(p, v, n); });
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  SIM_LOCK;
  if (cudaError_t e = refuse_in_capture("cudaMemset")) return e;
  return cudaMemsetAsync(p, v, n, nullptr);  // asynchronous to the host, on the legacy stream
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t st) {
  SIM_LOCK;
  return copy_async(d, s, n, k, st, "cudaMemcpyAsync");
}
cudaError_t cudaMemcpy2DAsync(void* d, size_t dpitch, const void* s, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind k, cudaStream_t st) {
  SIM_LOCK;
  if (width > dpitch || width > spitch)
    return report(cudaErrorInvalidValue, "cudaMemcpy2DAsync: width %zu bytes exceeds a pitch (%zu, %zu)", width,
                  dpitch, spitch);
  if (!width || !height) return cudaSuccess;
  const size_t dspan = (height - 1) * dpitch + width, sspan = (height - 1) * spitch + width;
  if (k == cudaMemcpyDefault) k = cudaMemcpyDeviceToDevice;
  if (k != cudaMemcpyDeviceToDevice || !on_device(d) || !on_device(s))
    return report(cudaErrorInvalidMemcpyDirection, "cudaMemcpy2DAsync: only device-to-device copies are emulated");
  if (!find(device_mem, d, dspan) || !find(device_mem, s, sspan))
    return report(cudaErrorInvalidValue, "cudaMemcpy2DAsync: the rows run past the end of an allocation");
  if (!(capturing && resolve(st) == capturing)) counters[kD2D]++;
  char* dc = static_cast<char*>(d);
  const char* sc = static_cast<const char*>(s);
  return enqueue_locked(st, "cudaMemcpy2DAsync", [=] {
    for (size_t r = 0; r < height; r++) std::memmove(dc + r * dpitch, sc + r * spitch, width);
  });
}
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) {
  SIM_LOCK;
  if (cudaError_t e = refuse_in_capture("cudaMemcpy")) return e;
  flush(&legacy);  // waits for the legacy stream (and the blocking streams) first
  if (cudaError_t e = copy_async(d, s, n, k, nullptr, "cudaMemcpy")) return e;
  if (k == cudaMemcpyDeviceToHost && find(pinned_mem, d, n)) {  // (pageable: copy_async waited)
    counters[kWaits]++;
    flush(&legacy);  // returns when the copy to the host is done
  }
  return cudaSuccess;
}

// ---------------------------------------------------------------- streams and events
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  SIM_LOCK;
  auto* q = new CUstream_st;
  q->flags = flags;
  streams.insert(q);
  *s = q;
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  SIM_LOCK;
  if (!s || !streams.count(s)) return report(cudaErrorInvalidResourceHandle, "cudaStreamDestroy of an unknown stream");
  if (s->capturing) return report(cudaErrorStreamCaptureUnsupported, "cudaStreamDestroy of a capturing stream");
  flush(s);  // its work still completes
  streams.erase(s);
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t st) {
  SIM_LOCK;
  CUstream_st* s = resolve(st);
  if (!valid_stream(s)) return report(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize of an unknown stream");
  if (cudaError_t e = refuse_in_capture("cudaStreamSynchronize")) return e;
  counters[kWaits]++;
  flush(s);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  SIM_LOCK;
  if (cudaError_t e = refuse_in_capture("cudaDeviceSynchronize")) return e;
  counters[kWaits]++;
  flush_all();
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  SIM_LOCK;
  *e = new CUevent_st;
  events.insert(*e);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  SIM_LOCK;
  if (!events.count(e)) return report(cudaErrorInvalidResourceHandle, "cudaEventDestroy of an unknown event");
  events.erase(e);
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t st) {
  SIM_LOCK;
  CUstream_st* s = resolve(st);
  if (!events.count(e) || !valid_stream(s)) return report(cudaErrorInvalidResourceHandle, "cudaEventRecord: unknown event or stream");
  if (capturing && s == capturing) return cudaSuccess;  // a node with no effect here
  e->stream = s;
  e->seq = next_seq - 1;
  e->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  SIM_LOCK;
  if (!events.count(e)) return report(cudaErrorInvalidResourceHandle, "cudaEventQuery of an unknown event");
  counters[kWaits]++;
  if (e->recorded && valid_stream(e->stream)) flush(e->stream, e->seq);  // the work before it completes now
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return cudaEventQuery(e); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  SIM_LOCK;
  if (!events.count(a) || !events.count(b)) return report(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime of an unknown event");
  if (!a->recorded || !b->recorded) return report(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime of an event never recorded");
  *ms = 0.f;  // the emulator keeps no GPU clock: regions are counted, not timed
  return cudaSuccess;
}

// ---------------------------------------------------------------- capture and graphs
cudaError_t cudaStreamBeginCapture(cudaStream_t st, cudaStreamCaptureMode) {
  SIM_LOCK;
  CUstream_st* s = resolve(st);
  if (s == &legacy) return report(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture of the legacy stream");
  if (!valid_stream(s)) return report(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture of an unknown stream");
  if (capturing) return report(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture while another capture runs");
  s->capturing = true;
  s->capture_error = cudaSuccess;
  s->captured.clear();
  capturing = s;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t st, cudaStreamCaptureStatus* status) {
  SIM_LOCK;
  CUstream_st* s = resolve(st);
  if (!valid_stream(s)) return report(cudaErrorInvalidResourceHandle, "cudaStreamIsCapturing of an unknown stream");
  *status = capturing && s == capturing
                ? (s->capture_error == cudaSuccess ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusInvalidated)
                : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t* g) {
  SIM_LOCK;
  CUstream_st* s = resolve(st);
  *g = nullptr;
  if (!valid_stream(s) || !s->capturing) return report(cudaErrorInvalidValue, "cudaStreamEndCapture of a stream not capturing");
  s->capturing = false;
  capturing = nullptr;
  std::vector<Op> ops;
  ops.swap(s->captured);
  if (s->capture_error != cudaSuccess) return cudaErrorStreamCaptureInvalidated;
  *g = new CUgraph_st{std::move(ops)};
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long) {
  SIM_LOCK;
  if (!g) return cudaErrorInvalidValue;
  *e = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t st) {
  SIM_LOCK;
  if (!e) return cudaErrorInvalidValue;
  if (!(capturing && resolve(st) == capturing)) counters[kGraphs]++;
  const long long k0 = counters[kKernels], c0 = counters[kCublas];
  for (const Op& op : e->ops)
    if (cudaError_t err = enqueue_locked(st, op.what, op.fn)) return err;
  counters[kKernels] = k0;  // the graph's kernels are one graph launch, not launches of their own
  counters[kCublas] = c0;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  SIM_LOCK;
  delete g;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  SIM_LOCK;
  delete e;
  return cudaSuccess;
}
