#pragma once
#include <cstddef>
#include <mutex>

namespace bigsmall::detail {

// Registers a mutex that guards process-wide state (caches, registries) to be held by the thread
// that calls fork() while the child's copy of memory is taken, and released in both processes
// after. Without it a fork from one thread while another holds the mutex (a DataLoader worker
// forked while a loader thread decodes) leaves the child's copy locked for ever: the child's
// first decode hangs. Mutexes are taken in the order they were registered, so a thread must
// never take an earlier-registered one while holding a later one; the ones registered here are
// never nested. The mutex must live for the rest of the process. At most kMaxForkHeld are held.
void hold_across_fork(std::mutex* m);

constexpr size_t kMaxForkHeld = 16;

// Tests only: how many mutexes are registered.
size_t fork_held_count_for_testing();

}  // namespace bigsmall::detail
