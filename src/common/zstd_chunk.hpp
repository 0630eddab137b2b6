#pragma once
#include <zstd.h>

#include <cstdint>

namespace bigsmall::detail {

// One zstd-coded chunk decoded into out[0, out_size), under FORMAT.md's rule for such chunks:
// exactly one frame, declaring exactly the chunk's decoded size, checked before anything is
// decoded (no allocation sized by a hostile header; no further frames, skippable ones included,
// that zstd would accept and no check covers). The CPU decoders and the GPU decoder's host side
// all call this, so the rule cannot drift between them. `ctx` may be null (a fresh context).
// nullptr on success, else the problem in a few words.
const char* decode_zstd_chunk(const uint8_t* chunk, uint64_t size, uint8_t* out, uint64_t out_size, ZSTD_DCtx* ctx);

}  // namespace bigsmall::detail
