// AVX-512 decoding of float chunks with 32 lanes: two vectors of 16 rANS states, table lookups
// by gather, renormalization words fetched for all needing lanes at once with an expanding load
// (lanes read in lane order, exactly as the scalar decoder and the format define).
#pragma once
#include <cstdint>

namespace bigsmall::detail {

struct SimdFloatArgs {
  uint32_t* x;                 // 32 lane states, updated
  const uint8_t** wp;          // word stream position, updated
  const uint8_t* wend;
  const uint32_t* se_packed;   // se lookup: freq << 16 | offset
  const uint32_t* se_aux;      // se lookup: symbol | mantissa table index << 16
  int se_precision;
  const uint32_t* m_packed;    // all mantissa tables side by side
  const uint32_t* m_sym;
  int m_precision;
  int man_bits, hi_shift;      // element = se << man_bits | hi << hi_shift | raw << zero_bits
  const uint8_t* raw;          // raw-bit plane (raw_bits <= 25) and its size
  uint64_t raw_bytes;
  int raw_bits, zero_bits;
  uint64_t n;                  // elements in the chunk
};

bool cpu_has_avx512_decoder();
// Decodes whole rounds of 32 elements while enough words remain for an unchecked round; returns
// how many elements were written to out (a multiple of 32). Element width: 2 or 4 bytes.
uint64_t decode_float_rounds_avx512(const SimdFloatArgs& a, int elem_bytes, uint8_t* out);

}  // namespace bigsmall::detail
