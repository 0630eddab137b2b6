#include "common/zstd_chunk.hpp"

namespace bigsmall::detail {

const char* zstd_frame_problem(const uint8_t* frame, uint64_t size, uint64_t decoded_size) {
  if (size < 4 || frame[0] != 0x28 || frame[1] != 0xB5 || frame[2] != 0x2F || frame[3] != 0xFD)
    return "not a zstd frame";
  if (ZSTD_getFrameContentSize(frame, size) != decoded_size) return "zstd frame size mismatch";
  if (ZSTD_findFrameCompressedSize(frame, size) != size) return "not exactly one zstd frame";
  if (ZSTD_getDictID_fromFrame(frame, size) != 0) return "zstd frame needs a dictionary";
  return nullptr;
}

const char* decode_zstd_chunk(const uint8_t* chunk, uint64_t size, uint8_t* out, uint64_t out_size, ZSTD_DCtx* ctx) {
  if (const char* problem = zstd_frame_problem(chunk, size, out_size)) return problem;
  const size_t r = ctx ? ZSTD_decompressDCtx(ctx, out, out_size, chunk, size) : ZSTD_decompress(out, out_size, chunk, size);
  if (ZSTD_isError(r) || r != out_size) return "zstd frame is damaged";
  return nullptr;
}

}  // namespace bigsmall::detail
