#include "common/checksum.hpp"

#include <xxhash.h>

#include <algorithm>
#include <memory>
#include <new>

#include "bigsmall/coding.hpp"

// Where the library has it (CMake checks: BIGSMALL_XXH_DISPATCH), its runtime-dispatched XXH3
// (AVX2 or AVX-512 where the CPU has them; the same digests): the plain entry points of an x86
// build are SSE2, 11 GB/s here against 44, which made checksums a tenth of a decode.
#if defined(BIGSMALL_XXH_DISPATCH)
#include <xxh_x86dispatch.h>
#define BS_XXH3_64 XXH3_64bits_dispatch
#define BS_XXH3_UPDATE XXH3_64bits_update_dispatch
#else
#define BS_XXH3_64 XXH3_64bits
#define BS_XXH3_UPDATE XXH3_64bits_update
#endif

namespace bigsmall::detail {
uint64_t xxh3_64(const void* data, size_t size) { return BS_XXH3_64(data, size); }

Xxh3Stream::Xxh3Stream() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();  // a value at the public entry point (guarded)
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
Xxh3Stream::~Xxh3Stream() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void Xxh3Stream::update(const void* data, size_t size) {
  BS_XXH3_UPDATE(static_cast<XXH3_state_t*>(state_), data, size);
}
uint64_t Xxh3Stream::digest() const { return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_)); }
}  // namespace bigsmall::detail

namespace bigsmall {
// The state is XXH3's own allocation: its layout belongs to the libxxhash this runs with (kept
// inline, it would follow the header this was built with, which a shared library may not match).
TensorChecksum::TensorChecksum() noexcept : state_(XXH3_createState()) {
  if (state_ != nullptr) XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
TensorChecksum::~TensorChecksum() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void TensorChecksum::update(const uint8_t* data, uint64_t size) {
  if (state_ == nullptr) return;
  // XXH3's update takes size_t: feed pieces that fit it on every platform.
  while (size > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, uint64_t{1} << 30));
    BS_XXH3_UPDATE(static_cast<XXH3_state_t*>(state_), data, n);
    data += n;
    size -= n;
  }
}
uint64_t TensorChecksum::digest() const {
  return state_ != nullptr ? XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_)) : 0;
}
}  // namespace bigsmall
