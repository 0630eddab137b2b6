// Internals of the .bs writer that tests reach.
#pragma once
#include <cstdint>
#include <string>

#include "bigsmall/status.hpp"

namespace bigsmall::detail {

// Tests only: the writer codes at most this many input bytes between writes (0 restores 64 MiB),
// so that batching, groups of one large tensor and the background writer run on small data.
void set_write_batch_bytes_for_testing(uint64_t bytes);

// What a directory index records of each .bs file, read from its 64-byte header alone (magic,
// version and header checksum checked; the rest is BsFile::open's to check).
struct BsHeaderFacts {
  uint64_t original_size = 0;
  uint64_t fingerprint = 0;  // the header checksum
};
Result<BsHeaderFacts> read_bs_header_facts(const std::string& path);
// The error message for a file of a major version above this reader's.
std::string newer_version(uint16_t major, uint16_t minor, bool checksum_matches);

}  // namespace bigsmall::detail
