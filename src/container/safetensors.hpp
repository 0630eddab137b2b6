// safetensors files: parsing with full validation, and writing the header safetensors would.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bigsmall/container.hpp"

namespace bigsmall::detail {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the limit safetensors itself enforces

struct StTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  // within the data region
};

struct StFile {
  std::string header;            // JSON bytes exactly as in the file (padding included)
  uint64_t data_start = 0;       // 8 + header size
  uint64_t data_size = 0;
  std::vector<StTensor> tensors;  // sorted by begin
  std::vector<std::pair<uint64_t, uint64_t>> gaps;  // [begin, end) of data bytes no tensor covers
  std::optional<Metadata> metadata;  // __metadata__, its keys in header order (a key given twice: once)
};

// Problems are reported as kNotSafetensors / kTruncated / kUnknownDtype with a precise message.
Result<StFile> parse_safetensors(const uint8_t* data, uint64_t size);
// The same on the first `available` bytes (length + header at least) of a `size`-byte file;
// raw_names: names need not be UTF-8 (headers kept in .bs files written before that rule).
Result<StFile> parse_safetensors_header(const uint8_t* data, uint64_t available, uint64_t size, bool raw_names);

// The header safetensors would write for these tensors laid out in the given order.
std::string make_safetensors_header(const std::vector<TensorView>& tensors, const std::optional<Metadata>& metadata,
                                    std::vector<uint64_t>* offsets);

}  // namespace bigsmall::detail
