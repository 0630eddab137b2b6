#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "decode/simd.hpp"
#include "entropy/table.hpp"

namespace bigsmall::detail {

bool cpu_has_avx512_decoder() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2");
#else
  return false;
#endif
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,popcnt")))

namespace {

BS_AVX512 inline __m512i renorm(__m512i x, const uint8_t*& wp) {
  const __mmask16 need = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32(static_cast<int>(kRansL)));
  // Register-form expand: the memory form is microcoded and slow on some cores. The fast path
  // guarantees 32 readable bytes at wp.
  const __m256i w16 = _mm256_maskz_expand_epi16(need, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp)));
  wp += 2 * __builtin_popcount(need);
  const __m512i shifted = _mm512_or_si512(_mm512_slli_epi32(x, 16), _mm512_cvtepu16_epi32(w16));
  return _mm512_mask_mov_epi32(x, need, shifted);
}

BS_AVX512 inline __m512i advance(__m512i x, __m512i entry, __m128i precision) {
  const __m512i freq = _mm512_srli_epi32(entry, 16);
  const __m512i off = _mm512_and_si512(entry, _mm512_set1_epi32(0xffff));
  return _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srl_epi32(x, precision)), off);
}

// Whether one more round of `round` elements can run without bounds checks: at most two words
// per lane, and raw fields fetched as 4-byte gathers must leave 4 readable bytes.
BS_AVX512 inline bool round_fits(const SimdFloatArgs& a, const uint8_t* wp, uint64_t done, uint64_t round) {
  const uint64_t rb = static_cast<uint64_t>(a.raw_bits);
  return done + round <= a.n && static_cast<uint64_t>(a.wend - wp) >= 4 * round &&
         ((done + round) * rb) / 8 + 4 <= a.raw_bytes + (rb ? 0 : 4);
}

// ORs the raw fields of elements first..first+15 into v.
BS_AVX512 inline __m512i add_raw(const SimdFloatArgs& a, __m512i v, uint64_t first) {
  const __m512i lane_ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i bitpos = _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(first)), lane_ids),
                                            _mm512_set1_epi32(a.raw_bits));
  const __m512i word = _mm512_i32gather_epi32(_mm512_srli_epi32(bitpos, 3), a.raw, 1);
  const __m512i field = _mm512_and_si512(_mm512_srlv_epi32(word, _mm512_and_si512(bitpos, _mm512_set1_epi32(7))),
                                         _mm512_set1_epi32(static_cast<int>((1u << a.raw_bits) - 1)));
  return _mm512_or_si512(v, _mm512_sll_epi32(field, _mm_cvtsi32_si128(a.zero_bits)));
}

template <int kElemBytes>
BS_AVX512 inline void store(uint8_t* dst, __m512i v) {
  if constexpr (kElemBytes == 2) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(v));
  } else {
    _mm512_storeu_si512(dst, v);
  }
}

// Per-kernel constants from the arguments: slot masks and shift counts for both tables, and the
// element layout.
struct KernelConsts {
  __m512i se_mask, m_mask;
  __m128i se_p, m_p, man_bits, hi_shift;
};

BS_AVX512 inline KernelConsts kernel_consts(const SimdFloatArgs& a) {
  return {_mm512_set1_epi32(static_cast<int>((1u << a.se_precision) - 1)),
          _mm512_set1_epi32(static_cast<int>((1u << a.m_precision) - 1)),
          _mm_cvtsi32_si128(a.se_precision),
          _mm_cvtsi32_si128(a.m_precision),
          _mm_cvtsi32_si128(a.man_bits),
          _mm_cvtsi32_si128(a.hi_shift)};
}

// V vectors of 16 lanes: 16·V lanes per chunk, decoded in lane order.
template <int kElemBytes, int V>
BS_AVX512 uint64_t run(const SimdFloatArgs& a, uint8_t* out) {
  constexpr uint64_t kRound = 16 * V;
  __m512i x[V];
  for (int h = 0; h < V; ++h) x[h] = _mm512_loadu_si512(a.x + 16 * h);
  const uint8_t* wp = *a.wp;
  const auto [se_mask, m_mask, se_p, m_p, man_bits, hi_shift] = kernel_consts(a);
  const __m512i low16 = _mm512_set1_epi32(0xffff);
  uint64_t done = 0;
  while (round_fits(a, wp, done, kRound)) {
    __m512i sym[V];
    for (int h = 0; h < V; ++h) {
      const __m512i slot = _mm512_and_si512(x[h], se_mask);
      const __m512i e = _mm512_i32gather_epi32(slot, a.se_packed, 4);
      sym[h] = _mm512_i32gather_epi32(slot, a.se_aux, 4);
      x[h] = renorm(advance(x[h], e, se_p), wp);
    }
    for (int h = 0; h < V; ++h) {
      const __m512i table = _mm512_sll_epi32(_mm512_srli_epi32(sym[h], 16), m_p);
      const __m512i slot = _mm512_add_epi32(table, _mm512_and_si512(x[h], m_mask));
      const __m512i e = _mm512_i32gather_epi32(slot, a.m_packed, 4);
      const __m512i hi = _mm512_i32gather_epi32(slot, a.m_sym, 4);
      x[h] = renorm(advance(x[h], e, m_p), wp);
      __m512i v = _mm512_or_si512(_mm512_sll_epi32(_mm512_and_si512(sym[h], low16), man_bits),
                                  _mm512_sll_epi32(hi, hi_shift));
      if (a.raw_bits) v = add_raw(a, v, done + 16 * h);
      store<kElemBytes>(out + (done + 16 * h) * kElemBytes, v);
    }
    done += kRound;
  }
  for (int h = 0; h < V; ++h) _mm512_storeu_si512(a.x + 16 * h, x[h]);
  *a.wp = wp;
  return done;
}

// One gather per symbol: frequency, offset and symbol packed in one table entry.
BS_AVX512 inline __m512i advance_packed(__m512i x, __m512i entry, __m128i precision, __m512i field_mask) {
  const __m512i freq = _mm512_add_epi32(_mm512_and_si512(entry, field_mask), _mm512_set1_epi32(1));
  const __m512i off = _mm512_and_si512(_mm512_srl_epi32(entry, precision), field_mask);
  return _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srl_epi32(x, precision)), off);
}

template <int kElemBytes, int V, int kMode>
BS_AVX512 uint64_t run_fused(const SimdFloatArgs& a, const SimdFusedArgs& f, uint8_t* out) {
  const __m512i t0 = _mm512_loadu_si512(f.d_to_se), t1 = _mm512_loadu_si512(f.d_to_se + 16);
  const __m512i t2 = _mm512_loadu_si512(f.d_to_se + 32), t3 = _mm512_loadu_si512(f.d_to_se + 48);
  constexpr uint64_t kRound = 16 * V;
  __m512i x[V];
  for (int h = 0; h < V; ++h) x[h] = _mm512_loadu_si512(a.x + 16 * h);
  const uint8_t* wp = *a.wp;
  const auto [se_mask, m_mask, se_p, m_p, man_bits, hi_shift] = kernel_consts(a);
  const __m128i se_2p = _mm_cvtsi32_si128(2 * a.se_precision);
  const __m128i m_2p = _mm_cvtsi32_si128(2 * a.m_precision);
  uint64_t done = 0;
  while (round_fits(a, wp, done, kRound)) {
    __m512i se[V];
    for (int h = 0; h < V; ++h) {
      const __m512i e = _mm512_i32gather_epi32(_mm512_and_si512(x[h], se_mask), f.se_fused, 4);
      se[h] = _mm512_srl_epi32(e, se_2p);
      x[h] = renorm(advance_packed(x[h], e, se_p, se_mask), wp);
    }
    for (int h = 0; h < V; ++h) {
      const __m512i slot = _mm512_or_si512(_mm512_sll_epi32(se[h], m_p), _mm512_and_si512(x[h], m_mask));
      const __m512i e = _mm512_i32gather_epi32(slot, f.m_fused, 4);
      x[h] = renorm(advance_packed(x[h], e, m_p, m_mask), wp);
      const __m512i payload = _mm512_sll_epi32(_mm512_srl_epi32(e, m_2p), hi_shift);
      __m512i v;
      if constexpr (kMode == kSeInMant) {
        v = payload;
      } else if constexpr (kMode == kSeInSe) {
        v = _mm512_or_si512(_mm512_sll_epi32(se[h], man_bits), payload);
      } else {
        const __mmask16 high = _mm512_cmpge_epu32_mask(se[h], _mm512_set1_epi32(32));
        const __m512i lo = _mm512_permutex2var_epi32(t0, se[h], t1);
        const __m512i hi = _mm512_permutex2var_epi32(t2, se[h], t3);
        v = _mm512_or_si512(_mm512_sll_epi32(_mm512_mask_mov_epi32(lo, high, hi), man_bits), payload);
      }
      if (a.raw_bits) v = add_raw(a, v, done + 16 * h);
      store<kElemBytes>(out + (done + 16 * h) * kElemBytes, v);
    }
    done += kRound;
  }
  for (int h = 0; h < V; ++h) _mm512_storeu_si512(a.x + 16 * h, x[h]);
  *a.wp = wp;
  return done;
}

}  // namespace

uint64_t decode_float_rounds_avx512_fused(const SimdFloatArgs& a, const SimdFusedArgs& f, int elem_bytes, int lanes,
                                          uint8_t* out) {
  auto pick = [&](auto mode) -> uint64_t {
    constexpr int M = decltype(mode)::value;
    switch (lanes) {
      case 16: return elem_bytes == 2 ? run_fused<2, 1, M>(a, f, out) : run_fused<4, 1, M>(a, f, out);
      case 32: return elem_bytes == 2 ? run_fused<2, 2, M>(a, f, out) : run_fused<4, 2, M>(a, f, out);
      default: return 0;
    }
  };
  switch (f.mode) {
    case kSeInMant: return pick(std::integral_constant<int, kSeInMant>{});
    case kSeInSe: return pick(std::integral_constant<int, kSeInSe>{});
    case kSePermute: return pick(std::integral_constant<int, kSePermute>{});
    default: return 0;
  }
}

uint64_t decode_float_rounds_avx512(const SimdFloatArgs& a, int elem_bytes, int lanes, uint8_t* out) {
  switch (lanes) {
    case 16: return elem_bytes == 2 ? run<2, 1>(a, out) : run<4, 1>(a, out);
    case 32: return elem_bytes == 2 ? run<2, 2>(a, out) : run<4, 2>(a, out);
    case 64: return elem_bytes == 2 ? run<2, 4>(a, out) : run<4, 4>(a, out);
    default: return 0;
  }
}

#else
uint64_t decode_float_rounds_avx512(const SimdFloatArgs&, int, int, uint8_t*) { return 0; }
uint64_t decode_float_rounds_avx512_fused(const SimdFloatArgs&, const SimdFusedArgs&, int, int, uint8_t*) { return 0; }
#endif

}  // namespace bigsmall::detail
