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
    {DType::kI16, "I16", 16, 0, 0, 9},
    {DType::kU16, "U16", 16, 0, 0, 10},
    {DType::kF16, "F16", 16, 5, 10, 11},
    {DType::kBF16, "BF16", 16, 8, 7, 12},
    {DType::kI32, "I32", 32, 0, 0, 13},
    {DType::kU32, "U32", 32, 0, 0, 14},
    {DType::kF32, "F32", 32, 8, 23, 15},
    {DType::kF64, "F64", 64, 11, 52, 17},
    {DType::kI64, "I64", 64, 0, 0, 18},
    {DType::kU64, "U64", 64, 0, 0, 19},
    {DType::kC64, "C64", 64, 0, 0, 16},
    {DType::kF4, "F4", 4, 0, 0, 1},
    {DType::kF6_E2M3, "F6_E2M3", 6, 0, 0, 2},
    {DType::kF6_E3M2, "F6_E3M2", 6, 0, 0, 3},
}};

constexpr bool table_is_indexed_by_id() {
  for (size_t i = 0; i < kTable.size(); ++i)
    if (static_cast<size_t>(kTable[i].id) != i) return false;
  return true;
}
static_assert(table_is_indexed_by_id(), "dtype table rows must follow the enum order");
}  // namespace

const DTypeInfo& dtype_info(DType d) { return kTable[static_cast<size_t>(d)]; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& row : kTable)
    if (row.safetensors_name == name) return row.id;
  return std::nullopt;
}

std::optional<uint64_t> dtype_nbytes(DType d, uint64_t numel) {
  const uint64_t bits = dtype_info(d).bits;
  if (numel > UINT64_MAX / bits) return std::nullopt;
  return (numel * bits + 7) / 8;
}

}  // namespace bigsmall
