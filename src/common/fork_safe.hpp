#pragma once
#include <cstddef>
#include <mutex>

namespace bigsmall::detail {

// Mutexes that fork() must not copy in the locked state. The thread that calls fork() takes
// every registered one first and releases them in both processes after, so a child forked while
// another thread was inside one of them (a DataLoader worker forked while a loader thread
// decodes) finds it free; without that, the child's first decode waited for ever.
//
// kObject: a mutex of an object that can be used on both sides of a fork (an open file a worker
// inherits); registered for the object's life. kProcess: a mutex of process-wide state (caches,
// registries), registered for the rest of the process. All kObject mutexes are taken before any
// kProcess one, in registration order within each rank: a thread may take a kProcess mutex while
// holding a kObject one, never the reverse, and never two of one rank at once.
enum class ForkRank { kObject, kProcess };

void hold_across_fork(std::mutex* m, ForkRank rank = ForkRank::kProcess);
// For a kObject mutex whose object goes away (a registered mutex must not be destroyed before).
void release_across_fork(std::mutex* m);

// Tests only: how many mutexes are registered.
size_t fork_held_count_for_testing();

}  // namespace bigsmall::detail
