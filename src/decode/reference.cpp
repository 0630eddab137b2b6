// The reference decoder: written for clarity, not speed. It shares only the model parser with
// the fast decoders and is the oracle they are tested against, bit for bit.
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "bigsmall/codec.hpp"
#include "common/checksum.hpp"
#include "common/guard.hpp"
#include "common/zstd_chunk.hpp"
#include "entropy/model.hpp"

namespace bigsmall {
namespace {

using detail::FreqTable;

struct RefStream {
  std::vector<uint32_t> state;  // one rANS state per lane
  const uint8_t* words;
  uint64_t nwords;
  uint64_t next = 0;
  bool ok = true;

  // Find the symbol whose slot range holds x mod 2^P, then advance the state.
  uint32_t decode(uint32_t lane, const FreqTable& t) {
    uint32_t& x = state[lane];
    const uint32_t slot = x & ((1u << t.precision) - 1);
    uint32_t s = 0;
    while (s < t.alphabet && !(t.freq[s] && slot >= t.cum[s] && slot < t.cum[s] + t.freq[s])) ++s;
    if (s == t.alphabet) { ok = false; return 0; }
    x = t.freq[s] * (x >> t.precision) + slot - t.cum[s];
    if (x < detail::kRansL) {
      if (next >= nwords) { ok = false; return 0; }
      const uint32_t w = words[2 * next] | (static_cast<uint32_t>(words[2 * next + 1]) << 8);
      ++next;
      x = (x << 16) | w;
    }
    return s;
  }
};

uint64_t get_bits(const uint8_t* p, uint64_t bitpos, int bits) {
  uint64_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const uint64_t pos = bitpos + static_cast<uint64_t>(b);
    v |= static_cast<uint64_t>((p[pos / 8] >> (pos % 8)) & 1) << b;
  }
  return v;
}

void put_element(uint8_t* out, uint64_t index, uint32_t unit, uint64_t value) {
  for (uint32_t b = 0; b < unit; ++b) out[index * unit + b] = static_cast<uint8_t>(value >> (8 * b));
}

Status decode_coded_chunk(const TensorCoding& c, const detail::FloatModel* fm, const detail::BytesModel* bm,
                          const uint8_t* chunk, uint64_t size, uint64_t n, uint8_t* out) {
  const Status bad(Error::kCorrupt, "reference decoder: chunk is damaged");
  const uint32_t lanes = 1u << c.lanes_log2, unit = c.unit_bytes();
  const uint64_t raw_bytes = fm ? detail::raw_plane_bytes(n, fm->raw_bits) : 0;
  if (size < 4ull * lanes + raw_bytes || (size - 4ull * lanes - raw_bytes) % 2) return bad;
  RefStream rs;
  rs.state.resize(lanes);
  for (uint32_t l = 0; l < lanes; ++l) {
    std::memcpy(&rs.state[l], chunk + 4 * l, 4);
    if (rs.state[l] < detail::kRansL) return bad;  // states live in [2^16, 2^32)
  }
  const uint8_t* raw = chunk + 4 * lanes;
  rs.words = raw + raw_bytes;
  rs.nwords = (size - 4ull * lanes - raw_bytes) / 2;
  FreqTable uniform = fm ? fm->uniform_mant() : FreqTable{};
  for (uint64_t base = 0; base < n; base += lanes) {
    const uint64_t active = std::min<uint64_t>(lanes, n - base);
    if (fm) {
      uint32_t se[detail::kLanesMax];  // validate() bounds lanes by 2^5
      for (uint32_t l = 0; l < active; ++l) se[l] = rs.decode(l, fm->se);
      for (uint32_t l = 0; l < active && rs.ok; ++l) {
        const uint16_t ctx = fm->ctx[se[l]];
        const uint64_t hi = rs.decode(l, ctx == 0 ? uniform : fm->mant[ctx - 1]);
        const uint64_t i = base + l;
        const uint64_t lo = get_bits(raw, i * static_cast<uint64_t>(fm->raw_bits), fm->raw_bits);
        const uint64_t value = (static_cast<uint64_t>(se[l]) << fm->man_bits) |
                               (hi << (fm->raw_bits + fm->zero_bits)) | (lo << fm->zero_bits);
        put_element(out, i, unit, value);
      }
    } else {
      for (uint32_t j = 0; j < unit; ++j)
        for (uint32_t l = 0; l < active; ++l) out[(base + l) * unit + j] = static_cast<uint8_t>(rs.decode(l, bm->planes[j]));
    }
    if (!rs.ok) return bad;
  }
  for (uint32_t l = 0; l < lanes; ++l)
    if (rs.state[l] != detail::kRansL) return bad;
  if (rs.next != rs.nwords) return bad;
  return Status::success();
}

}  // namespace

Status reference_decode_tensor(const TensorCoding& c, const uint8_t* payload, uint64_t payload_size, uint8_t* out,
                               uint64_t out_size) {
  return detail::guarded(std::string(), [&]() -> Status {
    if ((out == nullptr && c.nbytes > 0) || (payload == nullptr && payload_size > 0))
      return Status(Error::kInvalidArgument, "null buffer");
    BIGSMALL_RETURN_IF_ERROR(c.validate(payload_size));
    if (out_size < c.nbytes) return Status(Error::kInvalidArgument, "output buffer too small");
    detail::FloatModel fm;
    detail::BytesModel bm;
    // A tensor whose chunks are all stored may have no model (model_size 0); one it has is read.
    const bool any_coded = std::any_of(c.chunks.begin(), c.chunks.end(), [](const ChunkRef& r) { return r.mode == ChunkMode::kCoded; });
    if (c.model_size > 0 || any_coded) {
      if (c.codec == Codec::kFloat) BIGSMALL_RETURN_IF_ERROR(detail::read_float_model(payload, c.model_size, c.dtype, c.units(), &fm));
      if (c.codec == Codec::kBytes) BIGSMALL_RETURN_IF_ERROR(detail::read_bytes_model(payload, c.model_size, c.unit_bytes(), c.units(), &bm));
    }
    for (size_t i = 0; i < c.chunks.size(); ++i) {
      const ChunkRef& ref = c.chunks[i];
      const uint8_t* p = payload + ref.offset;
      uint8_t* dst = out + c.chunk_out_offset(i);
      const uint64_t out_n = c.chunk_out_size(i);
      if (detail::xxh3_32(p, ref.size) != ref.checksum)
        return Status(Error::kCorrupt, "chunk " + std::to_string(i) + ": checksum mismatch");
      if (ref.mode == ChunkMode::kStored) {
        std::memcpy(dst, p, out_n);
      } else if (c.codec == Codec::kZstd) {
        if (const char* problem = detail::decode_zstd_chunk(p, ref.size, dst, out_n, nullptr))
          return Status(Error::kCorrupt, problem);
      } else if (c.codec == Codec::kFloat || c.codec == Codec::kBytes) {
        BIGSMALL_RETURN_IF_ERROR(decode_coded_chunk(c, c.codec == Codec::kFloat ? &fm : nullptr, &bm, p, ref.size,
                                              out_n / c.unit_bytes(), dst));
      } else {
        return Status(Error::kCorrupt, "coded chunk in a stored tensor");
      }
    }
    if (detail::xxh3_64(out, c.nbytes) != c.checksum) return Status(Error::kCorrupt, "tensor checksum mismatch");
    return Status::success();
  });
}

}  // namespace bigsmall
