#include "common/checksum.hpp"

#include <xxhash.h>

namespace bigsmall::detail {
uint64_t xxh3_64(const void* data, size_t size) { return XXH3_64bits(data, size); }
}  // namespace bigsmall::detail
