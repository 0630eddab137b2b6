// AVX-512 decoding of float chunks with 4 to 32 lanes (rANS states in an xmm, a ymm, or one or
// two zmm), table lookups by gather, renormalization words fetched for all needing lanes at once
// with an expand (lanes read in lane order, exactly as the scalar decoder and the format define).
#pragma once
#include <cstdint>

namespace bigsmall::detail {

struct SimdFloatArgs {
  uint32_t* x;                 // lane states, updated
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
  uint64_t start;              // first element to decode: a multiple of the lane count
};

// Fused layout, one gather per symbol: se_fused[slot] = (freq-1) | offset << Ps | row << 2Ps and
// m_fused[row << Pm | slot] = (freq-1) | offset << Pm | payload << 2Pm. The mode says where the
// sign+exponent value comes from: kSeInMant: payload = se << hi_bits | hi (rows are dense);
// kSeInSe: row = se, payload = hi; kSePermute: rows are dense, se = d_to_se[row] (<= 64 rows,
// a 4-register table); kSePermute256: the se entry's row r is dense (< 256) and an 8-register
// table of 16-bit values d_pack16[r] = se | ctx << se_bits gives se and the mantissa context,
// which indexes the m_fused rows (one per context, not per se value: tensors with a wide
// exponent range would otherwise repeat a table hundreds of times); payload = hi.
// kSeOnly: no mantissa bits are coded (hi_bits 0), so the mantissa step is the identity (one
// symbol of frequency 2^Pm: the state does not change and never renormalizes) and is skipped;
// the se entry carries se as in kSeInSe and there are no m_fused rows.
enum FusedMode : int { kSeInMant = 1, kSeInSe = 2, kSePermute = 3, kSePermute256 = 4, kSeOnly = 5 };
struct SimdFusedArgs {
  const uint32_t* se_fused;
  const uint32_t* m_fused;
  const uint32_t* d_to_se;   // 256 entries
  const uint16_t* d_pack16;  // 256 entries (kSePermute256)
  int se_bits;               // 1 + exponent bits
  int mode;
};

uint64_t decode_float_rounds_avx512_fused(const SimdFloatArgs& a, const SimdFusedArgs& f, int elem_bytes, int lanes,
                                          uint8_t* out);
// The same for `count` chunks of one kind (element width, lane count, fused mode; tables may
// differ) in one loop: a chunk of few lanes is one dependency chain through the gathers'
// latency, and independent chunks side by side fill it. Runs rounds while every chunk can take
// one and sets each a[k].start to where that chunk stopped; the caller finishes each chunk alone.
// count: 2 or 4 (lanes 16 and 32: 2 only). Returns false for a combination it has no kernel for.
bool decode_float_rounds_avx512_fused_multi(SimdFloatArgs* a, const SimdFusedArgs* f, int count, int elem_bytes,
                                            int lanes, uint8_t* const* out);
// Decodes whole rounds (one element per lane; 4, 8, 16, 32 or 64 lanes) from element a.start on,
// while enough words remain for an unchecked round; returns the element it stopped at (a.start
// plus whole rounds). Element width: 2 or 4 bytes.
uint64_t decode_float_rounds_avx512(const SimdFloatArgs& a, int elem_bytes, int lanes, uint8_t* out);

}  // namespace bigsmall::detail
