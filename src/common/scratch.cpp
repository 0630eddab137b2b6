#include "common/scratch.hpp"

#include <pthread.h>

namespace bigsmall::detail::scratch_internal {
namespace {

void free_slots(void* p) {
  auto* slots = static_cast<Slots*>(p);
  while (slots->used > 0) {
    const Slot& s = slots->slot[--slots->used];
    s.destroy(s.object);
  }
  delete slots;
}

// Made when the library is loaded, not lazily: a lazy static's guard, caught half taken by a fork
// in another thread, would hang the child (see fork_safe.hpp). Deleted when it is unloaded, so
// that no thread exiting later calls into unmapped code (its scratch is then left, not freed).
// Should the process have no key left, threads' scratch is not freed at their exit.
struct Key {
  pthread_key_t key{};
  bool made = pthread_key_create(&key, free_slots) == 0;
  ~Key() {
    if (made) pthread_key_delete(key);
  }
};
const Key g_key;

}  // namespace

Slots& this_thread_slots() {
  thread_local Slots* mine = nullptr;
  if (mine == nullptr) {
    auto made = std::make_unique<Slots>();
    if (g_key.made && pthread_setspecific(g_key.key, made.get()) != 0) throw std::bad_alloc();
    mine = made.release();
  }
  return *mine;
}

}  // namespace bigsmall::detail::scratch_internal
