// The thread pool under short jobs in quick succession (its workers spin between jobs before
// they block): every item runs exactly once, exceptions reach the caller, and a pool can be
// destroyed at any point between jobs.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fork_safe.hpp"
#include "common/scratch.hpp"
#include "common/thread_pool.hpp"

using bigsmall::detail::ThreadPool;

// The suite's files are small: with the default thread count sized by their bytes they would
// decode on one thread, and the multi-threaded paths (errors raised on workers, chunk groups,
// checksums taken out of order) would go untested, under the sanitizers too. Tests get all
// cores by default; DefaultThreadCountFollowsTheWork checks the rule itself.
namespace {
const bool kAllCoresInTests = [] {
  bigsmall::detail::set_threads_by_size_for_testing(false);
  return true;
}();
}  // namespace

TEST(ThreadPool, EveryItemRunsOnceAcrossManyShortJobs) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{64}, size_t{1000}}) {
      for (int rep = 0; rep < 50; ++rep) {
        std::vector<std::atomic<int>> hits(n);
        pool.parallel_for(n, [&](size_t i) { hits[i].fetch_add(1); });
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " threads, n " << n << ", item " << i;
      }
    }
  }
}

TEST(ThreadPool, JobsAfterAPauseStillRunOnEveryItem) {
  // A pause longer than the workers' spin: they block, and the next job must wake them.
  ThreadPool pool(3);
  for (int rep = 0; rep < 5; ++rep) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::atomic<int> sum{0};
    pool.parallel_for(100, [&](size_t i) { sum.fetch_add(static_cast<int>(i)); });
    EXPECT_EQ(sum.load(), 4950);
  }
}

TEST(ThreadPool, WorkersJoinAndTheCallerWaitsForThem) {
  // Items long enough for a worker to wake (it must be woken, or the caller runs them all) and
  // for a caller that returned early to be seen with items still running.
  ThreadPool pool(2);
  for (int rep = 0; rep < 2; ++rep) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // past the spin: workers block
    std::mutex mu;
    std::condition_variable joined;
    std::set<std::thread::id> ids;
    std::atomic<int> in_flight{0};
    pool.parallel_for(200, [&](size_t) {
      in_flight.fetch_add(1);
      {
        // The first thread here waits (10 s at most) for the other to take an item: on a loaded
        // machine a worker may take longer to wake than the items take to run, and a test that
        // raced it failed when nothing was wrong.
        std::unique_lock<std::mutex> lk(mu);
        ids.insert(std::this_thread::get_id());
        joined.notify_all();
        joined.wait_for(lk, std::chrono::seconds(10), [&] { return ids.size() >= 2; });
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      in_flight.fetch_sub(1);
    });
    EXPECT_EQ(in_flight.load(), 0) << "parallel_for returned while items still ran";
    EXPECT_EQ(ids.size(), 2u) << "the worker never joined the job";
  }
}

TEST(ThreadPool, AnItemsExceptionReachesTheCallerAfterTheJob) {
  ThreadPool pool(2);
  std::atomic<int> ran{0};
  EXPECT_THROW(pool.parallel_for(100,
                                 [&](size_t i) {
                                   ran.fetch_add(1);
                                   if (i == 37) throw std::runtime_error("item 37");
                                 }),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 100);  // the rest of the job still ran
  std::atomic<int> again{0};
  pool.parallel_for(10, [&](size_t) { again.fetch_add(1); });
  EXPECT_EQ(again.load(), 10);
}

TEST(ThreadPool, PoolsComeAndGoQuickly) {
  // As every compress and decode call does: a pool, a job or two, then its end.
  for (int rep = 0; rep < 200; ++rep) {
    ThreadPool pool(2);
    std::atomic<int> n{0};
    if (rep % 3) pool.parallel_for(16, [&](size_t) { n.fetch_add(1); });
    EXPECT_EQ(n.load(), rep % 3 ? 16 : 0);
  }
}

TEST(ThreadPool, DefaultThreadCountFollowsTheWork) {
  using bigsmall::detail::default_thread_count;
  using bigsmall::detail::threads_for;
  struct Rule {  // the rule itself, for this test only (see kAllCoresInTests)
    Rule() { bigsmall::detail::set_threads_by_size_for_testing(true); }
    ~Rule() { bigsmall::detail::set_threads_by_size_for_testing(false); }
  } rule;
  const uint64_t per = 1000;
  // The default starts no more threads than items, nor than the bytes justify.
  EXPECT_EQ(threads_for(0, 1, 1u << 30, per), 1);
  EXPECT_EQ(threads_for(0, 1000, 10, per), 1);
  EXPECT_EQ(threads_for(0, 1000, 0, per), 1);
  EXPECT_EQ(threads_for(0, 1000, 2 * per, per), std::min(2, default_thread_count()));
  EXPECT_EQ(threads_for(0, 1u << 20, uint64_t{1} << 40, per), default_thread_count());
  // An explicit count is honoured up to one thread per item, whatever the size.
  EXPECT_EQ(threads_for(5, 100, 10, per), 5);
  EXPECT_EQ(threads_for(5, 3, uint64_t{1} << 40, per), 3);
  EXPECT_EQ(threads_for(5, 0, 0, per), 1);
  EXPECT_EQ(threads_for(1, 100, uint64_t{1} << 40, per), 1);
  // ... and up to the cap: INT_MAX once started threads until the system refused (340 here).
  const int cap = bigsmall::detail::max_thread_count();
  EXPECT_EQ(cap, std::max(bigsmall::detail::kThreadCap, default_thread_count()));
  EXPECT_EQ(threads_for(INT_MAX, uint64_t{1} << 40, uint64_t{1} << 40, per), cap);
  EXPECT_EQ(threads_for(cap + 1, uint64_t{1} << 40, uint64_t{1} << 40, per), cap);
}

TEST(ThreadPool, APoolNeverStartsMoreThanTheCap) {
  ThreadPool pool(INT_MAX);
  EXPECT_LE(pool.size(), bigsmall::detail::max_thread_count());
  std::atomic<int> runs{0};
  pool.parallel_for(1000, [&](size_t) { runs.fetch_add(1); });
  EXPECT_EQ(runs.load(), 1000);
}

TEST(ThreadPool, ThreadsTheSystemRefusesLeaveASmallerPool) {
  // A process at its task limit: std::thread throws. The pool keeps the threads it started (a
  // throw out of the constructor would destroy them joinable: std::terminate) and every item runs.
  struct Limit {
    explicit Limit(int n) { bigsmall::detail::limit_thread_starts_for_testing(n); }
    ~Limit() { bigsmall::detail::limit_thread_starts_for_testing(-1); }
  };
  for (int started : {0, 1, 3}) {
    Limit limit(started);
    ThreadPool pool(8);
    EXPECT_EQ(pool.size(), started + 1);
    std::atomic<int> n{0};
    pool.parallel_for(100, [&](size_t) { n.fetch_add(1); });
    EXPECT_EQ(n.load(), 100);
  }
}

TEST(ForkSafety, AMutexAnotherThreadHoldsAtForkIsFreeInTheChild) {
  // fork() waits for the holder to let go, so the child's copy is never taken locked.
  static std::mutex m;  // registered for the rest of the process
  const size_t before = bigsmall::detail::fork_held_count_for_testing();
  bigsmall::detail::hold_across_fork(&m);
  bigsmall::detail::hold_across_fork(&m);
  EXPECT_EQ(bigsmall::detail::fork_held_count_for_testing(), before + 1);
  std::atomic<bool> locked{false};
  std::thread holder([&] {
    std::lock_guard<std::mutex> lk(m);
    locked.store(true);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  });
  while (!locked.load()) std::this_thread::yield();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ::_exit(m.try_lock() ? 0 : 1);
  holder.join();
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child's copy of the mutex was locked";
  EXPECT_TRUE(m.try_lock()) << "the parent's mutex was left locked";
  m.unlock();
}

namespace {
std::atomic<int> live_scratch{0};
struct CountedScratch {
  CountedScratch() { live_scratch.fetch_add(1); }
  ~CountedScratch() { live_scratch.fetch_sub(1); }
  int uses = 0;
};
struct OtherTag;
}  // namespace

TEST(ThreadScratch, OnePerThreadAndTagFreedAsTheThreadExits) {
  // Scratch registers no thread_local destructor (glibc aborts when that registration cannot
  // allocate): it is freed by a pthread key's destructor instead, which this checks it is.
  using bigsmall::detail::thread_scratch;
  const int before = live_scratch.load();
  std::thread t([] {
    CountedScratch& a = thread_scratch<CountedScratch>();
    ++a.uses;
    EXPECT_EQ(&thread_scratch<CountedScratch>(), &a) << "found again, not made again";
    EXPECT_EQ(thread_scratch<CountedScratch>().uses, 1);
    CountedScratch& other = thread_scratch<CountedScratch, OtherTag>();
    EXPECT_NE(&other, &a) << "another tag, another object";
  });
  t.join();
  EXPECT_EQ(live_scratch.load(), before) << "both freed when the thread ended";
  ++thread_scratch<CountedScratch>().uses;  // the caller's own: made now, or kept from an earlier call
  const int with_callers = live_scratch.load();
  EXPECT_LE(with_callers - before, 1);
  {
    ThreadPool pool(3);
    pool.parallel_for(64, [](size_t) { ++thread_scratch<CountedScratch>().uses; });
  }
  EXPECT_EQ(live_scratch.load(), with_callers) << "the workers' scratch went with them; the caller's stays";
}

TEST(ThreadScratch, UsedAgainByALaterKeysDestructorItIsMadeAfreshAndFreedToo) {
  // Another library's pthread key, made after ours, whose destructor calls into bigsmall as the
  // thread exits: our destructor has already freed the scratch, which must not be found again.
  using bigsmall::detail::thread_scratch;
  pthread_key_t later;
  ASSERT_EQ(pthread_key_create(&later, [](void*) { ++thread_scratch<CountedScratch>().uses; }), 0);
  const int before = live_scratch.load();
  std::thread t([&] {
    ++thread_scratch<CountedScratch>().uses;
    pthread_setspecific(later, &later);
  });
  t.join();
  EXPECT_EQ(live_scratch.load(), before) << "made again in the later destructor, and freed in the next pass";
  pthread_key_delete(later);
}
