#pragma once
#include <zstd.h>

#include <cstdint>

namespace bigsmall::detail {

// FORMAT.md's rule for every zstd frame in a file (the index and each zstd-coded chunk): exactly
// one standard zstd frame (RFC 8878: its magic, so no legacy or skippable frame, whatever libzstd
// was built to accept), no dictionary, declaring exactly `decoded_size`; checked before anything
// is decoded (no allocation sized by a hostile header; no further frames, which zstd would accept
// and no check covers). nullptr when the frame follows it, else the problem in a few words.
const char* zstd_frame_problem(const uint8_t* frame, uint64_t size, uint64_t decoded_size);

// One zstd-coded chunk decoded into out[0, out_size) under that rule. The CPU decoders and the GPU
// decoder's host side all call this, so the rule cannot drift between them. `ctx` may be null
// (a fresh context). nullptr on success, else the problem in a few words.
const char* decode_zstd_chunk(const uint8_t* chunk, uint64_t size, uint8_t* out, uint64_t out_size, ZSTD_DCtx* ctx);

}  // namespace bigsmall::detail
