#include "common/fork_safe.hpp"

#include <pthread.h>

#include <algorithm>
#include <vector>

namespace bigsmall::detail {

namespace {

// Constant-initialised (no guard a fork could catch half taken), so that registration works
// from any static initialiser; the lists are never destroyed (objects may go away at exit).
std::mutex g_registry_mu;
std::vector<std::mutex*>* g_ranks[2] = {nullptr, nullptr};  // under g_registry_mu
bool g_installed = false;                                  // under g_registry_mu

void before_fork() {
  g_registry_mu.lock();
  for (auto* list : g_ranks)
    if (list)
      for (std::mutex* m : *list) m->lock();
}

void after_fork() {  // parent and child alike: the forking thread holds every one
  for (int r = 1; r >= 0; --r)
    if (auto* list = g_ranks[r])
      for (auto it = list->rbegin(); it != list->rend(); ++it) (*it)->unlock();
  g_registry_mu.unlock();
}

}  // namespace

void hold_across_fork(std::mutex* m, ForkRank rank) {
  std::lock_guard<std::mutex> lk(g_registry_mu);
  if (!g_installed) {
    if (::pthread_atfork(before_fork, after_fork, after_fork) != 0) return;  // no memory: forks stay as before
    g_installed = true;
  }
  auto*& list = g_ranks[rank == ForkRank::kObject ? 0 : 1];
  try {
    if (!list) list = new std::vector<std::mutex*>;
    if (std::find(list->begin(), list->end(), m) == list->end()) list->push_back(m);
  } catch (const std::bad_alloc&) {
    // Out of memory: this mutex stays unregistered, as unsafe across a fork as without this.
  }
}

void release_across_fork(std::mutex* m) {
  std::lock_guard<std::mutex> lk(g_registry_mu);
  for (auto* list : g_ranks)
    if (list) list->erase(std::remove(list->begin(), list->end(), m), list->end());
}

size_t fork_held_count_for_testing() {
  std::lock_guard<std::mutex> lk(g_registry_mu);
  size_t n = 0;
  for (auto* list : g_ranks)
    if (list) n += list->size();
  return n;
}

}  // namespace bigsmall::detail
