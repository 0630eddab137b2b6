#pragma once
#include <cstddef>
#include <cstdint>

namespace bigsmall::detail {
// XXH3-64 from libxxhash: the checksum of tensors, chunks, header and index (doc/FORMAT.md).
uint64_t xxh3_64(const void* data, size_t size);
inline uint32_t xxh3_32(const void* data, size_t size) {
  return static_cast<uint32_t>(xxh3_64(data, size));
}
}  // namespace bigsmall::detail
