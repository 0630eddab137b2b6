// How much a second thread adds on this machine, for three kinds of work with no sharing between
// the threads: register arithmetic, 16-lane gathers from an L1-resident table (the decoder's
// lookups) and memcpy of 32 MiB (memory bandwidth). Each figure is (one thread's time for W) x 2
// / (two threads' time for W each), the median of 7 alternated pairs: 2.0 when the second thread
// is a whole core. It bounds what "all threads / one thread" can reach for each kind of work.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SP_AVX512 __attribute__((target("avx512f")))
#define SP_HAVE_GATHER 1
#endif

namespace {

volatile uint64_t g_sink;

void registers_only(uint64_t iters) {
  uint64_t a = 1, b = 2, c = 3, d = 4;
  for (uint64_t i = 0; i < iters; ++i) {
    a = a * 6364136223846793005ull + 1442695040888963407ull;
    b ^= b << 13;
    b ^= b >> 7;
    b ^= b << 17;
    c = c * 2862933555777941757ull + 3037000493ull;
    d += a ^ c;
  }
  g_sink = a + b + c + d;
}

#ifdef SP_HAVE_GATHER
SP_AVX512 void gathers(uint64_t iters) {
  alignas(64) static thread_local uint32_t table[4096];
  for (uint32_t i = 0; i < 4096; ++i) table[i] = i * 2654435761u;
  __m512i x = _mm512_set_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
  __m512i y = _mm512_add_epi32(x, _mm512_set1_epi32(99));
  const __m512i mask = _mm512_set1_epi32(4095);
  for (uint64_t i = 0; i < iters; ++i) {  // two independent chains, as two interleaved chunks
    const __m512i g1 = _mm512_i32gather_epi32(_mm512_and_si512(x, mask), table, 4);
    const __m512i g2 = _mm512_i32gather_epi32(_mm512_and_si512(y, mask), table, 4);
    x = _mm512_add_epi32(_mm512_srli_epi32(g1, 3), x);
    y = _mm512_add_epi32(_mm512_srli_epi32(g2, 5), y);
  }
  g_sink = static_cast<uint64_t>(_mm512_reduce_add_epi32(_mm512_add_epi32(x, y)));
}
#endif

void copies(uint64_t iters) {
  std::vector<uint8_t> a(32 << 20, 1), b(32 << 20);
  for (uint64_t i = 0; i < iters; ++i) {
    std::memcpy(b.data(), a.data(), a.size());
    a[i % a.size()] ^= b[(i * 7) % b.size()];
  }
  g_sink = b[12345];
}

template <typename Work>
double seconds(Work work, int threads, uint64_t iters) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) ts.emplace_back([&] { work(iters); });
  for (auto& t : ts) t.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main() {
  struct Kind {
    const char* name;
    void (*work)(uint64_t);
    uint64_t iters;
  };
  std::vector<Kind> kinds = {{"registers only", registers_only, 400'000'000}};
#ifdef SP_HAVE_GATHER
  if (__builtin_cpu_supports("avx512f")) kinds.push_back({"16-lane gathers from L1", gathers, 40'000'000});
#endif
  kinds.push_back({"memcpy of 32 MiB", copies, 60});
  std::printf("| work | two threads / one (median of 7) | lowest | highest |\n|---|---|---|---|\n");
  for (const Kind& k : kinds) {
    std::vector<double> r;
    for (int rep = 0; rep < 7; ++rep) {
      const double one = seconds(k.work, 1, k.iters), two = seconds(k.work, 2, k.iters);
      r.push_back(2 * one / two);
    }
    std::sort(r.begin(), r.end());
    std::printf("| %s | %.2fx | %.2fx | %.2fx |\n", k.name, r[3], r[0], r[6]);
  }
}
