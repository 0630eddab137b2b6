// CUDA decoder for the .bs chunk format (doc/FORMAT.md). One warp decodes one chunk: thread l is
// rANS lane l; lanes that renormalize take consecutive words at the prefix count of the needing
// lanes below them (ballot + popc), which is exactly the order the CPU decoders read. Depends on
// the common and entropy layers only.
#include <cuda_runtime.h>
#include <zstd.h>

#include <cstring>
#include <string>

#include "bigsmall/cuda.hpp"
#include "common/checksum.hpp"
#include "entropy/model.hpp"

namespace bigsmall::cuda {
namespace {

using detail::kRansL;

enum : int { kOk = 0, kBadLayout = 1, kWordsEnd = 2, kStateCheck = 3, kUnusedWords = 4, kBadCodec = 5 };

struct ModelDesc {
  const uint32_t* se_packed;  // freq << 16 | offset, per slot (or plane tables for codec bytes)
  const uint16_t* se_sym;
  const uint32_t* m_packed;   // all mantissa tables side by side
  const uint16_t* m_sym;
  const uint32_t* m_base;     // per sign+exponent symbol: first slot of its table
  int se_prec, m_prec, man_bits, raw_bits, zero_bits, codec, unit;
  int plane_prec[8];          // codec bytes: precision of each byte plane's table
  uint32_t plane_base[8];     // codec bytes: first slot of each plane's table in se_packed
};

struct ChunkDesc {
  const uint8_t* src;
  uint8_t* out;
  uint64_t size;  // compressed bytes
  uint64_t n;     // units
  uint32_t model;
  uint32_t mode;
  uint32_t lanes;
};

__device__ __forceinline__ uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// One rANS step for every lane of the warp; returns false (for all lanes) when words run out.
__device__ __forceinline__ bool warp_step(uint32_t& x, bool active, const uint32_t* packed, const uint16_t* sym,
                                          uint32_t base, int prec, const uint8_t* words, uint64_t nwords,
                                          uint64_t& wp, uint32_t* out_sym) {
  const unsigned lane = threadIdx.x & 31;
  bool need = false;
  if (active) {
    const uint32_t slot = base + (x & ((1u << prec) - 1));
    const uint32_t e = __ldg(packed + slot);
    *out_sym = __ldg(sym + slot);
    x = (e >> 16) * (x >> prec) + (e & 0xffff);
    need = x < kRansL;
  }
  const unsigned mask = __ballot_sync(0xffffffffu, need);
  const uint64_t pos = wp + __popc(mask & ((1u << lane) - 1));
  wp += __popc(mask);
  if (wp > nwords) return false;
  if (need) x = (x << 16) | (static_cast<uint32_t>(words[2 * pos]) | (static_cast<uint32_t>(words[2 * pos + 1]) << 8));
  return true;
}

__global__ void decode_chunks(const ChunkDesc* chunks, const ModelDesc* models, int* status) {
  const ChunkDesc c = chunks[blockIdx.x];
  const ModelDesc& m = models[c.model];
  const unsigned lane = threadIdx.x & 31;
  const uint64_t out_bytes = c.n * m.unit;
  if (c.mode == 0) {  // stored
    for (uint64_t i = lane; i < out_bytes; i += 32) c.out[i] = c.src[i];
    if (lane == 0) status[blockIdx.x] = c.size == out_bytes ? kOk : kBadLayout;
    return;
  }
  if (m.codec != 1 && m.codec != 2) {
    if (lane == 0) status[blockIdx.x] = kBadCodec;
    return;
  }
  const uint32_t L = c.lanes;
  const int rb = m.codec == 1 ? m.raw_bits : 0;
  const uint64_t raw_bytes = (c.n * static_cast<uint64_t>(rb) + 7) / 8;
  if (c.size < 4ull * L + raw_bytes || (c.size - 4ull * L - raw_bytes) % 2 != 0) {
    if (lane == 0) status[blockIdx.x] = kBadLayout;
    return;
  }
  const uint8_t* raw = c.src + 4 * L;
  const uint8_t* words = raw + raw_bytes;
  const uint64_t nwords = (c.size - 4ull * L - raw_bytes) / 2;
  uint32_t x = lane < L ? load_u32(c.src + 4 * lane) : kRansL;
  if (!__all_sync(0xffffffffu, lane >= L || x >= kRansL)) {  // states live in [2^16, 2^32)
    if (lane == 0) status[blockIdx.x] = kStateCheck;
    return;
  }
  bool ok = true;
  uint64_t wp = 0;
  for (uint64_t base = 0; base < c.n && __all_sync(0xffffffffu, ok); base += L) {
    const uint64_t i = base + lane;
    const bool active = lane < L && i < c.n;
    if (m.codec == 1) {
      uint32_t se = 0, hi = 0;
      ok = warp_step(x, active, m.se_packed, m.se_sym, 0, m.se_prec, words, nwords, wp, &se);
      if (!__all_sync(0xffffffffu, ok)) break;
      const uint32_t mbase = active ? __ldg(m.m_base + se) : 0;
      ok = warp_step(x, active, m.m_packed, m.m_sym, mbase, m.m_prec, words, nwords, wp, &hi);
      if (!__all_sync(0xffffffffu, ok)) break;
      if (active) {
        uint64_t v = (static_cast<uint64_t>(se) << m.man_bits) | (static_cast<uint64_t>(hi) << (rb + m.zero_bits));
        if (rb) {
          const uint64_t bit = i * static_cast<uint64_t>(rb);
          uint64_t field = 0;
          for (int b = 0; b < rb; ++b) field |= static_cast<uint64_t>((raw[(bit + b) >> 3] >> ((bit + b) & 7)) & 1) << b;
          v |= field << m.zero_bits;
        }
        for (int b = 0; b < m.unit; ++b) c.out[i * m.unit + b] = static_cast<uint8_t>(v >> (8 * b));
      }
    } else {
      for (int plane = 0; plane < m.unit; ++plane) {
        uint32_t byte = 0;
        ok = warp_step(x, active, m.se_packed, m.se_sym, m.plane_base[plane], m.plane_prec[plane], words, nwords, wp, &byte);
        if (!__all_sync(0xffffffffu, ok)) break;
        if (active) c.out[i * m.unit + plane] = static_cast<uint8_t>(byte);
      }
    }
  }
  const bool states_ok = lane >= L || x == kRansL;
  const bool all_ok = __all_sync(0xffffffffu, ok && states_ok);
  if (lane == 0) status[blockIdx.x] = !ok ? kWordsEnd : !all_ok ? kStateCheck : wp != nwords ? kUnusedWords : kOk;
}

bool cuda_ok(cudaError_t e, Status* st, const char* what) {
  if (e == cudaSuccess) return true;
  static_cast<void>(*st = Status(Error::kIo, std::string("CUDA ") + what + ": " + cudaGetErrorString(e)));
  return false;
}

}  // namespace

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

struct Decoder::Impl {
  std::vector<void*> device_allocs;
  std::vector<std::vector<uint8_t>> host_keep;  // host sources of async copies
  int* status = nullptr;
  std::vector<int> host_status;
  std::vector<std::string> labels;  // per chunk, for error messages
  void* stream = nullptr;

  ~Impl() {
    for (void* p : device_allocs) cudaFree(p);
  }
  template <typename T>
  Result<const T*> upload(const std::vector<T>& v, Status* st) {
    void* d = nullptr;
    const size_t bytes = std::max<size_t>(1, v.size() * sizeof(T));
    if (!cuda_ok(cudaMalloc(&d, bytes), st, "malloc")) return *st;
    device_allocs.push_back(d);
    host_keep.emplace_back(reinterpret_cast<const uint8_t*>(v.data()), reinterpret_cast<const uint8_t*>(v.data()) + v.size() * sizeof(T));
    if (!v.empty() && !cuda_ok(cudaMemcpyAsync(d, host_keep.back().data(), v.size() * sizeof(T), cudaMemcpyHostToDevice,
                                                static_cast<cudaStream_t>(stream)), st, "copy"))
      return *st;
    return static_cast<const T*>(d);
  }
};

Decoder::Decoder() : impl_(std::make_unique<Impl>()) {}
Decoder::~Decoder() = default;

Status Decoder::enqueue(const std::vector<Job>& jobs, void* cuda_stream, bool verify) {
  Impl& im = *impl_;
  im.stream = cuda_stream;
  Status st;
  std::vector<ModelDesc> models;
  std::vector<ChunkDesc> chunks;
  for (size_t t = 0; t < jobs.size(); ++t) {
    const Job& j = jobs[t];
    const TensorCoding& c = *j.coding;
    BS_RETURN_IF_ERROR(c.validate(c.payload_size()));
    ModelDesc md{};
    md.codec = static_cast<int>(c.codec);
    md.unit = static_cast<int>(c.unit_bytes());
    std::vector<uint32_t> se_packed, m_packed, m_base;
    std::vector<uint16_t> se_sym, m_sym;
    if (c.codec == Codec::kFloat) {
      detail::FloatModel fm;
      BS_RETURN_IF_ERROR(detail::read_float_model(j.host_payload, c.model_size, c.dtype, &fm));
      se_packed.resize(size_t{1} << fm.se.precision);
      se_sym.resize(se_packed.size());
      detail::fill_decode_slots(fm.se, se_packed.data(), se_sym.data());
      const size_t slots = size_t{1} << fm.mant_precision;
      m_packed.resize((fm.mant.size() + 1) * slots);
      m_sym.resize(m_packed.size());
      detail::fill_decode_slots(fm.uniform_mant(), m_packed.data(), m_sym.data());
      for (size_t k = 0; k < fm.mant.size(); ++k)
        detail::fill_decode_slots(fm.mant[k], m_packed.data() + (k + 1) * slots, m_sym.data() + (k + 1) * slots);
      for (uint16_t ctx : fm.ctx) m_base.push_back(static_cast<uint32_t>(ctx * slots));
      md.se_prec = fm.se.precision;
      md.m_prec = fm.mant_precision;
      md.man_bits = fm.man_bits;
      md.raw_bits = fm.raw_bits;
      md.zero_bits = fm.zero_bits;
    } else if (c.codec == Codec::kBytes) {
      detail::BytesModel bm;
      BS_RETURN_IF_ERROR(detail::read_bytes_model(j.host_payload, c.model_size, c.unit_bytes(), &bm));
      for (size_t p = 0; p < bm.planes.size() && p < 8; ++p) {
        md.plane_prec[p] = bm.planes[p].precision;
        md.plane_base[p] = static_cast<uint32_t>(se_packed.size());
        se_packed.resize(se_packed.size() + (size_t{1} << bm.planes[p].precision));
        se_sym.resize(se_packed.size());
        detail::fill_decode_slots(bm.planes[p], se_packed.data() + md.plane_base[p], se_sym.data() + md.plane_base[p]);
      }
    }
    auto a = im.upload(se_packed, &st);
    auto b = im.upload(se_sym, &st);
    auto d = im.upload(m_packed, &st);
    auto e = im.upload(m_sym, &st);
    auto f = im.upload(m_base, &st);
    if (!a || !b || !d || !e || !f) return st;
    md.se_packed = a.value();
    md.se_sym = b.value();
    md.m_packed = d.value();
    md.m_sym = e.value();
    md.m_base = f.value();
    models.push_back(md);
    for (size_t i = 0; i < c.chunks.size(); ++i) {
      const ChunkRef& ref = c.chunks[i];
      if (verify && detail::xxh3_32(j.host_payload + ref.offset, ref.size) != ref.checksum)
        return Status(Error::kCorrupt, "chunk " + std::to_string(i) + ": checksum mismatch (compressed data damaged)");
      ChunkDesc cd{};
      cd.src = j.device_payload + ref.offset;
      cd.out = j.device_out + c.chunk_out_offset(i);
      cd.size = ref.size;
      cd.n = c.chunk_out_size(i) / c.unit_bytes();
      cd.model = static_cast<uint32_t>(t);
      cd.mode = static_cast<uint32_t>(ref.mode);
      cd.lanes = 1u << c.lanes_log2;
      if (c.codec == Codec::kZstd && ref.mode == ChunkMode::kCoded) {
        // No zstd on the device: decode on the host and copy the result.
        std::vector<uint8_t> plain(c.chunk_out_size(i));
        const size_t r = ZSTD_decompress(plain.data(), plain.size(), j.host_payload + ref.offset, ref.size);
        if (ZSTD_isError(r) || r != plain.size()) return Status(Error::kCorrupt, "chunk " + std::to_string(i) + ": zstd frame is damaged");
        im.host_keep.push_back(std::move(plain));
        if (!cuda_ok(cudaMemcpyAsync(cd.out, im.host_keep.back().data(), im.host_keep.back().size(), cudaMemcpyHostToDevice,
                                     static_cast<cudaStream_t>(cuda_stream)), &st, "copy"))
          return st;
        continue;
      }
      chunks.push_back(cd);
      im.labels.push_back("tensor #" + std::to_string(t) + ", chunk " + std::to_string(i));
    }
  }
  auto dm = im.upload(models, &st);
  auto dc = im.upload(chunks, &st);
  if (!dm || !dc) return st;
  void* s = nullptr;
  if (!cuda_ok(cudaMalloc(&s, std::max<size_t>(1, chunks.size()) * sizeof(int)), &st, "malloc")) return st;
  im.device_allocs.push_back(s);
  im.status = static_cast<int*>(s);
  im.host_status.assign(chunks.size(), -1);
  if (!chunks.empty()) {
    decode_chunks<<<static_cast<unsigned>(chunks.size()), 32, 0, static_cast<cudaStream_t>(cuda_stream)>>>(dc.value(), dm.value(), im.status);
    if (!cuda_ok(cudaGetLastError(), &st, "launch")) return st;
    if (!cuda_ok(cudaMemcpyAsync(im.host_status.data(), im.status, chunks.size() * sizeof(int), cudaMemcpyDeviceToHost,
                                 static_cast<cudaStream_t>(cuda_stream)), &st, "copy"))
      return st;
  }
  return Status::ok();
}

Status Decoder::finish() {
  static const char* const kWhat[] = {"ok", "size does not match its layout", "rANS data ends early",
                                      "rANS state check failed", "unused rANS data", "codec not decodable on the GPU"};
  for (size_t k = 0; k < impl_->host_status.size(); ++k) {
    const int s = impl_->host_status[k];
    if (s != kOk) return Status(Error::kCorrupt, impl_->labels[k] + ": " + (s >= 0 && s <= 5 ? kWhat[s] : "not decoded"));
  }
  return Status::ok();
}

}  // namespace bigsmall::cuda
