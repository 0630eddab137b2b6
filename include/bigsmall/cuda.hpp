// GPU decoding of float, byte-coded and stored chunks straight into device memory.
// Available when the library is built with CUDA (BIGSMALL_CUDA); otherwise available() is false
// and every call returns an error.
#pragma once
#include <cstddef>
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
  uint64_t payload_size;          // bytes at host_payload and device_payload; the coding is checked against it
  const uint8_t* device_payload;  // the same bytes already copied to device memory
  uint8_t* device_out;            // device memory the tensor is decoded into
  uint64_t device_out_size;       // bytes at device_out: at least coding->nbytes, checked before launch
  const char* name = nullptr;     // the tensor's name for error messages (else its place in the jobs)
};

// Decodes the chunks of many tensors in one launch on a caller's stream (several launches when
// their tables exceed set_window_table_bytes). Tables are built on the host and copied with the
// chunk list in one allocation per launch, released in stream order; nothing inside waits for
// the device. Chunk checksums are checked on the host bytes before launch (when verify); after
// the caller has synchronised the stream, finish() reads the per-chunk status array and reports
// the first failure (or enqueue's). A Decoder enqueues once and must be destroyed before its
// stream. device_out must be aligned to the tensor's element size. Not done here: the checksum
// of each decoded tensor (XXH3-64 over the whole tensor does not split across the device), which
// callers check on the host, as the Python package does; and the status copy-back goes to
// pageable memory, so enqueue may return only once the kernels have run.
class Decoder {
 public:
  Decoder();
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;
  Status enqueue(const std::vector<Job>& jobs, void* cuda_stream, bool verify = true);
  Status finish();
  // Tuning, for tests and benchmarks. Tables are read from global memory through L1 by default;
  // on: copied to shared memory per block where they fit (measured slower on an H200: the
  // carve-out takes L1 from the compressed stream, and large tables allow one block per SM).
  void set_shared_tables(bool on);
  // Blocks of 16 warps an SM should hold, 2 to 4 (registers are capped to allow it).
  void set_blocks_per_sm(int n);
  // Host bytes of decode tables built before a launch (default 64 MiB; 0: the default): more
  // tensors than that take several launches, so that host memory stays bounded.
  void set_window_table_bytes(size_t bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bigsmall::cuda
