// AVX-512 rANS encoding of float chunks: 16 lanes per vector, byte-identical to the scalar
// encoder in encode.cpp (same states, same words in the same order).
#pragma once
#include <cstdint>

namespace bigsmall::detail {

// Per-symbol encoder tables in the layout the SIMD kernel gathers from.
struct SimdEncTables {
  // Two 32-bit fields per symbol in one 64-bit entry, so that one 64-bit gather fetches both (on
  // Zen 4 two 8-lane 64-bit gathers cost what one 16-lane 32-bit gather does). High half:
  // floor(2^32 / freq), 2^32 - 1 for freq 1.
  const uint64_t* se;  // se symbol, low half: (freq - 1) | cum << 12 | context << 24 (se precision
                       // <= 12, contexts < 256), 0 for absent symbols: where its mantissa table
                       // starts (context << hi_bits) comes with the se entry
  int se_precision;
  const uint64_t* m;   // flat mantissa tables, low half: freq | cum << 16
  int m_precision;
  int man_bits;            // se = element >> man_bits
  int hi_shift, hi_mask;   // hi = (element >> hi_shift) & hi_mask
  int hi_bits;
};

// Encodes rounds rounds-1 … 0 of a chunk (every round full: `lanes` elements of elem_bytes,
// lanes 8, 16 or 32, elem_bytes 2 or 4) starting from lane states x, which are updated. Words
// are laid down backwards below `end`, as the scalar encoder lays them (in the decoder's reading
// order once done): [end - n, end) holds the n words written, and nothing below it is touched;
// it needs room for 2 · rounds · lanes words. Returns n, or -1 when the geometry is not supported.
int64_t encode_float_rounds_avx512(const SimdEncTables& t, const uint8_t* src, uint64_t rounds, int lanes,
                                   int elem_bytes, uint32_t* x, uint16_t* end);

// The raw mantissa plane of n elements: bits z .. z + rb - 1 of each, element i at bit i * rb,
// LSB first, as the portable packer in encode.cpp writes it. `out` needs the plane's bytes plus
// 8. Returns the number of bits written. Only where cpu_has_avx512_vbmi() (those CPUs have a
// fast pext; earlier AMD ones microcode it).
uint64_t pack_raw_bits_bmi2(const uint8_t* src, uint64_t n, int elem_bytes, int z, int rb, uint8_t* out);

// The planner's c·log2(c) table covers counts below this.
constexpr uint32_t kXlogxTable = 4096;

// Partial sums added in one fixed order, by the portable and the AVX-512 kernels alike.
inline double sum16(const double* p) {
  double h[8];
  for (int i = 0; i < 8; ++i) h[i] = p[i] + p[i + 8];
  return ((h[0] + h[1]) + (h[2] + h[3])) + ((h[4] + h[5]) + (h[6] + h[7]));
}

// Sum over k < sign_bit (a multiple of 16) of c log2 c, c = bins[k] + bins[k + sign_bit], in 16
// partial sums (k mod 16), each in ascending k, combined by sum16; `table` holds c log2 c for
// c < kXlogxTable. The same value as the portable loop in encode.cpp.
double twin_xlogx_avx512(const uint32_t* bins, uint32_t sign_bit, const double* table);

}  // namespace bigsmall::detail
