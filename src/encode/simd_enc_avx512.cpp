#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "encode/simd_enc.hpp"

namespace bigsmall::detail {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,popcnt")))

namespace {

// Register lane i is chunk lane i (of the vector's 16). Words are laid down from the end of the
// chunk backwards, each step's below the last, in ascending lane order: a compress gives them in
// that order, and the scalar encoder (one lane at a time, highest first, each word below the
// previous) leaves the same bytes.

// kLanes elements (16, or 8 for chunks of 8 lanes, which then live in register lanes 0..7).
template <int kElemBytes, int kLanes>
BS_AVX512 inline __m512i load_elements(const uint8_t* p) {
  if constexpr (kElemBytes == 2 && kLanes == 16) {
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else if constexpr (kElemBytes == 2) {
    return _mm512_cvtepu16_epi32(_mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  } else if constexpr (kLanes == 16) {
    return _mm512_loadu_si512(p);
  } else {
    return _mm512_maskz_loadu_epi32(0x00FF, p);
  }
}

// The 64-bit entries of `table` at the 16 indices: their low halves and their high halves, each
// in lane order. kLanes = 8 uses register lanes 0..7 only, so the upper gather is skipped.
template <int kLanes>
BS_AVX512 inline void gather_pairs(__m512i idx, const uint64_t* table, __m512i* lo, __m512i* hi) {
  const __m512i a = _mm512_i32gather_epi64(_mm512_castsi512_si256(idx), table, 8);
  const __m512i b = kLanes == 8 ? _mm512_setzero_si512()
                                : _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(idx, 1), table, 8);
  *lo = _mm512_permutex2var_epi32(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
  *hi = _mm512_permutex2var_epi32(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
}

// floor(v · rcp / 2^32) per lane.
BS_AVX512 inline __m512i mulhi_epu32(__m512i v, __m512i rcp) {
  const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(v, rcp), 32);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(v, 32), _mm512_srli_epi64(rcp, 32));
  return _mm512_mask_mov_epi32(even, 0xAAAA, odd);
}

// One rANS encode step for 16 lanes, as RansEncoder::put: emit the low word when x would
// overflow, then x = (x / freq) << P + x % freq + cum. The quotient from rcp = floor(2^32/freq)
// is at most one too small (x < 2^32), so one correction makes it exact.
BS_AVX512 inline __m512i put(__m512i x, __m512i fc, __m512i rcp, int precision, __m128i p, __mmask16 active,
                             uint16_t*& below) {
  const __m512i freq = _mm512_and_si512(fc, _mm512_set1_epi32(0xffff));
  const __m512i cum = _mm512_srli_epi32(fc, 16);
  // freq << (32 - P) wraps to 0 for freq = 2^P; minus one it becomes "never emit".
  const __m512i bound = _mm512_sub_epi32(_mm512_sll_epi32(freq, _mm_cvtsi32_si128(32 - precision)), _mm512_set1_epi32(1));
  const __mmask16 emit = _mm512_mask_cmpgt_epu32_mask(active, x, bound);
  const __m256i words = _mm256_maskz_compress_epi16(emit, _mm512_cvtepi32_epi16(x));
  const int k = __builtin_popcount(emit);
  below -= k;
  _mm256_mask_storeu_epi16(below, static_cast<__mmask16>((1u << k) - 1), words);
  const __m512i v = _mm512_mask_srli_epi32(x, emit, x, 16);
  __m512i q = mulhi_epu32(v, rcp);
  __m512i r = _mm512_sub_epi32(v, _mm512_mullo_epi32(q, freq));
  const __mmask16 fix = _mm512_cmpge_epu32_mask(r, freq);
  q = _mm512_mask_add_epi32(q, fix, q, _mm512_set1_epi32(1));
  r = _mm512_mask_sub_epi32(r, fix, r, freq);
  return _mm512_add_epi32(_mm512_add_epi32(_mm512_sll_epi32(q, p), r), cum);
}

// V vectors of 16 lanes, or (kLanes = 8) one vector with 8 active lanes. Without kMant (no
// mantissa bits coded) the mantissa step, a put of freq 2^P that leaves x as it is, is skipped.
template <int kElemBytes, int V, int kLanes = 16, bool kMant = true>
BS_AVX512 int64_t run(const SimdEncTables& t, const uint8_t* src, uint64_t rounds, uint32_t* xs, uint16_t* end) {
  constexpr uint64_t kRound = kLanes * V;
  constexpr __mmask16 kActive = kLanes == 16 ? 0xFFFF : 0x00FF;
  uint16_t* out = end;
  __m512i x[V];
  for (int h = 0; h < V; ++h) x[h] = _mm512_maskz_loadu_epi32(kActive, xs + 16 * h);
  const __m128i se_p = _mm_cvtsi32_si128(t.se_precision), m_p = _mm_cvtsi32_si128(t.m_precision);
  const __m128i man_bits = _mm_cvtsi32_si128(t.man_bits), hi_shift = _mm_cvtsi32_si128(t.hi_shift);
  const __m512i hi_mask = _mm512_set1_epi32(t.hi_mask);
  const __m128i hi_bits = _mm_cvtsi32_si128(t.hi_bits);
  for (uint64_t r = rounds; r-- > 0;) {
    const uint8_t* row = src + r * kRound * kElemBytes;
    __m512i fcx[V], se_rcp[V];
    for (int h = V - 1; h >= 0; --h) {
      const __m512i w = load_elements<kElemBytes, kLanes>(row + 16 * h * kElemBytes);
      gather_pairs<kLanes>(_mm512_srl_epi32(w, man_bits), t.se, &fcx[h], &se_rcp[h]);
      if constexpr (kMant) {
        const __m512i hi = _mm512_and_si512(_mm512_srl_epi32(w, hi_shift), hi_mask);
        const __m512i idx = _mm512_add_epi32(_mm512_sll_epi32(_mm512_srli_epi32(fcx[h], 24), hi_bits), hi);
        __m512i m_fc, m_rcp;
        gather_pairs<kLanes>(idx, t.m, &m_fc, &m_rcp);
        x[h] = put(x[h], m_fc, m_rcp, t.m_precision, m_p, kActive, out);
      }
    }
    for (int h = V - 1; h >= 0; --h) {
      const __m512i fc =  // back to freq | cum << 16
          _mm512_or_si512(_mm512_add_epi32(_mm512_and_si512(fcx[h], _mm512_set1_epi32(0xFFF)), _mm512_set1_epi32(1)),
                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(fcx[h], 12), _mm512_set1_epi32(0xFFF)), 16));
      x[h] = put(x[h], fc, se_rcp[h], t.se_precision, se_p, kActive, out);
    }
  }
  for (int h = 0; h < V; ++h) _mm512_mask_storeu_epi32(xs + 16 * h, kActive, x[h]);
  return end - out;
}

}  // namespace

namespace {

template <bool kMant>
int64_t dispatch(const SimdEncTables& t, const uint8_t* src, uint64_t rounds, int lanes, int elem_bytes, uint32_t* x,
                 uint16_t* end) {
  const bool w2 = elem_bytes == 2;
  if (lanes == 8) return w2 ? run<2, 1, 8, kMant>(t, src, rounds, x, end) : run<4, 1, 8, kMant>(t, src, rounds, x, end);
  if (lanes == 16) return w2 ? run<2, 1, 16, kMant>(t, src, rounds, x, end) : run<4, 1, 16, kMant>(t, src, rounds, x, end);
  if (lanes == 32) return w2 ? run<2, 2, 16, kMant>(t, src, rounds, x, end) : run<4, 2, 16, kMant>(t, src, rounds, x, end);
  return -1;
}

}  // namespace

int64_t encode_float_rounds_avx512(const SimdEncTables& t, const uint8_t* src, uint64_t rounds, int lanes,
                                   int elem_bytes, uint32_t* x, uint16_t* end) {
  return t.hi_bits > 0 ? dispatch<true>(t, src, rounds, lanes, elem_bytes, x, end)
                       : dispatch<false>(t, src, rounds, lanes, elem_bytes, x, end);
}

#define BS_BMI2 __attribute__((target("bmi2")))

BS_BMI2 uint64_t pack_raw_bits_bmi2(const uint8_t* src, uint64_t n, int elem_bytes, int z, int rb, uint8_t* out) {
  // A 64-bit word holds `per` elements; one pext takes all their fields, already side by side
  // in the order the plane stores them (element i at bit i * rb).
  const int per = 8 / elem_bytes;
  const uint64_t field = (rb == 64 ? ~uint64_t{0} : (uint64_t{1} << rb) - 1) << z;
  uint64_t mask = 0;
  for (int j = 0; j < per; ++j) mask |= field << (j * elem_bytes * 8);
  uint8_t* o = out;
  uint64_t acc = 0;
  int have = 0;
  auto append = [&](uint64_t v, int bits) {  // bits <= 64, have < 64
    acc |= v << have;
    if (have + bits >= 64) {
      std::memcpy(o, &acc, 8);
      o += 8;
      acc = have ? v >> (64 - have) : 0;
      have = have + bits - 64;
    } else {
      have += bits;
    }
  };
  uint64_t i = 0;
  for (; i + static_cast<uint64_t>(per) <= n; i += static_cast<uint64_t>(per)) {
    uint64_t w;
    std::memcpy(&w, src + i * static_cast<uint64_t>(elem_bytes), 8);
    append(_pext_u64(w, mask), per * rb);
  }
  for (; i < n; ++i) {
    uint64_t w = 0;
    std::memcpy(&w, src + i * static_cast<uint64_t>(elem_bytes), static_cast<size_t>(elem_bytes));
    append(_pext_u64(w, field), rb);
  }
  std::memcpy(o, &acc, 8);
  return static_cast<uint64_t>(o - out) * 8 + static_cast<uint64_t>(have);
}

BS_AVX512 double twin_xlogx_avx512(const uint32_t* bins, uint32_t sign_bit, const double* table) {
  __m512d acc_lo = _mm512_setzero_pd(), acc_hi = _mm512_setzero_pd();
  const __m512i limit = _mm512_set1_epi32(static_cast<int>(kXlogxTable));
  for (uint32_t k = 0; k < sign_bit; k += 16) {
    const __m512i c = _mm512_add_epi32(_mm512_loadu_si512(bins + k), _mm512_loadu_si512(bins + k + sign_bit));
    const __mmask16 small = _mm512_cmplt_epu32_mask(c, limit);
    const __m512i idx = _mm512_maskz_mov_epi32(small, c);  // big counts look up entry 0 (= 0) here
    acc_lo = _mm512_add_pd(acc_lo, _mm512_i32gather_pd(_mm512_castsi512_si256(idx), table, 8));
    // The maskz extract: GCC 12 flags the plain one's undefined passthrough as uninitialized.
    acc_hi = _mm512_add_pd(acc_hi, _mm512_i32gather_pd(_mm512_maskz_extracti64x4_epi64(0xFF, idx, 1), table, 8));
    if (small != 0xFFFF) {  // rare: counts of 4096 and more, added to their partial sums in order
      alignas(64) double part[16];
      alignas(64) uint32_t cs[16];
      _mm512_store_pd(part, acc_lo);
      _mm512_store_pd(part + 8, acc_hi);
      _mm512_store_si512(cs, c);
      for (int j = 0; j < 16; ++j) {
        if (cs[j] < kXlogxTable) continue;
        const double v = static_cast<double>(cs[j]);
        part[j] += v * std::log2(v);
      }
      acc_lo = _mm512_load_pd(part);
      acc_hi = _mm512_load_pd(part + 8);
    }
  }
  alignas(64) double part[16];
  _mm512_store_pd(part, acc_lo);
  _mm512_store_pd(part + 8, acc_hi);
  return sum16(part);
}

#else
double twin_xlogx_avx512(const uint32_t*, uint32_t, const double*) { return 0; }
uint64_t pack_raw_bits_bmi2(const uint8_t*, uint64_t, int, int, int, uint8_t*) { return 0; }
int64_t encode_float_rounds_avx512(const SimdEncTables&, const uint8_t*, uint64_t, int, int, uint32_t*, uint16_t*) {
  return -1;
}
#endif

}  // namespace bigsmall::detail
