#include <immintrin.h>

#include <cstring>
#include <new>
#include <type_traits>

#include "decode/simd.hpp"
#include "entropy/table.hpp"

namespace bigsmall::detail {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,popcnt")))

namespace {

// One register of lanes at each width, so the kernels below are written once: 16 lanes (zmm) for
// chunks of 16 or more lanes, 8 (ymm) and 4 (xmm) for the smaller chunks that small tensors get,
// which would otherwise fall to the scalar loop. Narrow widths use the AVX-512VL forms.
struct W16 {
  using V = __m512i;
  using M = __mmask16;
  static constexpr int N = 16;
  BS_AVX512 static V load(const uint32_t* p) { return _mm512_loadu_si512(p); }
  BS_AVX512 static void store_state(uint32_t* p, V v) { _mm512_storeu_si512(p, v); }
  BS_AVX512 static V set1(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  BS_AVX512 static V lane_ids() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  BS_AVX512 static V and_(V a, V b) { return _mm512_and_si512(a, b); }
  BS_AVX512 static V or_(V a, V b) { return _mm512_or_si512(a, b); }
  BS_AVX512 static V add(V a, V b) { return _mm512_add_epi32(a, b); }
  BS_AVX512 static V mullo(V a, V b) { return _mm512_mullo_epi32(a, b); }
  BS_AVX512 static V srl(V a, __m128i c) { return _mm512_srl_epi32(a, c); }
  BS_AVX512 static V sll(V a, __m128i c) { return _mm512_sll_epi32(a, c); }
  BS_AVX512 static V srlv(V a, V c) { return _mm512_srlv_epi32(a, c); }
  BS_AVX512 static V srli16(V a) { return _mm512_srli_epi32(a, 16); }
  BS_AVX512 static V slli16(V a) { return _mm512_slli_epi32(a, 16); }
  BS_AVX512 static V gather4(V idx, const void* base) { return _mm512_i32gather_epi32(idx, base, 4); }
  BS_AVX512 static V gather1(V idx, const void* base) { return _mm512_i32gather_epi32(idx, base, 1); }
  BS_AVX512 static M cmplt(V a, V b) { return _mm512_cmplt_epu32_mask(a, b); }
  BS_AVX512 static M cmpge(V a, V b) { return _mm512_cmpge_epu32_mask(a, b); }
  BS_AVX512 static V mask_mov(V a, M m, V b) { return _mm512_mask_mov_epi32(a, m, b); }
  // The next N words, widened: reads 2·N bytes.
  BS_AVX512 static V words(const uint8_t* wp) {
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp)));
  }
  // Register-form expand: the memory form is microcoded and slow on some cores.
  BS_AVX512 static V expand(M m, V a) { return _mm512_maskz_expand_epi32(m, a); }
  BS_AVX512 static V mask_or(V src, M m, V a, V b) { return _mm512_mask_or_epi32(src, m, a, b); }
  BS_AVX512 static V permute64(V idx, const __m512i t[4]) {
    const __mmask16 high = _mm512_cmpge_epu32_mask(idx, _mm512_set1_epi32(32));
    return _mm512_mask_mov_epi32(_mm512_permutex2var_epi32(t[0], idx, t[1]), high,
                                 _mm512_permutex2var_epi32(t[2], idx, t[3]));
  }
  // idx < 256 in each 32-bit lane; t: 256 16-bit values, 32 per register. Each word permute
  // reads the low 6 bits of a word index: the lane's high word indexes entry 0 and is masked off.
  BS_AVX512 static V permute256(V idx, const __m512i t[8]) {
    const __mmask16 b6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
    const __mmask16 b7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
    const V lo = _mm512_mask_mov_epi32(_mm512_permutex2var_epi16(t[0], idx, t[1]), b6,
                                       _mm512_permutex2var_epi16(t[2], idx, t[3]));
    const V hi = _mm512_mask_mov_epi32(_mm512_permutex2var_epi16(t[4], idx, t[5]), b6,
                                       _mm512_permutex2var_epi16(t[6], idx, t[7]));
    return _mm512_and_si512(_mm512_mask_mov_epi32(lo, b7, hi), _mm512_set1_epi32(0xffff));
  }
  BS_AVX512 static void store16(uint8_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(v));
  }
  BS_AVX512 static void store32(uint8_t* p, V v) { _mm512_storeu_si512(p, v); }
};

struct W8 {
  using V = __m256i;
  using M = __mmask8;
  static constexpr int N = 8;
  BS_AVX512 static V load(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  BS_AVX512 static void store_state(uint32_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  BS_AVX512 static V set1(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  BS_AVX512 static V lane_ids() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  BS_AVX512 static V and_(V a, V b) { return _mm256_and_si256(a, b); }
  BS_AVX512 static V or_(V a, V b) { return _mm256_or_si256(a, b); }
  BS_AVX512 static V add(V a, V b) { return _mm256_add_epi32(a, b); }
  BS_AVX512 static V mullo(V a, V b) { return _mm256_mullo_epi32(a, b); }
  BS_AVX512 static V srl(V a, __m128i c) { return _mm256_srl_epi32(a, c); }
  BS_AVX512 static V sll(V a, __m128i c) { return _mm256_sll_epi32(a, c); }
  BS_AVX512 static V srlv(V a, V c) { return _mm256_srlv_epi32(a, c); }
  BS_AVX512 static V srli16(V a) { return _mm256_srli_epi32(a, 16); }
  BS_AVX512 static V slli16(V a) { return _mm256_slli_epi32(a, 16); }
  BS_AVX512 static V gather4(V idx, const void* base) {
    return _mm256_i32gather_epi32(static_cast<const int*>(base), idx, 4);
  }
  BS_AVX512 static V gather1(V idx, const void* base) {
    return _mm256_i32gather_epi32(static_cast<const int*>(base), idx, 1);
  }
  BS_AVX512 static M cmplt(V a, V b) { return _mm256_cmplt_epu32_mask(a, b); }
  BS_AVX512 static M cmpge(V a, V b) { return _mm256_cmpge_epu32_mask(a, b); }
  BS_AVX512 static V mask_mov(V a, M m, V b) { return _mm256_mask_mov_epi32(a, m, b); }
  BS_AVX512 static V words(const uint8_t* wp) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp)));
  }
  BS_AVX512 static V expand(M m, V a) { return _mm256_maskz_expand_epi32(m, a); }
  BS_AVX512 static V mask_or(V src, M m, V a, V b) { return _mm256_mask_or_epi32(src, m, a, b); }
  BS_AVX512 static V permute64(V idx, const __m512i t[4]) {
    return _mm512_castsi512_si256(W16::permute64(_mm512_castsi256_si512(idx), t));
  }
  BS_AVX512 static V permute256(V idx, const __m512i t[8]) {
    return _mm512_castsi512_si256(W16::permute256(_mm512_castsi256_si512(idx), t));
  }
  BS_AVX512 static void store16(uint8_t* p, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtepi32_epi16(v));
  }
  BS_AVX512 static void store32(uint8_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
};

struct W4 {
  using V = __m128i;
  using M = __mmask8;  // low 4 bits
  static constexpr int N = 4;
  BS_AVX512 static V load(const uint32_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
  BS_AVX512 static void store_state(uint32_t* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
  BS_AVX512 static V set1(uint32_t v) { return _mm_set1_epi32(static_cast<int>(v)); }
  BS_AVX512 static V lane_ids() { return _mm_setr_epi32(0, 1, 2, 3); }
  BS_AVX512 static V and_(V a, V b) { return _mm_and_si128(a, b); }
  BS_AVX512 static V or_(V a, V b) { return _mm_or_si128(a, b); }
  BS_AVX512 static V add(V a, V b) { return _mm_add_epi32(a, b); }
  BS_AVX512 static V mullo(V a, V b) { return _mm_mullo_epi32(a, b); }
  BS_AVX512 static V srl(V a, __m128i c) { return _mm_srl_epi32(a, c); }
  BS_AVX512 static V sll(V a, __m128i c) { return _mm_sll_epi32(a, c); }
  BS_AVX512 static V srlv(V a, V c) { return _mm_srlv_epi32(a, c); }
  BS_AVX512 static V srli16(V a) { return _mm_srli_epi32(a, 16); }
  BS_AVX512 static V slli16(V a) { return _mm_slli_epi32(a, 16); }
  BS_AVX512 static V gather4(V idx, const void* base) { return _mm_i32gather_epi32(static_cast<const int*>(base), idx, 4); }
  BS_AVX512 static V gather1(V idx, const void* base) { return _mm_i32gather_epi32(static_cast<const int*>(base), idx, 1); }
  BS_AVX512 static M cmplt(V a, V b) { return _mm_cmplt_epu32_mask(a, b); }
  BS_AVX512 static M cmpge(V a, V b) { return _mm_cmpge_epu32_mask(a, b); }
  BS_AVX512 static V mask_mov(V a, M m, V b) { return _mm_mask_mov_epi32(a, m, b); }
  BS_AVX512 static V words(const uint8_t* wp) {
    return _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wp)));
  }
  BS_AVX512 static V expand(M m, V a) { return _mm_maskz_expand_epi32(m, a); }
  BS_AVX512 static V mask_or(V src, M m, V a, V b) { return _mm_mask_or_epi32(src, m, a, b); }
  BS_AVX512 static V permute64(V idx, const __m512i t[4]) {
    return _mm512_castsi512_si128(W16::permute64(_mm512_castsi128_si512(idx), t));
  }
  BS_AVX512 static V permute256(V idx, const __m512i t[8]) {
    return _mm512_castsi512_si128(W16::permute256(_mm512_castsi128_si512(idx), t));
  }
  BS_AVX512 static void store16(uint8_t* p, V v) { _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_cvtepi32_epi16(v)); }
  BS_AVX512 static void store32(uint8_t* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
};

template <class W>
BS_AVX512 inline typename W::V renorm(typename W::V x, const uint8_t*& wp) {
  // The words are loaded and widened before the states are known; only the 32-bit expand and
  // the merge sit on the state's dependency chain, which bounds chunks with few lanes.
  const typename W::V words = W::words(wp);
  const typename W::M need = W::cmplt(x, W::set1(kRansL));
  wp += 2 * __builtin_popcount(need);
  return W::mask_or(x, need, W::slli16(x), W::expand(need, words));
}

template <class W>
BS_AVX512 inline typename W::V advance(typename W::V x, typename W::V entry, __m128i precision) {
  return W::add(W::mullo(W::srli16(entry), W::srl(x, precision)), W::and_(entry, W::set1(0xffff)));
}

// Whether one more round of `round` elements can run without bounds checks: at most two words
// per lane, and raw fields fetched as 4-byte gathers must leave 4 readable bytes.
BS_AVX512 inline bool round_fits(const SimdFloatArgs& a, const uint8_t* wp, uint64_t done, uint64_t round) {
  const uint64_t rb = static_cast<uint64_t>(a.raw_bits);
  return done + round <= a.n && static_cast<uint64_t>(a.wend - wp) >= 4 * round &&
         ((done + round) * rb) / 8 + 4 <= a.raw_bytes + (rb ? 0 : 4);
}

// ORs the raw fields of elements first..first+N-1 into v.
template <class W>
BS_AVX512 inline typename W::V add_raw(const SimdFloatArgs& a, typename W::V v, uint64_t first) {
  const typename W::V bitpos =
      W::mullo(W::add(W::set1(static_cast<uint32_t>(first)), W::lane_ids()), W::set1(static_cast<uint32_t>(a.raw_bits)));
  const typename W::V word = W::gather1(W::srl(bitpos, _mm_cvtsi32_si128(3)), a.raw);
  const typename W::V field =
      W::and_(W::srlv(word, W::and_(bitpos, W::set1(7))), W::set1((1u << a.raw_bits) - 1));
  return W::or_(v, W::sll(field, _mm_cvtsi32_si128(a.zero_bits)));
}

// Raw fields of 16 elements without a gather: 16 fields of raw_bits bits are 2·raw_bits bytes
// and a group of 16 starts on a byte, so the byte offset and shift of each lane's field are the
// same in every group. One masked load brings the group's bytes (at most 2·25+2 of them: the
// mask also keeps the load inside the plane), a byte permute puts each field's 4 bytes into its
// lane, a per-lane shift aligns it.
struct RawPermute {
  __m512i bytes;   // permute control: lane i takes bytes off_i .. off_i+3
  __m512i shift;   // lane i: (i · raw_bits) mod 8
  __m512i mask;    // raw_bits low bits
  __mmask64 load;  // the bytes the group needs
  __m128i zero_bits;
};

BS_AVX512 inline RawPermute raw_permute(const SimdFloatArgs& a) {
  alignas(64) uint8_t ctrl[64];
  alignas(64) uint32_t sh[16];
  int last = 0;
  for (int i = 0; i < 16; ++i) {
    const int off = (i * a.raw_bits) >> 3;
    for (int j = 0; j < 4; ++j) ctrl[4 * i + j] = static_cast<uint8_t>(off + j);
    sh[i] = static_cast<uint32_t>((i * a.raw_bits) & 7);
    last = off + 3;
  }
  return {_mm512_load_si512(ctrl), _mm512_load_si512(sh),
          _mm512_set1_epi32(static_cast<int>((1u << a.raw_bits) - 1)),
          static_cast<__mmask64>((uint64_t{2} << last) - 1), _mm_cvtsi32_si128(a.zero_bits)};
}

BS_AVX512 inline __m512i add_raw16(const SimdFloatArgs& a, const RawPermute& r, __m512i v, uint64_t first) {
  const __m512i group = _mm512_maskz_loadu_epi8(r.load, a.raw + first * static_cast<uint64_t>(a.raw_bits) / 8);
  const __m512i word = _mm512_permutexvar_epi8(r.bytes, group);
  const __m512i field = _mm512_and_si512(_mm512_srlv_epi32(word, r.shift), r.mask);
  return _mm512_or_si512(v, _mm512_sll_epi32(field, r.zero_bits));
}

template <class W, int kElemBytes>
BS_AVX512 inline void store(uint8_t* dst, typename W::V v) {
  if constexpr (kElemBytes == 2) W::store16(dst, v);
  else W::store32(dst, v);
}

// Per-kernel shift counts from the arguments.
struct KernelConsts {
  __m128i se_p, m_p, man_bits, hi_shift;
};

BS_AVX512 inline KernelConsts kernel_consts(const SimdFloatArgs& a) {
  return {_mm_cvtsi32_si128(a.se_precision), _mm_cvtsi32_si128(a.m_precision), _mm_cvtsi32_si128(a.man_bits),
          _mm_cvtsi32_si128(a.hi_shift)};
}

// A chunk's V registers of lane states and its word stream position, held in registers for the
// length of a kernel and written back at its end.
template <class W, int V>
struct Lanes {
  typename W::V x[V];
  const uint8_t* wp;
  BS_AVX512 explicit Lanes(const SimdFloatArgs& a) : wp(*a.wp) {
    for (int h = 0; h < V; ++h) x[h] = W::load(a.x + W::N * h);
  }
  BS_AVX512 void save(const SimdFloatArgs& a) const {
    for (int h = 0; h < V; ++h) W::store_state(a.x + W::N * h, x[h]);
    *a.wp = wp;
  }
};

// ORs the raw mantissa fields into elements first.. and stores them.
template <class W, int kElemBytes>
BS_AVX512 inline void emit(const SimdFloatArgs& a, const RawPermute& raw, typename W::V v, uint64_t first,
                           uint8_t* out) {
  if (a.raw_bits) {
    if constexpr (std::is_same_v<W, W16>) v = add_raw16(a, raw, v, first);
    else v = add_raw<W>(a, v, first);
  }
  store<W, kElemBytes>(out + first * kElemBytes, v);
}

// V registers of W::N lanes: N·V lanes per chunk, decoded in lane order.
template <class W, int kElemBytes, int V>
BS_AVX512 uint64_t run(const SimdFloatArgs& a, uint8_t* out) {
  using Vec = typename W::V;
  constexpr uint64_t kRound = W::N * V;
  Lanes<W, V> l(a);
  auto& x = l.x;
  const uint8_t*& wp = l.wp;
  const auto [se_p, m_p, man_bits, hi_shift] = kernel_consts(a);
  const Vec se_mask = W::set1((1u << a.se_precision) - 1), m_mask = W::set1((1u << a.m_precision) - 1);
  const Vec low16 = W::set1(0xffff);
  const RawPermute raw = raw_permute(a);
  uint64_t done = a.start;
  while (round_fits(a, wp, done, kRound)) {
    Vec sym[V];
    for (int h = 0; h < V; ++h) {
      const Vec slot = W::and_(x[h], se_mask);
      const Vec e = W::gather4(slot, a.se_packed);
      sym[h] = W::gather4(slot, a.se_aux);
      x[h] = renorm<W>(advance<W>(x[h], e, se_p), wp);
    }
    for (int h = 0; h < V; ++h) {
      const Vec table = W::sll(W::srli16(sym[h]), m_p);
      const Vec slot = W::add(table, W::and_(x[h], m_mask));
      const Vec e = W::gather4(slot, a.m_packed);
      const Vec hi = W::gather4(slot, a.m_sym);
      x[h] = renorm<W>(advance<W>(x[h], e, m_p), wp);
      emit<W, kElemBytes>(a, raw, W::or_(W::sll(W::and_(sym[h], low16), man_bits), W::sll(hi, hi_shift)),
                          done + W::N * h, out);
    }
    done += kRound;
  }
  l.save(a);
  return done;
}

// One gather per symbol: frequency, offset and symbol packed in one table entry.
template <class W>
BS_AVX512 inline typename W::V advance_packed(typename W::V x, typename W::V entry, __m128i precision,
                                             typename W::V field_mask) {
  const typename W::V freq = W::add(W::and_(entry, field_mask), W::set1(1));
  const typename W::V off = W::and_(W::srl(entry, precision), field_mask);
  return W::add(W::mullo(freq, W::srl(x, precision)), off);
}

// One chunk's state and constants in a fused kernel.
template <class W, int V>
struct FusedChunk {
  using Vec = typename W::V;
  Lanes<W, V> l;
  KernelConsts c;
  Vec se_mask, m_mask;
  __m128i se_2p, m_2p;
  RawPermute raw;
  __m512i t[8];  // row -> se: kSePermute 64 32-bit values; kSePermute256 256 16-bit se | ctx << se_bits
  __m128i se_bits;
  Vec se_value_mask;
  uint64_t done;
  BS_AVX512 FusedChunk(const SimdFloatArgs& a, const SimdFusedArgs& f)
      : l(a), c(kernel_consts(a)), se_mask(W::set1((1u << a.se_precision) - 1)),
        m_mask(W::set1((1u << a.m_precision) - 1)), se_2p(_mm_cvtsi32_si128(2 * a.se_precision)),
        m_2p(_mm_cvtsi32_si128(2 * a.m_precision)), raw(raw_permute(a)), se_bits(_mm_cvtsi32_si128(f.se_bits)),
        se_value_mask(W::set1((1u << f.se_bits) - 1)), done(a.start) {
    if (f.mode == kSePermute256) {
      for (int j = 0; j < 8; ++j) t[j] = _mm512_loadu_si512(f.d_pack16 + 32 * j);
    } else {
      for (int j = 0; j < 4; ++j) t[j] = _mm512_loadu_si512(f.d_to_se + 16 * j);
    }
  }
};

// K chunks of V registers of W::N lanes each, decoded round by round in lockstep: every chunk
// keeps its own word stream, so K chunks are K independent dependency chains.
template <class W, int kElemBytes, int V, int kMode, int K>
BS_AVX512 void run_fused(SimdFloatArgs* a, const SimdFusedArgs* f, uint8_t* const* out) {
  using Vec = typename W::V;
  constexpr uint64_t kRound = W::N * V;
  alignas(64) unsigned char storage[K][sizeof(FusedChunk<W, V>)];
  FusedChunk<W, V>* ch[K];
  for (int k = 0; k < K; ++k) ch[k] = new (storage[k]) FusedChunk<W, V>(a[k], f[k]);
  auto all_fit = [&]() BS_AVX512 {
    bool ok = true;
    for (int k = 0; k < K; ++k) ok &= round_fits(a[k], ch[k]->l.wp, ch[k]->done, kRound);
    return ok;
  };
  while (all_fit()) {
    Vec se[K][V];
    for (int k = 0; k < K; ++k) {
      FusedChunk<W, V>& q = *ch[k];
      for (int h = 0; h < V; ++h) {
        const Vec e = W::gather4(W::and_(q.l.x[h], q.se_mask), f[k].se_fused);
        se[k][h] = W::srl(e, q.se_2p);
        if constexpr (kMode == kSePermute256) se[k][h] = W::permute256(se[k][h], q.t);  // se | ctx << se_bits
        q.l.x[h] = renorm<W>(advance_packed<W>(q.l.x[h], e, q.c.se_p, q.se_mask), q.l.wp);
      }
    }
    for (int k = 0; k < K; ++k) {
      FusedChunk<W, V>& q = *ch[k];
      for (int h = 0; h < V; ++h) {
        if constexpr (kMode == kSeOnly) {  // the mantissa step is the identity: skipped
          emit<W, kElemBytes>(a[k], q.raw, W::sll(se[k][h], q.c.man_bits), q.done + W::N * h, out[k]);
          continue;
        }
        const Vec m_row = kMode == kSePermute256 ? W::srl(se[k][h], q.se_bits) : se[k][h];
        const Vec slot = W::or_(W::sll(m_row, q.c.m_p), W::and_(q.l.x[h], q.m_mask));
        const Vec e = W::gather4(slot, f[k].m_fused);
        q.l.x[h] = renorm<W>(advance_packed<W>(q.l.x[h], e, q.c.m_p, q.m_mask), q.l.wp);
        const Vec payload = W::sll(W::srl(e, q.m_2p), q.c.hi_shift);
        Vec v;
        if constexpr (kMode == kSeInMant) {
          v = payload;
        } else if constexpr (kMode == kSeInSe) {
          v = W::or_(W::sll(se[k][h], q.c.man_bits), payload);
        } else if constexpr (kMode == kSePermute) {
          v = W::or_(W::sll(W::permute64(se[k][h], q.t), q.c.man_bits), payload);
        } else {
          v = W::or_(W::sll(W::and_(se[k][h], q.se_value_mask), q.c.man_bits), payload);
        }
        emit<W, kElemBytes>(a[k], q.raw, v, q.done + W::N * h, out[k]);
      }
      q.done += kRound;
    }
  }
  for (int k = 0; k < K; ++k) {
    ch[k]->l.save(a[k]);
    a[k].start = ch[k]->done;
    ch[k]->~FusedChunk<W, V>();
  }
}

}  // namespace

namespace {

template <int K>
BS_AVX512 bool fused_k(SimdFloatArgs* a, const SimdFusedArgs* f, int elem_bytes, int lanes, uint8_t* const* out) {
  auto pick = [&](auto mode) -> bool {
    constexpr int M = decltype(mode)::value;
    const bool two = elem_bytes == 2;
    switch (lanes) {
      case 4: two ? run_fused<W4, 2, 1, M, K>(a, f, out) : run_fused<W4, 4, 1, M, K>(a, f, out); return true;
      case 8: two ? run_fused<W8, 2, 1, M, K>(a, f, out) : run_fused<W8, 4, 1, M, K>(a, f, out); return true;
      case 16: two ? run_fused<W16, 2, 1, M, K>(a, f, out) : run_fused<W16, 4, 1, M, K>(a, f, out); return true;
      case 32: two ? run_fused<W16, 2, 2, M, K>(a, f, out) : run_fused<W16, 4, 2, M, K>(a, f, out); return true;
      default: return false;
    }
  };
  switch (f[0].mode) {
    case kSeInMant: return pick(std::integral_constant<int, kSeInMant>{});
    case kSeInSe: return pick(std::integral_constant<int, kSeInSe>{});
    case kSePermute: return pick(std::integral_constant<int, kSePermute>{});
    case kSePermute256: return pick(std::integral_constant<int, kSePermute256>{});
    case kSeOnly: return pick(std::integral_constant<int, kSeOnly>{});
    default: return false;
  }
}

}  // namespace

uint64_t decode_float_rounds_avx512_fused(const SimdFloatArgs& a, const SimdFusedArgs& f, int elem_bytes, int lanes,
                                          uint8_t* out) {
  SimdFloatArgs copy = a;
  uint8_t* const outs[1] = {out};
  return fused_k<1>(&copy, &f, elem_bytes, lanes, outs) ? copy.start : a.start;
}

bool decode_float_rounds_avx512_fused_multi(SimdFloatArgs* a, const SimdFusedArgs* f, int count, int elem_bytes,
                                            int lanes, uint8_t* const* out) {
  for (int k = 1; k < count; ++k)
    if (f[k].mode != f[0].mode) return false;
  if (count == 2) return fused_k<2>(a, f, elem_bytes, lanes, out);
  if (count == 4 && lanes <= 8) return fused_k<4>(a, f, elem_bytes, lanes, out);
  return false;
}

uint64_t decode_float_rounds_avx512(const SimdFloatArgs& a, int elem_bytes, int lanes, uint8_t* out) {
  const bool two = elem_bytes == 2;
  switch (lanes) {
    case 4: return two ? run<W4, 2, 1>(a, out) : run<W4, 4, 1>(a, out);
    case 8: return two ? run<W8, 2, 1>(a, out) : run<W8, 4, 1>(a, out);
    case 16: return two ? run<W16, 2, 1>(a, out) : run<W16, 4, 1>(a, out);
    case 32: return two ? run<W16, 2, 2>(a, out) : run<W16, 4, 2>(a, out);
    case 64: return two ? run<W16, 2, 4>(a, out) : run<W16, 4, 4>(a, out);
    default: return a.start;
  }
}

#else
uint64_t decode_float_rounds_avx512(const SimdFloatArgs& a, int, int, uint8_t*) { return a.start; }
uint64_t decode_float_rounds_avx512_fused(const SimdFloatArgs& a, const SimdFusedArgs&, int, int, uint8_t*) { return a.start; }
bool decode_float_rounds_avx512_fused_multi(SimdFloatArgs*, const SimdFusedArgs*, int, int, int, uint8_t* const*) {
  return false;
}
#endif

}  // namespace bigsmall::detail
