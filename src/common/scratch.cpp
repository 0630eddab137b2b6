#include "common/scratch.hpp"

#include <pthread.h>

#include <atomic>
#include <cerrno>

namespace bigsmall::detail::scratch_internal {
namespace {

thread_local Slots* this_thread = nullptr;

void free_slots(void* p) {
  auto* slots = static_cast<Slots*>(p);
  this_thread = nullptr;
  while (slots->used > 0) {
    const Slot& s = slots->slot[--slots->used];
    s.forget();
    s.destroy(s.object);
  }
  delete slots;
}

// Made when the library is loaded, not lazily: a lazy static's guard, caught half taken by a fork
// in another thread, would hang the child (see fork_safe.hpp). Deleted when it is unloaded, so
// that no thread exiting later calls into unmapped code; threads that first use scratch after
// that (static destructors that call the library) keep theirs to the end, unfreed, as do all
// threads should the process have had no key left.
struct Key {
  pthread_key_t key{};
  std::atomic<bool> made{pthread_key_create(&key, free_slots) == 0};
  ~Key() {
    if (made.exchange(false)) pthread_key_delete(key);
  }
};
Key g_key;

}  // namespace

Slots& this_thread_slots() {
  if (this_thread == nullptr) {
    auto made = std::make_unique<Slots>();
    if (g_key.made.load(std::memory_order_acquire)) {
      const int rc = pthread_setspecific(g_key.key, made.get());
      if (rc == ENOMEM) throw std::bad_alloc();  // other failures: kept unfreed, as above
    }
    this_thread = made.release();
  }
  return *this_thread;
}

}  // namespace bigsmall::detail::scratch_internal
