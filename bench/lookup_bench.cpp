// What bounds the float decoder on this CPU: the shape of its AVX-512 inner loop (two rANS steps
// per weight, each a table lookup, a multiply-add and a renormalization with an expand) timed with
// the lookups done by gathers, as the decoder does, and with them replaced by in-register
// permutes (wrong values, same instruction count otherwise), at one and two independent word
// streams. The difference is what the two lookups per weight cost; the rest is everything else.
// A third variant finds the sign+exponent symbol without a gather, by a branch-free binary search
// over cumulative frequencies held in registers (32 symbols: five permute-compare steps), the
// way a decoder could avoid the gather for tensors with few exponents.
// Synthetic tables and words: this measures instruction throughput, not a bitstream.
//
//   build/lookup_bench
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,popcnt")))

namespace {

struct Data {
  std::vector<uint32_t> se, mant;
  std::vector<uint8_t> words;
  std::vector<uint16_t> out;
};

// The last symbol whose cumulative start is <= slot, among 32 held in two registers, then its
// entry.
LB_AVX512 inline __m512i search32(__m512i slot, const __m512i cum[2], const __m512i ent[2]) {
  __m512i s = _mm512_setzero_si512();
  for (int step = 16; step >= 1; step /= 2) {
    const __m512i cand = _mm512_add_epi32(s, _mm512_set1_epi32(step));
    const __mmask16 le = _mm512_cmple_epu32_mask(_mm512_permutex2var_epi32(cum[0], cand, cum[1]), slot);
    s = _mm512_mask_mov_epi32(s, le, cand);
  }
  return _mm512_permutex2var_epi32(ent[0], s, ent[1]);
}

enum Lookup { kGather, kRegister, kSearch };

template <bool Gather>
LB_AVX512 inline __m512i lookup(__m512i idx, const uint32_t* table, __m512i reg_table) {
  if constexpr (Gather) return _mm512_i32gather_epi32(idx, table, 4);
  else return _mm512_permutexvar_epi32(idx, reg_table);
}

// One rANS step on a looked-up entry ((freq - 1) | offset << p), then renormalization.
LB_AVX512 inline __m512i step(__m512i v, __m512i e, __m128i p, __m512i mask, const uint8_t*& w, const Data& d) {
  const __m512i freq = _mm512_add_epi32(_mm512_and_si512(e, mask), _mm512_set1_epi32(1));
  v = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srl_epi32(v, p)), _mm512_and_si512(_mm512_srl_epi32(e, p), mask));
  const __m512i next = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  const __mmask16 need = _mm512_cmplt_epu32_mask(v, _mm512_set1_epi32(1 << 16));
  w += 2 * __builtin_popcount(need);
  if (w > d.words.data() + d.words.size() - 64) w = d.words.data();
  return _mm512_mask_or_epi32(v, need, _mm512_slli_epi32(v, 16), _mm512_maskz_expand_epi32(need, next));
}

// K word streams of V registers (16 lanes each); kind: how the lookups are done.
template <int K, int V, Lookup kind>
LB_AVX512 double ns_per_weight(Data& d, uint64_t rounds) {
  constexpr bool Gather = kind != kRegister;
  __m512i cum[2], ent[2];
  for (int i = 0; i < 2; ++i) {
    alignas(64) uint32_t c[16];
    for (int j = 0; j < 16; ++j) c[j] = static_cast<uint32_t>(128 * (16 * i + j));  // 32 symbols of 4096 slots
    cum[i] = _mm512_load_si512(c);
    ent[i] = _mm512_loadu_si512(d.se.data() + 16 * i);
  }
  __m512i x[K][V];
  const uint8_t* wp[K];
  for (int k = 0; k < K; ++k) {
    wp[k] = d.words.data() + 4096 * k;
    for (int h = 0; h < V; ++h) x[k][h] = _mm512_set1_epi32((1 << 20) + 77 * h + k);
  }
  const __m512i se_mask = _mm512_set1_epi32(4095), m_mask = _mm512_set1_epi32(63);
  const __m128i ps = _mm_cvtsi32_si128(12), pm = _mm_cvtsi32_si128(6), ps2 = _mm_cvtsi32_si128(24);
  const __m128i pm2 = _mm_cvtsi32_si128(12);
  const __m512i reg_table = _mm512_loadu_si512(d.se.data());
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t r = 0; r < rounds; ++r) {
    __m512i se[K][V];
    for (int k = 0; k < K; ++k)
      for (int h = 0; h < V; ++h) {
        const __m512i slot = _mm512_and_si512(x[k][h], se_mask);
        __m512i e;
        if constexpr (kind == kSearch) e = search32(slot, cum, ent);
        else e = lookup<Gather>(slot, d.se.data(), reg_table);
        se[k][h] = _mm512_srl_epi32(e, ps2);
        x[k][h] = step(x[k][h], e, ps, se_mask, wp[k], d);
      }
    for (int k = 0; k < K; ++k)
      for (int h = 0; h < V; ++h) {
        const __m512i slot = _mm512_or_si512(_mm512_sll_epi32(se[k][h], pm), _mm512_and_si512(x[k][h], m_mask));
        const __m512i e = lookup<Gather>(slot, d.mant.data(), reg_table);
        x[k][h] = step(x[k][h], e, pm, m_mask, wp[k], d);
        const uint64_t at = (r * 16 * K * V + 16 * (k * V + h)) & 65535;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d.out.data() + at),
                            _mm512_cvtepi32_epi16(_mm512_sll_epi32(_mm512_srl_epi32(e, pm2), pm)));
      }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s * 1e9 / static_cast<double>(rounds * 16 * K * V);
}

template <int K, int V, Lookup kind>
double median_of_5(Data& d) {
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) t.push_back(ns_per_weight<K, V, kind>(d, (uint64_t{1} << 21) / (K * V)));
  std::sort(t.begin(), t.end());
  return t[2];
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vbmi")) {
    std::printf("lookup_bench: this CPU has no AVX-512 VBMI; nothing to measure\n");
    return 0;
  }
  std::mt19937 rng(1);
  Data d;
  // Entries shaped like the decoder's fused ones: small freq - 1, offset, a row below 40.
  d.se.resize(4096);
  for (auto& e : d.se) e = (rng() & 63) | ((rng() & 63) << 12) | ((rng() % 40) << 24);
  d.mant.resize(64 * 64);
  for (auto& e : d.mant) e = (rng() & 7) | ((rng() & 7) << 6) | ((rng() & 15) << 12);
  d.words.resize(1 << 20);
  for (auto& w : d.words) w = static_cast<uint8_t>(rng());
  d.out.resize(65536 + 64);
  std::printf("| word streams x lanes | with gathers (ns/weight) | lookups in registers (ns/weight) | lookups' share |"
              " se by register search, mantissa by gather (ns/weight) |\n");
  std::printf("|---|---|---|---|---|\n");
  auto row = [](const char* what, double g, double p, double s) {
    std::printf("| %s | %.2f | %.2f | %.0f%% | %.2f |\n", what, g, p, 100 * (g - p) / g, s);
  };
  row("1 x 32 (one chunk)", median_of_5<1, 2, kGather>(d), median_of_5<1, 2, kRegister>(d), median_of_5<1, 2, kSearch>(d));
  row("2 x 32 (two chunks side by side)", median_of_5<2, 2, kGather>(d), median_of_5<2, 2, kRegister>(d),
      median_of_5<2, 2, kSearch>(d));
  row("4 x 16", median_of_5<4, 1, kGather>(d), median_of_5<4, 1, kRegister>(d), median_of_5<4, 1, kSearch>(d));
  return 0;
}

#else
int main() {
  std::printf("lookup_bench: needs x86-64 with GCC or Clang\n");
  return 0;
}
#endif
