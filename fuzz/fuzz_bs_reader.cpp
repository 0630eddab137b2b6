// libFuzzer target over the .bs reader and every decoder.
// Input byte 0 selects the mode:
//   even: the rest is a whole .bs file (exercises header and index validation);
//   odd:  the rest is [u32 index length][u64 original size][raw index][payload bytes], wrapped
//         here into a .bs with valid checksums, so mutations reach index parsing and, with
//         verification off, the chunk decoders themselves.
#include <zstd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bigsmall/container.hpp"
#include "common/checksum.hpp"

namespace {

std::vector<uint8_t> wrap(const uint8_t* data, size_t size) {
  if (size < 12) return {};
  uint32_t ilen;
  uint64_t original;
  std::memcpy(&ilen, data, 4);
  std::memcpy(&original, data + 4, 8);
  data += 12;
  size -= 12;
  if (ilen > size) ilen = static_cast<uint32_t>(size);
  const uint8_t* index = data;
  const uint8_t* payload = data + ilen;
  const size_t payload_size = size - ilen;
  std::vector<uint8_t> z(ZSTD_compressBound(ilen));
  const size_t zn = ZSTD_compress(z.data(), z.size(), index, ilen, 1);
  if (ZSTD_isError(zn)) return {};
  std::vector<uint8_t> f(64, 0);
  const uint8_t magic[8] = {0x89, 'B', 'S', 'M', 'L', '\r', '\n', 0x1A};
  std::memcpy(f.data(), magic, 8);
  f[8] = 1;
  f.insert(f.end(), payload, payload + payload_size);
  const uint64_t index_offset = f.size(), stored = zn, raw = ilen;
  const uint64_t isum = bigsmall::detail::xxh3_64(z.data(), zn);
  std::memcpy(f.data() + 16, &index_offset, 8);
  std::memcpy(f.data() + 24, &stored, 8);
  std::memcpy(f.data() + 32, &raw, 8);
  std::memcpy(f.data() + 40, &isum, 8);
  std::memcpy(f.data() + 48, &original, 8);
  const uint64_t hsum = bigsmall::detail::xxh3_64(f.data(), 56);
  std::memcpy(f.data() + 56, &hsum, 8);
  f.insert(f.end(), z.begin(), z.begin() + static_cast<long>(zn));
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::vector<uint8_t> file = (data[0] & 1) ? wrap(data + 1, size - 1) : std::vector<uint8_t>(data + 1, data + size);
  // Read in place from the heap (no file): AddressSanitizer sees a read past the end of the
  // bytes, which a file's mapping would hide up to the end of its page.
  auto bs = bigsmall::BsFile::open_memory(file.data(), file.size(), "fuzz.bs");
  if (!bs) return 0;
  uint64_t total = 0;
  for (const auto& t : bs->tensors()) total += t.nbytes;
  if (total > (64u << 20)) return 0;  // keep the fuzzer's memory bounded; sizes are legal
  for (bool verify : {false, true}) {
    bigsmall::DecodeOptions o;
    o.threads = 1;
    o.verify = verify;
    for (size_t i = 0; i < bs->tensors().size(); ++i) {
      std::vector<uint8_t> out(bs->tensors()[i].nbytes), ref(out.size());
      const bigsmall::Status fast = bs->read_tensor(i, out.data(), out.size(), o);
      const bigsmall::Status oracle = bigsmall::reference_decode_tensor(bs->coding(i), bs->payload(i),
                                                                        bs->tensors()[i].stored_bytes, ref.data(), ref.size());
      // What the checked fast path accepts, the oracle (which always checks) must accept too, with
      // the same bytes: a fast decoder that returned data the reference refuses, or other data,
      // would be a decoder bug that checksums alone do not show.
      if (verify && fast.is_ok() && (!oracle.is_ok() || out != ref)) {
        std::fprintf(stderr, "tensor %zu: fast decoder accepted (%s), reference: %s\n", i, out == ref ? "same bytes" : "other bytes",
                     oracle.is_ok() ? "ok" : oracle.message().c_str());
        std::abort();
      }
    }
  }
  return 0;
}
