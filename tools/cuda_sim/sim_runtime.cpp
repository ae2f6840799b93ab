// sim_runtime.cpp — the scheduler and host runtime behind sim_cuda.h (see there and
// run.sh). A launch runs its blocks in order; the threads of a block are ucontext fibers
// on the calling OS thread. A fiber runs until it reaches a barrier or returns; when no
// fiber can run, the scheduler releases every warp whose live lanes all wait at one warp
// barrier, else the block barrier when every live thread waits there, else reports the
// mismatch or deadlock and aborts.
#include <dlfcn.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))  // built without AddressSanitizer (the PYLLAMA_CUDA=SIM extension): nothing to announce
#define __sanitizer_start_switch_fiber(a, b, c) ((void)(a), (void)(b), (void)(c))
#define __sanitizer_finish_switch_fiber(a, b, c) ((void)(a), (void)(b), (void)(c))
#endif
#include <ucontext.h>

#include <cstdarg>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "sim_cuda.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace sim {
extern cudaError_t sticky;  // sim_host.cpp: what the next cudaGetLastError returns
namespace {

// Context switches. On x86-64 a minimal switch of the callee-saved registers and the stack
// pointer (glibc's swapcontext makes a sigprocmask system call at every switch, which
// was ~90% of the emulator's time); elsewhere libc's swapcontext, not AddressSanitizer's
// wrapper: that one clears the shadow of the whole target stack at every switch (slow, and
// it drops the redzones of live frames). Switches are announced to ASan with its fiber API.
#if defined(__x86_64__) && !defined(PYLLAMA_SIM_UCONTEXT)
}  // namespace
}  // namespace sim
extern "C" void pyllama_sim_switch(void** save_sp, void* to_sp);
asm(R"(
  .text
  .globl pyllama_sim_switch
  .hidden pyllama_sim_switch
  .type pyllama_sim_switch, @function
pyllama_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pyllama_sim_switch, .-pyllama_sim_switch
)");
namespace sim {
namespace {
struct Ctx {
  void* sp = nullptr;
};
void ctx_init(Ctx&) {}
// a fresh context that runs entry() (which never returns) on [stack, stack + size)
void ctx_make(Ctx& c, char* stack, size_t size, void (*entry)()) {
  void** sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15));
  ASAN_UNPOISON_MEMORY_REGION(sp - 16, 16 * sizeof(void*));  // redzones left by the last fiber here
  *--sp = nullptr;                                   // keeps entry's frame aligned as after a call
  *--sp = reinterpret_cast<void*>(entry);            // where the first switch "returns" to
  for (int i = 0; i < 6; i++) *--sp = nullptr;       // rbp, rbx, r12 .. r15
  c.sp = sp;
}
void ctx_swap(Ctx& from, Ctx& to) { pyllama_sim_switch(&from.sp, to.sp); }
#else
struct Ctx {
  ucontext_t uc;
};
using SwapFn = int (*)(ucontext_t*, const ucontext_t*);
SwapFn real_swap() {
  static SwapFn fn = [] {
    void* h = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void* f = h ? dlsym(h, "swapcontext") : nullptr;
    return f ? reinterpret_cast<SwapFn>(f) : &swapcontext;
  }();
  return fn;
}
void ctx_init(Ctx& c) { getcontext(&c.uc); }
void ctx_make(Ctx& c, char* stack, size_t size, void (*entry)()) {
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void ctx_swap(Ctx& from, Ctx& to) { real_swap()(&from.uc, &to.uc); }
#endif

enum State { RUN, WAIT_BLOCK, WAIT_WARP, DONE };
struct Fiber {
  Ctx ctx;
  State st = RUN;
  int line = 0;
  uint3 tid;
};

constexpr size_t kStack = 256 * 1024;
std::vector<Fiber> fibers;
std::vector<std::unique_ptr<char[]>> stacks;
Ctx sched_ctx;
int cur = -1;
const std::function<void()>* body_ = nullptr;
const char* kernel_name = "";
long long n_launches = 0;
void* dyn = nullptr;
std::map<std::pair<int, size_t>, void*> statics;
uint64_t shfl[32][32];
std::map<const void*, int> max_dyn_smem;
void* fake_stack = nullptr;
const void* sched_stack_bottom = nullptr;
size_t sched_stack_size = 0;


// fiber <-> scheduler switches, announced to AddressSanitizer
void to_sched() {
  Fiber& f = fibers[cur];
  void* fs = nullptr;
  __sanitizer_start_switch_fiber(&fs, sched_stack_bottom, sched_stack_size);
  ctx_swap(f.ctx, sched_ctx);
  __sanitizer_finish_switch_fiber(fs, nullptr, nullptr);
}
// cp.async copies of each thread not yet completed by a wait_group (group 0: not committed)
struct CpAsync {
  char* dst;
  unsigned char data[16];
  int bytes, src_bytes;
  long long group;
};
std::vector<std::vector<CpAsync>> cp_pending;
std::vector<long long> cp_groups;  // groups committed so far, per thread
bool in_shared(const void* p, size_t n);

void fiber_main() {
  __sanitizer_finish_switch_fiber(nullptr, &sched_stack_bottom, &sched_stack_size);
  (*body_)();
  if (!cp_pending[cur].empty()) fail("thread exits with %zu cp.async copies not waited for", cp_pending[cur].size());
  fibers[cur].st = DONE;
  __sanitizer_start_switch_fiber(nullptr, sched_stack_bottom, sched_stack_size);  // this stack dies
  ctx_swap(fibers[cur].ctx, sched_ctx);
}
void to_fiber(int i) {
  cur = i;
  threadIdx = fibers[i].tid;
  __sanitizer_start_switch_fiber(&fake_stack, stacks[i].get(), kStack);
  ctx_swap(sched_ctx, fibers[i].ctx);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
  cur = -1;
}

void wait(State s, int line) {
  Fiber& f = fibers[cur];
  f.st = s;
  f.line = line;
  to_sched();
}

std::string where() {
  char buf[160];
  std::snprintf(buf, sizeof buf, "kernel %s, block (%u, %u, %u)", kernel_name, blockIdx.x, blockIdx.y, blockIdx.z);
  return buf;
}

void dump_and_fail(const char* what) {
  std::fprintf(stderr, "SIM ERROR: %s in %s\n", what, where().c_str());
  const size_t nt = (size_t)blockDim.x * blockDim.y * blockDim.z;
  for (size_t i = 0; i < nt; i++) {
    const Fiber& f = fibers[i];
    const char* s = f.st == RUN ? "running" : f.st == WAIT_BLOCK ? "__syncthreads" : f.st == WAIT_WARP ? "warp barrier" : "exited";
    std::fprintf(stderr, "  thread (%u, %u, %u): %s line %d\n", f.tid.x, f.tid.y, f.tid.z, s,
                 f.line % 1000000);
    if (i > 64) {
      std::fprintf(stderr, "  ...\n");
      break;
    }
  }
  std::fflush(stderr);
  std::abort();
}

void run_block(int nthreads) {
  cp_pending.assign(nthreads, {});
  cp_groups.assign(nthreads, 0);
  for (int i = 0; i < nthreads; i++) {
    Fiber& f = fibers[i];
    f.st = RUN;
    f.line = 0;
    ctx_make(f.ctx, stacks[i].get(), kStack, fiber_main);
  }
  const int nwarps = (nthreads + 31) / 32;
  // Between two barriers the fibers run one after another, so a missing barrier shows up
  // only when a thread reads what a later one writes: the direction alternates from one
  // round to the next (and from block to block, and launch to launch).
  int round = (int)(n_launches + blockIdx.x + blockIdx.y + blockIdx.z);
  // Warp barriers (shuffles, mma, ldmatrix) release one warp at a time, the lowest
  // waiting warp in one __syncthreads interval and the highest in the next: a warp runs
  // ahead of the others up to the block barrier, so a warp that reads what another warp
  // writes (or overwrites what another still reads, e.g. a cp.async prefetch issued before
  // the barrier) without a __syncthreads sees the NaN fill one way or the other.
  int interval = round;
  for (;;) {
    bool ran = false;
    const bool rev = round++ & 1;
    for (int k = 0; k < nthreads; k++) {
      const int i = rev ? nthreads - 1 - k : k;
      if (fibers[i].st == RUN) {
        to_fiber(i);
        ran = true;
      }
    }
    if (ran) continue;
    int live = 0, at_block = 0;
    for (int i = 0; i < nthreads; i++) {
      live += fibers[i].st != DONE;
      at_block += fibers[i].st == WAIT_BLOCK;
    }
    if (live == 0) return;
    bool released = false;
    for (int k = 0; k < nwarps; k++) {
      const int w = (interval & 1) ? nwarps - 1 - k : k;
      const int l0 = 32 * w, l1 = std::min(nthreads, l0 + 32);
      int waiting = 0, alive = 0, line = -1;
      bool same = true;
      for (int i = l0; i < l1; i++) {
        if (fibers[i].st == DONE) continue;
        alive++;
        if (fibers[i].st == WAIT_WARP) {
          if (waiting++ == 0) line = fibers[i].line;
          else if (fibers[i].line != line) same = false;
        }
      }
      if (waiting == 0) continue;
      if (!same) dump_and_fail("lanes of a warp wait at different warp barriers (divergent shuffle or __syncwarp)");
      if (waiting == alive && !released) {
        for (int i = l0; i < l1; i++)
          if (fibers[i].st == WAIT_WARP) fibers[i].st = RUN;
        released = true;
      }
    }
    if (released) continue;
    if (at_block == live) {
      const int line = [&] {
        for (int i = 0; i < nthreads; i++)
          if (fibers[i].st == WAIT_BLOCK) return fibers[i].line;
        return -1;
      }();
      for (int i = 0; i < nthreads; i++)
        if (fibers[i].st == WAIT_BLOCK && fibers[i].line != line)
          dump_and_fail("threads wait at different __syncthreads");
      if (live != nthreads) dump_and_fail("__syncthreads after some threads of the block exited");
      for (int i = 0; i < nthreads; i++)
        if (fibers[i].st == WAIT_BLOCK) fibers[i].st = RUN;
      interval++;
      continue;
    }
    dump_and_fail("deadlock (threads wait at __syncthreads while others wait at a warp barrier)");
  }
}

}  // namespace

void fail(const char* fmt, ...) {
  std::fprintf(stderr, "SIM ERROR in %s, thread (%u, %u, %u): ", where().c_str(), threadIdx.x, threadIdx.y,
               threadIdx.z);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

void sync_block(int line) {
  if (cur < 0) fail("__syncthreads outside a kernel");
  wait(WAIT_BLOCK, line);
}
void sync_warp(int line) {
  if (cur < 0) fail("warp barrier outside a kernel");
  wait(WAIT_WARP, line);
}
void* dyn_smem() {
  if (!dyn) fail("extern __shared__ used by a launch without dynamic shared memory");
  return dyn;
}
void* static_shared(size_t bytes, int key) {
  auto& p = statics[{key, bytes}];
  if (!p) {
    p = std::malloc(bytes);
    std::memset(p, 0xff, bytes);
  }
  return p;
}
int lane_id() { return cur & 31; }
int warp_id() { return cur >> 5; }
uint64_t* shfl_slot(int lane) { return &shfl[cur >> 5][lane & 31]; }
int lane_alive(int lane) {
  const int i = (cur & ~31) + lane;
  return lane >= 0 && lane < 32 && i < (int)fibers.size() && i < (int)(blockDim.x * blockDim.y * blockDim.z) &&
         fibers[i].st != DONE;
}

namespace {
size_t dyn_bytes = 0;
bool in_shared(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  if (dyn && c >= static_cast<const char*>(dyn) && c + n <= static_cast<const char*>(dyn) + dyn_bytes) return true;
  for (auto& kv : statics)
    if (c >= static_cast<const char*>(kv.second) && c + n <= static_cast<const char*>(kv.second) + kv.first.second)
      return true;
  return false;
}
const void* ldsm_post[32][32];
}  // namespace

void ldmatrix(uint32_t* r, int n, bool trans, const void* p, int line) {
  if (cur < 0) fail("ldmatrix outside a kernel");
  const int lane = cur & 31, w = cur >> 5;
  ldsm_post[w][lane] = p;
  sync_warp(5000000 + line);
  for (int l = 0; l < 32; l++)
    if (!lane_alive(l)) fail("ldmatrix (.aligned) at line %d with lane %d exited", line, l);
  for (int l = 0; l < 8 * n; l++) {
    const void* a = ldsm_post[w][l];
    if ((reinterpret_cast<uintptr_t>(a) & 15) != 0)
      fail("ldmatrix at line %d: lane %d's row address %p is not 16-byte aligned", line, l, a);
    if (!in_shared(a, 16)) fail("ldmatrix at line %d: lane %d's row address %p is not in shared memory", line, l, a);
  }
  const int g = lane >> 2, q = lane & 3;
  auto elem = [&](int m, int row, int col) {
    uint16_t v;
    std::memcpy(&v, static_cast<const char*>(ldsm_post[w][8 * m + row]) + 2 * col, 2);
    return (uint32_t)v;
  };
  uint32_t out[4];
  for (int m = 0; m < n; m++)
    out[m] = trans ? elem(m, 2 * q, g) | elem(m, 2 * q + 1, g) << 16 : elem(m, g, 2 * q) | elem(m, g, 2 * q + 1) << 16;
  sync_warp(6000000 + line);
  for (int m = 0; m < n; m++) r[m] = out[m];
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes, int line) {
  if (cur < 0) fail("cp.async outside a kernel");
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of %d bytes", bytes);
  if (src_bytes < 0 || src_bytes > bytes) fail("cp.async src-size %d of %d bytes", src_bytes, bytes);
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & (uintptr_t)(bytes - 1))
    fail("cp.async of %d bytes: %p <- %p not aligned", bytes, dst, src);
  if (!in_shared(dst, bytes)) fail("cp.async destination %p is not in shared memory", dst);
  CpAsync c{static_cast<char*>(dst), {}, bytes, src_bytes, 0};
  std::memcpy(c.data, src, src_bytes);  // global memory read now (ASan checks it)
  std::memset(dst, 0xff, bytes);         // NaN until waited for
  cp_pending[cur].push_back(c);
  (void)line;
}
void cp_async_commit() {
  if (cur < 0) fail("cp.async.commit_group outside a kernel");
  const long long gnum = ++cp_groups[cur];
  for (auto& c : cp_pending[cur])
    if (c.group == 0) c.group = gnum;
}
void cp_async_wait(int n) {
  if (cur < 0) fail("cp.async.wait_group outside a kernel");
  const long long done = cp_groups[cur] - n;  // groups <= done complete
  auto& v = cp_pending[cur];
  std::vector<CpAsync> keep;
  for (auto& c : v) {
    if (c.group != 0 && c.group <= done) {
      std::memcpy(c.dst, c.data, c.src_bytes);
      std::memset(c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
    } else {
      keep.push_back(c);
    }
  }
  v.swap(keep);
}

long long launches() { return n_launches; }
const char* last_kernel() { return kernel_name; }

cudaError_t func_set_attribute(const void* f, int attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > 232448) return cudaErrorInvalidValue;
    max_dyn_smem[f] = value;
  }
  return cudaSuccess;
}
cudaError_t func_get_attributes(cudaFuncAttributes* fa, const void*) {
  fa->maxThreadsPerBlock = 1024;
  fa->numRegs = 64;
  fa->ptxVersion = 90;
  fa->binaryVersion = 90;
  fa->sharedSizeBytes = 0;
  fa->maxDynamicSharedSizeBytes = 48 * 1024;
  return cudaSuccess;
}

void run_launch(const Cfg& c, const char* name, const std::function<void()>& body);

void launch(const Cfg& c, const char* name, const void* fn, std::function<void()> body) {
  // the configuration is checked at the launch (the next cudaGetLastError reports it); the
  // kernel runs when its stream's work does (sim_host.cpp)
  const unsigned long long nthreads = (unsigned long long)c.block.x * c.block.y * c.block.z;
  const bool bad = nthreads == 0 || nthreads > 1024 || c.block.z > 64 || c.grid.x == 0 || c.grid.y == 0 ||
                   c.grid.z == 0 || c.grid.y > 65535 || c.grid.z > 65535 || c.grid.x > 0x7fffffffu;
  if (bad) {
    std::fprintf(stderr, "sim: bad launch configuration of %s: grid (%u, %u, %u), block (%u, %u, %u)\n", name,
                 c.grid.x, c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z);
    sticky = cudaErrorInvalidConfiguration;
    return;
  }
  if (c.smem > 48 * 1024) {
    auto it = max_dyn_smem.find(fn);
    if (it == max_dyn_smem.end() || (size_t)it->second < c.smem) {
      std::fprintf(stderr, "sim: %s launched with %zu bytes of dynamic shared memory without opting in\n", name,
                   c.smem);
      sticky = cudaErrorInvalidValue;
      return;
    }
  }
  const cudaError_t e = enqueue(c.stream, name, [c, name, body = std::move(body)] { run_launch(c, name, body); });
  if (e != cudaSuccess) sticky = e;
}

void run_launch(const Cfg& c, const char* name, const std::function<void()>& body) {
  kernel_name = name;
  n_launches++;
  const unsigned long long nthreads = (unsigned long long)c.block.x * c.block.y * c.block.z;
  gridDim = c.grid;
  blockDim = c.block;
  body_ = &body;
  const int n = (int)nthreads;
  if ((int)stacks.size() < n) {
    stacks.resize(n);
    for (auto& s : stacks)
      if (!s) s.reset(new char[kStack]);
  }
  if ((int)fibers.size() < n) {
    fibers.resize(n);  // moved: a ucontext_t points into itself, so initialise them all again
    for (auto& f : fibers) ctx_init(f.ctx);  // ctx_make reuses them block after block
  }
  for (int i = 0; i < n; i++)
    fibers[i].tid = {(unsigned)(i % c.block.x), (unsigned)(i / c.block.x % c.block.y),
                     (unsigned)(i / (c.block.x * c.block.y))};
  dyn = c.smem ? std::malloc(c.smem) : nullptr;
  dyn_bytes = c.smem;
  // blocks in order on even launches, in reverse order on odd ones (a kernel whose blocks
  // depend on one another's writes then fails one way or the other)
  const unsigned long long nblocks = (unsigned long long)c.grid.x * c.grid.y * c.grid.z;
  for (unsigned long long k = 0; k < nblocks; k++) {
    const unsigned long long b = (n_launches & 1) ? nblocks - 1 - k : k;
    blockIdx = {(unsigned)(b % c.grid.x), (unsigned)(b / c.grid.x % c.grid.y),
                (unsigned)(b / ((unsigned long long)c.grid.x * c.grid.y))};
    if (dyn) std::memset(dyn, 0xff, c.smem);
    run_block(n);
    for (auto& kv : statics) std::free(kv.second);
    statics.clear();
  }
  std::free(dyn);
  dyn = nullptr;
  body_ = nullptr;
}

}  // namespace sim

namespace pyllama {
namespace gpu {
// mma.sync.m16n8k16.row.col f32.bf16.bf16.f32 as the PTX ISA lays the fragments out: each
// lane posts its registers, then computes its own C elements from the whole warp's.
namespace {
struct MmaPost {
  uint32_t a[4], b[2];
};
MmaPost mma_post[32][32];
float lo_bf(uint32_t r) { return __uint_as_float(r << 16); }
float hi_bf(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }
}  // namespace
void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int lane = ::sim::lane_id(), w = ::sim::warp_id();
  MmaPost& me = mma_post[w][lane];
  for (int i = 0; i < 4; i++) me.a[i] = a[i];
  me.b[0] = b0;
  me.b[1] = b1;
  ::sim::sync_warp(3000000 + __LINE__);
  for (int l = 0; l < 32; l++)
    if (!::sim::lane_alive(l)) ::sim::fail("mma.sync with lane %d exited", l);
  auto A = [&](int row, int col) {  // A (16 x 16)
    const int g = row & 7, reg = (row >> 3) | ((col >> 3) << 1), q = (col & 7) >> 1;
    const uint32_t r = mma_post[w][g * 4 + q].a[reg];
    return (col & 1) ? hi_bf(r) : lo_bf(r);
  };
  auto B = [&](int k, int n) {  // B (16 x 8)
    const int q = (k & 7) >> 1, reg = k >> 3;
    const uint32_t r = mma_post[w][n * 4 + q].b[reg];
    return (k & 1) ? hi_bf(r) : lo_bf(r);
  };
  const int g = lane >> 2, q = lane & 3;
  float out[4];
  for (int e = 0; e < 4; e++) {
    const int row = g + 8 * (e >> 1), col = 2 * q + (e & 1);
    double acc = c[e];
    for (int k = 0; k < 16; k++) acc += (double)A(row, k) * B(k, col);
    out[e] = (float)acc;
  }
  ::sim::sync_warp(4000000 + __LINE__);
  for (int e = 0; e < 4; e++) c[e] = out[e];
}
}  // namespace gpu
}  // namespace pyllama

