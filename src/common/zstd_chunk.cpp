#include "common/zstd_chunk.hpp"

namespace bigsmall::detail {

const char* decode_zstd_chunk(const uint8_t* chunk, uint64_t size, uint8_t* out, uint64_t out_size, ZSTD_DCtx* ctx) {
  if (ZSTD_getFrameContentSize(chunk, size) != out_size) return "zstd frame size mismatch";
  if (ZSTD_findFrameCompressedSize(chunk, size) != size) return "not exactly one zstd frame";
  const size_t r = ctx ? ZSTD_decompressDCtx(ctx, out, out_size, chunk, size) : ZSTD_decompress(out, out_size, chunk, size);
  if (ZSTD_isError(r) || r != out_size) return "zstd frame is damaged";
  return nullptr;
}

}  // namespace bigsmall::detail
