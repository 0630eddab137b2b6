// CUDA decoder for the .bs chunk format (doc/FORMAT.md). One warp decodes one chunk: thread l is
// rANS lane l; lanes that renormalize take consecutive words at the prefix count of the needing
// lanes below them (ballot + popc), which is exactly the order the CPU decoders read. A block's
// warps decode chunks of one tensor and read its decode tables from global memory through L1
// (or, when asked, from a copy in shared memory where they fit: measured slower on an H200).
// Depends on the common and entropy layers only.
#include <cuda_runtime.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "bigsmall/cuda.hpp"
#include "common/checksum.hpp"
#include "common/guard.hpp"
#include "common/zstd_chunk.hpp"
#include "entropy/model.hpp"

namespace bigsmall::cuda {
namespace {

using detail::kRansL;

enum : int { kOk = 0, kBadLayout = 1, kWordsEnd = 2, kStateCheck = 3, kUnusedWords = 4, kBadCodec = 5 };

// Each warp is one serial rANS chain whose table lookups wait on L1 (Nsight Compute: 56% of a
// warp's cycles), so an SM needs many warps in flight: 16 per block, sharing the tensor's
// tables. Tables of real BF16 tensors reach ~140 KB (one mantissa table per exponent); in shared
// memory that allows one block per SM, up to ~110 KB two.
constexpr int kWarps = 16;
constexpr int kThreads = 32 * kWarps;
constexpr uint32_t kSharedLimit = 200u << 10;  // larger tables stay in global memory

// A tensor's decode tables live in one 16-byte aligned region; offsets are relative to it, so
// the same descriptor serves a copy in shared memory and the original in global memory. Every
// table is a slot -> symbol array (2^precision entries, u8 where symbols fit) plus a symbol ->
// (freq << 16 | cum) array: a few bytes per slot instead of six, which is what lets the tables
// of large tensors fit in shared memory.
struct ModelDesc {
  const uint8_t* tables;   // device (global) address of the region
  uint32_t table_bytes;    // multiple of 16
  uint32_t se_sym, se_fc, m_ctx, m_sym, m_fc;  // byte offsets into the region
  uint32_t plane_sym[8], plane_fc[8];          // codec bytes: each plane's table (u8 symbols)
  int plane_prec[8];
  int codec, unit, se_prec, m_prec, hi_bits, man_bits, raw_bits, zero_bits;
  int m_sym16;  // mantissa symbols stored as u16 (hi_bits > 8)
};

struct ChunkDesc {
  const uint8_t* src;
  uint8_t* out;
  uint32_t size;  // compressed bytes
  uint32_t n;     // units
  uint32_t mode;
  uint32_t lanes;
};

// A block's work: chunks [first, first + count) of the chunk array, all of model `model`.
struct BlockDesc {
  uint32_t model, first, count, pad;
};

__device__ __forceinline__ uint32_t load_word(const uint8_t* words, uint64_t pos, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint16_t*>(words) + pos);
  return static_cast<uint32_t>(__ldg(words + 2 * pos)) | (static_cast<uint32_t>(__ldg(words + 2 * pos + 1)) << 8);
}

// A table entry: from shared memory, or from global memory through the read-only path.
template <bool kShared, typename T>
__device__ __forceinline__ uint32_t tab_load(const T* p) {
  if constexpr (kShared) return *p;
  else return __ldg(p);
}

// One rANS step for every lane of the warp; false (for all lanes) when the words run out.
template <bool kShared, typename Sym>
__device__ __forceinline__ bool warp_step(uint32_t& x, bool active, const Sym* sym, const uint32_t* fc, uint32_t mask, int prec,
                                          const uint8_t* words, bool aligned, uint32_t nwords, uint32_t& wp, uint32_t* out_sym) {
  const unsigned lane = threadIdx.x & 31;
  bool need = false;
  if (active) {
    const uint32_t slot = x & mask;
    const uint32_t s = tab_load<kShared>(sym + slot);
    const uint32_t e = tab_load<kShared>(fc + s);
    *out_sym = s;
    x = (e >> 16) * (x >> prec) + slot - (e & 0xffff);
    need = x < kRansL;
  }
  const unsigned ballot = __ballot_sync(0xffffffffu, need);
  const uint32_t pos = wp + __popc(ballot & ((1u << lane) - 1));
  wp += __popc(ballot);
  if (wp > nwords) return false;
  if (need) x = (x << 16) | load_word(words, pos, aligned);
  return true;
}

// `bits` (<= 57) bits of the raw plane starting at bit `bit`; `end` bounds what may be read.
__device__ __forceinline__ uint64_t raw_field(const uint8_t* raw, const uint8_t* end, uint64_t bit, int bits) {
  const uint8_t* p = raw + (bit >> 3);
  const int sh = static_cast<int>(bit & 7);
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{7};
  if (a + 16 <= reinterpret_cast<uintptr_t>(end)) {  // two aligned words hold the field
    const uint64_t lo = __ldg(reinterpret_cast<const unsigned long long*>(a));
    const uint64_t hi = __ldg(reinterpret_cast<const unsigned long long*>(a + 8));
    const int s = static_cast<int>(reinterpret_cast<uintptr_t>(p) - a) * 8;
    const uint64_t w = s ? (lo >> s) | (hi << (64 - s)) : lo;
    return (w >> sh) & mask;
  }
  uint64_t w = 0;
  const int nbytes = (sh + bits + 7) / 8;
  for (int b = 0; b < nbytes && p + b < end; ++b) w |= static_cast<uint64_t>(__ldg(p + b)) << (8 * b);
  return (w >> sh) & mask;
}

template <int kUnit>
__device__ __forceinline__ void store_unit(uint8_t* out, uint64_t i, uint64_t v) {
  if constexpr (kUnit == 1) out[i] = static_cast<uint8_t>(v);
  else if constexpr (kUnit == 2) reinterpret_cast<uint16_t*>(out)[i] = static_cast<uint16_t>(v);
  else if constexpr (kUnit == 4) reinterpret_cast<uint32_t*>(out)[i] = static_cast<uint32_t>(v);
  else reinterpret_cast<uint64_t*>(out)[i] = v;
}

// Decodes one coded chunk; returns the status for lane 0 to write.
template <int kUnit, typename MSym, bool kShared>
__device__ __forceinline__ int decode_float_chunk(const ChunkDesc& c, const ModelDesc& m, const uint8_t* tab) {
  const unsigned lane = threadIdx.x & 31;
  const uint32_t L = c.lanes;
  const int rb = m.raw_bits;
  const uint64_t raw_bytes = (static_cast<uint64_t>(c.n) * rb + 7) / 8;
  if (c.size < 4ull * L + raw_bytes || (c.size - 4ull * L - raw_bytes) % 2 != 0) return kBadLayout;
  const uint8_t* raw = c.src + 4 * L;
  const uint8_t* words = raw + raw_bytes;
  const uint8_t* end = c.src + c.size;
  const bool aligned = (reinterpret_cast<uintptr_t>(words) & 1) == 0;
  const uint32_t nwords = static_cast<uint32_t>((c.size - 4ull * L - raw_bytes) / 2);
  const uint16_t* se_sym = reinterpret_cast<const uint16_t*>(tab + m.se_sym);
  const uint32_t* se_fc = reinterpret_cast<const uint32_t*>(tab + m.se_fc);
  const uint16_t* m_ctx = reinterpret_cast<const uint16_t*>(tab + m.m_ctx);
  const MSym* m_sym = reinterpret_cast<const MSym*>(tab + m.m_sym);
  const uint32_t* m_fc = reinterpret_cast<const uint32_t*>(tab + m.m_fc);
  const uint32_t se_mask = (1u << m.se_prec) - 1, m_mask = (1u << m.m_prec) - 1;
  const int hi_shift = rb + m.zero_bits;
  uint32_t x = kRansL;
  if (lane < L) {
    const uint8_t* s = c.src + 4 * lane;
    x = static_cast<uint32_t>(__ldg(s)) | (static_cast<uint32_t>(__ldg(s + 1)) << 8) |
        (static_cast<uint32_t>(__ldg(s + 2)) << 16) | (static_cast<uint32_t>(__ldg(s + 3)) << 24);
  }
  if (!__all_sync(0xffffffffu, x >= kRansL)) return kStateCheck;  // states live in [2^16, 2^32)
  uint32_t wp = 0;
  for (uint32_t base = 0; base < c.n; base += L) {
    const uint32_t i = base + lane;
    const bool active = lane < L && i < c.n;
    uint32_t se = 0, hi = 0;
    if (!warp_step<kShared>(x, active, se_sym, se_fc, se_mask, m.se_prec, words, aligned, nwords, wp, &se)) return kWordsEnd;
    const uint32_t t = active ? tab_load<kShared>(m_ctx + se) : 0;  // 0: uniform, j: the j-th coded mantissa table
    if (!warp_step<kShared>(x, active, m_sym + (t << m.m_prec), m_fc + (t << m.hi_bits), m_mask, m.m_prec, words, aligned, nwords, wp, &hi))
      return kWordsEnd;
    if (active) {
      uint64_t v = (static_cast<uint64_t>(se) << m.man_bits) | (static_cast<uint64_t>(hi) << hi_shift);
      if (rb) v |= raw_field(raw, end, static_cast<uint64_t>(i) * rb, rb) << m.zero_bits;
      store_unit<kUnit>(c.out, i, v);
    }
  }
  if (!__all_sync(0xffffffffu, lane >= L || x == kRansL)) return kStateCheck;
  return wp != nwords ? kUnusedWords : kOk;
}

template <bool kShared>
__device__ __forceinline__ int decode_bytes_chunk(const ChunkDesc& c, const ModelDesc& m, const uint8_t* tab) {
  const unsigned lane = threadIdx.x & 31;
  const uint32_t L = c.lanes;
  if (c.size < 4ull * L || (c.size - 4ull * L) % 2 != 0) return kBadLayout;
  const uint8_t* words = c.src + 4 * L;
  const bool aligned = (reinterpret_cast<uintptr_t>(words) & 1) == 0;
  const uint32_t nwords = static_cast<uint32_t>((c.size - 4ull * L) / 2);
  uint32_t x = kRansL;
  if (lane < L) {
    const uint8_t* s = c.src + 4 * lane;
    x = static_cast<uint32_t>(__ldg(s)) | (static_cast<uint32_t>(__ldg(s + 1)) << 8) |
        (static_cast<uint32_t>(__ldg(s + 2)) << 16) | (static_cast<uint32_t>(__ldg(s + 3)) << 24);
  }
  if (!__all_sync(0xffffffffu, x >= kRansL)) return kStateCheck;
  uint32_t wp = 0;
  for (uint32_t base = 0; base < c.n; base += L) {
    const uint32_t i = base + lane;
    const bool active = lane < L && i < c.n;
    for (int plane = 0; plane < m.unit; ++plane) {
      uint32_t byte = 0;
      const uint8_t* sy = tab + m.plane_sym[plane];
      const uint32_t* fc = reinterpret_cast<const uint32_t*>(tab + m.plane_fc[plane]);
      const int prec = m.plane_prec[plane];
      if (!warp_step<kShared>(x, active, sy, fc, (1u << prec) - 1, prec, words, aligned, nwords, wp, &byte)) return kWordsEnd;
      if (active) c.out[static_cast<uint64_t>(i) * m.unit + plane] = static_cast<uint8_t>(byte);
    }
  }
  if (!__all_sync(0xffffffffu, lane >= L || x == kRansL)) return kStateCheck;
  return wp != nwords ? kUnusedWords : kOk;
}

__device__ __forceinline__ int copy_stored_chunk(const ChunkDesc& c, int unit) {
  const unsigned lane = threadIdx.x & 31;
  const uint64_t n = static_cast<uint64_t>(c.n) * unit;
  if (c.size != n) return kBadLayout;
  if (((reinterpret_cast<uintptr_t>(c.src) | reinterpret_cast<uintptr_t>(c.out)) & 15) == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(c.src);
    uint4* d = reinterpret_cast<uint4*>(c.out);
    for (uint64_t k = lane; k < n / 16; k += 32) d[k] = s[k];
    for (uint64_t k = n / 16 * 16 + lane; k < n; k += 32) c.out[k] = c.src[k];
  } else {
    for (uint64_t k = lane; k < n; k += 32) c.out[k] = c.src[k];
  }
  return kOk;
}

template <int kUnit, bool kShared>
__device__ __forceinline__ int decode_float(const ChunkDesc& c, const ModelDesc& m, const uint8_t* tab) {
  return m.m_sym16 ? decode_float_chunk<kUnit, uint16_t, kShared>(c, m, tab) : decode_float_chunk<kUnit, uint8_t, kShared>(c, m, tab);
}

template <bool kShared>
__device__ __forceinline__ int decode_chunk(const ChunkDesc& c, const ModelDesc& m, const uint8_t* tab) {
  if (c.mode == static_cast<uint32_t>(ChunkMode::kStored)) return copy_stored_chunk(c, m.unit);
  if (m.codec == static_cast<int>(Codec::kBytes)) return decode_bytes_chunk<kShared>(c, m, tab);
  if (m.codec != static_cast<int>(Codec::kFloat)) return kBadCodec;
  switch (m.unit) {
    case 1: return decode_float<1, kShared>(c, m, tab);
    case 2: return decode_float<2, kShared>(c, m, tab);
    case 4: return decode_float<4, kShared>(c, m, tab);
    case 8: return decode_float<8, kShared>(c, m, tab);
    default: return kBadCodec;
  }
}

template <bool kShared, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) decode_blocks(const BlockDesc* blocks, const ChunkDesc* chunks,
                                                          const ModelDesc* models, int* status) {
  extern __shared__ uint4 smem[];
  const BlockDesc b = blocks[blockIdx.x];
  const ModelDesc& m = models[b.model];
  const uint8_t* tab = m.tables;
  if constexpr (kShared) {
    const uint4* g = reinterpret_cast<const uint4*>(m.tables);
    for (uint32_t k = threadIdx.x; k < m.table_bytes / 16; k += blockDim.x) smem[k] = g[k];
    __syncthreads();
    tab = reinterpret_cast<const uint8_t*>(smem);
  }
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (uint32_t k = warp; k < b.count; k += kWarps) {
    const uint32_t idx = b.first + k;
    const int s = decode_chunk<kShared>(chunks[idx], m, tab);
    if (lane == 0) status[idx] = s;
  }
}

bool cuda_ok(cudaError_t e, Status* st, const char* what) {
  if (e == cudaSuccess) return true;
  // Device memory running out is what the rest of the library calls it (the CLI's exit 7,
  // Python's OutOfMemoryError), not an I/O error.
  const Error code = e == cudaErrorMemoryAllocation ? Error::kOutOfMemory : Error::kIo;
  static_cast<void>(*st = Status(code, std::string("CUDA ") + what + ": " + cudaGetErrorString(e)));
  return false;
}

size_t align16(size_t n) { return (n + 15) & ~size_t{15}; }

// Appends v's bytes to blob at a 16-byte boundary; returns the offset.
template <typename T>
uint32_t append(std::vector<uint8_t>& blob, const std::vector<T>& v, size_t region_start) {
  const size_t off = align16(blob.size());
  blob.resize(off + align16(v.size() * sizeof(T)), 0);
  if (!v.empty()) std::memcpy(blob.data() + off, v.data(), v.size() * sizeof(T));
  return static_cast<uint32_t>(off - region_start);
}

// Slot -> symbol and symbol -> (freq << 16 | cum) arrays of one table (freq and cum < 2^16 since
// precisions are at most 15).
template <typename Sym>
void fill_tables(const detail::FreqTable& t, Sym* sym, uint32_t* fc) {
  for (uint32_t s = 0; s < t.alphabet; ++s) {
    fc[s] = (t.freq[s] << 16) | t.cum[s];
    for (uint32_t j = 0; j < t.freq[s]; ++j) sym[t.cum[s] + j] = static_cast<Sym>(s);
  }
}

template <typename Sym>
void fill_mantissa(const detail::FloatModel& fm, std::vector<uint8_t>& blob, size_t start, ModelDesc* md) {
  const size_t slots = size_t{1} << fm.mant_precision, syms = size_t{1} << fm.hi_bits;
  std::vector<Sym> sym((fm.mant.size() + 1) * slots);
  std::vector<uint32_t> fc((fm.mant.size() + 1) * syms);
  fill_tables(fm.uniform_mant(), sym.data(), fc.data());
  for (size_t k = 0; k < fm.mant.size(); ++k) fill_tables(fm.mant[k], sym.data() + (k + 1) * slots, fc.data() + (k + 1) * syms);
  md->m_sym = append(blob, sym, start);
  md->m_fc = append(blob, fc, start);
}

// Builds the decode tables of one tensor into blob; fills md's offsets and parameters.
Status build_tables(const TensorCoding& c, const uint8_t* host_payload, std::vector<uint8_t>& blob, ModelDesc* md) {
  const size_t start = align16(blob.size());
  blob.resize(start, 0);
  md->unit = static_cast<int>(c.unit_bytes());
  // A float or bytes tensor whose chunks are all stored may have no model (model_size 0): it
  // needs no tables and decodes as a stored tensor. A model it has is read (and checked).
  const bool modelless = c.model_size == 0 && std::none_of(c.chunks.begin(), c.chunks.end(),
                                                           [](const ChunkRef& r) { return r.mode == ChunkMode::kCoded; });
  md->codec = static_cast<int>(modelless ? Codec::kStore : c.codec);
  if (modelless) {
    // nothing to build
  } else if (c.codec == Codec::kFloat) {
    detail::FloatModel fm;
    // read_float_model refuses tables far beyond what the tensor's data could pay for.
    BIGSMALL_RETURN_IF_ERROR(detail::read_float_model(host_payload, c.model_size, c.dtype, c.units(), &fm));
    if (fm.raw_bits > 57) return Status(Error::kCorrupt, "raw bit field too wide for the GPU decoder");
    if (fm.se.precision > 15 || fm.mant_precision > 15 || fm.hi_bits > fm.mant_precision || fm.hi_bits > 16)
      return Status(Error::kCorrupt, "table precision beyond the format's limits");
    std::vector<uint16_t> se_sym(size_t{1} << fm.se.precision);
    std::vector<uint32_t> se_fc(fm.se.alphabet);
    fill_tables(fm.se, se_sym.data(), se_fc.data());
    md->se_sym = append(blob, se_sym, start);
    md->se_fc = append(blob, se_fc, start);
    md->m_ctx = append(blob, fm.ctx, start);
    md->m_sym16 = fm.hi_bits > 8;
    if (md->m_sym16) fill_mantissa<uint16_t>(fm, blob, start, md);
    else fill_mantissa<uint8_t>(fm, blob, start, md);
    md->se_prec = fm.se.precision;
    md->m_prec = fm.mant_precision;
    md->hi_bits = fm.hi_bits;
    md->man_bits = fm.man_bits;
    md->raw_bits = fm.raw_bits;
    md->zero_bits = fm.zero_bits;
  } else if (c.codec == Codec::kBytes) {
    detail::BytesModel bm;
    BIGSMALL_RETURN_IF_ERROR(detail::read_bytes_model(host_payload, c.model_size, c.unit_bytes(), c.units(), &bm));
    if (bm.planes.size() > 8) return Status(Error::kCorrupt, "more than 8 byte planes");
    for (size_t p = 0; p < bm.planes.size(); ++p) {
      if (bm.planes[p].precision > 15 || bm.planes[p].alphabet > 256) return Status(Error::kCorrupt, "byte plane table out of range");
      std::vector<uint8_t> sym(size_t{1} << bm.planes[p].precision);
      std::vector<uint32_t> fc(256, 0);
      fill_tables(bm.planes[p], sym.data(), fc.data());
      md->plane_sym[p] = append(blob, sym, start);
      md->plane_fc[p] = append(blob, fc, start);
      md->plane_prec[p] = bm.planes[p].precision;
    }
  } else if (c.model_size != 0) {
    return Status(Error::kCorrupt, "model blob on a codec without a model");
  }
  blob.resize(align16(blob.size()), 0);
  md->table_bytes = static_cast<uint32_t>(blob.size() - start);
  md->tables = reinterpret_cast<const uint8_t*>(start);  // an offset until the blob has its device address
  return Status::success();
}

}  // namespace

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// Host memory for the tables of one launch. Tables are built on the host per tensor; a file of
// many tiny tensors that each ask for the largest tables their size allows (2^16 + 64 slots per
// unit) would otherwise need gigabytes of tables for kilobytes of output, as the CPU decoder's
// windows of table slots prevent there. Real tensors' tables are ~140 KB at most.
constexpr size_t kWindowTableBytes = size_t{64} << 20;

struct Decoder::Impl {
  // Device memory: the status array (one int per device chunk) lives until destruction; each
  // window's tables and descriptors are freed in stream order after its launch (or, where memory
  // pools are unsupported, kept here until destruction).
  void* status = nullptr;
  std::vector<void*> windows;
  bool async_alloc = false;
  void* stream = nullptr;
  std::vector<int> host_status;
  std::vector<std::pair<uint32_t, uint32_t>> labels;  // per chunk: tensor and chunk, for error messages
  std::vector<std::string> job_labels;                 // per job: how messages name its tensor
  bool shared_tables = false;
  int blocks_per_sm = 2;
  size_t window_table_bytes = kWindowTableBytes;
  bool called = false;
  Status enqueued = Status(Error::kInvalidArgument, "nothing was enqueued");

  Status enqueue(const std::vector<Job>& jobs, void* cuda_stream, bool verify);
  Status allocate(void** p, size_t bytes, cudaStream_t s);
  void release(void* p, cudaStream_t s) const;

  ~Impl() {
    const auto s = static_cast<cudaStream_t>(stream);
    for (void* w : windows) release(w, s);
    if (status) release(status, s);
  }
};

// Stream-ordered where the device has memory pools, so that nothing waits for the device; the
// first allocation decides, so that every release matches its allocation.
Status Decoder::Impl::allocate(void** p, size_t bytes, cudaStream_t s) {
  Status st;
  if (status == nullptr) {  // the first: the status array
    async_alloc = cudaMallocAsync(p, bytes, s) == cudaSuccess;
    if (async_alloc) return st;
    cudaGetLastError();  // memory pools unsupported here: plain allocations do
    *p = nullptr;        // (a failed call does not promise to leave it so)
  } else if (async_alloc) {
    if (!cuda_ok(cudaMallocAsync(p, bytes, s), &st, "malloc")) *p = nullptr;
    return st;
  }
  if (!cuda_ok(cudaMalloc(p, bytes), &st, "malloc")) *p = nullptr;
  return st;
}

void Decoder::Impl::release(void* p, cudaStream_t s) const {
  if (async_alloc) cudaFreeAsync(p, s);
  else cudaFree(p);
}

Decoder::Decoder() : impl_(std::make_unique<Impl>()) {}
Decoder::~Decoder() = default;

void Decoder::set_shared_tables(bool on) { impl_->shared_tables = on; }
void Decoder::set_blocks_per_sm(int n) { impl_->blocks_per_sm = std::clamp(n, 2, 4); }
void Decoder::set_window_table_bytes(size_t bytes) { impl_->window_table_bytes = bytes ? bytes : kWindowTableBytes; }

namespace {
template <bool kShared>
Status launch(int blocks_per_sm, const std::vector<BlockDesc>& blocks, const BlockDesc* dblocks, const ChunkDesc* dchunks,
              const ModelDesc* dmodels, int* dstatus, uint32_t smem, cudaStream_t stream) {
  if (blocks.empty()) return Status::success();
  // Registers are capped so that the SM holds blocks_per_sm blocks (shared tables: one block).
  const auto kernel = kShared                ? decode_blocks<true, 1>
                      : blocks_per_sm >= 4 ? decode_blocks<false, 4>
                      : blocks_per_sm == 3 ? decode_blocks<false, 3>
                                           : decode_blocks<false, 2>;
  Status st;
  if (smem > (48u << 10) &&
      !cuda_ok(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)), &st, "shared memory"))
    return st;
  kernel<<<static_cast<unsigned>(blocks.size()), kThreads, smem, stream>>>(dblocks, dchunks, dmodels, dstatus);
  cuda_ok(cudaGetLastError(), &st, "launch");
  return st;
}
}  // namespace

Status Decoder::enqueue(const std::vector<Job>& jobs, void* cuda_stream, bool verify) {
  return detail::guarded(std::string(), [&]() -> Status {
    Impl& im = *impl_;
    if (im.called) return Status(Error::kInvalidArgument, "a cuda::Decoder enqueues once");
    im.called = true;
    static_cast<void>(im.enqueued = im.enqueue(jobs, cuda_stream, verify));
    return im.enqueued;
  });
}

namespace {
// How errors name a job's tensor: by name where the caller gave one (as the CPU path does), else
// by its place in the caller's list of jobs.
std::string job_label(const Job& j, size_t t) {
  return j.name ? "tensor '" + std::string(j.name) + "'" : "tensor #" + std::to_string(t);
}

// A job's buffers against its coding: sizes, nulls and alignment.
Status check_job(const Job& j, size_t t) {
  const std::string label = job_label(j, t);
  if (j.coding == nullptr) return Status(Error::kInvalidArgument, label + ": no coding");
  const TensorCoding& c = *j.coding;
  BIGSMALL_RETURN_IF_ERROR(c.validate(j.payload_size).with_context(label));
  if ((j.host_payload == nullptr || j.device_payload == nullptr) && j.payload_size > 0)
    return Status(Error::kInvalidArgument, label + ": null payload");
  if (j.device_out_size < c.nbytes || (j.device_out == nullptr && c.nbytes > 0))
    return Status(Error::kInvalidArgument, label + ": output buffer has " + std::to_string(j.device_out_size) +
                                               " bytes, tensor has " + std::to_string(c.nbytes));
  if (reinterpret_cast<uintptr_t>(j.device_out) % c.unit_bytes() != 0)
    return Status(Error::kInvalidArgument, label + ": output not aligned to its element size");
  return Status::success();
}
}  // namespace

namespace {
// The tensors of one launch: their tables and descriptors, laid out for one device allocation.
struct Window {
  std::vector<uint8_t> blob;  // tables, then (at flush) models | chunks | blocks
  std::vector<ModelDesc> models;
  std::vector<ChunkDesc> chunks;
  std::vector<BlockDesc> shared_blocks, global_blocks;
  uint32_t smem_max = 0;
  size_t chunk_base = 0;  // index of chunks[0] in the status array
};

// Decodes a zstd-coded chunk on the host (there is no zstd on the device) and copies it up. The
// frame must declare exactly the chunk's size, as the CPU decoder demands. The host buffer is
// reused: a copy from pageable memory returns once the bytes are staged.
Status upload_zstd_chunk(const Job& j, size_t t, size_t i, std::vector<uint8_t>& plain, cudaStream_t stream) {
  const TensorCoding& c = *j.coding;
  const ChunkRef& ref = c.chunks[i];
  plain.resize(c.chunk_out_size(i));
  if (const char* problem = detail::decode_zstd_chunk(j.host_payload + ref.offset, ref.size, plain.data(), plain.size(), nullptr))
    return Status(Error::kCorrupt, job_label(j, t) + ", chunk " + std::to_string(i) + ": " + problem);
  Status st;
  cuda_ok(cudaMemcpyAsync(j.device_out + c.chunk_out_offset(i), plain.data(), plain.size(), cudaMemcpyHostToDevice, stream), &st,
          "copy");
  return st;
}
}  // namespace

Status Decoder::Impl::enqueue(const std::vector<Job>& jobs, void* cuda_stream, bool verify) {
  Impl& im = *this;
  im.stream = cuda_stream;
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  Status st;
  // Every job is checked before anything reaches the device (a wrong size would be written past).
  size_t chunk_total = 0;
  im.job_labels.clear();
  for (size_t t = 0; t < jobs.size(); ++t) {
    BIGSMALL_RETURN_IF_ERROR(check_job(jobs[t], t));
    chunk_total += jobs[t].coding->chunks.size();
    im.job_labels.push_back(job_label(jobs[t], t));  // the name may not outlive this call: copied
  }
  int device = 0, optin = 0;
  if (!cuda_ok(cudaGetDevice(&device), &st, "device") ||
      !cuda_ok(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), &st, "device"))
    return st;
  const uint32_t shared_limit = std::min<uint32_t>(kSharedLimit, static_cast<uint32_t>(optin));
  const size_t status_bytes = std::max<size_t>(1, chunk_total) * sizeof(int);
  BIGSMALL_RETURN_IF_ERROR(im.allocate(&im.status, status_bytes, stream));
  // Chunks nobody decodes read as "not decoded".
  if (!cuda_ok(cudaMemsetAsync(im.status, 0xff, status_bytes, stream), &st, "memset")) return st;
  auto* dstatus = static_cast<int*>(im.status);

  // Layout of a window's allocation: tables | models | chunks | blocks.
  const auto flush = [&](Window& w) -> Status {
    const size_t models_off = align16(w.blob.size());
    const size_t chunks_off = align16(models_off + w.models.size() * sizeof(ModelDesc));
    const size_t blocks_off = align16(chunks_off + w.chunks.size() * sizeof(ChunkDesc));
    const size_t total = blocks_off + (w.shared_blocks.size() + w.global_blocks.size()) * sizeof(BlockDesc);
    void* mem = nullptr;
    BIGSMALL_RETURN_IF_ERROR(im.allocate(&mem, std::max<size_t>(16, total), stream));
    if (!im.async_alloc) im.windows.push_back(mem);
    auto* dev = static_cast<uint8_t*>(mem);
    for (ModelDesc& md : w.models) md.tables = dev + reinterpret_cast<uintptr_t>(md.tables);
    w.blob.resize(total, 0);
    const auto put = [&w](size_t off, const auto& v) {
      if (!v.empty()) std::memcpy(w.blob.data() + off, v.data(), v.size() * sizeof(v[0]));
    };
    put(models_off, w.models);
    put(chunks_off, w.chunks);
    put(blocks_off, w.shared_blocks);
    put(blocks_off + w.shared_blocks.size() * sizeof(BlockDesc), w.global_blocks);
    Status s;
    if (!cuda_ok(cudaMemcpyAsync(dev, w.blob.data(), total, cudaMemcpyHostToDevice, stream), &s, "copy")) {
      if (im.async_alloc) im.release(mem, stream);  // (kept in windows otherwise)
      return s;
    }
    auto* dmodels = reinterpret_cast<const ModelDesc*>(dev + models_off);
    auto* dchunks = reinterpret_cast<const ChunkDesc*>(dev + chunks_off);
    auto* dblocks = reinterpret_cast<const BlockDesc*>(dev + blocks_off);
    static_cast<void>(
        s = launch<true>(im.blocks_per_sm, w.shared_blocks, dblocks, dchunks, dmodels, dstatus + w.chunk_base, w.smem_max, stream));
    if (s.is_ok())
      static_cast<void>(s = launch<false>(im.blocks_per_sm, w.global_blocks, dblocks + w.shared_blocks.size(), dchunks, dmodels,
                                          dstatus + w.chunk_base, 0, stream));
    if (im.async_alloc) im.release(mem, stream);  // after the launches, in stream order
    const size_t next_base = w.chunk_base + w.chunks.size();
    w = Window{};
    w.chunk_base = next_base;
    return s;
  };

  Window w;
  std::vector<uint8_t> plain;
  for (size_t t = 0; t < jobs.size(); ++t) {
    const Job& j = jobs[t];
    const TensorCoding& c = *j.coding;
    ModelDesc md{};
    BIGSMALL_RETURN_IF_ERROR(build_tables(c, j.host_payload, w.blob, &md));
    const uint32_t model = static_cast<uint32_t>(w.models.size());
    w.models.push_back(md);
    const uint32_t first = static_cast<uint32_t>(w.chunks.size());
    for (size_t i = 0; i < c.chunks.size(); ++i) {
      const ChunkRef& ref = c.chunks[i];
      if (verify && detail::xxh3_32(j.host_payload + ref.offset, ref.size) != ref.checksum)
        return Status(Error::kCorrupt, job_label(j, t) + ", chunk " + std::to_string(i) +
                                           ": checksum mismatch (compressed data damaged)");
      if (c.codec == Codec::kZstd && ref.mode == ChunkMode::kCoded) {
        BIGSMALL_RETURN_IF_ERROR(upload_zstd_chunk(j, t, i, plain, stream));
        continue;
      }
      ChunkDesc cd{};
      cd.src = j.device_payload + ref.offset;
      cd.out = j.device_out + c.chunk_out_offset(i);
      cd.size = ref.size;
      cd.n = static_cast<uint32_t>(c.chunk_out_size(i) / c.unit_bytes());
      cd.mode = static_cast<uint32_t>(ref.mode);
      cd.lanes = 1u << c.lanes_log2;
      w.chunks.push_back(cd);
      im.labels.emplace_back(static_cast<uint32_t>(t), static_cast<uint32_t>(i));
    }
    const bool in_shared = im.shared_tables && md.table_bytes <= shared_limit;
    if (in_shared) w.smem_max = std::max(w.smem_max, md.table_bytes);
    for (uint32_t k = first; k < w.chunks.size(); k += kWarps)
      (in_shared ? w.shared_blocks : w.global_blocks)
          .push_back({model, k, std::min<uint32_t>(kWarps, static_cast<uint32_t>(w.chunks.size()) - k), 0});
    if (w.blob.size() >= im.window_table_bytes) BIGSMALL_RETURN_IF_ERROR(flush(w));
  }
  if (!w.models.empty()) BIGSMALL_RETURN_IF_ERROR(flush(w));
  im.host_status.assign(im.labels.size(), -1);
  if (!im.labels.empty() &&
      !cuda_ok(cudaMemcpyAsync(im.host_status.data(), dstatus, im.labels.size() * sizeof(int), cudaMemcpyDeviceToHost, stream), &st,
               "copy"))
    return st;
  return Status::success();
}

Status Decoder::finish() {
  return detail::guarded(std::string(), [&]() -> Status {
    if (!impl_->enqueued.is_ok()) return impl_->enqueued;
    static const char* const kWhat[] = {"ok", "size does not match its layout", "rANS data ends early",
                                        "rANS state check failed", "unused rANS data", "codec not decodable on the GPU"};
    for (size_t k = 0; k < impl_->host_status.size(); ++k) {
      const int s = impl_->host_status[k];
      if (s != kOk)
        return Status(Error::kCorrupt, impl_->job_labels[impl_->labels[k].first] + ", chunk " +
                                           std::to_string(impl_->labels[k].second) + ": " + (s >= 0 && s <= 5 ? kWhat[s] : "not decoded"));
    }
    return Status::success();
  });
}

}  // namespace bigsmall::cuda
