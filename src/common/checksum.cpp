#include "common/checksum.hpp"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t's layout, for states kept inline
#include <xxhash.h>

#include <algorithm>
#include <memory>
#include <new>

#include "bigsmall/codec.hpp"

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

namespace {
XXH3_state_t* init_state(unsigned char* storage) {
  auto* s = reinterpret_cast<XXH3_state_t*>(storage);
  XXH3_INITSTATE(s);
  XXH3_64bits_reset(s);
  return s;
}
}  // namespace

Xxh3Stream::Xxh3Stream() {
  static_assert(sizeof(XXH3_state_t) <= sizeof(state_) && alignof(XXH3_state_t) <= 64);
  init_state(state_);
}
Xxh3Stream::~Xxh3Stream() = default;
void Xxh3Stream::update(const void* data, size_t size) { BS_XXH3_UPDATE(reinterpret_cast<XXH3_state_t*>(state_), data, size); }
uint64_t Xxh3Stream::digest() const { return XXH3_64bits_digest(reinterpret_cast<const XXH3_state_t*>(state_)); }
}  // namespace bigsmall::detail

namespace bigsmall {
TensorChecksum::TensorChecksum() {
  static_assert(sizeof(XXH3_state_t) <= sizeof(state_) && alignof(XXH3_state_t) <= 64);
  detail::init_state(state_);
}
TensorChecksum::~TensorChecksum() = default;
void TensorChecksum::update(const uint8_t* data, uint64_t size) {
  // XXH3's update takes size_t: feed pieces that fit it on every platform.
  while (size > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, uint64_t{1} << 30));
    BS_XXH3_UPDATE(reinterpret_cast<XXH3_state_t*>(state_), data, n);
    data += n;
    size -= n;
  }
}
uint64_t TensorChecksum::digest() const { return XXH3_64bits_digest(reinterpret_cast<const XXH3_state_t*>(state_)); }
}  // namespace bigsmall
