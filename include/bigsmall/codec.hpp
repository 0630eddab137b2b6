// Tensor-level codec: one tensor's bytes in, a model blob plus independent chunks out.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "bigsmall/coding.hpp"
#include "bigsmall/dtype.hpp"
#include "bigsmall/status.hpp"
#include "bigsmall/version.hpp"

namespace bigsmall {

struct EncodedTensor {
  TensorCoding coding;
  std::vector<uint8_t> payload;  // model blob followed by the chunks
};

struct EncodeOptions {
  int threads = 0;            // <= 0: all cores, as many as the work can use; N: at most N (not capped
                              // at the core count: more threads than cores only add switching; but at
                              // most 256, or the core count where that is more, whatever N asks)
  int zstd_level = 9;         // for tensors routed to zstd (19: smaller, several times slower); a level
                              // outside zstd's (-131072 to 22 in zstd 1.5) is kInvalidArgument
  bool allow_zstd = true;
};

struct DecodeOptions {
  int threads = 0;            // <= 0: all cores, as many as the work can use; N: at most N and one per chunk
                              // (and at most 256, or the core count where that is more)
  bool verify = true;         // check chunk and tensor checksums
};

Result<EncodedTensor> encode_tensor(DType dtype, const uint8_t* data, uint64_t nbytes,
                                    const EncodeOptions& opts = {});
// Decodes into out[0, coding.nbytes): the caller owns the buffer.
Status decode_tensor(const TensorCoding& coding, const uint8_t* payload, uint64_t payload_size,
                     uint8_t* out, uint64_t out_size, const DecodeOptions& opts = {});
// Slow, readable decoder used as the test oracle for the fast paths (CPU and GPU).
Status reference_decode_tensor(const TensorCoding& coding, const uint8_t* payload,
                               uint64_t payload_size, uint8_t* out, uint64_t out_size);

}  // namespace bigsmall
