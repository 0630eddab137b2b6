#include "common/fork_safe.hpp"

#include <pthread.h>

#include <array>

namespace bigsmall::detail {

namespace {

// Constant-initialised, so registration from any static initialiser or first use is safe.
std::mutex g_registry_mu;
std::array<std::mutex*, kMaxForkHeld> g_held{};
size_t g_count = 0;  // under g_registry_mu

void before_fork() {
  g_registry_mu.lock();
  for (size_t i = 0; i < g_count; ++i) g_held[i]->lock();
}

void after_fork() {  // parent and child alike: the forking thread holds every one
  for (size_t i = g_count; i-- > 0;) g_held[i]->unlock();
  g_registry_mu.unlock();
}

}  // namespace

void hold_across_fork(std::mutex* m) {
  static const bool installed = [] { return ::pthread_atfork(before_fork, after_fork, after_fork) == 0; }();
  if (!installed) return;  // no memory for the handlers: forks stay as unsafe as without them
  std::lock_guard<std::mutex> lk(g_registry_mu);
  for (size_t i = 0; i < g_count; ++i)
    if (g_held[i] == m) return;
  if (g_count < g_held.size()) g_held[g_count++] = m;  // beyond: raise kMaxForkHeld (a test checks the count)
}

size_t fork_held_count_for_testing() {
  std::lock_guard<std::mutex> lk(g_registry_mu);
  return g_count;
}

}  // namespace bigsmall::detail
