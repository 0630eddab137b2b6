// How a tensor is coded: the codec, chunk layout and checksums the .bs index records for it
// (doc/FORMAT.md). Below the codec in the layers: the common and entropy code and the GPU decoder
// use these without the encoder's or decoder's API.
#pragma once
#include <cstdint>
#include <vector>

#include "bigsmall/dtype.hpp"
#include "bigsmall/status.hpp"

namespace bigsmall {

// Stored in the .bs index; values are frozen by doc/FORMAT.md.
enum class Codec : uint8_t {
  kStore = 0,  // bytes as they are
  kFloat = 1,  // (sign, exponent) symbol + mantissa conditioned on it, rANS
  kBytes = 2,  // one rANS table per byte position of the element
  kZstd = 3,   // libzstd frames, for tensors with repeated structure
};
const char* codec_name(Codec c);

enum class ChunkMode : uint8_t { kStored = 0, kCoded = 1 };

// A coded chunk of a rANS codec (kFloat, kBytes) decodes to at most this many units per byte
// of its stored size (doc/FORMAT.md): readers refuse more before decoding.
constexpr uint64_t kMaxUnitsPerCodedByte = 4096;

struct ChunkRef {
  uint64_t offset = 0;    // from the start of the tensor payload
  uint32_t size = 0;      // compressed bytes
  uint32_t checksum = 0;  // low 32 bits of XXH3-64 of the compressed bytes
  ChunkMode mode = ChunkMode::kStored;
};

// Everything a decoder needs besides the payload bytes.
struct TensorCoding {
  DType dtype = DType::kU8;
  Codec codec = Codec::kStore;
  uint64_t nbytes = 0;       // decoded size
  uint8_t chunk_log2 = 16;   // elements per chunk = 2^chunk_log2
  uint8_t lanes_log2 = 5;    // interleaved rANS states per chunk = 2^lanes_log2
  uint32_t model_size = 0;   // bytes of tables at the start of the payload
  uint64_t checksum = 0;     // XXH3-64 of the decoded bytes
  std::vector<ChunkRef> chunks;

  uint32_t unit_bytes() const;  // bytes per coded element
  uint64_t units() const { return nbytes / unit_bytes(); }
  // 2^chunk_log2; a value past 63 (which validate() refuses) reads as 2^64 - 1, not as a shift
  // past the word's width.
  uint64_t chunk_units() const { return chunk_log2 < 64 ? uint64_t{1} << chunk_log2 : UINT64_MAX; }
  uint64_t chunk_count() const { return units() / chunk_units() + (units() % chunk_units() != 0); }  // no wrap near 2^64
  // Byte range of chunk i in the decoded tensor, for i < chunk_count() of a validated coding;
  // past the last chunk, the range is empty at the tensor's end.
  uint64_t chunk_out_offset(size_t i) const {
    return i < chunk_count() ? i * chunk_units() * unit_bytes() : nbytes;
  }
  uint64_t chunk_out_size(size_t i) const;
  // Structural checks on values read from a file, before anything is allocated or decoded.
  Status validate(uint64_t payload_size_limit) const;
};

// TensorCoding::checksum of bytes taken piece by piece, in order: for decoders outside the
// library, such as the GPU path, which hashes each tensor as it copies it back from the device.
// Throws nothing: check ok() after constructing one.
class TensorChecksum {
 public:
  TensorChecksum() noexcept;
  ~TensorChecksum();
  TensorChecksum(const TensorChecksum&) = delete;
  TensorChecksum& operator=(const TensorChecksum&) = delete;
  // False when its state could not be allocated (out of memory): update() then does nothing
  // and digest() means nothing.
  bool ok() const { return state_ != nullptr; }
  void update(const uint8_t* data, uint64_t size);
  uint64_t digest() const;  // of everything given so far

 private:
  void* state_;
};

}  // namespace bigsmall
