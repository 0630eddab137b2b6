// AVX-512 versions of the planner's table-cost kernels (entropy/estimate.hpp). They must return
// exactly what the portable kernels in table.cpp return: same per-symbol arithmetic (this file
// is compiled without floating-point contraction), same 8 partial sums, same final order.
#include <immintrin.h>

#include "common/cpu.hpp"
#include "entropy/estimate.hpp"

namespace bigsmall::detail {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BS_EST_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512cd,avx2,popcnt")))

namespace {
// At load time, not lazily (see cpu.cpp).
const bool g_estimate_cpu = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd");
}();
}  // namespace

bool estimate_simd_available() {
  return g_estimate_cpu && cpu_has_avx512_vbmi();  // the latter: F, VL and the BIGSMALL_NO_SIMD switch
}

BS_EST_AVX512 void gather_present_avx512(const uint64_t* counts, uint32_t alphabet, Present* h) {
  h->sym.resize(size_t{alphabet} + 8);
  h->count.resize(size_t{alphabet} + 8);
  uint32_t* sym = h->sym.data();
  uint64_t* cnt = h->count.data();
  uint32_t size = 0;
  __m512i total = _mm512_setzero_si512();
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i eight = _mm256_set1_epi32(8);
  for (uint32_t s = 0; s < alphabet; s += 8) {
    const __mmask8 in = alphabet - s >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (alphabet - s)) - 1);
    const __m512i c = _mm512_maskz_loadu_epi64(in, counts + s);
    const __mmask8 nz = _mm512_test_epi64_mask(c, c);
    total = _mm512_add_epi64(total, c);
    // Register-form compress and a whole-vector store: the memory form is microcoded on Zen 4.
    _mm512_storeu_si512(cnt + size, _mm512_maskz_compress_epi64(nz, c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sym + size), _mm256_maskz_compress_epi32(nz, idx));
    size += static_cast<uint32_t>(__builtin_popcount(nz));
    idx = _mm256_add_epi32(idx, eight);
  }
  h->size = size;
  alignas(64) uint64_t lanes[8];  // not _mm512_reduce_add_epi64: GCC 12 flags its undefined lanes
  _mm512_store_si512(lanes, total);
  h->total = 0;
  for (uint64_t v : lanes) h->total += v;
}

BS_EST_AVX512 static uint64_t hsum(__m256i v) {
  alignas(32) uint32_t x[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(x), v);
  uint64_t t = 0;
  for (uint32_t e : x) t += e;
  return t;
}

BS_EST_AVX512 EstimateSums estimate_sums_avx512(const Present& h, double scale_d, uint32_t fmax_u, const float* lg) {
  const __m512d scale = _mm512_set1_pd(scale_d), half = _mm512_set1_pd(0.5);
  const __m256i one = _mm256_set1_epi32(1), fmax = _mm256_set1_epi32(static_cast<int>(fmax_u));
  const __m256i thirty_two = _mm256_set1_epi32(32);
  __m512d acc = _mm512_setzero_pd();
  __m256i fsum = _mm256_setzero_si256(), zig = _mm256_setzero_si256(), gap = _mm256_setzero_si256();
  __m256i carry_f = _mm256_setzero_si256(), carry_s = _mm256_set1_epi32(-1);
  const uint32_t* sym = h.sym.data();
  const uint64_t* cnt = h.count.data();
  for (uint32_t i = 0; i < h.size; i += 8) {
    const __mmask8 in = h.size - i >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (h.size - i)) - 1);
    const __m512d cd = _mm512_cvtepu64_pd(_mm512_maskz_loadu_epi64(in, cnt + i));
    const __m256i raw = _mm512_cvttpd_epu32(_mm512_add_pd(_mm512_mul_pd(cd, scale), half));
    const __m256i f = _mm256_min_epu32(_mm256_max_epu32(raw, one), fmax);
    // Lanes past the end hold count 0: their product is +0, which leaves a partial sum as it is.
    const __m512d lgf = _mm512_cvtps_pd(_mm256_i32gather_ps(lg, f, 4));
    acc = _mm512_add_pd(acc, _mm512_mul_pd(cd, lgf));
    fsum = _mm256_mask_add_epi32(fsum, in, fsum, f);
    const __m256i last = _mm256_alignr_epi32(f, carry_f, 7);  // f of the previous present symbol
    const __m256i diff = _mm256_sub_epi32(_mm256_max_epu32(f, last), _mm256_min_epu32(f, last));
    const __m256i below = _mm256_srli_epi32(_mm256_cmpgt_epi32(last, f), 31);  // f, last < 2^16: signed compare is fine
    zig = _mm256_mask_add_epi32(zig, in, zig, _mm256_sub_epi32(_mm256_add_epi32(diff, diff), below));
    const __m256i s = _mm256_maskz_loadu_epi32(in, sym + i);
    const __m256i width = _mm256_sub_epi32(thirty_two, _mm256_lzcnt_epi32(_mm256_sub_epi32(s, _mm256_alignr_epi32(s, carry_s, 7))));
    gap = _mm256_mask_add_epi32(gap, in, gap, _mm256_sub_epi32(_mm256_add_epi32(width, width), one));
    carry_f = f;
    carry_s = s;
  }
  alignas(64) double part[8];
  _mm512_store_pd(part, acc);
  EstimateSums r;
  r.c_log_f = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  r.fsum = hsum(fsum);
  r.zig_sum = hsum(zig);
  r.gap_bits = hsum(gap);
  return r;
}

#else

bool estimate_simd_available() { return false; }
void gather_present_avx512(const uint64_t*, uint32_t, Present*) {}
EstimateSums estimate_sums_avx512(const Present&, double, uint32_t, const float*) { return {}; }

#endif

}  // namespace bigsmall::detail
