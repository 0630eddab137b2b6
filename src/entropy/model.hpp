// The per-tensor models stored in the payload's model blob, shared by encoder and decoders.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "bigsmall/dtype.hpp"
#include "bigsmall/status.hpp"
#include "entropy/table.hpp"

namespace bigsmall::detail {

constexpr uint32_t kLanesMax = 32;
constexpr int kMaxMantPrecision = 12;  // format limit for mantissa tables (doc/FORMAT.md)

// Field layout of a float element, high to low: sign+exponent symbol (coded), the top `hi_bits`
// of the mantissa (coded, table chosen by the symbol), `raw_bits` stored verbatim in the raw
// plane, `zero_bits` that are zero in every element and not stored at all.
struct FloatModel {
  int exp_bits = 0, man_bits = 0;  // from the dtype table
  int hi_bits = 0, raw_bits = 0, zero_bits = 0;
  // Every mantissa table shares one precision, so a SIMD or GPU decoder can index all of them
  // with the same mask: slot = x & (2^mant_precision - 1).
  int mant_precision = 12;
  FreqTable se;                    // alphabet 2^(1+exp_bits)
  std::vector<FreqTable> mant;     // alphabet 2^hi_bits each
  // For every sign+exponent symbol: 0 = mantissa hi bits uniform, j > 0 = table mant[j-1].
  std::vector<uint16_t> ctx;

  uint32_t se_alphabet() const { return 1u << (1 + exp_bits); }
  FreqTable uniform_mant() const { return FreqTable::uniform(hi_bits, mant_precision); }
};

struct BytesModel {
  std::vector<FreqTable> planes;  // one per byte of the element, alphabet 256
};

// Decoder table slots a tensor of `units` units may ask for. Encoders build tables only where
// they cost less than the data they code (about 48 slots per unit at most; bytes tables of at
// most 8 · 2^12 slots), so anything beyond is a hostile file asking for memory, refused before
// the tables are built. Writers check the same bound.
inline uint64_t max_table_slots(uint64_t units) { return (uint64_t{1} << 16) + 64 * units; }

void write_float_model(const FloatModel& m, BitWriter& bw);
// `units`: the tensor's unit count, which bounds the mantissa tables (max_table_slots).
Status read_float_model(const uint8_t* p, size_t n, DType dtype, uint64_t units, FloatModel* m);
// A float model's dimensions, read from its first fields only (the mantissa tables themselves
// are not parsed): what decoder table memory depends on. nullopt if the fields are invalid.
struct FloatModelShape {
  int se_precision = 0, mant_precision = 0, hi_bits = 0;
  uint32_t present = 0;  // sign+exponent symbols with a nonzero frequency
  uint32_t tables = 0;   // mantissa tables
};
std::optional<FloatModelShape> float_model_shape(const uint8_t* p, size_t n, DType dtype);
void write_bytes_model(const BytesModel& m, BitWriter& bw);
Status read_bytes_model(const uint8_t* p, size_t n, uint32_t unit_bytes, uint64_t units, BytesModel* m);

// Bytes of the raw-bit plane of a chunk of `n` elements.
inline uint64_t raw_plane_bytes(uint64_t n, int raw_bits) { return (n * static_cast<uint64_t>(raw_bits) + 7) / 8; }

}  // namespace bigsmall::detail
