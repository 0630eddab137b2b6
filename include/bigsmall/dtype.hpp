// One table describes every dtype; code asks the table instead of switching on the enum.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace bigsmall {

enum class DType : uint8_t {
  kBool = 0, kU8, kI8, kF8_E5M2, kF8_E4M3, kF8_E8M0, kI16, kU16, kF16, kBF16,
  kI32, kU32, kF32, kF64, kI64, kU64, kC64, kF4, kF6_E2M3, kF6_E3M2, kF8_E4M3FNUZ, kF8_E5M2FNUZ,
  kCount
};

struct DTypeInfo {
  DType id;
  std::string_view safetensors_name;
  uint8_t bits;           // storage bits per element (4 and 6 for packed sub-byte types)
  uint8_t exponent_bits;  // 0: no float model, the tensor goes through the byte coder
  uint8_t mantissa_bits;
  // Position in safetensors' own dtype enum. Its writer lays tensors out by this, highest first,
  // then by name; write_tensors does the same so that a restore gives safetensors' bytes.
  uint8_t safetensors_rank;
};

// Ids outside the enum (a cast from a hostile or stale value) get a row of 0 bits, named "?".
const DTypeInfo& dtype_info(DType d);
inline bool dtype_valid(DType d) { return static_cast<uint8_t>(d) < static_cast<uint8_t>(DType::kCount); }
std::optional<DType> dtype_from_name(std::string_view safetensors_name);
// Bytes taken by `numel` elements; nullopt on overflow or for an id outside the enum.
std::optional<uint64_t> dtype_nbytes(DType d, uint64_t numel);
inline bool has_float_model(DType d) { return dtype_info(d).exponent_bits != 0; }
// Bytes of the unit the coders see: a whole element, or one byte of packed sub-byte elements.
inline uint32_t dtype_unit_bytes(DType d) { return dtype_info(d).bits >= 8 ? dtype_info(d).bits / 8u : 1u; }

}  // namespace bigsmall
