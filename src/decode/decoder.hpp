// Fast CPU decoder: tables expanded to per-slot lookups once per tensor, chunks decoded
// independently (any thread, any order) into the caller's buffer.
#pragma once
#include <array>
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bigsmall/codec.hpp"
#include "decode/simd.hpp"
#include "entropy/model.hpp"

namespace bigsmall::detail {

// Tests only: false turns off the choice of the 256-row layout for tensors whose per-symbol
// mantissa rows would outnumber their weights, so that tests reach every layout on small tensors.
void set_compact_rows_for_testing(bool on);

// Read positions inside one coded chunk: lane states, raw-bit plane, rANS word stream.
struct ChunkStreams {
  uint32_t x[kLanesMax];
  const uint8_t* raw;
  uint64_t raw_bytes;
  const uint8_t* wp;
  const uint8_t* wend;
};

// All mantissa tables of a tensor side by side (they share one precision), so that a lane finds
// its table with one add: slot = base_of_se[se] + (x & mask).
struct FlatTables {
  int precision = 0;
  uint32_t mask = 0;
  std::vector<uint32_t> packed;
  std::vector<uint16_t> sym;
  std::vector<uint32_t> base_of_se;
  void build(const FloatModel& m);
};

// The fused tables' view for the scalar loops (layout in simd.hpp).
struct FusedView {
  const uint32_t* se;
  const uint32_t* m;
  const uint32_t* d_to_se;
  const uint16_t* d_ctx;  // kSePermute256: dense row -> mantissa context (the m row)
  int ps, pm, mb, hi_shift, rb, z;
};

class TensorDecoder {
 public:
  static Result<TensorDecoder> prepare(const TensorCoding& coding, const uint8_t* model, uint64_t model_size);
  // out must hold coding.chunk_out_size(i) bytes; chunk holds `size` compressed bytes.
  Status decode_chunk(size_t i, const uint8_t* chunk, uint64_t size, ChunkMode mode, uint8_t* out) const;
  // Which one-lookup table layout the float decoder uses (FusedMode), 0 for two lookups: lets
  // tests check that they reach the layout they are written for.
  int fused_mode() const { return fused_mode_; }
  // Chunks of tensors with the same nonzero kind can be decoded side by side (decode_group).
  uint32_t group_kind() const;
  // The steps of decode_chunk for a coded float chunk, for decoding several chunks together:
  // open the streams, fill the SIMD kernel's arguments, then finish from element `start` on.
  Status open_float(size_t i, const uint8_t* chunk, uint64_t size, ChunkStreams* s) const;
  void simd_args(ChunkStreams& s, uint64_t n, SimdFloatArgs* a, SimdFusedArgs* f) const;
  Status finish_float(size_t i, ChunkStreams& s, uint64_t start, uint8_t* out) const;
  FusedView fused_view() const;

 private:
  TensorCoding coding_;  // geometry only: prepare drops the chunk list it copies
  FloatModel fm_;
  DecodeTable se_;
  FlatTables mant_;
  bool simd_ = false;               // AVX-512 path usable for this tensor on this CPU
  std::vector<uint32_t> se_aux_;    // per se slot: symbol | mantissa table index << 16
  std::vector<uint32_t> m_sym32_;   // mantissa symbols widened for 32-bit gathers
  // Fused single-lookup tables when the fields fit (see simd.hpp), used by the SIMD and the
  // scalar loops alike; se_ and mant_ are then never built. One allocation: se slots, then rows.
  std::shared_ptr<uint32_t[]> fused_;
  const uint32_t* se_fused_ = nullptr;
  const uint32_t* m_fused_ = nullptr;
  int fused_mode_ = 0;
  std::array<uint32_t, 256> d_to_se_{};  // dense row -> sign+exponent value (first 256 rows)
  std::array<uint16_t, 256> d_ctx_{};    // dense row -> mantissa context (kSePermute256)
  std::array<uint16_t, 256> d_pack16_{}; // se | ctx << (1 + exponent bits) (kSePermute256)
  bool build_fused();
  uint64_t decode_simd(ChunkStreams& s, uint64_t n, uint64_t start, uint8_t* out) const;
  std::vector<DecodeTable> planes_;
};

struct DecodeJob {
  const TensorCoding* coding;
  const uint8_t* payload;
  uint64_t payload_size;
  uint8_t* out;
  uint64_t out_size;
  std::string label;  // prefixes errors, e.g. "tensor 'model.embed'"
  // Only chunks [chunk_begin, chunk_end) are decoded, chunk_begin's bytes landing at out (a byte
  // range of the tensor): their chunk checksums are checked, the tensor's checksum is not.
  size_t chunk_begin = 0, chunk_end = SIZE_MAX;
  // Tables prepared earlier for this coding and payload (a file keeps them for repeated range
  // reads of one tensor); built here when null.
  const TensorDecoder* decoder = nullptr;
  size_t first_chunk() const { return chunk_begin; }
  size_t last_chunk() const { return std::min(chunk_end, coding->chunks.size()); }  // one past
  bool whole() const { return chunk_begin == 0 && last_chunk() == coding->chunks.size(); }
  uint64_t bytes() const {  // decoded bytes of the chunks decoded
    if (whole()) return coding->nbytes;
    if (last_chunk() <= chunk_begin) return 0;
    return coding->chunk_out_offset(last_chunk() - 1) + coding->chunk_out_size(last_chunk() - 1) -
           coding->chunk_out_offset(chunk_begin);
  }
  uint8_t* chunk_out(size_t i) const { return out + (coding->chunk_out_offset(i) - coding->chunk_out_offset(chunk_begin)); }
};

// The table slots a decoder of a float model of this shape builds, fused or not.
uint64_t float_decoder_slots(const FloatModelShape& m, int exp_bits, uint64_t units);

// Decoder windows of at most `slots` table slots (0: the default), so that tests reach the
// window boundaries with small files.
void set_decode_window_slots_for_testing(uint64_t slots);

// Validates, then decodes the chunks of all jobs in parallel; verifies chunk checksums before
// decoding and tensor checksums after, when asked. Shared by decode_tensor and the container.
class ThreadPool;
Status decode_tensors_on(const std::vector<DecodeJob>& jobs, bool verify, ThreadPool& pool);

}  // namespace bigsmall::detail
