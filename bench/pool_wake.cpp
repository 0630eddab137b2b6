// What a second thread can add to a short decode, by how it is reached: a pool made for the job
// (as every decode call makes one), a worker of a pool that waits blocked on its condition
// variable (as a process-wide pool of parked threads would), and one still spinning from the
// last job. Each job is 8 items of 25 us of busy work (200 us on one thread, 100 us ideal on
// two). Prints the median microseconds per job of each, over 9 rounds of 300 jobs.
//
// usage: pool_wake
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "common/thread_pool.hpp"

using bigsmall::detail::ThreadPool;
using Clock = std::chrono::steady_clock;

namespace {
void busy(std::chrono::microseconds d) {
  const auto end = Clock::now() + d;
  while (Clock::now() < end) {
  }
}
double us_since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main() {
  constexpr int kJobs = 300, kRounds = 9;
  const auto job = [](size_t) { busy(std::chrono::microseconds(25)); };
  std::vector<double> fresh, woken, spinning;
  for (int r = 0; r < kRounds; ++r) {
    double a = 0, b = 0, c = 0;
    for (int j = 0; j < kJobs; ++j) {
      const auto t0 = Clock::now();
      ThreadPool p(2);
      p.parallel_for(8, job);
      a += us_since(t0);
    }
    ThreadPool p(2);
    for (int j = 0; j < kJobs; ++j) {
      std::this_thread::sleep_for(std::chrono::microseconds(300));  // past the spin: the worker blocks
      const auto t0 = Clock::now();
      p.parallel_for(8, job);
      b += us_since(t0);
    }
    for (int j = 0; j < kJobs; ++j) {
      const auto t0 = Clock::now();
      p.parallel_for(8, job);
      c += us_since(t0);
    }
    fresh.push_back(a / kJobs);
    woken.push_back(b / kJobs);
    spinning.push_back(c / kJobs);
  }
  std::printf("us per job of 200 us of work on 2 threads (median of %d rounds): pool made for the job %.1f, "
              "blocked worker woken %.1f, spinning worker %.1f\n",
              kRounds, median(fresh), median(woken), median(spinning));
  return 0;
}
