#include "bigsmall/dtype.hpp"

#include <array>

namespace bigsmall {
namespace {
// Float dtypes with a model list exponent and mantissa bits; F8_E8M0 (exponent only) and the
// packed sub-byte types go through the byte coder, so their model fields are zero.
constexpr std::array<DTypeInfo, static_cast<size_t>(DType::kCount)> kTable = {{
    {DType::kBool, "BOOL", 8, 0, 0, 0},
    {DType::kU8, "U8", 8, 0, 0, 4},
    {DType::kI8, "I8", 8, 0, 0, 5},
    {DType::kF8_E5M2, "F8_E5M2", 8, 5, 2, 6},
    {DType::kF8_E4M3, "F8_E4M3", 8, 4, 3, 7},
    {DType::kF8_E8M0, "F8_E8M0", 8, 0, 0, 8},
    {DType::kI16, "I16", 16, 0, 0, 11},
    {DType::kU16, "U16", 16, 0, 0, 12},
    {DType::kF16, "F16", 16, 5, 10, 13},
    {DType::kBF16, "BF16", 16, 8, 7, 14},
    {DType::kI32, "I32", 32, 0, 0, 15},
    {DType::kU32, "U32", 32, 0, 0, 16},
    {DType::kF32, "F32", 32, 8, 23, 17},
    {DType::kF64, "F64", 64, 11, 52, 19},
    {DType::kI64, "I64", 64, 0, 0, 20},
    {DType::kU64, "U64", 64, 0, 0, 21},
    {DType::kC64, "C64", 64, 0, 0, 18},
    {DType::kF4, "F4", 4, 0, 0, 1},
    {DType::kF6_E2M3, "F6_E2M3", 6, 0, 0, 2},
    {DType::kF6_E3M2, "F6_E3M2", 6, 0, 0, 3},
    // AMD's FP8 variants (no -0, one NaN, other biases): the same bit fields as their OCP
    // counterparts, which is all the float model looks at.
    {DType::kF8_E4M3FNUZ, "F8_E4M3FNUZ", 8, 4, 3, 9},
    {DType::kF8_E5M2FNUZ, "F8_E5M2FNUZ", 8, 5, 2, 10},
}};

constexpr bool table_is_indexed_by_id() {
  for (size_t i = 0; i < kTable.size(); ++i)
    if (static_cast<size_t>(kTable[i].id) != i) return false;
  return true;
}
static_assert(table_is_indexed_by_id(), "dtype table rows must follow the enum order");
}  // namespace

const DTypeInfo& dtype_info(DType d) {
  static constexpr DTypeInfo kUnknown{DType::kCount, "?", 0, 0, 0, 0};
  return dtype_valid(d) ? kTable[static_cast<size_t>(d)] : kUnknown;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& row : kTable)
    if (row.safetensors_name == name) return row.id;
  return std::nullopt;
}

std::optional<uint64_t> dtype_nbytes(DType d, uint64_t numel) {
  const uint64_t bits = dtype_info(d).bits;
  if (bits == 0) return std::nullopt;
  if (numel > (UINT64_MAX - 7) / bits) return std::nullopt;  // the rounding below must not wrap either
  return (numel * bits + 7) / 8;
}

}  // namespace bigsmall
