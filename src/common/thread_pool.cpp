#include "common/thread_pool.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <new>
#include <system_error>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace bigsmall::detail {

namespace {

// Waking a thread blocked on a condition variable takes tens of microseconds on a virtual
// machine, as long as a whole small job (a file of a few hundred KB decodes in ~0.5 ms, in
// several phases). Workers and the caller therefore spin this long before they block.
constexpr auto kSpin = std::chrono::microseconds(50);

template <typename Done>
void spin_until(Done done) {
  const auto end = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0; !done(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > end) return;
  }
}

std::atomic<bool> threads_by_size{true};
std::atomic<int64_t> thread_starts_left_for_testing{INT64_MAX / 2};

}  // namespace

namespace {
// Read once: glibc answers hardware_concurrency() by opening and parsing a sysfs file (~6 us
// here), and every decode call asks, up to three times: a fifth of a small tensor's decode. Read
// when the library is loaded, not lazily: a lazy static's guard, caught half taken by a fork in
// another thread's first call, would hang the child.
const int g_cores = [] {
  const unsigned c = std::thread::hardware_concurrency();
  return c == 0 ? 1 : static_cast<int>(c);
}();
}  // namespace

int default_thread_count() { return g_cores; }

int max_thread_count() { return std::max(kThreadCap, g_cores); }

void limit_thread_starts_for_testing(int64_t n) {
  thread_starts_left_for_testing.store(n < 0 ? INT64_MAX / 2 : n, std::memory_order_relaxed);
}

void set_threads_by_size_for_testing(bool by_size) { threads_by_size.store(by_size, std::memory_order_relaxed); }

int threads_for(int requested, uint64_t items, uint64_t bytes, uint64_t min_bytes_per_thread) {
  if (!threads_by_size.load(std::memory_order_relaxed)) min_bytes_per_thread = 1;
  const uint64_t useful = requested > 0 ? items : std::min(items, bytes / std::max<uint64_t>(1, min_bytes_per_thread));
  const uint64_t wanted = requested > 0 ? static_cast<uint64_t>(std::min(requested, max_thread_count()))
                                        : static_cast<uint64_t>(default_thread_count());
  return static_cast<int>(std::max<uint64_t>(1, std::min(wanted, useful)));
}

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = default_thread_count();
  threads = std::min(threads, max_thread_count());
  spin_ = threads <= default_thread_count();
  // A thread the system refuses (a process or container at its task limit, or no memory for its
  // stack or state) leaves the pool smaller, not the call failed: the caller works too, so one
  // thread still does everything. (An exception here would destroy the joinable threads already
  // started: std::terminate.)
  try {
    workers_.reserve(static_cast<size_t>(threads - 1));
  } catch (const std::bad_alloc&) {
    return;
  }
  for (int i = 1; i < threads; ++i) {
    try {
      if (thread_starts_left_for_testing.fetch_sub(1, std::memory_order_relaxed) <= 0)
        throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));  // as std::thread throws
      workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error&) {
      break;
    } catch (const std::bad_alloc&) {
      break;
    }
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    generation_seen_.store(~size_t{0}, std::memory_order_release);  // ends the workers' spins
  }
  cv_work_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_items() {
  for (size_t i = next_.fetch_add(1); i < job_n_; i = next_.fetch_add(1)) {
    try {
      (*job_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::worker_loop() {
  size_t seen = 0;
  for (;;) {
    if (spin_) spin_until([&] { return generation_seen_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_work_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (!accepting_) continue;  // the caller already holds every item: nothing to join
      ++started_;
      running_.fetch_add(1, std::memory_order_relaxed);
    }
    run_items();
    {
      // Every worker that joined reports, so none can touch the next job's state.
      std::lock_guard<std::mutex> lk(mu_);
      ++finished_;
      running_.fetch_sub(1, std::memory_order_release);
    }
    cv_done_.notify_all();
  }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);  // exceptions propagate directly
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    job_n_ = n;
    next_.store(0);
    started_ = finished_ = 0;
    accepting_ = true;
    ++generation_;
    generation_seen_.store(generation_, std::memory_order_release);
  }
  cv_work_.notify_all();
  run_items();
  std::unique_lock<std::mutex> lk(mu_);
  accepting_ = false;
  if (spin_ && finished_ != started_) {
    lk.unlock();
    spin_until([&] { return running_.load(std::memory_order_acquire) == 0; });
    lk.lock();
  }
  cv_done_.wait(lk, [&] { return finished_ == started_; });
  job_ = nullptr;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace bigsmall::detail
