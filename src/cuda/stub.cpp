// Built when no CUDA compiler is found: the API exists and says that no GPU decoding is available.
#include "bigsmall/cuda.hpp"

namespace bigsmall::cuda {

bool available() { return false; }

struct Decoder::Impl {};
Decoder::Decoder() : impl_(std::make_unique<Impl>()) {}
Decoder::~Decoder() = default;
Status Decoder::enqueue(const std::vector<Job>&, void*, bool) {
  return Status(Error::kInvalidArgument, "bigsmall was built without CUDA");
}
void Decoder::set_shared_tables(bool) {}
void Decoder::set_blocks_per_sm(int) {}
void Decoder::set_window_table_bytes(size_t) {}
Status Decoder::finish() { return Status(Error::kInvalidArgument, "bigsmall was built without CUDA"); }

}  // namespace bigsmall::cuda
