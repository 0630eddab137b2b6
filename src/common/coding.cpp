// TensorCoding helpers: the geometry of chunks, and validation of values read from files.
#include <string>

#include "bigsmall/coding.hpp"

namespace bigsmall {

const char* codec_name(Codec c) {
  switch (c) {
    case Codec::kStore: return "store";
    case Codec::kFloat: return "float";
    case Codec::kBytes: return "bytes";
    case Codec::kZstd: return "zstd";
  }
  return "?";
}

const char* error_name(Error e) {
  static const char* const kNames[] = {"ok", "invalid argument", "io error", "no space left",
                                       "not safetensors", "not a .bs file", "unsupported version",
                                       "corrupt", "truncated", "unknown dtype", "limit exceeded",
                                       "not found", "internal error", "out of memory"};
  const int i = static_cast<int>(e);
  return i >= 0 && i < static_cast<int>(std::size(kNames)) ? kNames[i] : "unknown error";
}

uint32_t TensorCoding::unit_bytes() const { return dtype_unit_bytes(dtype); }

uint64_t TensorCoding::chunk_out_size(size_t i) const {
  const uint64_t start = chunk_out_offset(i);
  const uint64_t full = chunk_units() * unit_bytes();
  return nbytes - start < full ? nbytes - start : full;
}

Status TensorCoding::validate(uint64_t payload_limit) const {
  auto bad = [](const std::string& what) { return Status(Error::kCorrupt, "invalid tensor entry: " + what); };
  if (!dtype_valid(dtype)) return Status(Error::kUnknownDtype, "unknown dtype id");
  if (static_cast<int>(codec) > static_cast<int>(Codec::kZstd)) return bad("unknown codec");
  if (codec == Codec::kFloat && !has_float_model(dtype)) return bad("float codec on a non-float dtype");
  if (chunk_log2 < 6 || chunk_log2 > 24) return bad("chunk size");
  if (lanes_log2 > 5) return bad("lane count");
  if (nbytes % unit_bytes() != 0) return bad("size is not a whole number of elements");
  if (chunks.size() != chunk_count()) return bad("chunk count");
  if (model_size > payload_limit) return bad("model size");
  uint64_t expected = model_size;
  for (const auto& c : chunks) {
    // Chunks follow each other, so no chunk can alias another or the model.
    if (c.offset != expected) return bad("chunk offsets");
    if (c.size > payload_limit - c.offset) return bad("chunk beyond payload");
    if (c.mode != ChunkMode::kStored && c.mode != ChunkMode::kCoded) return bad("chunk mode");
    expected = c.offset + c.size;
  }
  if ((codec == Codec::kStore || codec == Codec::kZstd) && model_size != 0) return bad("model on a codec without one");
  // A coded chunk holds at least its lanes' states (rANS) or one byte of a zstd frame, so the
  // chunk count is bounded by the file's size, whatever the (compressible) index declares.
  const uint64_t min_coded = codec == Codec::kZstd ? 1 : uint64_t{4} << lanes_log2;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].mode == ChunkMode::kStored && chunks[i].size != chunk_out_size(i)) return bad("stored chunk size");
    if (chunks[i].mode == ChunkMode::kCoded && codec == Codec::kStore) return bad("coded chunk in a stored tensor");
    if (chunks[i].mode == ChunkMode::kCoded && chunks[i].size < min_coded) return bad("coded chunk too short");
    // rANS can code a symbol of probability one in no bits, so a few bytes could stand for
    // millions of units: a 262 KB file declared 8 TiB, hours of decoding. Writers stay far below
    // (at most 512 units per byte: a chunk's states alone are 4 bytes per lane, and 32 lanes
    // code 64Ki units); zstd's own blocks stop near 32 KiB per byte, which this matches for F64.
    if (chunks[i].mode == ChunkMode::kCoded && codec != Codec::kZstd &&
        chunk_out_size(i) / unit_bytes() > kMaxUnitsPerCodedByte * chunks[i].size)
      return bad("coded chunk decodes to more than 4096 units per byte");
  }
  return Status::success();
}

}  // namespace bigsmall
