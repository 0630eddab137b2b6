// GPU decoding of float, byte-coded and stored chunks straight into device memory.
// Available when the library is built with CUDA (BIGSMALL_CUDA); otherwise available() is false
// and every call returns an error.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "bigsmall/codec.hpp"

namespace bigsmall::cuda {

// Built with CUDA and a device is present.
bool available();

struct Job {
  const TensorCoding* coding;     // geometry, chunk list and checksums
  const uint8_t* host_payload;    // model blob + chunks on the host (tables are built from it)
  const uint8_t* device_payload;  // the same bytes already copied to device memory
  uint8_t* device_out;            // coding->nbytes bytes of device memory
};

// Decodes the chunks of many tensors in one launch on a caller's stream. Tables are built on the
// host and copied asynchronously with the chunk list in one allocation; nothing inside waits for
// the device. Chunk checksums are checked on the host bytes before launch (when verify); after
// the caller has synchronised the stream, finish() reads the per-chunk status array and reports
// the first failure. A Decoder enqueues once and must be destroyed before its stream.
// device_out must be aligned to the tensor's element size.
class Decoder {
 public:
  Decoder();
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;
  Status enqueue(const std::vector<Job>& jobs, void* cuda_stream, bool verify = true);
  Status finish();
  // Tables go to shared memory when they fit (default); off decodes from global memory, for tests
  // and benchmarks of that path.
  void set_shared_tables(bool on);
  // Prefetching of the compressed stream ahead of the decoding warps (default on); off for
  // benchmarks of what it buys.
  void set_prefetch(bool on);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bigsmall::cuda
