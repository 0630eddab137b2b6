// Internals of the .bs writer that tests reach.
#pragma once
#include <cstdint>

namespace bigsmall::detail {

// Tests only: the writer codes at most this many input bytes between writes (0 restores 64 MiB),
// so that batching, groups of one large tensor and the background writer run on small data.
void set_write_batch_bytes_for_testing(uint64_t bytes);

}  // namespace bigsmall::detail
