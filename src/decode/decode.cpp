#include <zstd.h>

#include <algorithm>
#include <bit>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/checksum.hpp"
#include "common/cpu.hpp"
#include "common/fork_safe.hpp"
#include "common/guard.hpp"
#include "common/scratch.hpp"
#include "common/thread_pool.hpp"
#include "common/zstd_chunk.hpp"
#include "decode/decoder.hpp"
#include "decode/simd.hpp"

namespace bigsmall::detail {
namespace {

constexpr uint32_t kScalarGroup = 1u << 24;  // group kind flag: single-lane chunks, scalar loop

std::atomic<bool> compact_rows{true};

Status corrupt_chunk(size_t i, const char* what) {
  return Status(Error::kCorrupt, "chunk " + std::to_string(i) + ": " + what);
}

// Arithmetic select: compilers turn the ternary form back into a mispredicting branch.
inline void renorm_branchless(uint32_t& x, const uint8_t*& wp) {
  uint16_t w;
  std::memcpy(&w, wp, 2);
  const uint32_t need = x < kRansL;
  x = (x << (need << 4)) | (w & (0u - need));
  wp += need << 1;
}

// The same with a bounds check, for the last rounds of a chunk, where the words may run out.
inline bool renorm_checked(uint32_t& x, const uint8_t*& wp, const uint8_t* wend) {
  if (x < kRansL) {
    if (wp >= wend) return false;
    uint16_t w;
    std::memcpy(&w, wp, 2);
    wp += 2;
    x = (x << 16) | w;
  }
  return true;
}

// One rANS decode step for lane state x where the word stream may run out (the last rounds of a
// chunk): false when it does. (The bulk of a chunk renormalizes with renorm_branchless.)
inline bool step_checked(uint32_t& x, const DecodeTable& t, const uint8_t*& wp, const uint8_t* wend, uint32_t* sym) {
  const uint32_t slot = x & t.mask;
  const uint32_t e = t.packed[slot];
  *sym = t.sym[slot];
  x = (e >> 16) * (x >> t.precision) + (e & 0xffff);
  return renorm_checked(x, wp, wend);
}

inline uint64_t read_raw(const uint8_t* plane, uint64_t plane_bytes, uint64_t bitpos, int bits) {
  const uint64_t byte = bitpos >> 3;
  uint64_t v = 0;
  if (byte + 8 <= plane_bytes) {
    std::memcpy(&v, plane + byte, 8);
  } else {
    for (uint64_t b = byte; b < plane_bytes; ++b) v |= static_cast<uint64_t>(plane[b]) << (8 * (b - byte));
  }
  return (v >> (bitpos & 7)) & ((uint64_t{1} << bits) - 1);
}


Status open_streams(size_t i, const uint8_t* chunk, uint64_t size, uint32_t lanes, uint64_t raw_bytes,
                    ChunkStreams* s) {
  if (size < lanes * 4ull + raw_bytes || (size - lanes * 4ull - raw_bytes) % 2 != 0)
    return corrupt_chunk(i, "size does not match its layout");
  std::memcpy(s->x, chunk, lanes * 4);
  for (uint32_t l = 0; l < lanes; ++l)
    if (s->x[l] < kRansL) return corrupt_chunk(i, "invalid rANS state");
  s->raw = chunk + lanes * 4;
  s->raw_bytes = raw_bytes;
  s->wp = s->raw + raw_bytes;
  s->wend = chunk + size;
  return Status::success();
}

Status close_streams(size_t i, const ChunkStreams& s, uint32_t lanes) {
  // The encoder starts every lane at L and uses every word: anything else is damage.
  if (s.wp != s.wend) return corrupt_chunk(i, "unused rANS data");
  for (uint32_t l = 0; l < lanes; ++l)
    if (s.x[l] != kRansL) return corrupt_chunk(i, "rANS state check failed");
  return Status::success();
}

}  // namespace

Result<TensorDecoder> TensorDecoder::prepare(const TensorCoding& coding, const uint8_t* model, uint64_t model_size) {
  TensorDecoder d;
  d.coding_ = coding;
  std::vector<ChunkRef>().swap(d.coding_.chunks);  // the decoder needs none; clear() would keep the memory
  if (coding.codec == Codec::kFloat) {
    BIGSMALL_RETURN_IF_ERROR(read_float_model(model, model_size, coding.dtype, coding.units(), &d.fm_));
    const uint32_t unit = coding.unit_bytes();
    // Element indices times raw_bits must fit the 32-bit lanes: chunks hold at most 2^20 units.
    d.simd_ = (unit == 2 || unit == 4) && coding.lanes_log2 >= 2 && d.fm_.raw_bits <= 25 && coding.chunk_log2 <= 20 &&
              cpu_has_avx512_vbmi();
    // Small tensors are common and their table setup costs as much as their data: build only
    // the one set of tables the decode loops will read.
    if (d.build_fused()) return d;
    d.se_.build(d.fm_.se);
    d.mant_.build(d.fm_);
    if (d.simd_) {
      d.se_aux_.resize(d.se_.sym.size());
      for (size_t j = 0; j < d.se_aux_.size(); ++j)
        d.se_aux_[j] = d.se_.sym[j] | (static_cast<uint32_t>(d.fm_.ctx[d.se_.sym[j]]) << 16);
      d.m_sym32_.assign(d.mant_.sym.begin(), d.mant_.sym.end());
    }
  } else if (coding.codec == Codec::kBytes) {
    BytesModel bm;
    BIGSMALL_RETURN_IF_ERROR(read_bytes_model(model, model_size, coding.unit_bytes(), coding.units(), &bm));
    d.planes_.resize(bm.planes.size());
    for (size_t j = 0; j < bm.planes.size(); ++j) d.planes_[j].build(bm.planes[j]);
  } else if (model_size != 0) {
    return Status(Error::kCorrupt, "unexpected model data");
  }
  return d;
}

namespace {

template <typename T, bool kRaw>
bool decode_float_rounds(const FloatModel& m, const DecodeTable& se_t, const FlatTables& mt, ChunkStreams& s,
                         uint64_t start, uint64_t n, uint32_t lanes, uint8_t* out) {
  const int mb = m.man_bits, rb = m.raw_bits, z = m.zero_bits, mshift = rb + z;
  const uint32_t* se_packed = se_t.packed.data();
  const uint16_t* se_symt = se_t.sym.data();
  const uint32_t se_mask = se_t.mask;
  const int se_prec = se_t.precision;
  const uint32_t* m_packed = mt.packed.data();
  const uint16_t* m_sym = mt.sym.data();
  const uint32_t* m_base = mt.base_of_se.data();
  const uint32_t m_mask = mt.mask;
  const int m_prec = mt.precision;
  uint32_t se_sym[kLanesMax];
  uint64_t bitpos = start * static_cast<uint64_t>(rb);
  for (uint64_t base = start; base < n; base += lanes) {
    const uint32_t active = static_cast<uint32_t>(std::min<uint64_t>(lanes, n - base));
    T vals[kLanesMax];
    // A round reads at most two words per lane; only the last rounds need bounds checks.
    if (static_cast<uint64_t>(s.wend - s.wp) >= 4ull * active) {
      for (uint32_t l = 0; l < active; ++l) {
        uint32_t x = s.x[l];
        const uint32_t slot = x & se_mask;
        const uint32_t e = se_packed[slot];
        se_sym[l] = se_symt[slot];
        x = (e >> 16) * (x >> se_prec) + (e & 0xffff);
        renorm_branchless(x, s.wp);
        s.x[l] = x;
      }
      for (uint32_t l = 0; l < active; ++l) {
        uint32_t x = s.x[l];
        const uint32_t slot = m_base[se_sym[l]] + (x & m_mask);
        const uint32_t e = m_packed[slot];
        const uint32_t mh = m_sym[slot];
        x = (e >> 16) * (x >> m_prec) + (e & 0xffff);
        renorm_branchless(x, s.wp);
        s.x[l] = x;
        vals[l] = static_cast<T>((static_cast<T>(se_sym[l]) << mb) | (static_cast<T>(mh) << mshift));
      }
    } else {
      for (uint32_t l = 0; l < active; ++l)
        if (!step_checked(s.x[l], se_t, s.wp, s.wend, &se_sym[l])) return false;
      for (uint32_t l = 0; l < active; ++l) {
        uint32_t x = s.x[l];
        const uint32_t slot = m_base[se_sym[l]] + (x & m_mask);
        const uint32_t e = m_packed[slot];
        const uint32_t mh = m_sym[slot];
        x = (e >> 16) * (x >> m_prec) + (e & 0xffff);
        if (!renorm_checked(x, s.wp, s.wend)) return false;
        s.x[l] = x;
        vals[l] = static_cast<T>((static_cast<T>(se_sym[l]) << mb) | (static_cast<T>(mh) << mshift));
      }
    }
    if constexpr (kRaw) {
      for (uint32_t l = 0; l < active; ++l, bitpos += static_cast<uint64_t>(rb))
        vals[l] = static_cast<T>(vals[l] | (static_cast<T>(read_raw(s.raw, s.raw_bytes, bitpos, rb)) << z));
    }
    std::memcpy(out + base * sizeof(T), vals, active * sizeof(T));
  }
  return true;
}

// One rANS step on a fused entry: (freq - 1) | offset << p | payload << 2p.
inline uint32_t advance_fused(uint32_t x, uint32_t e, int p, uint32_t mask) {
  return ((e & mask) + 1) * (x >> p) + ((e >> p) & mask);
}

// The scalar rounds of decode_float_rounds on fused tables: the same steps in the same order, so
// damage is found at the same word, with one lookup per symbol.
template <typename T, bool kRaw, int kMode>
bool decode_fused_rounds(const FusedView& v, ChunkStreams& s, uint64_t start, uint64_t n, uint32_t lanes,
                         uint8_t* out) {
  const uint32_t se_mask = (1u << v.ps) - 1, m_mask = (1u << v.pm) - 1;
  const int se_2p = 2 * v.ps, m_2p = 2 * v.pm;
  uint32_t row[kLanesMax];
  auto element = [&](uint32_t r, uint32_t e) {
    const T payload = static_cast<T>(static_cast<T>(e >> m_2p) << v.hi_shift);
    if constexpr (kMode == kSeInMant) return payload;
    else if constexpr (kMode == kSeInSe) return static_cast<T>((static_cast<T>(r) << v.mb) | payload);
    else return static_cast<T>((static_cast<T>(v.d_to_se[r]) << v.mb) | payload);
  };
  auto m_row = [&](uint32_t r) { return kMode == kSePermute256 ? uint32_t{v.d_ctx[r]} : r; };
  uint64_t bitpos = start * static_cast<uint64_t>(v.rb);
  for (uint64_t base = start; base < n; base += lanes) {
    const uint32_t active = static_cast<uint32_t>(std::min<uint64_t>(lanes, n - base));
    T vals[kLanesMax];
    // A round reads at most two words per lane; only the last rounds need bounds checks.
    if (static_cast<uint64_t>(s.wend - s.wp) >= 4ull * active) {
      for (uint32_t l = 0; l < active; ++l) {
        const uint32_t e = v.se[s.x[l] & se_mask];
        row[l] = e >> se_2p;
        uint32_t x = advance_fused(s.x[l], e, v.ps, se_mask);
        renorm_branchless(x, s.wp);
        s.x[l] = x;
      }
      for (uint32_t l = 0; l < active; ++l) {
        if constexpr (kMode == kSeOnly) {
          vals[l] = static_cast<T>(static_cast<T>(row[l]) << v.mb);
          continue;
        }
        const uint32_t e = v.m[(m_row(row[l]) << v.pm) | (s.x[l] & m_mask)];
        uint32_t x = advance_fused(s.x[l], e, v.pm, m_mask);
        renorm_branchless(x, s.wp);
        s.x[l] = x;
        vals[l] = element(row[l], e);
      }
    } else {
      for (uint32_t l = 0; l < active; ++l) {
        const uint32_t e = v.se[s.x[l] & se_mask];
        row[l] = e >> se_2p;
        s.x[l] = advance_fused(s.x[l], e, v.ps, se_mask);
        if (!renorm_checked(s.x[l], s.wp, s.wend)) return false;
      }
      for (uint32_t l = 0; l < active; ++l) {
        if constexpr (kMode == kSeOnly) {
          vals[l] = static_cast<T>(static_cast<T>(row[l]) << v.mb);
          continue;
        }
        const uint32_t e = v.m[(m_row(row[l]) << v.pm) | (s.x[l] & m_mask)];
        s.x[l] = advance_fused(s.x[l], e, v.pm, m_mask);
        if (!renorm_checked(s.x[l], s.wp, s.wend)) return false;
        vals[l] = element(row[l], e);
      }
    }
    if constexpr (kRaw) {
      for (uint32_t l = 0; l < active; ++l, bitpos += static_cast<uint64_t>(v.rb))
        vals[l] = static_cast<T>(vals[l] | (static_cast<T>(read_raw(s.raw, s.raw_bytes, bitpos, v.rb)) << v.z));
    }
    std::memcpy(out + base * sizeof(T), vals, active * sizeof(T));
  }
  return true;
}

// Single-lane chunks (tensors under 2048 elements) of K tensors side by side. One lane is one
// dependency chain (table load, multiply, renormalization, next load): alone it runs about five
// times slower per element than the SIMD kernels, and K independent chains in one loop overlap.
// Each chunk takes the steps decode_fused_rounds takes, in the same order, while every chunk
// has an element left and words for an unchecked step; start[k] says where chunk k stopped and
// decode_fused_rounds finishes it.
template <typename T, bool kRaw, int kMode, int K>
void decode_fused_single_k(const FusedView* v, ChunkStreams* s, const uint64_t* n, uint64_t* start, uint8_t* const* out) {
  uint64_t limit = n[0];
  for (int k = 1; k < K; ++k) limit = std::min(limit, n[k]);
  uint64_t i = 0;
  for (; i < limit; ++i) {
    bool room = true;
    for (int k = 0; k < K; ++k) room &= s[k].wend - s[k].wp >= 4;
    if (!room) break;
    uint32_t row[K];
    for (int k = 0; k < K; ++k) {
      const uint32_t e = v[k].se[s[k].x[0] & ((1u << v[k].ps) - 1)];
      row[k] = e >> (2 * v[k].ps);
      uint32_t x = advance_fused(s[k].x[0], e, v[k].ps, (1u << v[k].ps) - 1);
      renorm_branchless(x, s[k].wp);
      s[k].x[0] = x;
    }
    for (int k = 0; k < K; ++k) {
      T val = 0;
      if constexpr (kMode != kSeOnly) {
        const uint32_t m_mask = (1u << v[k].pm) - 1;
        const uint32_t m_row = kMode == kSePermute256 ? uint32_t{v[k].d_ctx[row[k]]} : row[k];
        const uint32_t e = v[k].m[(m_row << v[k].pm) | (s[k].x[0] & m_mask)];
        uint32_t x = advance_fused(s[k].x[0], e, v[k].pm, m_mask);
        renorm_branchless(x, s[k].wp);
        s[k].x[0] = x;
        val = static_cast<T>(static_cast<T>(e >> (2 * v[k].pm)) << v[k].hi_shift);
      }
      if constexpr (kMode == kSeInSe || kMode == kSeOnly) val = static_cast<T>(val | (static_cast<T>(row[k]) << v[k].mb));
      else if constexpr (kMode != kSeInMant) val = static_cast<T>(val | (static_cast<T>(v[k].d_to_se[row[k]]) << v[k].mb));
      if constexpr (kRaw)
        val = static_cast<T>(val | (static_cast<T>(read_raw(s[k].raw, s[k].raw_bytes, i * static_cast<uint64_t>(v[k].rb), v[k].rb))
                                    << v[k].z));
      std::memcpy(out[k] + i * sizeof(T), &val, sizeof(T));
    }
  }
  for (int k = 0; k < K; ++k) start[k] = i;
}

template <typename T, int K>
void decode_fused_single_t(int mode, bool raw, const FusedView* v, ChunkStreams* s, const uint64_t* n, uint64_t* start,
                           uint8_t* const* out) {
  switch (mode) {
    case kSeInMant: return raw ? decode_fused_single_k<T, true, kSeInMant, K>(v, s, n, start, out)
                               : decode_fused_single_k<T, false, kSeInMant, K>(v, s, n, start, out);
    case kSeInSe: return raw ? decode_fused_single_k<T, true, kSeInSe, K>(v, s, n, start, out)
                             : decode_fused_single_k<T, false, kSeInSe, K>(v, s, n, start, out);
    case kSePermute256: return raw ? decode_fused_single_k<T, true, kSePermute256, K>(v, s, n, start, out)
                                   : decode_fused_single_k<T, false, kSePermute256, K>(v, s, n, start, out);
    case kSeOnly: return raw ? decode_fused_single_k<T, true, kSeOnly, K>(v, s, n, start, out)
                             : decode_fused_single_k<T, false, kSeOnly, K>(v, s, n, start, out);
    default: return raw ? decode_fused_single_k<T, true, kSePermute, K>(v, s, n, start, out)
                        : decode_fused_single_k<T, false, kSePermute, K>(v, s, n, start, out);
  }
}

// count: 2 to 4 chunks of one kind (same element width, fused mode and raw plane or none; a
// group of 4 with a damaged member runs with 3).
void decode_fused_single_group(int unit, int mode, bool raw, const FusedView* v, ChunkStreams* s, const uint64_t* n,
                               int count, uint64_t* start, uint8_t* const* out) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (count == 4) decode_fused_single_t<T, 4>(mode, raw, v, s, n, start, out);
    else if (count == 3) decode_fused_single_t<T, 3>(mode, raw, v, s, n, start, out);
    else decode_fused_single_t<T, 2>(mode, raw, v, s, n, start, out);
  };
  switch (unit) {
    case 1: run(uint8_t{}); break;
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    default: run(uint64_t{}); break;
  }
}

template <typename T>
bool decode_fused_rounds_t(int mode, bool raw, const FusedView& v, ChunkStreams& s, uint64_t start, uint64_t n,
                           uint32_t lanes, uint8_t* out) {
  switch (mode) {
    case kSeInMant: return raw ? decode_fused_rounds<T, true, kSeInMant>(v, s, start, n, lanes, out)
                               : decode_fused_rounds<T, false, kSeInMant>(v, s, start, n, lanes, out);
    case kSeInSe: return raw ? decode_fused_rounds<T, true, kSeInSe>(v, s, start, n, lanes, out)
                             : decode_fused_rounds<T, false, kSeInSe>(v, s, start, n, lanes, out);
    case kSePermute256: return raw ? decode_fused_rounds<T, true, kSePermute256>(v, s, start, n, lanes, out)
                                   : decode_fused_rounds<T, false, kSePermute256>(v, s, start, n, lanes, out);
    case kSeOnly: return raw ? decode_fused_rounds<T, true, kSeOnly>(v, s, start, n, lanes, out)
                             : decode_fused_rounds<T, false, kSeOnly>(v, s, start, n, lanes, out);
    default: return raw ? decode_fused_rounds<T, true, kSePermute>(v, s, start, n, lanes, out)
                        : decode_fused_rounds<T, false, kSePermute>(v, s, start, n, lanes, out);
  }
}

}  // namespace

namespace {

// Decoder tables are rebuilt for every decode call, and a table's cost is mostly in writing it:
// fresh pages from the kernel (page faults, zeroing) cost more than the writes, and whether
// glibc hands back recycled memory or fresh pages depends on the allocation history (a 20%
// swing on files of many tensors). Freed table blocks are therefore kept, up to kKeepBytes in
// all, for the next tensor of a similar size.
class TableMemory {
 public:
  static std::shared_ptr<uint32_t[]> get(size_t n) {
    TableMemory& m = instance();
    uint32_t* p = nullptr;
    size_t cap = n;
    {
      std::lock_guard<std::mutex> lk(m.mu_);
      size_t best = m.blocks_.size();
      for (size_t i = 0; i < m.blocks_.size(); ++i) {
        const size_t c = m.blocks_[i].first;
        if (c >= n && c <= 2 * n + 4096 && (best == m.blocks_.size() || c < m.blocks_[best].first)) best = i;
      }
      if (best < m.blocks_.size()) {
        cap = m.blocks_[best].first;
        p = m.blocks_[best].second;
        m.bytes_ -= cap * 4;
        m.blocks_[best] = m.blocks_.back();
        m.blocks_.pop_back();
      }
    }
    if (p == nullptr) p = new uint32_t[n];
    return std::shared_ptr<uint32_t[]>(p, [cap](uint32_t* q) { put(q, cap); });
  }

 private:
  static constexpr size_t kKeepBytes = size_t{32} << 20;
  static TableMemory& instance() { return *the_; }
  // Made when the library is loaded, not at the first decode: a lazy static's guard, caught half
  // taken by a fork in another thread's first decode, would hang the child. Never destroyed:
  // decoders may outlive statics.
  static TableMemory* make() {
    auto* t = new TableMemory;
    hold_across_fork(&t->mu_);
    return t;
  }
  static TableMemory* const the_;
  static void put(uint32_t* p, size_t cap) {
    TableMemory& m = instance();
    {
      std::lock_guard<std::mutex> lk(m.mu_);
      if (m.bytes_ + cap * 4 <= kKeepBytes) {
        m.blocks_.emplace_back(cap, p);
        m.bytes_ += cap * 4;
        return;
      }
    }
    delete[] p;
  }
  std::mutex mu_;
  std::vector<std::pair<size_t, uint32_t*>> blocks_;  // (capacity in entries, block)
  size_t bytes_ = 0;
};
TableMemory* const TableMemory::the_ = TableMemory::make();

}  // namespace

void set_compact_rows_for_testing(bool on) { compact_rows.store(on, std::memory_order_relaxed); }

namespace {
// The fused layout build_fused picks for a model of these dimensions (mode 0: none, the unfused
// tables), and its mantissa rows. Shared with the decoder-window estimate, which must count
// what build_fused will allocate.
struct FusedLayout {
  int mode = 0;
  size_t rows = 0;
};

FusedLayout fused_layout(int ps, int pm, int k, int se_bits, uint32_t count, size_t tables, uint64_t units) {
  if (ps < 1 || pm < 1 || 2 * pm + k > 32) return {};
  // Fused rows repeat a mantissa table for every se symbol that uses it (kSeInSe: for every se
  // value): they get the same memory bound as the tables themselves, or a hostile model of a few
  // bytes could ask for megabytes per tensor. Tensors past it decode with the unfused tables.
  const uint64_t budget = max_table_slots(units);
  const uint64_t slots = uint64_t{1} << pm;
  auto fits = [&](uint64_t rows) { return rows * slots <= budget; };
  const bool permute256 = 2 * ps + 8 <= 32 && count <= 256 &&
                          se_bits + std::bit_width(tables) <= 16 && fits(tables + 1);
  int mode;
  if (k == 0 && 2 * ps + se_bits <= 32) mode = kSeOnly;
  else if (2 * pm + se_bits + k <= 32 && 2 * ps + 8 <= 32 && count <= 256 && fits(count)) mode = kSeInMant;
  else if (2 * ps + se_bits <= 32 && fits(uint64_t{1} << se_bits)) mode = kSeInSe;
  else if (2 * ps + 8 <= 32 && count <= 64 && fits(count)) mode = kSePermute;
  else if (permute256) mode = kSePermute256;
  else return {};
  // kSeInMant and kSeInSe compute a mantissa row per sign+exponent symbol, the 256-row layout
  // one per mantissa table. Where the per-symbol rows hold more entries than the tensor has
  // weights (a 14,400-weight F32 tensor of ppocrv4-rec has 223 symbols of 1,024-slot rows:
  // 892 KB), building them costs more than the 256-row layout's slightly slower loop.
  if ((mode == kSeInMant || mode == kSeInSe) && permute256 && (uint64_t{count} << pm) > units &&
      compact_rows.load(std::memory_order_relaxed))
    mode = kSePermute256;
  const bool dense = mode != kSeInSe && mode != kSeOnly;
  const size_t rows = mode == kSeOnly         ? 0
                      : mode == kSePermute256 ? tables + 1
                      : dense                 ? count
                                              : (size_t{1} << se_bits);
  return {mode, rows};
}
}  // namespace

uint64_t float_decoder_slots(const FloatModelShape& m, int exp_bits, uint64_t units) {
  const uint64_t se = uint64_t{1} << m.se_precision, unfused = (uint64_t{m.tables} + 1) << m.mant_precision;
  const FusedLayout f = fused_layout(m.se_precision, m.mant_precision, m.hi_bits, 1 + exp_bits, m.present, m.tables, units);
  // The unfused tables are built when no fused layout applies; count the larger either way.
  return se + std::max<uint64_t>(unfused, f.mode ? uint64_t{f.rows} << m.mant_precision : 0);
}

bool TensorDecoder::build_fused() {
  // Ways to get the sign+exponent value with one lookup per symbol (see simd.hpp):
  //   kSeOnly:   no mantissa bits coded: the mantissa step is skipped, se as in kSeInSe;
  //   kSeInMant: the mantissa entry carries se and hi together (2Pm + 1+E + k <= 32);
  //   kSeInSe:   the se entry carries se itself as the row index (2Ps + 1+E <= 32);
  //   kSePermute: rows are dense indices, se comes from a 64-entry register table;
  //   kSePermute256: the same with up to 256 rows.
  const FreqTable& se = fm_.se;
  const int ps = se.precision, pm = fm_.mant_precision, k = fm_.hi_bits;
  const int se_bits = 1 + fm_.exp_bits;
  if (ps < 1 || pm < 1 || 2 * pm + k > 32) return false;
  uint16_t present[kMaxAlphabet];
  uint32_t count = 0, total = 0;
  for (uint32_t s = 0; s < se.alphabet; ++s)
    if (se.freq[s]) {
      present[count++] = static_cast<uint16_t>(s);
      total += se.freq[s];
    }
  if (total != (1u << ps)) return false;  // every slot must belong to a symbol (read_table guarantees it)
  const FusedLayout layout = fused_layout(ps, pm, k, se_bits, count, fm_.mant.size(), coding_.units());
  if (layout.mode == 0) return false;
  const int mode = layout.mode;
  const bool dense = mode != kSeInSe && mode != kSeOnly;
  const size_t rows = layout.rows;
  const size_t se_slots = size_t{1} << ps, slots = size_t{1} << pm;
  // Rows of absent symbols (kSeInSe) are never written nor read: the allocation stays untouched.
  fused_ = TableMemory::get(se_slots + rows * slots);
  uint32_t* se_t = fused_.get();
  uint32_t* m_t = se_t + se_slots;
  // Rows that share a mantissa table are identical unless they also carry se (kSeInMant).
  int32_t first_row[kMaxAlphabet + 1];
  std::fill_n(first_row, fm_.mant.size() + 1, -1);
  for (uint32_t r = 0; r < count; ++r) {
    const uint32_t s = present[r];
    const uint32_t row = dense ? r : s;
    if (r < 256) d_to_se_[r] = s;
    const uint32_t f = se.freq[s];
    const uint32_t se_entry = (f - 1) | (row << (2 * ps));
    uint32_t* dst = se_t + se.cum[s];
    for (uint32_t j = 0; j < f; ++j) dst[j] = se_entry | (j << ps);
    if (mode == kSeOnly) continue;  // no mantissa rows
    const uint16_t ctx = fm_.ctx[s];
    if (mode == kSePermute256) {
      d_ctx_[r] = ctx;
      d_pack16_[r] = static_cast<uint16_t>(s | (uint32_t{ctx} << se_bits));
    }
    const uint32_t m_row = mode == kSePermute256 ? ctx : row;
    uint32_t* out = m_t + m_row * slots;
    if (mode == kSePermute256 && first_row[ctx] >= 0) continue;  // the context's row is written
    if (mode != kSeInMant && first_row[ctx] >= 0) {
      std::memcpy(out, m_t + static_cast<size_t>(first_row[ctx]) * slots, slots * 4);
      continue;
    }
    first_row[ctx] = static_cast<int32_t>(m_row);
    const FreqTable* mt = ctx ? &fm_.mant[ctx - 1] : nullptr;
    const uint32_t se_part = mode == kSeInMant ? s << k : 0;
    const uint32_t uf = 1u << (pm - k);  // the uniform table, without building it
    for (uint32_t h = 0; h < (1u << k); ++h) {
      const uint32_t fh = ctx ? mt->freq[h] : uf;
      if (!fh) continue;
      const uint32_t base = (fh - 1) | ((se_part | h) << (2 * pm));
      uint32_t* o = out + (ctx ? mt->cum[h] : h * uf);
      for (uint32_t j = 0; j < fh; ++j) o[j] = base | (j << pm);
    }
  }
  se_fused_ = se_t;
  m_fused_ = m_t;
  fused_mode_ = mode;
  return true;
}

uint32_t TensorDecoder::group_kind() const {
  if (!fused_mode_ || coding_.codec != Codec::kFloat) return 0;
  // Single-lane chunks go to the scalar side-by-side loop (decode_fused_single_group).
  if (coding_.lanes_log2 == 0)
    return coding_.unit_bytes() | (static_cast<uint32_t>(fused_mode_) << 16) | (fm_.raw_bits ? 1u << 20 : 0) | kScalarGroup;
  if (!simd_) return 0;
  return coding_.unit_bytes() | (uint32_t{coding_.lanes_log2} << 8) | (static_cast<uint32_t>(fused_mode_) << 16);
}

void TensorDecoder::simd_args(ChunkStreams& s, uint64_t n, SimdFloatArgs* a, SimdFusedArgs* f) const {
  a->x = s.x;
  a->wp = &s.wp;
  a->wend = s.wend;
  a->se_packed = se_.packed.data();
  a->se_aux = se_aux_.data();
  a->se_precision = fm_.se.precision;
  a->m_packed = mant_.packed.data();
  a->m_sym = m_sym32_.data();
  a->m_precision = fm_.mant_precision;
  a->man_bits = fm_.man_bits;
  a->hi_shift = fm_.raw_bits + fm_.zero_bits;
  a->n = n;
  a->start = 0;
  a->raw = s.raw;
  a->raw_bytes = s.raw_bytes;
  a->raw_bits = fm_.raw_bits;
  a->zero_bits = fm_.zero_bits;
  *f = {se_fused_, m_fused_, d_to_se_.data(), d_pack16_.data(), 1 + fm_.exp_bits, fused_mode_};
}

uint64_t TensorDecoder::decode_simd(ChunkStreams& s, uint64_t n, uint64_t start, uint8_t* out) const {
  SimdFloatArgs a;
  SimdFusedArgs f;
  simd_args(s, n, &a, &f);
  a.start = start;
  const int unit = static_cast<int>(coding_.unit_bytes()), lanes = 1 << coding_.lanes_log2;
  if (fused_mode_) return decode_float_rounds_avx512_fused(a, f, unit, lanes, out);
  return decode_float_rounds_avx512(a, unit, lanes, out);
}

Status TensorDecoder::open_float(size_t i, const uint8_t* chunk, uint64_t size, ChunkStreams* s) const {
  const uint64_t n = coding_.chunk_out_size(i) / coding_.unit_bytes();
  return open_streams(i, chunk, size, 1u << coding_.lanes_log2, raw_plane_bytes(n, fm_.raw_bits), s);
}

FusedView TensorDecoder::fused_view() const {
  return {se_fused_, m_fused_, d_to_se_.data(), d_ctx_.data(), fm_.se.precision, fm_.mant_precision,
          fm_.man_bits, fm_.raw_bits + fm_.zero_bits, fm_.raw_bits, fm_.zero_bits};
}

Status TensorDecoder::finish_float(size_t i, ChunkStreams& s, uint64_t start, uint8_t* out) const {
  const uint32_t unit = coding_.unit_bytes();
  const uint64_t n = coding_.chunk_out_size(i) / unit;
  const uint32_t lanes = 1u << coding_.lanes_log2;
  if (simd_) start = decode_simd(s, n, start, out);
  bool ok = false;
  const bool raw = fm_.raw_bits > 0;
  if (fused_mode_) {
    const FusedView v = fused_view();
    switch (unit) {
      case 1: ok = decode_fused_rounds_t<uint8_t>(fused_mode_, raw, v, s, start, n, lanes, out); break;
      case 2: ok = decode_fused_rounds_t<uint16_t>(fused_mode_, raw, v, s, start, n, lanes, out); break;
      case 4: ok = decode_fused_rounds_t<uint32_t>(fused_mode_, raw, v, s, start, n, lanes, out); break;
      case 8: ok = decode_fused_rounds_t<uint64_t>(fused_mode_, raw, v, s, start, n, lanes, out); break;
      default: break;
    }
  } else {
    switch (unit) {
      case 1: ok = raw ? decode_float_rounds<uint8_t, true>(fm_, se_, mant_, s, start, n, lanes, out)
                       : decode_float_rounds<uint8_t, false>(fm_, se_, mant_, s, start, n, lanes, out); break;
      case 2: ok = raw ? decode_float_rounds<uint16_t, true>(fm_, se_, mant_, s, start, n, lanes, out)
                       : decode_float_rounds<uint16_t, false>(fm_, se_, mant_, s, start, n, lanes, out); break;
      case 4: ok = raw ? decode_float_rounds<uint32_t, true>(fm_, se_, mant_, s, start, n, lanes, out)
                       : decode_float_rounds<uint32_t, false>(fm_, se_, mant_, s, start, n, lanes, out); break;
      case 8: ok = raw ? decode_float_rounds<uint64_t, true>(fm_, se_, mant_, s, start, n, lanes, out)
                       : decode_float_rounds<uint64_t, false>(fm_, se_, mant_, s, start, n, lanes, out); break;
      default: break;
    }
  }
  if (!ok) return corrupt_chunk(i, "rANS data ends early");
  return close_streams(i, s, lanes);
}

Status TensorDecoder::decode_chunk(size_t i, const uint8_t* chunk, uint64_t size, ChunkMode mode,
                                   uint8_t* out) const {
  const TensorCoding& c = coding_;
  const uint64_t out_size = c.chunk_out_size(i);
  if (mode == ChunkMode::kStored) {
    if (size != out_size) return corrupt_chunk(i, "stored size mismatch");
    std::memcpy(out, chunk, out_size);
    return Status::success();
  }
  const uint32_t unit = c.unit_bytes();
  const uint64_t n = out_size / unit;
  const uint32_t lanes = 1u << c.lanes_log2;
  ChunkStreams s;
  switch (c.codec) {
    case Codec::kFloat:
      BIGSMALL_RETURN_IF_ERROR(open_float(i, chunk, size, &s));
      return finish_float(i, s, 0, out);
    case Codec::kBytes: {
      BIGSMALL_RETURN_IF_ERROR(open_streams(i, chunk, size, lanes, 0, &s));
      for (uint64_t base = 0; base < n; base += lanes) {
        const uint32_t active = static_cast<uint32_t>(std::min<uint64_t>(lanes, n - base));
        for (uint32_t j = 0; j < unit; ++j) {
          for (uint32_t l = 0; l < active; ++l) {
            uint32_t b;
            if (!step_checked(s.x[l], planes_[j], s.wp, s.wend, &b)) return corrupt_chunk(i, "rANS data ends early");
            out[(base + l) * unit + j] = static_cast<uint8_t>(b);
          }
        }
      }
      return close_streams(i, s, lanes);
    }
    case Codec::kZstd: {
      // One context per thread: ZSTD_decompress would set up a fresh one for every chunk.
      struct Ctx {
        ZSTD_DCtx* p = ZSTD_createDCtx();
        ~Ctx() { ZSTD_freeDCtx(p); }
      };
      Ctx& ctx = thread_scratch<Ctx, struct ZstdDecodeContext>();
      if (const char* problem = decode_zstd_chunk(chunk, size, out, out_size, ctx.p)) return corrupt_chunk(i, problem);
      return Status::success();
    }
    case Codec::kStore:
      break;
  }
  return corrupt_chunk(i, "coded chunk in a stored tensor");
}

namespace {

// A tensor's checksum, computed while its chunks decode: whichever thread finishes a chunk
// hashes the complete decoded prefix, while it is still in cache. Hashing a large tensor after
// the decode would run on one thread and leave the others idle.
class TensorHash {
 public:
  void init(const DecodeJob& job) {
    job_ = &job;
    count_ = job.coding->chunks.size();
    if (count_ > 1) {
      done_.reset(new std::atomic<bool>[count_]);
      for (size_t i = 0; i < count_; ++i) done_[i].store(false, std::memory_order_relaxed);
      stream_ = std::make_unique<Xxh3Stream>();
    }
  }
  void chunk_done(size_t i) {
    if (count_ == 1) {
      digest_ = xxh3_64(job_->out, job_->coding->nbytes);
      return;
    }
    done_[i].store(true, std::memory_order_release);
    std::unique_lock<std::mutex> lk(mu_, std::try_to_lock);
    if (lk) advance();  // a busy hasher will take this chunk, or finish() will
  }
  bool matches() {
    if (count_ == 0) return xxh3_64(job_->out, 0) == job_->coding->checksum;
    if (count_ > 1) {
      std::lock_guard<std::mutex> lk(mu_);
      advance();
      if (next_ != count_) return false;
      digest_ = stream_->digest();
    }
    return digest_ == job_->coding->checksum;
  }

 private:
  void advance() {
    const TensorCoding& c = *job_->coding;
    for (; next_ < count_ && done_[next_].load(std::memory_order_acquire); ++next_)
      stream_->update(job_->out + c.chunk_out_offset(next_), c.chunk_out_size(next_));
  }
  const DecodeJob* job_ = nullptr;
  size_t count_ = 0, next_ = 0;
  uint64_t digest_ = 0;
  std::mutex mu_;
  std::unique_ptr<std::atomic<bool>[]> done_;
  std::unique_ptr<Xxh3Stream> stream_;
};

// Chunks decoded side by side per kind: chunks of 4 and 8 lanes are short dependency chains
// (one xmm or ymm of states), 16 and 32 lanes already fill one or two zmm.
constexpr size_t kGroupMax = 4;
size_t group_size(uint32_t kind) { return ((kind >> 8) & 0xff) <= 3 ? 4 : 2; }

}  // namespace

namespace {

// The most decoder table slots a job may build (0 when it builds none), known before its model
// is read: read_float_model / read_bytes_model refuse more.
uint64_t table_slot_bound(const TensorCoding& c) {
  if (c.codec != Codec::kFloat && c.codec != Codec::kBytes) return 0;
  if (std::none_of(c.chunks.begin(), c.chunks.end(), [](const ChunkRef& r) { return r.mode == ChunkMode::kCoded; }))
    return 0;
  const uint64_t most = c.codec == Codec::kFloat
                            ? (uint64_t{1} << kMaxPrecision) +
                                  (((uint64_t{2} << dtype_info(c.dtype).exponent_bits) + 1) << kMaxMantPrecision)
                            : uint64_t{c.unit_bytes()} << kMaxPrecision;
  // max_table_slots bounds the mantissa (or byte) tables; the se table adds up to 2^15.
  return std::min(most, max_table_slots(c.units()) + (c.codec == Codec::kFloat ? uint64_t{1} << kMaxPrecision : 0));
}

// The slots job j's decoder will build, from its model's first fields (the bound where they are
// invalid, or for byte models: preparing the decoder reports errors). Small tensors' bounds are
// loose (2^16 + 64 per unit, where real models use a few thousand slots), so windows are cut by
// these.
uint64_t table_slots(const DecodeJob& j) {
  const TensorCoding& c = *j.coding;
  const uint64_t bound = table_slot_bound(c);
  if (bound == 0 || c.codec != Codec::kFloat) return bound;
  const auto shape = float_model_shape(j.payload, c.model_size, c.dtype);
  if (!shape) return bound;
  return std::min(bound, float_decoder_slots(*shape, dtype_info(c.dtype).exponent_bits, c.units()));
}

// Table slots whose decoders one window of jobs builds at once (about 10 bytes each). Jobs are
// batched by decoded bytes; without this, a batch of many tiny tensors that each ask for the
// largest tables their size allows would hold gigabytes of tables for kilobytes of output.
constexpr uint64_t kWindowTableSlots = uint64_t{1} << 23;
std::atomic<uint64_t> window_table_slots{kWindowTableSlots};  // or smaller in tests
// Jobs per window at most, for the per-job state (checksum streams, chunk lists) of a caller
// that hands over a file of 300k tiny tensors in one call.
constexpr size_t kWindowJobs = 4096;

Status decode_window(const std::vector<DecodeJob>& jobs, bool verify, ThreadPool& pool);

}  // namespace

void set_decode_window_slots_for_testing(uint64_t slots) {
  window_table_slots.store(slots ? slots : kWindowTableSlots, std::memory_order_relaxed);
}

Status decode_tensors_on(const std::vector<DecodeJob>& jobs, bool verify, ThreadPool& pool) {
  uint64_t total = 0;
  for (const auto& j : jobs) {
    // Every entry of the batch is checked before any work, so that a bad one late in a batch
    // is not found after seconds of decoding the others.
    BIGSMALL_RETURN_IF_ERROR(j.coding->validate(j.payload_size).with_context(j.label));
    total += table_slot_bound(*j.coding);
  }
  const uint64_t budget = window_table_slots.load(std::memory_order_relaxed);
  if (total <= budget && jobs.size() <= kWindowJobs) return decode_window(jobs, verify, pool);
  // Over the bound: the models say what the decoders will really build.
  std::vector<uint64_t> need(jobs.size());
  pool.parallel_for(jobs.size(), [&](size_t t) { need[t] = table_slots(jobs[t]); });
  std::vector<DecodeJob> window;
  uint64_t slots = 0;
  for (size_t t = 0; t < jobs.size(); ++t) {
    const DecodeJob& j = jobs[t];
    const uint64_t s = need[t];
    if (!window.empty() && (slots + s > budget || window.size() >= kWindowJobs)) {
      BIGSMALL_RETURN_IF_ERROR(decode_window(window, verify, pool));
      window.clear();
      slots = 0;
    }
    window.push_back(j);
    slots += s;
  }
  return decode_window(window, verify, pool);
}

namespace {

// Each job's tables, built in parallel (or the caller's, when the job brings them). A job with
// no coded chunk builds none, but a model an encoder wrote before every chunk came out stored is
// still read, so that no byte of the file escapes a check.
Status prepare_decoders(const std::vector<DecodeJob>& jobs, ThreadPool& pool, std::vector<TensorDecoder>& owned,
                        std::vector<const TensorDecoder*>& decoders) {
  std::vector<Status> errors(jobs.size());
  pool.parallel_for(jobs.size(), [&](size_t t) {
    decoders[t] = jobs[t].decoder ? jobs[t].decoder : &owned[t];
    if (jobs[t].decoder) return;
    const TensorCoding& c = *jobs[t].coding;
    if (std::none_of(c.chunks.begin(), c.chunks.end(), [](const ChunkRef& r) { return r.mode == ChunkMode::kCoded; })) {
      if (c.model_size == 0) return;
      if (c.codec == Codec::kFloat) {
        FloatModel fm;
        errors[t] = read_float_model(jobs[t].payload, c.model_size, c.dtype, c.units(), &fm);
      } else if (c.codec == Codec::kBytes) {
        BytesModel bm;
        errors[t] = read_bytes_model(jobs[t].payload, c.model_size, c.unit_bytes(), c.units(), &bm);
      }
      return;
    }
    auto d = TensorDecoder::prepare(c, jobs[t].payload, c.model_size);
    if (d) owned[t] = std::move(d.value());
    else errors[t] = d.status();
  });
  for (size_t t = 0; t < jobs.size(); ++t)
    if (!errors[t].is_ok()) return errors[t].with_context(jobs[t].label);
  return Status::success();
}

using WorkItem = std::pair<uint32_t, uint32_t>;  // (job, chunk)

// Every chunk to decode, largest first: a file of few chunks of uneven size (one zstd tensor,
// short last chunks) then ends with the small ones spread over the threads, not with one
// straggler.
std::vector<WorkItem> list_work(const std::vector<DecodeJob>& jobs) {
  std::vector<WorkItem> work;
  for (size_t t = 0; t < jobs.size(); ++t)
    for (size_t c = jobs[t].first_chunk(); c < jobs[t].last_chunk(); ++c)
      work.emplace_back(static_cast<uint32_t>(t), static_cast<uint32_t>(c));
  std::stable_sort(work.begin(), work.end(), [&](const WorkItem& a, const WorkItem& b) {
    return jobs[a.first].coding->chunk_out_size(a.second) > jobs[b.first].coding->chunk_out_size(b.second);
  });
  return work;
}

// Coded float chunks of the same kind are decoded side by side, K at a time (simd.hpp says why);
// neighbours in the size order have similar lengths, so little runs alone at the end. With
// several threads, a group may hold at most a quarter of a thread's share, or a file of few large
// chunks would leave threads idle. Chunks too large for a group of 4 go in pairs, which keep most
// of the gain: alone, a chunk of 8 lanes (as earlier encoders wrote them) decodes at half the speed. Groups hold indices into work.
std::vector<std::vector<uint32_t>> group_work(const std::vector<DecodeJob>& jobs,
                                              const std::vector<const TensorDecoder*>& decoders,
                                              const std::vector<WorkItem>& work, int threads) {
  uint64_t total = 0;
  for (const auto& [t, i] : work) total += jobs[t].coding->chunk_out_size(i);
  const uint64_t max_group = threads == 1 ? UINT64_MAX : total / (4 * static_cast<uint64_t>(threads));
  struct Pending {
    uint32_t kind;
    size_t size;
    std::vector<uint32_t> members;
  };
  std::vector<Pending> pending;
  std::vector<std::vector<uint32_t>> groups;
  for (uint32_t w = 0; w < work.size(); ++w) {
    const auto [t, i] = work[w];
    const uint32_t kind = jobs[t].coding->chunks[i].mode == ChunkMode::kCoded ? decoders[t]->group_kind() : 0;
    size_t size = kind != 0 ? group_size(kind) : 1;
    while (size > 1 && jobs[t].coding->chunk_out_size(i) * size > max_group) size /= 2;
    if (size == 1) {
      groups.push_back({w});
      continue;
    }
    auto it = std::find_if(pending.begin(), pending.end(), [&](const Pending& p) { return p.kind == kind && p.size == size; });
    if (it == pending.end()) it = pending.insert(pending.end(), {kind, size, {}});
    it->members.push_back(w);
    if (it->members.size() == size) {
      groups.push_back(std::move(it->members));
      pending.erase(it);
    }
  }
  for (auto& p : pending) {
    while (p.members.size() > 2) {  // kernels take 2 or 4 chunks
      groups.push_back({p.members.back()});
      p.members.pop_back();
    }
    groups.push_back(std::move(p.members));
  }
  return groups;
}

// One window's decode: groups of chunks on the pool's threads, each tensor's checksum computed as
// its chunks complete, the first error per tensor kept.
class WindowDecode {
 public:
  WindowDecode(const std::vector<DecodeJob>& jobs, const std::vector<const TensorDecoder*>& decoders,
               const std::vector<WorkItem>& work, bool verify)
      : jobs_(jobs), decoders_(decoders), work_(work), verify_(verify), errors_(jobs.size()),
        hashes_(verify ? jobs.size() : 0) {
    for (size_t t = 0; t < hashes_.size(); ++t)
      if (jobs[t].whole()) hashes_[t].init(jobs[t]);
  }

  Status run(const std::vector<std::vector<uint32_t>>& groups, ThreadPool& pool) {
    pool.parallel_for(groups.size(), [&](size_t g) {
      if (!failed_.load(std::memory_order_relaxed)) decode_group(groups[g]);
    });
    BIGSMALL_RETURN_IF_ERROR(first_error());
    if (failed_) return Status(Error::kCorrupt, "decode failed");
    if (verify_) {
      pool.parallel_for(jobs_.size(), [&](size_t t) {
        if (jobs_[t].whole() && !hashes_[t].matches()) errors_[t] = Status(Error::kCorrupt, "checksum mismatch after decode");
      });
      BIGSMALL_RETURN_IF_ERROR(first_error());
    }
    return Status::success();
  }

 private:
  Status first_error() const {
    for (size_t t = 0; t < jobs_.size(); ++t)
      if (!errors_[t].is_ok()) return errors_[t].with_context(jobs_[t].label);
    return Status::success();
  }
  void fail(uint32_t t, Status st) {
    std::lock_guard<std::mutex> lk(mu_);
    if (errors_[t].is_ok()) errors_[t] = std::move(st);
    failed_ = true;
  }
  void chunk_done(uint32_t t, size_t i, Status st) {
    if (!st.is_ok()) fail(t, std::move(st));
    else if (verify_ && jobs_[t].whole()) hashes_[t].chunk_done(i);
  }

  // Stored chunks, lone chunks and failures are finished at once; coded float chunks of a group
  // are opened here and decoded together by one multi-chunk kernel, each then finished alone.
  void decode_group(const std::vector<uint32_t>& members) {
    ChunkStreams streams[kGroupMax];
    SimdFloatArgs args[kGroupMax];
    SimdFusedArgs fused[kGroupMax];
    uint8_t* outs[kGroupMax];
    uint32_t open[kGroupMax];  // members whose streams are open, as indices into members
    uint64_t counts[kGroupMax], starts[kGroupMax];
    FusedView views[kGroupMax];
    size_t opened = 0;
    for (size_t m = 0; m < members.size(); ++m) {
      const auto [t, i] = work_[members[m]];
      const DecodeJob& j = jobs_[t];
      const ChunkRef& ref = j.coding->chunks[i];
      const uint8_t* p = j.payload + ref.offset;
      uint8_t* out = j.chunk_out(i);
      Status st;
      if (verify_ && xxh3_32(p, ref.size) != ref.checksum) {
        st = corrupt_chunk(i, "checksum mismatch (compressed data damaged)");
      } else if (ref.mode == ChunkMode::kStored) {  // validate() checked its size
        std::memcpy(out, p, ref.size);
      } else if (members.size() == 1) {
        st = decoders_[t]->decode_chunk(i, p, ref.size, ref.mode, out);
      } else {
        st = decoders_[t]->open_float(i, p, ref.size, &streams[opened]);
        if (st.is_ok()) {
          counts[opened] = j.coding->chunk_out_size(i) / j.coding->unit_bytes();
          views[opened] = decoders_[t]->fused_view();
          decoders_[t]->simd_args(streams[opened], counts[opened], &args[opened], &fused[opened]);
          outs[opened] = out;
          open[opened++] = static_cast<uint32_t>(m);
          continue;
        }
      }
      chunk_done(t, i, std::move(st));
    }
    if (opened == 0) return;
    const auto [t0, i0] = work_[members[open[0]]];
    const TensorCoding& c0 = *jobs_[t0].coding;
    const uint32_t kind = decoders_[t0]->group_kind();
    if (opened > 1 && (kind & kScalarGroup)) {
      decode_fused_single_group(static_cast<int>(c0.unit_bytes()), static_cast<int>((kind >> 16) & 0xf),
                                (kind >> 20) & 1, views, streams, counts, static_cast<int>(opened), starts, outs);
      for (size_t k = 0; k < opened; ++k) args[k].start = starts[k];
    } else if (opened > 1) {
      (void)decode_float_rounds_avx512_fused_multi(args, fused, static_cast<int>(opened),
                                                   static_cast<int>(c0.unit_bytes()), 1 << c0.lanes_log2, outs);
    }
    for (size_t k = 0; k < opened; ++k) {
      const auto [t, i] = work_[members[open[k]]];
      chunk_done(t, i, decoders_[t]->finish_float(i, streams[k], args[k].start, outs[k]));
    }
  }

  const std::vector<DecodeJob>& jobs_;
  const std::vector<const TensorDecoder*>& decoders_;
  const std::vector<WorkItem>& work_;
  const bool verify_;
  std::vector<Status> errors_;
  std::vector<TensorHash> hashes_;
  std::atomic<bool> failed_{false};
  std::mutex mu_;
};

Status decode_window(const std::vector<DecodeJob>& jobs, bool verify, ThreadPool& pool) {
  for (const DecodeJob& j : jobs) {
    Status st = j.coding->validate(j.payload_size);
    if (st.is_ok() && j.out_size < j.bytes()) st = Status(Error::kInvalidArgument, "output buffer too small");
    if (!st.is_ok()) return st.with_context(j.label);
  }
  std::vector<TensorDecoder> owned(jobs.size());
  std::vector<const TensorDecoder*> decoders(jobs.size());
  BIGSMALL_RETURN_IF_ERROR(prepare_decoders(jobs, pool, owned, decoders));
  const std::vector<WorkItem> work = list_work(jobs);
  WindowDecode window(jobs, decoders, work, verify);
  return window.run(group_work(jobs, decoders, work, pool.size()), pool);
}

}  // namespace

}  // namespace bigsmall::detail

namespace bigsmall {

Status decode_tensor(const TensorCoding& coding, const uint8_t* payload, uint64_t payload_size, uint8_t* out,
                     uint64_t out_size, const DecodeOptions& opts) {
  return detail::guarded(std::string(), [&]() -> Status {
    if ((out == nullptr && coding.nbytes > 0) || (payload == nullptr && payload_size > 0))
      return Status(Error::kInvalidArgument, "null buffer");
    detail::ThreadPool pool(
        detail::threads_for(opts.threads, coding.chunks.size(), coding.nbytes, detail::kDecodeBytesPerThread));
    return detail::decode_tensors_on({{&coding, payload, payload_size, out, out_size, "tensor"}}, opts.verify, pool);
  });
}

}  // namespace bigsmall

namespace bigsmall::detail {

void FlatTables::build(const FloatModel& m) {
  precision = m.mant_precision;
  mask = (1u << precision) - 1;
  const size_t slots = size_t{1} << precision;
  const size_t tables = m.mant.size() + 1;
  packed.resize(tables * slots);
  sym.resize(tables * slots);
  fill_decode_slots(m.uniform_mant(), packed.data(), sym.data());
  for (size_t j = 0; j < m.mant.size(); ++j)
    fill_decode_slots(m.mant[j], packed.data() + (j + 1) * slots, sym.data() + (j + 1) * slots);
  base_of_se.resize(m.ctx.size());
  for (size_t s = 0; s < m.ctx.size(); ++s) base_of_se[s] = static_cast<uint32_t>(m.ctx[s] * slots);
}

}  // namespace bigsmall::detail
