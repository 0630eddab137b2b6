#include "common/thread_pool.hpp"

namespace bigsmall::detail {

int default_thread_count() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = default_thread_count();
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
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
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_work_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (!accepting_) continue;  // the caller already holds every item: nothing to join
      ++started_;
    }
    run_items();
    {
      // Every worker that joined reports, so none can touch the next job's state.
      std::lock_guard<std::mutex> lk(mu_);
      ++finished_;
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
  }
  cv_work_.notify_all();
  run_items();
  std::unique_lock<std::mutex> lk(mu_);
  accepting_ = false;
  cv_done_.wait(lk, [&] { return finished_ == started_; });
  job_ = nullptr;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace bigsmall::detail
