#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace bigsmall::detail {

// A fixed set of workers that run parallel_for loops; the calling thread works too, so a pool of
// one thread runs everything inline with no synchronisation.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // <= 0: all cores
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(i) for every i in [0, n), items handed out dynamically; returns when all are done.
  // If items throw, the rest of the generation still completes, then the first exception is
  // rethrown on the calling thread (no worker can outlive the job it runs).
  void parallel_for(size_t n, const std::function<void(size_t)>& fn);

 private:
  void worker_loop();
  void run_items();
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(size_t)>* job_ = nullptr;
  size_t job_n_ = 0;
  alignas(64) std::atomic<size_t> next_{0};  // taken by every item: a line of its own
  size_t generation_ = 0;
  // Mirrors of generation_ and of started_ - finished_, written under mu_, read without it by
  // the short spins that precede each wait (see spin_until).
  alignas(64) std::atomic<size_t> generation_seen_{0};
  std::atomic<int> running_{0};
  bool spin_ = false;  // only when every thread has a core: spinning on a shared one slows the rest
  // Workers that joined the current job and have not finished it. A worker that wakes after the
  // caller has handed out every item does not join: on a busy machine a wake-up can take longer
  // than a small job, and the caller must not wait for it.
  bool accepting_ = false;
  int started_ = 0;
  int finished_ = 0;
  std::exception_ptr error_;  // first exception thrown by an item, rethrown by parallel_for
  bool stop_ = false;
};

int default_thread_count();

// An explicit thread count is honoured up to max(kThreadCap, cores), as zstd caps its workers:
// -T 100000 would otherwise start threads until the system refuses (each with its stack and,
// for the encoder, its scratch), for no speed on any machine.
constexpr int kThreadCap = 256;
int max_thread_count();

// Threads for a job of `items` independent pieces and `bytes` of data. An explicit request
// (> 0) is honoured up to one thread per item; the default (<= 0, "all cores") starts no more
// threads than the job can use: starting and waking one costs tens of microseconds, and a
// library called once per small tensor (safe_open's get_tensor) on a machine of many cores would
// otherwise spend far more time starting threads than decoding.
int threads_for(int requested, uint64_t items, uint64_t bytes, uint64_t min_bytes_per_thread);

// Tests only: false makes the default "all cores, up to one per item" whatever the bytes, so that
// a suite of small files still runs its multi-threaded paths; true restores the rule.
void set_threads_by_size_for_testing(bool by_size);

// Tests only: the next n thread starts succeed, later ones fail as a system at its task limit
// makes them fail (n < 0: no limit again).
void limit_thread_starts_for_testing(int64_t n);

// Bytes of output that make a decode thread worth starting (~0.2 ms of work), and of input that
// make a compression thread worth it.
constexpr uint64_t kDecodeBytesPerThread = 256 << 10;
constexpr uint64_t kEncodeBytesPerThread = 64 << 10;

}  // namespace bigsmall::detail
