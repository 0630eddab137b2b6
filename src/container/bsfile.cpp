// The .bs file: writer (from a safetensors file or from tensors in memory) and reader.
// Byte layout and rules: doc/FORMAT.md.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <numeric>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <memory>
#include <optional>
#include <system_error>
#include <thread>

#include "bigsmall/container.hpp"
#include "bigsmall/utf8.hpp"
#include "common/bytes.hpp"
#include "common/checksum.hpp"
#include "common/fork_safe.hpp"
#include "common/guard.hpp"
#include "common/zstd_chunk.hpp"
#include "common/thread_pool.hpp"
#include "container/bsfile.hpp"
#include "container/fileio.hpp"
#include "container/safetensors.hpp"
#include "decode/decoder.hpp"
#include "encode/encoder.hpp"

namespace bigsmall {
namespace detail {
namespace {

constexpr uint8_t kMagic[8] = {0x89, 'B', 'S', 'M', 'L', '\r', '\n', 0x1A};
constexpr uint64_t kHeaderSize = 64;
constexpr uint64_t kPayloadAlign = 64;
constexpr uint64_t kMaxIndexBytes = 1ull << 30;
// Tensor entries an index may hold per byte of its stored (compressed) form, beyond the first
// million: each names a tensor the kept header lists too, which no compressor shrinks to less
// than a byte; a small file may not ask for gigabytes of entries (FORMAT.md).
constexpr uint64_t kFreeTensorEntries = 1ull << 20;
// The index's entries and fillers (all of it but its first 16 bytes and the kept safetensors
// header) may come to more than this only at most kMaxIndexRatio times the index's stored size:
// a 90 KB file declaring a 1 GiB index of zeros made a reader take 3.3 GB before refusing it.
// The most compressible entries a writer makes (200,000 empty tensors with systematic names) come
// to 117-140 times. The kept header is exempt: it is capped at 100 MB on its own, and a header of
// repetitive metadata (70 MB of one letter) is a valid safetensors file that writers took.
constexpr uint64_t kFreeIndexBytes = 64ull << 20;
constexpr uint64_t kMaxIndexRatio = 1024;
constexpr uint64_t kIndexHeadBytes = 16;  // tensor_count, filler_count, st_header_size
bool index_too_expanded(uint64_t entries, uint64_t stored) {
  return entries > kFreeIndexBytes && entries / kMaxIndexRatio > stored;
}
constexpr uint64_t kBatchBytes = 64ull << 20;  // input bytes planned together (groups below cut them for writing)
// Tensors per batch at most: each costs some kilobytes of coder state whatever its size, so a file
// of 300k tiny tensors (one batch by bytes) took 3.7 GB to compress and 1.4 GB to restore.
constexpr size_t kBatchTensors = 4096;
std::atomic<uint64_t> write_batch_bytes{kBatchBytes};  // kBatchBytes, or smaller in tests
// Input bytes whose coded chunks are written together. Smaller than a batch so that the two sets
// of chunk buffers are reused within a file: on this kind of VM the first touch of fresh memory
// (the kernel zeroing each page) took a tenth of single-thread compression when a file's whole
// coded output went to new buffers.
constexpr uint64_t kGroupBytes = 4ull << 20;
// The index is compressed after the last chunk, on one thread. Level 9 took 0.28-0.58 ms on the
// corpus files' indexes (10-48 KB), level 6 0.1-0.25 ms for at most 46 bytes more (0.003% of
// the file); level 3 cost up to 10% more index bytes.
constexpr int kIndexZstdLevel = 6;

struct FileHeader {
  uint16_t major = kFormatVersionMajor, minor = kFormatVersionMinor;
  uint32_t flags = 0;
  uint64_t index_offset = 0, index_stored = 0, index_raw = 0, index_checksum = 0, original_size = 0;
};

std::vector<uint8_t> encode_header(const FileHeader& h) {
  ByteWriter w;
  w.bytes(kMagic, 8);
  w.u16(h.major);
  w.u16(h.minor);
  w.u32(h.flags);
  w.u64(h.index_offset);
  w.u64(h.index_stored);
  w.u64(h.index_raw);
  w.u64(h.index_checksum);
  w.u64(h.original_size);
  w.u64(xxh3_64(w.buf().data(), w.size()));
  return std::move(w.buf());
}

// A source tensor for the writer.
struct Source {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  const uint8_t* data;
  uint64_t nbytes;
  uint64_t data_begin;
};

struct Entry {
  TensorInfo info;
  uint64_t data_begin = 0;
  uint64_t payload_offset = 0;
  TensorCoding coding;
};

struct Filler {
  uint64_t begin;
  std::vector<uint8_t> bytes;
};

void write_index(ByteWriter& w, const std::string& st_header, const std::vector<Entry>& entries,
                 const std::vector<Filler>& fillers) {
  w.u32(static_cast<uint32_t>(entries.size()));
  w.u32(static_cast<uint32_t>(fillers.size()));
  w.u64(st_header.size());
  w.bytes(st_header.data(), st_header.size());
  for (const auto& e : entries) {
    const TensorCoding& c = e.coding;
    w.str16(e.info.name);
    w.u8(static_cast<uint8_t>(c.dtype));
    w.u8(static_cast<uint8_t>(c.codec));
    w.u8(c.chunk_log2);
    w.u8(c.lanes_log2);
    w.u8(static_cast<uint8_t>(e.info.shape.size()));
    w.u8(0);
    w.u8(0);
    w.u8(0);
    for (uint64_t d : e.info.shape) w.u64(d);
    w.u64(e.data_begin);
    w.u64(c.nbytes);
    w.u64(e.payload_offset);
    w.u64(e.info.stored_bytes);
    w.u64(e.info.floor_bits);
    w.u64(c.checksum);
    w.u32(c.model_size);
    w.u32(static_cast<uint32_t>(c.chunks.size()));
    for (const auto& ch : c.chunks) {
      w.u32(ch.size);
      w.u32(ch.checksum);
      w.u8(static_cast<uint8_t>(ch.mode));
    }
  }
  for (const auto& f : fillers) {
    w.u64(f.begin);
    w.u64(f.bytes.size());
    w.bytes(f.bytes.data(), f.bytes.size());
  }
}

// Writes one group of pieces at a time on its own thread while the caller codes the next group:
// on a large model the writes are held back by the disk (the kernel throttles dirty pages);
// coding and writing one after the other took ~1.3 times as long as the two side by side
// (a 5.4 GB BF16 file, two threads, medians of three).
class BackgroundWriter {
 public:
  explicit BackgroundWriter(OutputFile& out) : out_(out) {}
  ~BackgroundWriter() { (void)wait(); }
  BackgroundWriter(const BackgroundWriter&) = delete;
  BackgroundWriter& operator=(const BackgroundWriter&) = delete;

  // Starts writing the pieces, which must stay valid until wait() returns; `inline_write`
  // writes them on this thread (the last group: nothing left to overlap).
  Status start(std::vector<OutputFile::Piece> pieces, bool inline_write) {
    BIGSMALL_RETURN_IF_ERROR(wait());
    pieces_ = std::move(pieces);
    if (!inline_write) {
      try {
        thread_ = std::thread([this] {
          try {  // no exception may leave a thread
            status_ = guarded(out_.final_path(), [&] { return out_.write_pieces(pieces_); });
          } catch (const std::exception& e) {
            status_ = error_in_low_memory(Error::kInternal, out_.final_path(), "write failed: ", e.what());
          } catch (...) {
            status_ = error_in_low_memory(Error::kInternal, out_.final_path(), "write failed");
          }
        });
        return Status::success();
      } catch (const std::system_error&) {
        // No thread to be had: write here.
      }
    }
    return out_.write_pieces(pieces_);
  }

  // Waits for the group in flight; its result.
  Status wait() {
    if (thread_.joinable()) thread_.join();
    Status st = std::move(status_);
    status_ = Status::success();
    return st;
  }

 private:
  OutputFile& out_;
  std::vector<OutputFile::Piece> pieces_;
  std::thread thread_;
  Status status_;
};

// The index entry of a tensor whose payload starts at payload_offset; its size and chunk list
// follow once every chunk is coded.
Entry entry(const Source& s, const TensorEncoder& te, uint64_t payload_offset) {
  Entry e;
  e.info.name = s.name;
  e.info.dtype = s.dtype;
  e.info.shape = s.shape;
  e.info.nbytes = s.nbytes;
  e.info.floor_bits = static_cast<uint64_t>(te.floor_bits() + 0.5);
  e.info.codec = te.coding().codec;
  e.info.chunks = te.chunk_count();
  e.data_begin = s.data_begin;
  e.info.data_begin = s.data_begin;
  e.payload_offset = payload_offset;
  return e;
}

// Chunks [c0, c1) of tensor i of a batch.
struct Span {
  size_t i;
  size_t c0, c1;
};

// A batch's chunks in file order, cut into groups of at most `limit` bytes of input each (a
// group may end inside a tensor): each group is coded, then written while the next one is
// coded, so memory for coded chunks stays at two groups whatever the size of a tensor.
std::vector<std::vector<Span>> chunk_groups(const std::vector<std::unique_ptr<TensorEncoder>>& enc, uint64_t limit) {
  std::vector<std::vector<Span>> groups(1);
  uint64_t bytes = 0;
  for (size_t i = 0; i < enc.size(); ++i) {
    const TensorCoding& c = enc[i]->coding();
    const size_t n = enc[i]->chunk_count();
    size_t c0 = 0;
    for (size_t k = 0; k < n; ++k) {
      const uint64_t b = c.chunk_out_size(k);
      if (bytes > 0 && bytes + b > limit) {
        if (k > c0) groups.back().push_back({i, c0, k});
        groups.emplace_back();
        c0 = k;
        bytes = 0;
      }
      bytes += b;
    }
    groups.back().push_back({i, c0, n});  // a tensor without chunks still has its model
  }
  return groups;
}

}  // namespace

void set_write_batch_bytes_for_testing(uint64_t bytes) {
  write_batch_bytes.store(bytes ? bytes : kBatchBytes, std::memory_order_relaxed);
}

namespace {

// Codes the tensors' payloads into `out` after its header's place: batches of tensors are
// planned together, then their chunks coded a group at a time, each group written in the
// background while the next one is coded. from_one_mapping: every source lies in one mapping of
// the input file (compress_file), so that a batch's pages can be mapped in one call.
class PayloadWriter {
 public:
  PayloadWriter(OutputFile& out, const std::vector<Source>& sources, const CompressOptions& opts, bool from_one_mapping)
      : out_(out), sources_(sources), opts_(opts), from_one_mapping_(from_one_mapping),
        pool_(threads_for(opts.threads, std::max<uint64_t>(1, sources.size() + input_bytes(sources) / kEncodeBytesPerThread),
                          input_bytes(sources), kEncodeBytesPerThread)),
        total_(input_bytes(sources)), limit_(write_batch_bytes.load(std::memory_order_relaxed)), writer_(out) {
    eo_.zstd_level = opts.zstd_level;
  }

  // Writes the header's placeholder and every payload; the index entries, in file order.
  Result<std::vector<Entry>> run() {
    BIGSMALL_RETURN_IF_ERROR(out_.write(placeholder_.data(), placeholder_.size()));
    pos_ = out_.size();
    if (opts_.progress) opts_.progress(0, total_);
    entries_.reserve(sources_.size());
    for (size_t first = 0; first < sources_.size();) {
      size_t last = first;
      uint64_t batch = 0;
      while (last < sources_.size() &&
             (last == first || (batch + sources_[last].nbytes <= limit_ && last - first < kBatchTensors)))
        batch += sources_[last++].nbytes;
      if (batch <= limit_) prefault_batch(first, last, batch);
      plan_batch(first, last);
      const std::vector<std::vector<Span>> groups = chunk_groups(enc_, std::min(limit_, kGroupBytes));
      for (size_t g = 0; g < groups.size(); ++g) {
        const bool last_group = last == sources_.size() && g + 1 == groups.size();
        BIGSMALL_RETURN_IF_ERROR(code_group(groups[g], first, batch > limit_, last_group));
      }
      first = last;
    }
    BIGSMALL_RETURN_IF_ERROR(writer_.wait());
    if (pos_ != out_.size()) return Status(Error::kInternal, out_.final_path() + ": payload offsets disagree with the bytes written");
    return std::move(entries_);
  }

 private:
  static uint64_t input_bytes(const std::vector<Source>& sources) {
    uint64_t n = 0;
    for (const auto& s : sources) n += s.nbytes;
    return n;
  }

  // One call for the batch where its tensors lie together in the input (they do in a safetensors
  // file's mapping): one madvise per tensor cost more than mapping the pages. Tensors from
  // separate buffers (write_tensors) get a call each. A tensor larger than a batch is not
  // prefaulted here but a group at a time (code_group): mapping gigabytes in one call would read
  // them all before any thread starts (or evict them again on a small machine).
  void prefault_batch(size_t first, size_t last, uint64_t batch) const {
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (size_t i = first; i < last; ++i) {
      lo = std::min(lo, reinterpret_cast<uintptr_t>(sources_[i].data));
      hi = std::max(hi, reinterpret_cast<uintptr_t>(sources_[i].data) + sources_[i].nbytes);
    }
    if (from_one_mapping_ && hi - lo <= batch + 4096 * (last - first)) {
      populate(reinterpret_cast<const void*>(lo), hi - lo);
    } else {
      for (size_t i = first; i < last; ++i) populate(sources_[i].data, sources_[i].nbytes);
    }
  }

  // Encoders for the batch, largest tensors planned first so that the threads finish together;
  // a batch of one tensor shares its threads with its planning.
  void plan_batch(size_t first, size_t last) {
    const size_t nb = last - first;
    enc_before_ = std::move(enc_);  // a group of the batch before may still be writing their models
    enc_.clear();
    enc_.resize(nb);
    if (nb == 1) {
      const Source& s = sources_[first];
      enc_[0] = std::make_unique<TensorEncoder>(TensorEncoder::plan(s.dtype, s.data, s.nbytes, eo_, &pool_));
    } else {
      std::vector<size_t> order(nb);
      for (size_t i = 0; i < nb; ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return sources_[first + a].nbytes > sources_[first + b].nbytes; });
      pool_.parallel_for(nb, [&](size_t k) {
        const Source& s = sources_[first + order[k]];
        enc_[order[k]] = std::make_unique<TensorEncoder>(TensorEncoder::plan(s.dtype, s.data, s.nbytes, eo_));
      });
    }
    coded_.assign(nb, {});
    for (size_t i = 0; i < nb; ++i) coded_[i].resize(enc_[i]->chunk_count());
  }

  // Codes one group's chunks on the pool, then hands them (with the models and padding of the
  // tensors that start in it) to the background writer.
  Status code_group(const std::vector<Span>& spans, size_t first, bool prefault, bool last_group) {
    std::vector<ByteBuffer>& bufs = chunk_bufs_[groups_started_ % 2];
    std::vector<std::pair<uint32_t, uint32_t>> work;  // (span, chunk)
    std::vector<size_t> slot0(spans.size() + 1, 0);    // first buffer of each span
    uint64_t input = 0;
    for (size_t k = 0; k < spans.size(); ++k) {
      const Span& sp = spans[k];
      slot0[k + 1] = slot0[k] + (sp.c1 - sp.c0);
      for (size_t c = sp.c0; c < sp.c1; ++c) {
        work.emplace_back(static_cast<uint32_t>(k), static_cast<uint32_t>(c));
        input += enc_[sp.i]->coding().chunk_out_size(c);
      }
    }
    if (prefault && !spans.empty() && spans[0].c1 > spans[0].c0) {
      const Span& sp = spans[0];
      populate(sources_[first + sp.i].data + enc_[sp.i]->coding().chunk_out_offset(sp.c0), input);
    }
    // Buffers are reused by position, so a slot keeps the largest chunk that ever landed in it:
    // release those far larger than what they last held, and those this group does not use, so
    // that memory stays bounded by two groups however tensors of different sizes alternate.
    // (This set's last write ended when the group before this one started.) Fresh buffers would
    // cost a page fault per 4 KiB, a visible share of compression.
    for (size_t b = 0; b < bufs.size(); ++b)
      if (b >= slot0.back() || bufs[b].capacity() > 2 * bufs[b].size() + (64u << 10)) bufs[b].release();
    bufs.resize(slot0.back());
    // Largest chunks first, so that the threads finish together.
    std::stable_sort(work.begin(), work.end(), [&](const auto& a, const auto& b) {
      return enc_[spans[a.first].i]->coding().chunk_out_size(a.second) >
             enc_[spans[b.first].i]->coding().chunk_out_size(b.second);
    });
    pool_.parallel_for(work.size(), [&](size_t w) {
      const auto [k, c] = work[w];
      const Span& sp = spans[k];
      coded_[sp.i][c] = enc_[sp.i]->encode_chunk(c, &bufs[slot0[k] + (c - sp.c0)]);
    });
    std::vector<OutputFile::Piece> pieces;
    for (size_t k = 0; k < spans.size(); ++k) {
      const Span& sp = spans[k];
      TensorEncoder& te = *enc_[sp.i];
      if (sp.c0 == 0) {  // the tensor's payload starts: alignment, then its model
        const uint64_t pad = (kPayloadAlign - pos_ % kPayloadAlign) % kPayloadAlign;
        pieces.push_back({placeholder_.data(), pad});
        pos_ += pad;
        entries_.push_back(entry(sources_[first + sp.i], te, pos_));
        pieces.push_back({te.model_blob().data(), te.model_blob().size()});
        pos_ += te.model_blob().size();
      }
      for (size_t c = sp.c0; c < sp.c1; ++c) {
        const ByteBuffer& b = bufs[slot0[k] + (c - sp.c0)];
        pieces.push_back({b.data(), b.size()});
        pos_ += b.size();
      }
      if (sp.c1 == te.chunk_count()) {  // every chunk coded (its spans come in order, after it none)
        entries_.back().info.stored_bytes = te.finish(coded_[sp.i]);
        entries_.back().coding = te.coding();
      }
    }
    BIGSMALL_RETURN_IF_ERROR(writer_.start(std::move(pieces), last_group));
    ++groups_started_;
    done_ += input;
    if (opts_.progress) opts_.progress(done_, total_);
    return Status::success();
  }

  OutputFile& out_;
  const std::vector<Source>& sources_;
  const CompressOptions& opts_;
  const bool from_one_mapping_;
  const std::vector<uint8_t> placeholder_ = std::vector<uint8_t>(kHeaderSize, 0);  // the header's place; padding
  ThreadPool pool_;
  EncodeOptions eo_;
  const uint64_t total_;
  const uint64_t limit_;
  uint64_t done_ = 0;
  uint64_t pos_ = 0;  // where the next piece lands once every group started is written
  uint64_t groups_started_ = 0;
  std::vector<Entry> entries_;
  std::vector<ByteBuffer> chunk_bufs_[2];  // one set being written while the other is filled
  std::vector<std::unique_ptr<TensorEncoder>> enc_, enc_before_;
  std::vector<std::vector<TensorEncoder::CodedChunk>> coded_;
  // Last, so that it is destroyed first: its write in flight reads the buffers and models above.
  BackgroundWriter writer_;
};

Status check_sources(const std::vector<Source>& sources) {
  for (const auto& s : sources) {
    if (s.name.size() > UINT16_MAX) return Status(Error::kLimit, "tensor name longer than 65535 bytes");
    if (s.shape.size() > 255) return Status(Error::kLimit, "tensor '" + s.name + "': more than 255 dimensions");
  }
  return Status::success();
}

// The whole .bs into `out` (a file not yet committed, or memory).
Status write_bs_to(OutputFile& out, const std::string& st_header, uint64_t original_size,
                   const std::vector<Source>& sources, std::vector<Filler> fillers, const CompressOptions& opts,
                   bool from_one_mapping) {
  const std::string& dst = out.final_path();
  std::vector<Entry> entries;
  {
    PayloadWriter payloads(out, sources, opts, from_one_mapping);
    BIGSMALL_ASSIGN_OR_RETURN(entries, payloads.run());
  }
  ByteWriter idx;
  write_index(idx, st_header, entries, fillers);
  if (idx.size() > kMaxIndexBytes)  // readers refuse such a file: never commit one
    return Status(Error::kLimit, dst + ": index of " + std::to_string(idx.size()) + " bytes, more than the 1 GiB a .bs index may hold");
  std::vector<uint8_t> stored(ZSTD_compressBound(idx.size()));
  const size_t zr = ZSTD_compress(stored.data(), stored.size(), idx.buf().data(), idx.size(), kIndexZstdLevel);
  if (ZSTD_isError(zr)) return Status(Error::kInternal, dst + ": index compression failed");
  stored.resize(zr);
  if (index_too_expanded(idx.size() - kIndexHeadBytes - st_header.size(), zr))  // readers refuse such a file: never commit one
    return Status(Error::kLimit, dst + ": index entries of " + std::to_string(idx.size() - kIndexHeadBytes - st_header.size()) +
                                     " bytes in an index that compresses to " + std::to_string(zr) +
                                     ": more than 1024 times, which a .bs index over 64 MiB of entries may not be");
  FileHeader h;
  h.index_offset = out.size();
  h.index_stored = stored.size();
  h.index_raw = idx.size();
  h.index_checksum = xxh3_64(stored.data(), stored.size());
  h.original_size = original_size;
  BIGSMALL_RETURN_IF_ERROR(out.write(stored.data(), stored.size()));
  const auto header = encode_header(h);
  return out.pwrite(header.data(), header.size(), 0);
}

// source_file: the input file, checked unchanged before commit.
Status write_bs(const std::string& dst, const std::string& st_header, uint64_t original_size,
                const std::vector<Source>& sources, std::vector<Filler> fillers, const CompressOptions& opts,
                bool from_one_mapping, std::optional<unsigned> mode, const MappedFile* source_file) {
  BIGSMALL_RETURN_IF_ERROR(check_sources(sources));
  BIGSMALL_ASSIGN_OR_RETURN(OutputFile out, OutputFile::create(dst, opts.overwrite));
  BIGSMALL_RETURN_IF_ERROR(write_bs_to(out, st_header, original_size, sources, std::move(fillers), opts, from_one_mapping));
  if (mode) out.set_permissions(*mode);
  if (source_file) {
    out.set_mtime(source_file->mtime());
    out.set_owner(source_file->uid(), source_file->gid());
  }
  if (source_file) BIGSMALL_RETURN_IF_ERROR(source_file->check_unchanged());
  return out.commit(opts.sync);
}

}  // namespace
}  // namespace detail

// ---- reader --------------------------------------------------------------------------------

struct BsFile::Impl {
  detail::MappedFile file;
  std::string st_header;
  uint64_t original_size = 0;
  uint64_t fingerprint = 0;
  uint64_t data_start = 0;
  std::vector<TensorInfo> infos;
  std::vector<detail::Entry> entries;
  std::vector<size_t> by_name;  // tensor indices sorted by (name, index), for find()
  // Fillers as views of the decompressed index, kept for them (a copy would double what a file
  // of one large filler, allowed up to the index's 1 GiB, costs to open).
  struct FillerView {
    uint64_t begin, at, size;  // data-region offset; offset and size in `index`
  };
  std::vector<FillerView> fillers;
  std::vector<uint8_t> index;  // held only when a filler has bytes
  std::optional<Metadata> metadata;  // the kept header's __metadata__
  // Tensors whose whole decode has been checked against their checksum since the file was opened:
  // a byte range checks only its chunks' checksums, and the model (tables) that decodes them has
  // none of its own, so the first checked range read of a tensor verifies the whole tensor.
  std::unique_ptr<std::atomic<bool>[]> verified;
  // The tables of the tensor last read by range: a tensor-parallel reader takes several slices
  // of one tensor in a row, and building its tables cost each slice as much as a shard's decode.
  // A file open in a process that forks is open in the child too (a DataLoader worker): held
  // across fork() as the process-wide locks are. Registered while the file is open.
  struct ForkHeldMutex {
    std::mutex m;
    ForkHeldMutex() { detail::hold_across_fork(&m, detail::ForkRank::kObject); }
    ~ForkHeldMutex() { detail::release_across_fork(&m); }
    ForkHeldMutex(const ForkHeldMutex&) = delete;
    ForkHeldMutex& operator=(const ForkHeldMutex&) = delete;
  };
  ForkHeldMutex range_mu;
  size_t range_tensor = SIZE_MAX;
  std::shared_ptr<const detail::TensorDecoder> range_decoder;
};

namespace detail {
// The reader's free functions below work on BsFile's private state through this friend.
struct BsFileAccess {
  using Impl = BsFile::Impl;
};
}  // namespace detail
using BsImpl = detail::BsFileAccess::Impl;

BsFile::BsFile() = default;
BsFile::~BsFile() = default;
BsFile::BsFile(BsFile&&) noexcept = default;
BsFile& BsFile::operator=(BsFile&&) noexcept = default;

namespace {

// FORMAT.md caps st_header at safetensors' own limit: a limit, not damage.
std::string header_over_limit(uint64_t hlen) {
  return "kept safetensors header of " + std::to_string(hlen) + " bytes, over the 100 MiB that safetensors allows";
}

Status parse_index(const uint8_t* p, uint64_t n, uint64_t payload_end, uint64_t stored, BsImpl* im) {
  using detail::ByteReader;
  auto bad = [](const std::string& what) { return Status(Error::kCorrupt, "corrupt index: " + what); };
  ByteReader r(p, n);
  const uint32_t ntensors = r.u32();
  const uint32_t nfillers = r.u32();
  const uint64_t hlen = r.u64();
  if (r.ok() && hlen > detail::kMaxHeaderBytes) return Status(Error::kLimit, header_over_limit(hlen));
  if (!r.ok() || hlen > r.remaining()) return bad("safetensors header size");
  const uint8_t* h = r.take(hlen);
  im->st_header.assign(reinterpret_cast<const char*>(h), hlen);
  // Names and the kept header are UTF-8 in files this version writes; earlier writers passed
  // other bytes through, and those files must keep decoding, so readers accept any bytes.
  im->data_start = 8 + hlen;
  if (im->original_size < im->data_start) return bad("original size smaller than its header");
  const uint64_t data_size = im->original_size - im->data_start;
  // Every field read below is checked before use; counts are bounded by the bytes left.
  if (ntensors > r.remaining() / 60 + 1) return bad("tensor count");
  if (ntensors > detail::kFreeTensorEntries + stored)
    return bad(std::to_string(ntensors) + " tensors in a " + std::to_string(stored) + "-byte index");
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  // Payloads may not overlap (checked once all are read), so together they fit between the file
  // header and the index. Checked as each is read: chunk lists are allocated per payload byte,
  // and a zstd index of a few KB can repeat one payload's entry until its lists take gigabytes.
  uint64_t claimed = 0;
  for (uint32_t t = 0; t < ntensors; ++t) {
    detail::Entry e;
    e.info.name = r.str16();
    const uint8_t dtype = r.u8(), codec = r.u8();
    e.coding.chunk_log2 = r.u8();
    e.coding.lanes_log2 = r.u8();
    const uint8_t ndim = r.u8();
    const uint8_t r0 = r.u8(), r1 = r.u8(), r2 = r.u8();
    if (!r.ok()) return bad("truncated tensor entry");
    if (r0 || r1 || r2) return bad("reserved bytes are not zero");
    if (!dtype_valid(static_cast<DType>(dtype)))
      return Status(Error::kUnknownDtype, "tensor '" + e.info.name + "': unknown dtype id " + std::to_string(dtype));
    e.coding.dtype = static_cast<DType>(dtype);
    e.coding.codec = static_cast<Codec>(codec);
    uint64_t numel = 1;
    for (uint8_t d = 0; d < ndim; ++d) {
      const uint64_t dim = r.u64();
      if (dim != 0 && numel > UINT64_MAX / dim) return bad("shape overflows");
      numel *= dim;
      e.info.shape.push_back(dim);
    }
    e.data_begin = r.u64();
    e.info.data_begin = e.data_begin;
    e.coding.nbytes = r.u64();
    e.payload_offset = r.u64();
    e.info.stored_bytes = r.u64();
    e.info.floor_bits = r.u64();
    e.coding.checksum = r.u64();
    e.coding.model_size = r.u32();
    const uint32_t nchunks = r.u32();
    if (!r.ok()) return bad("truncated tensor entry");
    const auto expect = dtype_nbytes(e.coding.dtype, numel);
    if (!expect || *expect != e.coding.nbytes) return bad("tensor '" + e.info.name + "' size does not match its shape");
    if (e.data_begin > data_size || e.coding.nbytes > data_size - e.data_begin)
      return bad("tensor '" + e.info.name + "' lies outside the data region");
    if (e.payload_offset < detail::kHeaderSize || e.payload_offset > payload_end ||
        e.info.stored_bytes > payload_end - e.payload_offset)
      return bad("tensor '" + e.info.name + "' payload lies outside the file");
    claimed += e.info.stored_bytes;  // no overflow: each is at most payload_end
    if (claimed > payload_end - detail::kHeaderSize) return bad("payloads add up to more than the file holds");
    // Every chunk holds at least one byte of the payload (FORMAT.md), so a count beyond the
    // payload is refused before the list is allocated.
    if (nchunks > r.remaining() / 9 || nchunks > e.info.stored_bytes) return bad("chunk count");
    uint64_t off = e.coding.model_size;
    e.coding.chunks.resize(nchunks);
    for (auto& c : e.coding.chunks) {
      c.size = r.u32();
      c.checksum = r.u32();
      c.mode = static_cast<ChunkMode>(r.u8());
      c.offset = off;
      off += c.size;
    }
    if (!r.ok()) return bad("truncated chunk list");
    if (off != e.info.stored_bytes) return bad("tensor '" + e.info.name + "' chunk sizes do not add up");
    Status st = e.coding.validate(e.info.stored_bytes);
    if (!st.is_ok()) return st.with_context("tensor '" + e.info.name + "'");
    e.info.dtype = e.coding.dtype;
    e.info.nbytes = e.coding.nbytes;
    e.info.codec = e.coding.codec;
    e.info.chunks = nchunks;
    if (e.coding.nbytes) spans.push_back({e.data_begin, e.data_begin + e.coding.nbytes});
    im->infos.push_back(e.info);
    im->entries.push_back(std::move(e));
  }
  if (nfillers > r.remaining() / 16 + 1) return bad("filler count");
  for (uint32_t f = 0; f < nfillers; ++f) {
    const uint64_t begin = r.u64();
    const uint64_t size = r.u64();
    if (!r.ok() || size > r.remaining()) return bad("truncated filler");
    const uint8_t* b = r.take(size);
    if (begin > data_size || size > data_size - begin) return bad("filler outside the data region");
    if (size == 0) continue;  // allowed, and nothing to restore (nor an index kept to point into)
    spans.push_back({begin, begin + size});
    im->fillers.push_back({begin, static_cast<uint64_t>(b - p), size});
  }
  if (r.remaining() != 0) return bad("trailing bytes");
  // Tensors and fillers must tile the data region exactly: restore writes every byte once.
  std::sort(spans.begin(), spans.end());
  uint64_t pos = 0;
  for (const auto& s : spans) {
    if (s.first != pos) return bad("data region is not covered exactly");
    pos = s.second;
  }
  if (pos != data_size) return bad("data region is not covered exactly");
  return Status::success();
}

}  // namespace

namespace detail {
// A major version above ours is named before the header checksum is trusted (a newer version may
// lay its header out otherwise), but one flipped bit of a 1.x file reads as version 17 or 257:
// where the checksum, taken as 1.x takes it, fails, say that the header may be damaged instead.
std::string newer_version(uint16_t major, uint16_t minor, bool checksum_matches) {
  std::string m = "format version " + std::to_string(major) + "." + std::to_string(minor) + " is newer than this bigsmall reads (" +
                  std::to_string(kFormatVersionMajor) + ".x)";
  if (!checksum_matches) m += ", or the header is damaged (its checksum does not match)";
  return m;
}

Result<BsHeaderFacts> read_bs_header_facts(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno_status(path, "cannot open", errno);
  uint8_t h[kHeaderSize];
  ssize_t got = 0;
  int err = 0;
  while (got < static_cast<ssize_t>(kHeaderSize)) {
    const ssize_t r = ::pread(fd, h + got, kHeaderSize - static_cast<size_t>(got), got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) err = errno;
    if (r <= 0) break;
    got += r;
  }
  ::close(fd);
  if (err) return errno_status(path, "cannot read", err);
  if (got < 8 || std::memcmp(h, kMagic, 8) != 0) return Status(Error::kNotBigsmall, path + ": not a bigsmall .bs file (bad magic)");
  if (got < static_cast<ssize_t>(kHeaderSize)) return Status(Error::kTruncated, path + ": truncated: file ends inside the header");
  ByteReader r(h + 8, kHeaderSize - 8);
  const uint16_t major = r.u16();
  const uint16_t minor = r.u16();
  r.u32();
  r.u64();
  r.u64();
  r.u64();
  r.u64();
  BsHeaderFacts facts;
  facts.original_size = r.u64();
  facts.fingerprint = r.u64();
  const bool sum_ok = xxh3_64(h, kHeaderSize - 8) == facts.fingerprint;
  if (major > kFormatVersionMajor) return Status(Error::kUnsupportedVersion, path + ": " + newer_version(major, minor, sum_ok));
  if (!sum_ok) return Status(Error::kCorrupt, path + ": header checksum mismatch");
  return facts;
}
}  // namespace detail

namespace {
// The index must describe the tensors the kept header does (name, dtype, shape, place): readers
// hand out what the index says, restores write the header, and the two must not disagree.
Status check_header_matches_index(BsImpl& im) {
  const uint64_t hlen = im.st_header.size();
  std::vector<uint8_t> buf(8 + hlen);
  std::memcpy(buf.data(), &hlen, 8);
  std::memcpy(buf.data() + 8, im.st_header.data(), hlen);
  auto st = detail::parse_safetensors_header(buf.data(), buf.size(), im.original_size, /*raw_names=*/true);
  if (!st) return Status(Error::kCorrupt, "the kept safetensors header is not valid: " + st.status().message());
  auto bad = [](const std::string& what) { return Status(Error::kCorrupt, "index disagrees with the kept safetensors header: " + what); };
  if (st->tensors.size() != im.entries.size()) return bad("they list different numbers of tensors");
  // Compression refuses a name given twice now, but earlier versions took such headers and wrote
  // both tensors; both lists are in data order, so the k-th of a name matches the k-th.
  std::unordered_map<std::string_view, std::vector<const detail::Entry*>> by_name;
  for (const detail::Entry& e : im.entries) by_name[e.info.name].push_back(&e);
  std::unordered_map<std::string_view, size_t> taken;
  for (const auto& t : st->tensors) {
    const auto it = by_name.find(t.name);
    size_t& k = taken[t.name];
    if (it == by_name.end() || k >= it->second.size()) return bad("tensor '" + t.name + "' is not in the index");
    const detail::Entry& e = *it->second[k++];
    if (e.coding.dtype != t.dtype || e.info.shape != t.shape || e.data_begin != t.begin || e.coding.nbytes != t.end - t.begin)
      return bad("tensor '" + t.name + "' has another dtype, shape or place");
  }
  im.metadata = std::move(st->metadata);
  return Status::success();
}
}  // namespace

namespace {
// Validates header, index and every entry of the .bs in `file` (a mapping or borrowed bytes).
Status open_mapped(detail::MappedFile file, std::unique_ptr<BsImpl>* out);

// The likeliest mistake: an original handed to a .bs reader.
constexpr const char* kSafetensorsNotBs =
    "not a bigsmall .bs file but a safetensors file (compress it first, or read it with safetensors)";

// The fixed header (kHeaderSize bytes at p, magic checked) and what it alone can show wrong.
Status decode_file_header(const uint8_t* p, const std::string& path, detail::FileHeader* out, uint64_t* checksum) {
  auto fail = [&](Error e, const std::string& what) { return Status(e, path + ": " + what); };
  detail::ByteReader r(p + 8, detail::kHeaderSize - 8);
  detail::FileHeader& h = *out;
  h.major = r.u16();
  h.minor = r.u16();
  h.flags = r.u32();
  h.index_offset = r.u64();
  h.index_stored = r.u64();
  h.index_raw = r.u64();
  h.index_checksum = r.u64();
  h.original_size = r.u64();
  *checksum = r.u64();
  const bool sum_ok = detail::xxh3_64(p, detail::kHeaderSize - 8) == *checksum;
  if (h.major > kFormatVersionMajor) return fail(Error::kUnsupportedVersion, detail::newer_version(h.major, h.minor, sum_ok));
  if (!sum_ok) return fail(Error::kCorrupt, "header checksum mismatch");
  if (h.major != kFormatVersionMajor)  // no bigsmall ever wrote a version 0.x
    return fail(Error::kCorrupt, "format version " + std::to_string(h.major) + "." + std::to_string(h.minor) + " was never written by bigsmall (damaged header?)");
  if (h.flags != 0) return fail(Error::kCorrupt, "reserved header flags are not zero");
  return Status::success();
}
}  // namespace

Result<BsFile> BsFile::open(const std::string& path) {
  return detail::guarded(path, [&]() -> Result<BsFile> {
    auto mf = detail::MappedFile::open(path);
    if (!mf) return mf.status();
    BsFile f;
    BIGSMALL_RETURN_IF_ERROR(open_mapped(std::move(mf.value()), &f.impl_));
    return f;
  });
}

Result<BsFile> BsFile::open_memory(const uint8_t* data, uint64_t size, const std::string& label) {
  return detail::guarded(label, [&]() -> Result<BsFile> {
    if (data == nullptr && size > 0) return Status(Error::kInvalidArgument, label + ": null data");
    BsFile f;
    BIGSMALL_RETURN_IF_ERROR(open_mapped(detail::MappedFile::borrow(data, size, label), &f.impl_));
    return f;
  });
}

namespace {
// The kept safetensors header's size (the index's bytes 8..15), decompressing only as far as
// them. False when the frame cannot be decompressed that far.
bool index_header_size(const uint8_t* frame, uint64_t stored, uint64_t* hlen) {
  std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> d(ZSTD_createDCtx(), &ZSTD_freeDCtx);
  if (!d) return false;
  uint8_t head[detail::kIndexHeadBytes];
  ZSTD_inBuffer in{frame, static_cast<size_t>(stored), 0};
  ZSTD_outBuffer out{head, sizeof head, 0};
  while (out.pos < out.size) {
    const size_t in_before = in.pos, out_before = out.pos;
    const size_t r = ZSTD_decompressStream(d.get(), &out, &in);
    if (ZSTD_isError(r)) return false;
    if (r == 0 || (in.pos == in_before && out.pos == out_before)) break;  // frame ended, or stuck
  }
  if (out.pos < out.size) return false;
  std::memcpy(hlen, head + 8, 8);
  return true;
}

Status open_mapped(detail::MappedFile file, std::unique_ptr<BsImpl>* out) {
  auto impl = std::make_unique<BsImpl>();
  impl->file = std::move(file);
  const std::string& path = impl->file.path();
  const uint8_t* p = impl->file.data();
  const uint64_t size = impl->file.size();
  auto fail = [&](Error e, const std::string& what) { return Status(e, path + ": " + what); };
  if (size == 0) return fail(Error::kNotBigsmall, "empty file, not a bigsmall .bs file (an interrupted download?)");
  if (size < 8 || std::memcmp(p, detail::kMagic, 8) != 0) {
    // The likeliest mistake: an original handed to a .bs reader.
    uint64_t header_len = 0;
    if (size > 8) std::memcpy(&header_len, p, 8);
    if (size > 8 && header_len <= size - 8 && p[8] == '{')
      return fail(Error::kNotBigsmall, kSafetensorsNotBs);
    return fail(Error::kNotBigsmall, "not a bigsmall .bs file (bad magic)");
  }
  if (size < detail::kHeaderSize) return fail(Error::kTruncated, "truncated: file ends inside the header");
  detail::FileHeader h;
  uint64_t hsum = 0;
  BIGSMALL_RETURN_IF_ERROR(decode_file_header(p, path, &h, &hsum));
  if (h.index_offset >= detail::kHeaderSize && h.index_offset <= size && h.index_stored < size - h.index_offset)
    return fail(Error::kTruncated, std::to_string(size - h.index_offset - h.index_stored) +
                                       " bytes after the end of the index (appended to, or two files joined?)");
  if (h.index_offset < detail::kHeaderSize || h.index_offset > size || h.index_stored != size - h.index_offset)
    return fail(Error::kTruncated, "truncated or damaged: index lies outside the file");
  if (detail::xxh3_64(p + h.index_offset, h.index_stored) != h.index_checksum)
    return fail(Error::kCorrupt, "index checksum mismatch");
  if (h.index_raw > detail::kMaxIndexBytes) return fail(Error::kLimit, "index larger than 1 GiB");
  if (const char* problem = detail::zstd_frame_problem(p + h.index_offset, h.index_stored, h.index_raw))
    return fail(Error::kCorrupt, std::string("index: ") + problem);
  if (h.index_raw > detail::kFreeIndexBytes) {
    // The entries' share, from the index's first bytes alone, before the whole is decompressed.
    uint64_t hlen = 0;
    if (!index_header_size(p + h.index_offset, h.index_stored, &hlen)) return fail(Error::kCorrupt, "index cannot be decompressed");
    if (hlen > detail::kMaxHeaderBytes) return fail(Error::kLimit, header_over_limit(hlen));
    if (hlen > h.index_raw - detail::kIndexHeadBytes) return fail(Error::kCorrupt, "corrupt index: safetensors header size");
    const uint64_t entries = h.index_raw - detail::kIndexHeadBytes - hlen;
    if (detail::index_too_expanded(entries, h.index_stored))
      return fail(Error::kLimit, "index entries of " + std::to_string(entries) + " bytes stored in " +
                                     std::to_string(h.index_stored) + ": more than 1024 times (a decompression bomb?)");
  }
  std::vector<uint8_t> idx(h.index_raw);
  const size_t zr = ZSTD_decompress(idx.data(), idx.size(), p + h.index_offset, h.index_stored);
  if (ZSTD_isError(zr) || zr != h.index_raw) return fail(Error::kCorrupt, "index cannot be decompressed");
  impl->original_size = h.original_size;
  impl->fingerprint = hsum;
  Status st = parse_index(idx.data(), idx.size(), h.index_offset, h.index_stored, impl.get());
  impl->verified.reset(new std::atomic<bool>[impl->entries.size()]());
  if (!st.is_ok()) return st.with_context(path);
  if (!impl->fillers.empty())
    impl->index = std::move(idx);
  // Payloads may not overlap, and the alignment padding between them must be zero, so that no
  // byte of the file escapes every check.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& e : impl->entries) spans.push_back({e.payload_offset, e.payload_offset + e.info.stored_bytes});
  std::sort(spans.begin(), spans.end());
  uint64_t pos = detail::kHeaderSize;
  for (size_t k = 0; k <= spans.size(); ++k) {
    const uint64_t next = k < spans.size() ? spans[k].first : h.index_offset;
    if (next < pos) return fail(Error::kCorrupt, "tensor payloads overlap");
    for (uint64_t b = pos; b < next; ++b)
      if (p[b] != 0) return fail(Error::kCorrupt, "non-zero padding at byte " + std::to_string(b));
    if (k < spans.size()) pos = spans[k].second;
  }
  if (Status agree = check_header_matches_index(*impl); !agree.is_ok()) return agree.with_context(path);
  impl->by_name.resize(impl->infos.size());
  std::iota(impl->by_name.begin(), impl->by_name.end(), size_t{0});
  std::stable_sort(impl->by_name.begin(), impl->by_name.end(),
                   [&](size_t a, size_t b) { return impl->infos[a].name < impl->infos[b].name; });
  *out = std::move(impl);
  return Status::success();
}
}  // namespace

// An empty BsFile (default-constructed or moved from) answers as a file with nothing in it, and
// its Status calls with kInvalidArgument: a caller's slip is an error value, not a crash.
namespace {
const std::string kNoPath;
const std::optional<Metadata> kNoMetadata;
const std::vector<TensorInfo> kNoTensors;
// Called before any guarded block: with no memory for its message, the code alone.
Status not_open() noexcept {
  try {
    return Status(Error::kInvalidArgument, "no .bs file open (an empty or moved-from BsFile)");
  } catch (...) {
    return Status(Error::kInvalidArgument, std::string());
  }
}
}  // namespace

const std::string& BsFile::path() const { return impl_ ? impl_->file.path() : kNoPath; }
uint64_t BsFile::file_size() const { return impl_ ? impl_->file.size() : 0; }
uint64_t BsFile::original_size() const { return impl_ ? impl_->original_size : 0; }
uint64_t BsFile::fingerprint() const { return impl_ ? impl_->fingerprint : 0; }
const std::string& BsFile::safetensors_header() const { return impl_ ? impl_->st_header : kNoPath; }
const std::optional<Metadata>& BsFile::metadata() const { return impl_ ? impl_->metadata : kNoMetadata; }
const std::vector<TensorInfo>& BsFile::tensors() const { return impl_ ? impl_->infos : kNoTensors; }
const TensorCoding& BsFile::coding(size_t i) const { return impl_->entries[i].coding; }
const uint8_t* BsFile::payload(size_t i) const { return impl_->file.data() + impl_->entries[i].payload_offset; }

Status BsFile::check_not_truncated() const { return impl_ ? impl_->file.check_not_truncated() : not_open(); }

std::optional<size_t> BsFile::find(std::string_view name) const {
  if (!impl_) return std::nullopt;
  const auto& infos = impl_->infos;
  const auto it = std::lower_bound(impl_->by_name.begin(), impl_->by_name.end(), name,
                                   [&](size_t i, std::string_view n) { return infos[i].name < n; });
  if (it == impl_->by_name.end() || infos[*it].name != name) return std::nullopt;
  return *it;
}

namespace {
// Threads write the chunks of all tensors at once: two outputs sharing bytes would race and
// leave neither tensor's bytes whole, so they are refused, not decoded.
Status refuse_overlapping_outputs(const BsImpl& im, const std::vector<size_t>& which,
                                  const std::vector<uint8_t*>& outs) {
  std::vector<size_t> order;
  order.reserve(which.size());
  for (size_t k = 0; k < which.size(); ++k)
    if (im.entries[which[k]].info.nbytes > 0) order.push_back(k);
  auto start = [&](size_t k) { return reinterpret_cast<uintptr_t>(outs[k]); };
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return start(a) < start(b); });
  for (size_t j = 1; j < order.size(); ++j) {
    const size_t prev = order[j - 1], cur = order[j];
    if (start(cur) - start(prev) < im.entries[which[prev]].info.nbytes)
      return Status(Error::kInvalidArgument, im.file.path() + ": output buffers of tensors '" +
                                                 im.entries[which[prev]].info.name + "' and '" +
                                                 im.entries[which[cur]].info.name + "' overlap");
  }
  return Status::success();
}

Status read_many(const BsImpl& im, const std::vector<size_t>& which, const std::vector<uint8_t*>& outs,
                 const std::vector<uint64_t>& out_sizes, bool verify, detail::ThreadPool& pool) {
  BIGSMALL_RETURN_IF_ERROR(im.file.check_not_truncated());
  std::vector<detail::DecodeJob> jobs;
  for (size_t k = 0; k < which.size(); ++k) {
    if (which[k] >= im.entries.size())
      return Status(Error::kInvalidArgument, im.file.path() + ": tensor index " + std::to_string(which[k]) +
                                                 " out of range (" + std::to_string(im.entries.size()) + " tensors)");
    const detail::Entry& e = im.entries[which[k]];
    if (outs[k] == nullptr && e.info.nbytes > 0)
      return Status(Error::kInvalidArgument, im.file.path() + ": tensor '" + e.info.name + "': null output buffer");
    jobs.push_back({&e.coding, im.file.data() + e.payload_offset, e.info.stored_bytes, outs[k], out_sizes[k],
                    "tensor '" + e.info.name + "'"});
  }
  BIGSMALL_RETURN_IF_ERROR(refuse_overlapping_outputs(im, which, outs));
  return detail::decode_tensors_on(jobs, verify, pool).with_context(im.file.path());
}

// Threads worth starting to decode tensors `which` (every tensor if empty).
int decode_threads(const BsImpl& im, const std::vector<size_t>& which, int requested) {
  uint64_t chunks = 0, bytes = 0;
  auto add = [&](size_t i) {
    if (i >= im.entries.size()) return;
    chunks += im.entries[i].coding.chunks.size();
    bytes += im.entries[i].coding.nbytes;
  };
  if (which.empty()) {
    for (size_t i = 0; i < im.entries.size(); ++i) add(i);
  } else {
    for (size_t i : which) add(i);
  }
  return detail::threads_for(requested, chunks, bytes, detail::kDecodeBytesPerThread);
}
}  // namespace

Status BsFile::read_tensor(size_t i, uint8_t* out, uint64_t out_size, const DecodeOptions& opts) const {
  if (!impl_) return not_open();
  return detail::guarded(path(), [&]() -> Status {
    detail::ThreadPool pool(decode_threads(*impl_, {i}, opts.threads));
    return read_many(*impl_, {i}, {out}, {out_size}, opts.verify, pool);
  });
}

Status BsFile::read_tensors(const std::vector<size_t>& which, const std::vector<uint8_t*>& outs,
                            const std::vector<uint64_t>& out_sizes, const DecodeOptions& opts) const {
  if (!impl_) return not_open();
  return detail::guarded(path(), [&]() -> Status {
    if (which.size() != outs.size() || which.size() != out_sizes.size())
      return Status(Error::kInvalidArgument, path() + ": one output buffer and size per tensor");
    if (which.empty()) return Status::success();
    detail::ThreadPool pool(decode_threads(*impl_, which, opts.threads));
    return read_many(*impl_, which, outs, out_sizes, opts.verify, pool);
  });
}

namespace {
// Tensors in batches of bounded decoded size, so progress moves and memory stays bounded.
template <typename Fn>
Status for_each_batch(const BsImpl& im, uint64_t limit, Fn&& fn) {
  // A tensor larger than a batch always stands alone in its batch.
  std::vector<size_t> batch;
  uint64_t bytes = 0;
  for (size_t i = 0; i < im.entries.size(); ++i) {
    const uint64_t nb = im.entries[i].coding.nbytes;
    if (!batch.empty() && (bytes + nb > limit || batch.size() >= detail::kBatchTensors)) {
      BIGSMALL_RETURN_IF_ERROR(fn(batch, bytes));
      batch.clear();
      bytes = 0;
    }
    batch.push_back(i);
    bytes += nb;
  }
  if (!batch.empty()) BIGSMALL_RETURN_IF_ERROR(fn(batch, bytes));
  return Status::success();
}
}  // namespace

namespace {
// Scratch memory for decoded bytes that are only hashed: not zero-filled (the decoder writes
// every byte), in 2 MiB pages where the kernel allows (a 4 MiB batch costs 2 page faults, not
// 1024), and the last buffer released (up to 16 MiB) is kept for the next call, so that
// verifying file after file (a model directory, a benchmark) faults its pages in once.
constexpr uint64_t kHugePage = uint64_t{2} << 20;
constexpr uint64_t kScratchKept = uint64_t{16} << 20;

struct ScratchCache {
  std::mutex mu;
  void* p = nullptr;
  uint64_t cap = 0;
};
// Made when the library is loaded (a lazy static's guard, caught half taken by a fork in another
// thread's first verify, would hang the child); never destroyed: a verify may still run at exit.
ScratchCache* const g_scratch_cache = [] {
  auto* c = new ScratchCache;
  detail::hold_across_fork(&c->mu);
  return c;
}();
ScratchCache& scratch_cache() { return *g_scratch_cache; }

struct ScratchRelease {
  uint64_t cap = 0;
  void operator()(uint8_t* p) const {
    void* drop = p;
    if (cap <= kScratchKept) {
      ScratchCache& c = scratch_cache();
      std::lock_guard<std::mutex> lk(c.mu);
      if (cap > c.cap) {
        drop = c.p;
        c.p = p;
        c.cap = cap;
      }
    }
    std::free(drop);
  }
};
using Scratch = std::unique_ptr<uint8_t[], ScratchRelease>;

Scratch scratch_buffer(uint64_t bytes) {
  {
    ScratchCache& c = scratch_cache();
    std::lock_guard<std::mutex> lk(c.mu);
    if (c.p != nullptr && c.cap >= bytes) {
      Scratch s(static_cast<uint8_t*>(c.p), ScratchRelease{c.cap});
      c.p = nullptr;
      c.cap = 0;
      return s;
    }
  }
  void* p = nullptr;
  if (bytes >= kHugePage / 2) {
    const uint64_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    if (posix_memalign(&p, kHugePage, rounded) == 0) {
#ifdef MADV_HUGEPAGE
      madvise(p, rounded, MADV_HUGEPAGE);  // advice only: a kernel without huge pages ignores it
#endif
      return Scratch(static_cast<uint8_t*>(p), ScratchRelease{rounded});
    }
    p = nullptr;
  }
  p = std::malloc(bytes ? bytes : 1);
  if (p == nullptr) throw std::bad_alloc();
  return Scratch(static_cast<uint8_t*>(p), ScratchRelease{bytes});
}
}  // namespace

namespace {
// Verification keeps no decoded bytes: small batches reuse one scratch buffer that stays in
// cache and whose pages fault in once, where one batch per file faults in the whole file.
// 4 MiB (2 MiB per thread on machines with more cores) keeps every thread busy.
uint64_t verify_batch_bytes(int threads) {
  return std::max<uint64_t>(uint64_t{4} << 20, static_cast<uint64_t>(threads) << 21);
}

using Sink = std::function<Status(const uint8_t* data, uint64_t size)>;
using PositionalSink = std::function<Status(const uint8_t* data, uint64_t size, uint64_t offset)>;

// Where restored bytes go: front to back through `write`, or, where `write_at` is given (a
// file), at their offsets from the decoding threads themselves. The kernel's copy into the page
// cache then runs on every thread, as the decoding does: done by one thread between batches, it
// was half of a two-thread restore of a large model and kept the others waiting.
struct RestoreOutput {
  const Sink* write = nullptr;  // the caller's own writer, not a copy (it may keep state)
  PositionalSink write_at;
  // Bytes the output has taken so far (progress), counted by the thread that drives the restore.
  std::function<void(uint64_t)> advanced;
  Status put(const uint8_t* p, uint64_t n, uint64_t offset) const {
    BIGSMALL_RETURN_IF_ERROR(write_at ? write_at(p, n, offset) : (*write)(p, n));
    if (advanced) advanced(n);
    return Status::success();
  }
};

// A tensor larger than a batch is decoded a group of chunks at a time with a streaming
// checksum, so that it needs bounded memory whatever a file declares; each group's bytes go to
// `out` (when given; the tensor's bytes start at `out_offset` of it) once decoded and hashed,
// and the checksum is compared after the last.
// verify: chunk and tensor checksums (without, the bytes are only decoded).
Status stream_large_tensor(const BsImpl& im, size_t t, uint64_t batch_bytes, detail::ThreadPool& pool, bool verify,
                           const RestoreOutput* out, uint64_t out_offset) {
  BIGSMALL_RETURN_IF_ERROR(im.file.check_not_truncated());
  const detail::Entry& e = im.entries[t];
  const TensorCoding& c = e.coding;
  const std::string label = im.file.path() + ": tensor '" + e.info.name + "'";
  BIGSMALL_RETURN_IF_ERROR(c.validate(e.info.stored_bytes).with_context(label));
  const uint8_t* payload = im.file.data() + e.payload_offset;
  // As in every other decode path, tables are needed only for tensors with coded chunks; but a
  // model an encoder wrote before every chunk came out stored is read and checked all the same
  // (as a whole decode does), so that verify and decompress agree on such a file.
  std::optional<detail::TensorDecoder> dec;
  if (c.model_size > 0 ||
      std::any_of(c.chunks.begin(), c.chunks.end(), [](const ChunkRef& r) { return r.mode == ChunkMode::kCoded; })) {
    auto d = detail::TensorDecoder::prepare(c, payload, c.model_size);
    if (!d) return d.status().with_context(label);
    dec = std::move(d.value());
  }
  const uint64_t chunk_bytes = c.chunk_units() * c.unit_bytes();
  const size_t per_group = static_cast<size_t>(std::max<uint64_t>(1, batch_bytes / chunk_bytes));
  Scratch scratch = scratch_buffer(std::min<uint64_t>(per_group, c.chunks.size()) * chunk_bytes);
  std::vector<Status> errs(per_group);
  detail::Xxh3Stream hash;
  // The tensor's checksum takes the group's chunks in order, each as soon as it and those before
  // it are decoded, on whichever thread gets there (one at a time): hashed after the group, it
  // was a serial step that kept the other threads waiting.
  std::unique_ptr<std::atomic<bool>[]> decoded(new std::atomic<bool>[per_group]);
  std::mutex hash_mu;
  size_t hashed = 0;  // chunks of the group in the checksum (under hash_mu)
  auto hash_ready = [&](size_t first, size_t count) {
    for (; hashed < count && decoded[hashed].load(std::memory_order_acquire); ++hashed)
      hash.update(scratch.get() + hashed * chunk_bytes, c.chunk_out_size(first + hashed));
  };
  for (size_t first = 0; first < c.chunks.size(); first += per_group) {
    const size_t count = std::min(per_group, c.chunks.size() - first);
    for (size_t k = 0; k < count; ++k) decoded[k].store(false, std::memory_order_relaxed);
    hashed = 0;
    pool.parallel_for(count, [&](size_t k) {
      const size_t i = first + k;
      const ChunkRef& ref = c.chunks[i];
      if (verify && detail::xxh3_32(payload + ref.offset, ref.size) != ref.checksum)
        errs[k] = Status(Error::kCorrupt, "chunk " + std::to_string(i) + ": checksum mismatch (compressed data damaged)");
      else if (ref.mode == ChunkMode::kStored)  // validate() checked its size
        std::memcpy(scratch.get() + k * chunk_bytes, payload + ref.offset, ref.size);
      else
        errs[k] = dec->decode_chunk(i, payload + ref.offset, ref.size, ref.mode, scratch.get() + k * chunk_bytes);
      if (!errs[k].is_ok()) return;  // the group fails below: its checksum is never read
      // Written while still in this thread's cache; a failure anywhere leaves a file output
      // uncommitted, so order does not matter there.
      if (out && out->write_at) errs[k] = out->write_at(scratch.get() + k * chunk_bytes, c.chunk_out_size(i), out_offset + c.chunk_out_offset(i));
      if (!errs[k].is_ok() || !verify) return;
      decoded[k].store(true, std::memory_order_release);
      std::unique_lock<std::mutex> lock(hash_mu, std::try_to_lock);
      if (lock.owns_lock()) hash_ready(first, count);  // else the thread hashing takes it, or the loop below
    });
    for (size_t k = 0; k < count; ++k)
      if (!errs[k].is_ok()) return errs[k].with_context(label);
    if (verify) {
      hash_ready(first, count);
      if (hashed != count) return Status(Error::kInternal, label + ": a decoded chunk was not hashed");
    }
    const uint64_t group_bytes = std::min<uint64_t>(count * chunk_bytes, c.nbytes - first * chunk_bytes);
    if (out && out->write_at) {
      if (out->advanced) out->advanced(group_bytes);  // written above
    } else if (out) {
      BIGSMALL_RETURN_IF_ERROR(out->put(scratch.get(), group_bytes, out_offset + c.chunk_out_offset(first)));
    }
  }
  if (verify && hash.digest() != c.checksum) return Status(Error::kCorrupt, label + ": checksum mismatch after decode");
  return Status::success();
}

Status verify_large_tensor(const BsImpl& im, size_t t, uint64_t batch_bytes, detail::ThreadPool& pool) {
  return stream_large_tensor(im, t, batch_bytes, pool, true, nullptr, 0);
}

// The original safetensors file, front to back, through `sink`: the header, then the data region
// in batches of consecutive tensors and fillers (tensors decoded side by side into one cached
// scratch buffer, fillers copied beside them), each batch one call (or, for a file, one slice per
// thread); a tensor larger than a batch goes a group of chunks at a time. Small batches keep the scratch in cache and its pages
// faulted in once; a restore that decoded into a mapping of the output paid a page fault per
// 4 KiB of the file and ran about a quarter slower.
Status stream_original(const BsImpl& im, const DecompressOptions& opts, RestoreOutput out) {
  std::vector<uint8_t> head(8 + im.st_header.size());
  const uint64_t hlen = im.st_header.size();
  std::memcpy(head.data(), &hlen, 8);
  std::memcpy(head.data() + 8, im.st_header.data(), hlen);
  struct Piece {
    uint64_t begin, size;
    const uint8_t* filler;  // null: tensor `tensor`
    size_t tensor;
  };
  std::vector<Piece> pieces;
  for (size_t i = 0; i < im.entries.size(); ++i) pieces.push_back({im.entries[i].data_begin, im.entries[i].coding.nbytes, nullptr, i});
  for (const auto& f : im.fillers) pieces.push_back({f.begin, f.size, im.index.data() + f.at, 0});
  std::stable_sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.begin < b.begin; });
  uint64_t pos = 0;
  for (const Piece& p : pieces) {  // parse_index checks that they tile the data region
    if (p.size == 0) continue;  // an empty tensor may stand anywhere, even inside another
    if (p.begin != pos) return Status(Error::kInternal, im.file.path() + ": tensors and fillers do not tile the data region");
    pos += p.size;
  }
  const uint64_t total = im.original_size;
  uint64_t done = 0;
  if (opts.progress) {
    out.advanced = [&](uint64_t n) {
      done += n;
      opts.progress(done, total);
    };
    opts.progress(0, total);
  }
  BIGSMALL_RETURN_IF_ERROR(out.put(head.data(), head.size(), 0));
  uint64_t at = head.size();  // where the next piece goes in the output (the pieces tile the data region)
  detail::ThreadPool pool(decode_threads(im, {}, opts.threads));
  const uint64_t limit = verify_batch_bytes(pool.size());
  Scratch scratch;
  std::vector<size_t> which;
  std::vector<uint8_t*> outs;
  std::vector<uint64_t> sizes;
  for (size_t k = 0; k < pieces.size();) {
    if (pieces[k].size > limit) {
      const Piece& p = pieces[k++];
      if (p.filler) BIGSMALL_RETURN_IF_ERROR(out.put(p.filler, p.size, at));
      else BIGSMALL_RETURN_IF_ERROR(stream_large_tensor(im, p.tensor, limit, pool, opts.verify, &out, at));
      at += p.size;
      continue;
    }
    if (!scratch) scratch = scratch_buffer(limit);
    which.clear();
    outs.clear();
    sizes.clear();
    uint64_t bytes = 0;
    const uint64_t batch_begin = at;
    for (; k < pieces.size() && bytes + pieces[k].size <= limit && which.size() < detail::kBatchTensors; ++k) {
      const Piece& p = pieces[k];
      if (p.filler) {
        std::memcpy(scratch.get() + bytes, p.filler, p.size);
      } else {
        which.push_back(p.tensor);
        outs.push_back(scratch.get() + bytes);
        sizes.push_back(p.size);
      }
      bytes += p.size;
    }
    BIGSMALL_RETURN_IF_ERROR(read_many(im, which, outs, sizes, opts.verify, pool));
    at += bytes;
    if (bytes == 0) continue;
    // The batch in one slice per thread, each written by its own; not slices under 1 MiB,
    // whose hand-over to another thread costs more than the copy.
    const uint64_t slices = std::min<uint64_t>(static_cast<uint64_t>(pool.size()), bytes >> 20);
    if (!out.write_at || slices <= 1) {
      BIGSMALL_RETURN_IF_ERROR(out.put(scratch.get(), bytes, batch_begin));
      continue;
    }
    const uint64_t per = (bytes + slices - 1) / slices;
    std::vector<Status> errs(slices);
    pool.parallel_for(slices, [&](size_t j) {
      const uint64_t b = std::min(bytes, j * per), n = std::min(bytes - b, per);
      if (n) errs[j] = out.write_at(scratch.get() + b, n, batch_begin + b);
    });
    for (const Status& st : errs) BIGSMALL_RETURN_IF_ERROR(st);
    if (out.advanced) out.advanced(bytes);
  }
  return Status::success();
}
}  // namespace

Status BsFile::restore(const std::string& out_path, const DecompressOptions& opts) const {
  if (!impl_) return not_open();
  return detail::guarded(path(), [&]() -> Status {
    const Impl& im = *impl_;
    if (!im.file.borrowed())  // -f must not replace the .bs itself
      BIGSMALL_RETURN_IF_ERROR(detail::check_not_input(im.file.path(), out_path));
    BIGSMALL_ASSIGN_OR_RETURN(detail::OutputFile out, detail::OutputFile::create(out_path, opts.overwrite));
    BIGSMALL_RETURN_IF_ERROR(out.reserve(im.original_size));
    RestoreOutput to;
    to.write_at = [&](const uint8_t* p, uint64_t n, uint64_t offset) { return out.pwrite(p, n, offset); };
    BIGSMALL_RETURN_IF_ERROR(stream_original(im, opts, std::move(to)));
    if (!im.file.borrowed()) out.take_attributes(im.file);  // bytes in memory have no date or owner to pass on
    return out.commit(opts.sync);
  });
}

Status BsFile::restore_to(const std::function<Status(const uint8_t* data, uint64_t size)>& write,
                          const DecompressOptions& opts) const {
  if (!impl_) return not_open();
  if (!write) return Status(Error::kInvalidArgument, path() + ": restore_to needs a writer");
  return detail::guarded(path(), [&]() -> Status {
    RestoreOutput to;
    to.write = &write;
    return stream_original(*impl_, opts, std::move(to));
  });
}

Status BsFile::read_tensor_range(size_t i, uint64_t begin, uint8_t* out, uint64_t out_size,
                                 const DecodeOptions& opts) const {
  if (!impl_) return not_open();
  return detail::guarded(path(), [&]() -> Status {
    if (i >= impl_->entries.size())
      return Status(Error::kInvalidArgument, path() + ": tensor index " + std::to_string(i) + " out of range (" +
                                                 std::to_string(impl_->entries.size()) + " tensors)");
    if (out == nullptr && out_size > 0) return Status(Error::kInvalidArgument, path() + ": null output buffer");
    const detail::Entry& e = impl_->entries[i];
    const TensorCoding& c = e.coding;
    const std::string label = path() + ": tensor '" + e.info.name + "'";
    if (begin > c.nbytes || out_size > c.nbytes - begin)
      return Status(Error::kInvalidArgument, label + ": byte range beyond the tensor's " + std::to_string(c.nbytes));
    if (out_size == 0) return Status::success();
    BIGSMALL_RETURN_IF_ERROR(c.validate(e.info.stored_bytes).with_context(label));
    BIGSMALL_RETURN_IF_ERROR(impl_->file.check_not_truncated());
    const uint8_t* payload = impl_->file.data() + e.payload_offset;
    const uint64_t chunk_bytes = c.chunk_units() * c.unit_bytes();
    const uint64_t end = begin + out_size;
    const size_t first = static_cast<size_t>(begin / chunk_bytes), last = static_cast<size_t>((end - 1) / chunk_bytes);
    const auto coded = [&](size_t k) { return c.chunks[k].mode == ChunkMode::kCoded; };
    bool any_coded = false;
    for (size_t k = first; k <= last && !any_coded; ++k) any_coded = coded(k);
    if (any_coded && opts.verify && c.model_size > 0 && !impl_->verified[i].load(std::memory_order_acquire)) {
      // Damage in the model could decode the chunks wrongly without failing a chunk checksum:
      // once per tensor, the whole tensor is decoded (in bounded memory) and its checksum checked.
      detail::ThreadPool whole(decode_threads(*impl_, {i}, opts.threads));
      BIGSMALL_RETURN_IF_ERROR(verify_large_tensor(*impl_, i, detail::kBatchBytes / 16, whole));
      impl_->verified[i].store(true, std::memory_order_release);
    }
    // Chunks wholly inside the range decode straight into out, side by side as whole tensors do;
    // the (at most two) chunks the range cuts decode into scratch and are copied in part.
    std::shared_ptr<const detail::TensorDecoder> dec;  // built once, for the inner and the cut chunks
    if (any_coded) {
      {
        std::lock_guard lock(impl_->range_mu.m);
        if (impl_->range_tensor == i) dec = impl_->range_decoder;
      }
      if (!dec) {  // built outside the lock: readers of other tensors do not wait for these tables
        auto d = detail::TensorDecoder::prepare(c, payload, c.model_size);
        if (!d) return d.status().with_context(label);
        dec = std::make_shared<const detail::TensorDecoder>(std::move(d.value()));
        std::lock_guard lock(impl_->range_mu.m);
        impl_->range_decoder = dec;
        impl_->range_tensor = i;
      }
    }
    const size_t inner_begin = begin % chunk_bytes == 0 ? first : first + 1;
    size_t inner_end = last + 1;
    if (end % chunk_bytes != 0 && end != c.nbytes) inner_end = last;
    const std::string job_label = "tensor '" + e.info.name + "'";
    std::vector<detail::DecodeJob> jobs;
    uint64_t job_chunks = 0, job_bytes = 0;
    auto add_job = [&](uint8_t* to, uint64_t size, size_t chunk_begin, size_t chunk_end) {
      detail::DecodeJob job{&c, payload, e.info.stored_bytes, to, size, job_label};
      job.chunk_begin = chunk_begin;
      job.chunk_end = chunk_end;
      job.decoder = dec.get();
      jobs.push_back(job);
      job_chunks += chunk_end - chunk_begin;
      job_bytes += job.bytes();
    };
    if (inner_begin < inner_end) {
      const uint64_t skip = inner_begin * chunk_bytes - begin;  // bytes of the first, cut chunk
      add_job(out + skip, out_size - skip, inner_begin, inner_end);
    }
    // Coded chunks the range cuts are decoded whole into scratch, in the same call as the inner
    // ones (side by side, on the same threads); stored ones are copied in part.
    std::vector<size_t> edges;
    for (size_t ci : {first, last})
      if ((ci < inner_begin || ci >= inner_end) && (edges.empty() || edges.back() != ci)) edges.push_back(ci);
    std::vector<std::pair<size_t, std::vector<uint8_t>>> cut;  // (chunk, its decoded bytes)
    cut.reserve(edges.size());
    for (size_t ci : edges) {
      const ChunkRef& ref = c.chunks[ci];
      if (ref.mode != ChunkMode::kStored) {
        auto& [chunk, bytes] = cut.emplace_back(ci, std::vector<uint8_t>(c.chunk_out_size(ci)));
        add_job(bytes.data(), bytes.size(), chunk, chunk + 1);
        continue;
      }
      if (opts.verify && detail::xxh3_32(payload + ref.offset, ref.size) != ref.checksum)
        return Status(Error::kCorrupt, label + ": chunk " + std::to_string(ci) + ": checksum mismatch (compressed data damaged)");
      const uint64_t lo = ci * chunk_bytes;
      const uint64_t from = std::max(lo, begin), to = std::min(lo + c.chunk_out_size(ci), end);
      std::memcpy(out + (from - begin), payload + ref.offset + (from - lo), to - from);  // validate() checked its size
    }
    if (!jobs.empty()) {
      detail::ThreadPool pool(detail::threads_for(opts.threads, job_chunks, job_bytes, detail::kDecodeBytesPerThread));
      BIGSMALL_RETURN_IF_ERROR(detail::decode_tensors_on(jobs, opts.verify, pool).with_context(path()));
    }
    for (const auto& [ci, bytes] : cut) {
      const uint64_t lo = ci * chunk_bytes;
      const uint64_t from = std::max(lo, begin), to = std::min(lo + bytes.size(), end);
      std::memcpy(out + (from - begin), bytes.data() + (from - lo), to - from);
    }
    return Status::success();
  });
}

Status BsFile::verify(const DecompressOptions& opts) const {
  if (!impl_) return not_open();
  return detail::guarded(path(), [&]() -> Status {
    const Impl& im = *impl_;
    BIGSMALL_RETURN_IF_ERROR(im.file.check_not_truncated());
    detail::ThreadPool pool(decode_threads(im, {}, opts.threads));
    Scratch scratch;
    uint64_t scratch_size = 0;
    uint64_t total = 0, done = 0;
    for (const auto& t : im.infos) total += t.nbytes;
    if (opts.progress) opts.progress(0, total);
    const uint64_t batch_bytes = verify_batch_bytes(pool.size());
    return for_each_batch(im, batch_bytes, [&](const std::vector<size_t>& batch, uint64_t bytes) {
      if (batch.size() == 1 && bytes > batch_bytes) {
        BIGSMALL_RETURN_IF_ERROR(verify_large_tensor(im, batch[0], batch_bytes, pool));
      } else {
        if (bytes > scratch_size) {
          scratch.reset();
          scratch = scratch_buffer(bytes);
          scratch_size = bytes;
        }
        std::vector<uint8_t*> outs;
        std::vector<uint64_t> sizes;
        uint64_t off = 0;
        for (size_t i : batch) {
          outs.push_back(scratch.get() + off);
          sizes.push_back(im.entries[i].coding.nbytes);
          off += im.entries[i].coding.nbytes;
        }
        BIGSMALL_RETURN_IF_ERROR(read_many(im, batch, outs, sizes, true, pool));
      }
      done += bytes;
      if (opts.progress) opts.progress(done, total);
      return Status::success();
    });
  });
}

// ---- streams ---------------------------------------------------------------------------------

namespace {
Status already_bs(const std::string& label) {
  return Status(Error::kNotSafetensors, label + ": already a bigsmall .bs file (decompress it, or compress the original)");
}
}  // namespace

Result<uint64_t> declared_bs_size(const uint8_t* data, uint64_t available, const std::string& label) {
  return detail::guarded(label, [&]() -> Result<uint64_t> {
    if (data == nullptr && available != 0) return Status(Error::kInvalidArgument, label + ": null data");
    if (available < 8) return uint64_t{0};
    if (std::memcmp(data, detail::kMagic, 8) != 0) {
      // A safetensors file is told by its header's length and first byte, before its header is whole.
      if (available < 9) return uint64_t{0};
      uint64_t n;
      std::memcpy(&n, data, 8);
      if (n <= detail::kMaxHeaderBytes && data[8] == '{')
        return Status(Error::kNotBigsmall,
                      label + ": " + kSafetensorsNotBs);
      return BsFile::open_memory(data, available, label).status();  // its message
    }
    if (available < detail::kHeaderSize) return uint64_t{0};
    detail::FileHeader h;
    uint64_t checksum = 0;
    BIGSMALL_RETURN_IF_ERROR(decode_file_header(data, label, &h, &checksum));
    if (h.index_offset < detail::kHeaderSize || h.index_stored > UINT64_MAX - h.index_offset)
      return Status(Error::kCorrupt, label + ": index lies outside any file (damaged header)");
    return h.index_offset + h.index_stored;
  });
}

Result<uint64_t> declared_safetensors_size(const uint8_t* data, uint64_t available, const std::string& label) {
  return detail::guarded(label, [&]() -> Result<uint64_t> {
    if (data == nullptr && available != 0) return Status(Error::kInvalidArgument, label + ": null data");
    if (available < 8) return uint64_t{0};
    if (std::memcmp(data, detail::kMagic, 8) == 0)
      return already_bs(label);
    uint64_t n;
    std::memcpy(&n, data, 8);
    // Refused whatever follows, with its message (a Git LFS pointer is told by its first 23 bytes).
    if (n > detail::kMaxHeaderBytes) {
      if (available < 23) return uint64_t{0};
      return detail::parse_safetensors_header(data, available, available, false).status().with_context(label);
    }
    if (available - 8 < n) return uint64_t{0};
    // The tensors' places, against a file as long as any could be.
    auto st = detail::parse_safetensors_header(data, 8 + n, UINT64_MAX, false);
    if (!st) return st.status().with_context(label);
    uint64_t end = st->data_start;
    for (const auto& t : st->tensors) end = std::max(end, st->data_start + t.end);
    return end;
  });
}

// ---- entry points --------------------------------------------------------------------------

namespace {
// A safetensors image (a mapped file, or bytes in memory) parsed into what write_bs takes.
// `label` names it in messages.
Status prepare_safetensors(const detail::MappedFile& in, const std::string& label, detail::StFile* st_out,
                           std::vector<detail::Source>* sources, std::vector<detail::Filler>* fillers) {
  auto parsed = detail::parse_safetensors(in.data(), in.size());
  if (!parsed) {
    if (in.size() >= 8 && std::memcmp(in.data(), detail::kMagic, 8) == 0)
      return already_bs(label);
    return parsed.status().with_context(label);
  }
  *st_out = std::move(parsed.value());
  const detail::StFile& st = *st_out;
  for (const auto& t : st.tensors)
    sources->push_back({t.name, t.dtype, t.shape, in.data() + st.data_start + t.begin, t.end - t.begin, t.begin});
  // The kept header and the bytes outside tensors live in the index, which readers cap; refuse
  // before copying them (write_bs checks the finished index too).
  uint64_t outside = 0;
  for (const auto& g : st.gaps) outside += g.second - g.first;
  if (outside + st.header.size() > detail::kMaxIndexBytes)
    return Status(Error::kLimit, label + ": " + std::to_string(outside) + " bytes outside its tensors and a " +
                                     std::to_string(st.header.size()) + "-byte header: more than the 1 GiB a .bs index may hold");
  for (const auto& g : st.gaps)
    fillers->push_back({g.first, std::vector<uint8_t>(in.data() + st.data_start + g.first, in.data() + st.data_start + g.second)});
  return Status::success();
}

// Limits on what the input declares (name lengths, dimensions) name the input.
Status naming_input(const Status& written, const std::string& label) {
  return written.code() == Error::kLimit ? written.with_context(label) : written;
}
}  // namespace

Status compress_file(const std::string& src, const std::string& dst, const CompressOptions& opts) {
  return detail::guarded(src, [&]() -> Status {
    BIGSMALL_RETURN_IF_ERROR(detail::check_zstd_level(opts.zstd_level).with_context(src));
    BIGSMALL_RETURN_IF_ERROR(detail::check_not_input(src, dst));
    BIGSMALL_ASSIGN_OR_RETURN(detail::MappedFile in, detail::MappedFile::open(src));
    detail::StFile st;
    std::vector<detail::Source> sources;
    std::vector<detail::Filler> fillers;
    BIGSMALL_RETURN_IF_ERROR(prepare_safetensors(in, src, &st, &sources, &fillers));
    return naming_input(detail::write_bs(dst, st.header, in.size(), sources, std::move(fillers), opts, true, in.output_mode(), &in), src);
  });
}

namespace {
// A safetensors image in the caller's memory, checked and parsed for write_bs.
struct BytesInput {
  detail::MappedFile in;
  detail::StFile st;
  std::vector<detail::Source> sources;
  std::vector<detail::Filler> fillers;
};

Status prepare_bytes(const uint8_t* data, uint64_t size, const CompressOptions& opts, const std::string& label,
                     BytesInput* b) {
  if (data == nullptr && size != 0) return Status(Error::kInvalidArgument, label + ": null data");
  BIGSMALL_RETURN_IF_ERROR(detail::check_zstd_level(opts.zstd_level).with_context(label));
  b->in = detail::MappedFile::borrow(data, size, label);
  return prepare_safetensors(b->in, label, &b->st, &b->sources, &b->fillers);
}
}  // namespace

Status compress_bytes(const uint8_t* data, uint64_t size, const std::string& dst, const CompressOptions& opts,
                      const std::string& label) {
  return detail::guarded(label, [&]() -> Status {
    if (dst.empty()) return Status(Error::kInvalidArgument, "empty output path");
    BytesInput b;
    BIGSMALL_RETURN_IF_ERROR(prepare_bytes(data, size, opts, label, &b));
    return naming_input(
        detail::write_bs(dst, b.st.header, size, b.sources, std::move(b.fillers), opts, true, std::nullopt, nullptr), label);
  });
}

Result<std::vector<uint8_t>> compress_bytes_to_memory(const uint8_t* data, uint64_t size, const CompressOptions& opts,
                                                      const std::string& label) {
  return detail::guarded(label, [&]() -> Result<std::vector<uint8_t>> {
    BytesInput b;
    BIGSMALL_RETURN_IF_ERROR(prepare_bytes(data, size, opts, label, &b));
    BIGSMALL_RETURN_IF_ERROR(naming_input(detail::check_sources(b.sources), label));
    detail::OutputFile out = detail::OutputFile::in_memory(label);
    out.reserve_memory(size + (uint64_t{1} << 20) + size / 64);  // as write_tensors_to_memory
    BIGSMALL_RETURN_IF_ERROR(naming_input(detail::write_bs_to(out, b.st.header, size, b.sources, std::move(b.fillers), opts, true), label));
    BIGSMALL_RETURN_IF_ERROR(out.commit());
    return out.take_memory();
  });
}

Status decompress_file(const std::string& src, const std::string& dst, const DecompressOptions& opts) {
  return detail::guarded(src, [&]() -> Status {
    BIGSMALL_RETURN_IF_ERROR(detail::check_not_input(src, dst));
    BIGSMALL_ASSIGN_OR_RETURN(BsFile f, BsFile::open(src));
    return f.restore(dst, opts);
  });
}

namespace {
// The first string that occurs more than once (sorts its argument).
std::optional<std::string> first_repeat(std::vector<std::string_view>& strings) {
  std::sort(strings.begin(), strings.end());
  const auto dup = std::adjacent_find(strings.begin(), strings.end());
  if (dup == strings.end()) return std::nullopt;
  return std::string(*dup);
}

// The tensors checked and laid out as safetensors' writer lays them out: the safetensors header
// and the sources in file order. `dst` names the output in messages.
Status lay_out_tensors(const std::string& dst, const std::vector<TensorView>& tensors,
                       const std::optional<Metadata>& metadata_or_none, std::string* header_out,
                       std::vector<detail::Source>* sources_out, uint64_t* original_size) {
  const Metadata metadata = metadata_or_none.value_or(Metadata{});
  std::vector<uint64_t> offsets;
  const auto bad = [&](Error e, const TensorView& t, const std::string& what) {
    return Status(e, dst + ": tensor '" + t.name + "': " + what);
  };
  for (const auto& t : tensors) {
    if (!dtype_valid(t.dtype)) return bad(Error::kUnknownDtype, t, "unknown dtype id " + std::to_string(static_cast<int>(t.dtype)));
    if (t.data == nullptr && t.nbytes != 0) return bad(Error::kInvalidArgument, t, "null data");
    if (t.shape.size() > 255) return bad(Error::kLimit, t, "more than 255 dimensions");
    uint64_t numel = 1;
    for (uint64_t d : t.shape) {
      if (d != 0 && numel > UINT64_MAX / d) return bad(Error::kInvalidArgument, t, "shape overflows 64 bits");
      numel *= d;
    }
    const auto need = dtype_nbytes(t.dtype, numel);
    if (!need || *need != t.nbytes) return bad(Error::kInvalidArgument, t, "byte size does not match shape and dtype");
    // Packed sub-byte values must fill whole bytes: safetensors refuses a tensor that ends
    // inside a byte, so the file this would restore to could not be read.
    if (const unsigned bits = dtype_info(t.dtype).bits; bits < 8 && (numel % 8) * bits % 8 != 0)
      return bad(Error::kInvalidArgument, t,
                 std::to_string(numel) + " " + std::string(dtype_info(t.dtype).safetensors_name) +
                     " values end inside a byte (safetensors refuses such tensors)");
  }
  // In the order safetensors' writer uses (dtype, highest rank first, then name, bytewise), so
  // that the restored file is the one safetensors would write for these tensors.
  std::vector<TensorView> laid_out(tensors);
  std::stable_sort(laid_out.begin(), laid_out.end(), [](const TensorView& a, const TensorView& b) {
    const int ra = dtype_info(a.dtype).safetensors_rank, rb = dtype_info(b.dtype).safetensors_rank;
    return ra != rb ? ra > rb : a.name < b.name;
  });
  {
    std::vector<std::string_view> names;
    for (const auto& t : laid_out) names.push_back(t.name);
    if (const auto dup = first_repeat(names)) return Status(Error::kInvalidArgument, dst + ": tensor '" + *dup + "' given twice");
    // The header's metadata key: a tensor under that name makes a file no reader accepts.
    if (std::binary_search(names.begin(), names.end(), std::string_view("__metadata__")))
      return Status(Error::kInvalidArgument, dst + ": a tensor cannot be named '__metadata__'");
    for (const auto& n : names) {
      if (!is_valid_utf8(n)) return Status(Error::kInvalidArgument, dst + ": a tensor name is not UTF-8");
      if (n.size() > UINT16_MAX)  // the caller's argument: named here, with the output
        return Status(Error::kInvalidArgument, dst + ": a tensor name of " + std::to_string(n.size()) +
                                                   " bytes (the .bs format holds names of up to 65535)");
    }
  }
  for (const auto& [key, value] : metadata) {
    if (!is_valid_utf8(key) || !is_valid_utf8(value)) return Status(Error::kInvalidArgument, dst + ": metadata is not UTF-8");
  }
  {
    std::vector<std::string_view> keys;
    for (const auto& kv : metadata) keys.push_back(kv.first);
    // The restored header would give the key twice, which compress (and safetensors) refuse.
    if (const auto dup = first_repeat(keys)) return Status(Error::kInvalidArgument, dst + ": metadata key '" + *dup + "' given twice");
  }
  std::string header = detail::make_safetensors_header(laid_out, metadata_or_none, &offsets);
  if (header.size() > detail::kMaxHeaderBytes) return Status(Error::kLimit, dst + ": safetensors header would exceed 100 MB");
  std::vector<detail::Source>& sources = *sources_out;
  sources.clear();
  uint64_t data_size = 0;
  for (size_t i = 0; i < laid_out.size(); ++i) {
    const auto& t = laid_out[i];
    sources.push_back({t.name, t.dtype, t.shape, t.data, t.nbytes, offsets[i]});
    data_size += t.nbytes;
  }
  *original_size = 8 + header.size() + data_size;
  *header_out = std::move(header);
  return Status::success();
}

constexpr const char* kMemoryLabel = "<memory>";
}  // namespace

Status write_tensors(const std::string& dst, const std::vector<TensorView>& tensors,
                     const std::optional<Metadata>& metadata, const CompressOptions& opts) {
  return detail::guarded(dst, [&]() -> Status {
    if (dst.empty()) return Status(Error::kInvalidArgument, "empty output path");
    BIGSMALL_RETURN_IF_ERROR(detail::check_zstd_level(opts.zstd_level).with_context(dst));
    std::string header;
    std::vector<detail::Source> sources;
    uint64_t original_size = 0;
    BIGSMALL_RETURN_IF_ERROR(lay_out_tensors(dst, tensors, metadata, &header, &sources, &original_size));
    return detail::write_bs(dst, header, original_size, sources, {}, opts, false, std::nullopt, nullptr);
  });
}

Result<std::vector<uint8_t>> write_tensors_to_memory(const std::vector<TensorView>& tensors,
                                                     const std::optional<Metadata>& metadata, const CompressOptions& opts) {
  return detail::guarded(kMemoryLabel, [&]() -> Result<std::vector<uint8_t>> {
    BIGSMALL_RETURN_IF_ERROR(detail::check_zstd_level(opts.zstd_level).with_context(kMemoryLabel));
    std::string header;
    std::vector<detail::Source> sources;
    uint64_t original_size = 0;
    BIGSMALL_RETURN_IF_ERROR(lay_out_tensors(kMemoryLabel, tensors, metadata, &header, &sources, &original_size));
    BIGSMALL_RETURN_IF_ERROR(detail::check_sources(sources).with_context(kMemoryLabel));
    detail::OutputFile out = detail::OutputFile::in_memory(kMemoryLabel);
    // A .bs is at most about its input's size (chunks that do not shrink are stored) plus header
    // and index; the index bound is generous, and pages never written are never committed.
    out.reserve_memory(original_size + (uint64_t{1} << 20) + original_size / 64);
    BIGSMALL_RETURN_IF_ERROR(detail::write_bs_to(out, header, original_size, sources, {}, opts, false));
    BIGSMALL_RETURN_IF_ERROR(out.commit());
    return out.take_memory();
  });
}

}  // namespace bigsmall
