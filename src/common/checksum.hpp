#pragma once
#include <cstddef>
#include <cstdint>

namespace bigsmall::detail {
// XXH3-64 from libxxhash: the checksum of tensors, chunks, header and index (doc/FORMAT.md).
uint64_t xxh3_64(const void* data, size_t size);
inline uint32_t xxh3_32(const void* data, size_t size) {
  return static_cast<uint32_t>(xxh3_64(data, size));
}
// Streaming XXH3-64: the same digest as xxh3_64 over the concatenated updates, so large tensors
// can be checked piece by piece in bounded memory.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void update(const void* data, size_t size);
  uint64_t digest() const;

 private:
  void* state_;
};
}  // namespace bigsmall::detail
