// Static frequency tables for rANS: normalization, compact serialization, decode lookup.
#pragma once
#include <cstdint>
#include <vector>

#include "bigsmall/status.hpp"
#include "common/bytes.hpp"

namespace bigsmall::detail {

__extension__ typedef unsigned __int128 u128;

constexpr int kMaxPrecision = 15;     // keeps freq and slot offset in 16 bits each
constexpr uint32_t kRansL = 1u << 16; // state interval [2^16, 2^32), 16-bit renormalization
constexpr uint32_t kMaxAlphabet = 1u << 12;

struct FreqTable {
  uint32_t alphabet = 0;
  int precision = 0;           // freqs sum to 1 << precision
  std::vector<uint32_t> freq;  // per symbol, 0 = absent
  std::vector<uint32_t> cum;   // start of each symbol's slot range

  // All 2^bits symbols equally likely at the given precision (>= bits): costs exactly `bits`
  // per symbol and needs no stored table.
  static FreqTable uniform(int bits, int precision);
  void rebuild_cum();
};

// Scales counts to sum 2^precision, every present symbol keeping at least 1, rounding so that
// the coded size is (greedily) smallest. False when more symbols are present than slots exist.
bool normalize(const uint64_t* counts, uint32_t alphabet, int precision, FreqTable* out);

// Bits that `counts` cost when coded with `table` (table must cover every present symbol).
double coded_bits(const uint64_t* counts, const FreqTable& table);

// Compact table encoding (doc/FORMAT.md, "Frequency table").
void write_table(const FreqTable& table, BitWriter& bw);
uint64_t table_bits(const FreqTable& table);  // what write_table adds, without writing
Status read_table(BitReader& br, uint32_t alphabet, FreqTable* out);

// Picks the precision (within [lo, hi]) with the smallest table + data size; returns total bits.
double best_table(const uint64_t* counts, uint32_t alphabet, int lo, int hi, FreqTable* out);

// Fast estimate of table + data bits at `precision` without normalizing exactly: used to
// compare many candidate context groupings. Returns INFINITY if the table cannot exist.
double estimate_table_bits(const uint64_t* counts, uint32_t alphabet, int precision);

// Writes 2^precision slot entries of t: packed = freq << 16 | (slot - cum), sym = symbol.
void fill_decode_slots(const FreqTable& t, uint32_t* packed, uint16_t* sym);

// Decoder lookup: one entry per slot. `packed` = freq << 16 | (slot - cum), `sym` = symbol.
struct DecodeTable {
  int precision = 0;
  uint32_t mask = 0;
  std::vector<uint32_t> packed;
  std::vector<uint16_t> sym;
  void build(const FreqTable& t);
};

// Encoder view of one symbol. Division by freq is a multiply by a precomputed reciprocal:
// with l = ceil(log2 freq) and rcp = ceil(2^(32+l) / freq), x / freq == (x * rcp) >> (32 + l)
// for every 32-bit x (rcp has at most 33 bits, so the product needs 128 bits).
// 16 bytes, so the tables of a tensor stay in L1/L2 while its chunks are coded. A symbol
// renormalizes (emits 16 bits) when x >= freq << (32 - precision).
struct EncSymbol {
  uint64_t rcp = 0;
  uint16_t freq = 0;  // <= 2^15
  uint16_t cum = 0;
  uint8_t rcp_shift = 0;
};
static_assert(sizeof(EncSymbol) == 16);
std::vector<EncSymbol> make_encoder(const FreqTable& t);

}  // namespace bigsmall::detail
