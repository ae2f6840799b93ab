// host_alloc.h — an allocator for the CPU backend's big buffers (weights, gradients, AdamW
// moments, activations, KV cache): blocks of 2 MiB and more come from mmap with
// madvise(MADV_HUGEPAGE), so the kernel backs them with 2 MiB pages where it can. First
// touches of a multi-GB buffer then fault 512 times less often (a 1B-parameter model's
// weights: about 3 s to fault in instead of 14 on a 2-core VM). Smaller blocks, and systems
// without MADV_HUGEPAGE, use operator new.
//
// allocate() returns zeroed memory (fresh anonymous pages are zero; small blocks are cleared),
// so construction leaves elements as they are: `v.resize(n)` of a multi-GB buffer touches no
// page, and the first writer (a checkpoint loader's threads, init_weights) faults them in.
//
//   std::vector<float, pyllama::HostAllocator<float>> params(n);
#pragma once
#include <cstddef>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyllama {

template <class T>
struct HostAllocator {
  using value_type = T;
  static constexpr size_t kHuge = size_t(2) << 20;
  HostAllocator() noexcept = default;
  template <class U>
  HostAllocator(const HostAllocator<U>&) noexcept {}

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= kHuge) {
      void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      ::madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure leaves ordinary pages
      return static_cast<T*>(p);
    }
#endif
    void* p = ::operator new(bytes);
    std::memset(p, 0, bytes);
    return static_cast<T*>(p);
  }
  // Value construction as usual; default construction (resize) writes nothing: the memory is zero.
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  void deallocate(T* p, size_t n) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (n * sizeof(T) >= kHuge) {
      ::munmap(p, n * sizeof(T));
      return;
    }
#endif
    ::operator delete(p);
  }
  template <class U>
  bool operator==(const HostAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const HostAllocator<U>&) const noexcept { return false; }
};

template <class T>
using HostVector = std::vector<T, HostAllocator<T>>;

}  // namespace pyllama
