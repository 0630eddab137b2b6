#pragma once
#include <memory>
#include <new>

namespace bigsmall::detail {

// Per-thread scratch kept between uses (planning prices thousands of tables per tensor, and
// decoding reuses its buffers from tensor to tensor).
//
// Why not plain thread_local objects: one with a destructor registers that destructor with glibc
// on its first use in each thread, and glibc aborts the process ("failed to register TLS
// destructor: out of memory") when that small allocation fails, as it did under an address-space
// limit with many threads (ulimit -v 2000000, -T 256: in the workers, and in the caller whose
// first use came after the workers had taken the memory). Here every thread's scratch is made
// with new (a failure is std::bad_alloc, which the API turns into kOutOfMemory), found again
// through trivially destructible thread_local pointers, which register nothing, and freed as the
// thread exits by the destructor of one process-wide pthread key (whose per-thread value needs
// no allocation for the first 32 keys of a process; past them glibc allocates, and a failure is
// std::bad_alloc again). The pointers are cleared as their objects are freed, so that a use
// after that (another key's destructor calling the library) makes fresh scratch, not a dangling
// one.
namespace scratch_internal {
struct Slot {
  void* object;
  void (*destroy)(void*);
  void (*forget)();  // clears the thread_local pointer that finds the object
};
constexpr int kSlots = 32;  // kinds of scratch a thread may hold; a few more than the library has
struct Slots {
  Slot slot[kSlots];
  int used = 0;
};
// The calling thread's slots, made on first use; throws std::bad_alloc.
Slots& this_thread_slots();
}  // namespace scratch_internal

// The calling thread's T for Tag (two scratch objects of one type need two tags).
template <typename T, typename Tag = T>
T& thread_scratch() {
  thread_local T* mine = nullptr;
  if (mine == nullptr) [[unlikely]] {
    scratch_internal::Slots& slots = scratch_internal::this_thread_slots();
    if (slots.used == scratch_internal::kSlots) throw std::bad_alloc();
    auto made = std::make_unique<T>();
    slots.slot[slots.used++] = {made.get(), [](void* p) { delete static_cast<T*>(p); }, [] { mine = nullptr; }};
    mine = made.release();
  }
  return *mine;
}

}  // namespace bigsmall::detail
