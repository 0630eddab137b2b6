// Encoder internals used by the container to spread planning and chunk coding over threads.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "bigsmall/codec.hpp"
#include "common/bytes.hpp"

namespace bigsmall::detail {

struct EncoderState;  // chosen model and encoder tables
class ThreadPool;

// Tests only: the planner counts at most this many elements per pass into 32-bit bins (2^31;
// 0 restores it), so that the path for larger tensors runs on small data.
void set_key_slab_for_testing(uint64_t elements);
// Tests only: lanes as encoders before the twentieth session chose them (one per 1024 units,
// rounded down to a power of two, 4 from 2048 units), so that the 8-lane kernels that files of
// that time need stay reached; false restores today's rule.
void set_lanes_by_size_only_for_testing(bool on);
// Tests only: tensors of at least this many elements planned with a pool have their keys counted
// by all its threads (0 restores 2^24).
void set_split_count_for_testing(uint64_t elements);

// An option zstd would clamp silently (a level past its range) is refused instead: the caller
// asked for something it would not get.
Status check_zstd_level(int level);

class TensorEncoder {
 public:
  // Chooses codec, model and chunk geometry from the data (one or two passes over it). With a
  // pool (not while one of its loops runs), a large tensor's counting pass is shared by its threads.
  static TensorEncoder plan(DType dtype, const uint8_t* data, uint64_t nbytes, const EncodeOptions& opts,
                            ThreadPool* pool = nullptr);
  TensorEncoder(TensorEncoder&&) noexcept;
  TensorEncoder& operator=(TensorEncoder&&) noexcept;
  ~TensorEncoder();

  const TensorCoding& coding() const { return coding_; }  // chunks filled in by finish()
  const std::vector<uint8_t>& model_blob() const { return model_; }
  size_t chunk_count() const { return static_cast<size_t>(coding_.chunk_count()); }
  // How chunk i was stored, its size, and the checksum of its stored bytes: taken by the thread
  // that coded it, while the bytes are still in its cache.
  struct CodedChunk {
    ChunkMode mode = ChunkMode::kCoded;
    uint32_t size = 0;
    uint32_t checksum = 0;
  };
  // Codes chunk i into *out (replacing its contents); chunks that would grow are stored.
  CodedChunk encode_chunk(size_t i, ByteBuffer* out) const;
  // Fills coding().chunks from every chunk's CodedChunk and returns the payload size:
  // model_blob() followed by the chunks in order, which the caller writes out.
  uint64_t finish(const std::vector<CodedChunk>& coded);
  // Information content under the joint model (raw size for tensors without a float model).
  double floor_bits() const { return floor_bits_; }

 private:
  TensorEncoder() = default;
  TensorCoding coding_;
  std::vector<uint8_t> model_;
  const uint8_t* data_ = nullptr;
  int zstd_level_ = 0;
  std::vector<uint8_t> zstd_single_;  // the whole tensor as one zstd frame, when that was tried
  double estimated_bits_ = 0;
  double floor_bits_ = 0;
  std::unique_ptr<EncoderState> state_;
};

}  // namespace bigsmall::detail
