// The .bs container (doc/FORMAT.md): compress and restore safetensors files and model
// directories, and random access to single tensors.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bigsmall/codec.hpp"

namespace bigsmall {

constexpr uint16_t kFormatVersionMajor = 1;
constexpr uint16_t kFormatVersionMinor = 2;

// Called from worker threads' owner with bytes done so far and the total.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;
// Told of each problem a check finds, as it finds it (a verify that goes on past damage).
using ProblemFn = std::function<void(const Status& problem)>;

struct CompressOptions {
  int threads = 0;  // <= 0: all cores, as many as the work can use; N: at most N
  bool overwrite = false;
  bool sync = true;  // fsync before the output is renamed into place
  int zstd_level = 9;  // for tensors with repeated structure; 19 (--best) is smaller and slower;
                       // a level outside zstd's (-131072 to 22 in zstd 1.5) is kInvalidArgument
  ProgressFn progress{};
};

struct DecompressOptions {
  int threads = 0;  // <= 0: all cores, as many as the work can use; N: at most N and one per chunk
  bool overwrite = false;
  bool sync = true;
  bool verify = true;  // chunk and tensor checksums
  ProgressFn progress{};
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;         // decoded size
  // Where the tensor's bytes lie in the original file: safetensors' data_offsets[0], an offset in
  // the data region, which starts at 8 + safetensors_header().size().
  uint64_t data_begin = 0;
  uint64_t stored_bytes = 0;   // payload size in the .bs file
  uint64_t floor_bits = 0;     // information content under the joint (sign+exponent, mantissa|exponent) model
  Codec codec = Codec::kStore;
  size_t chunks = 0;
};

// A safetensors header's "__metadata__": string keys and values, in order.
using Metadata = std::vector<std::pair<std::string, std::string>>;

namespace detail {
struct BsFileAccess;  // the implementation's way in (src/container/bsfile.cpp)
}  // namespace detail

// An open .bs file. The file is memory-mapped for the object's lifetime (no descriptor is
// held; open_memory reads the caller's bytes instead). Every read first checks that the file is not shorter than when it was opened
// (Error::kTruncated if another program cut it in place); a truncation during a read still makes
// it fault (SIGBUS; the CLI catches that and exits with a message). A file replaced by a rename
// stays readable as it was. Const members may be called from several threads at once. A
// default-constructed or moved-from BsFile is empty (is_open() false): it lists no tensors, its
// path is empty, and its reads, restore and verify return kInvalidArgument; coding(i) and
// payload(i) need an open file and i < tensors().size().
class BsFile {
 public:
  // Validates header, index and every tensor entry; reads no tensor data.
  static Result<BsFile> open(const std::string& path);
  // The same for a .bs held in memory (received over a network, say). The bytes are read in
  // place, not copied: they must stay alive and unchanged while the BsFile (or a move of it)
  // lives. `label` stands for the file name in messages and path().
  static Result<BsFile> open_memory(const uint8_t* data, uint64_t size, const std::string& label = "<memory>");
  BsFile();
  ~BsFile();
  BsFile(BsFile&&) noexcept;
  BsFile& operator=(BsFile&&) noexcept;

  bool is_open() const { return impl_ != nullptr; }
  const std::string& path() const;
  uint64_t file_size() const;
  uint64_t original_size() const;                // size of the safetensors file it restores
  // The header checksum (XXH3-64 of bytes [0, 56)): it covers the index checksum, which covers
  // every chunk's and tensor's checksum, so it names this file's contents (directory indexes
  // record it for each .bs).
  uint64_t fingerprint() const;
  const std::string& safetensors_header() const;  // the original JSON header, byte for byte
  const std::optional<Metadata>& metadata() const;  // its __metadata__ (nullopt: none), unescaped
  const std::vector<TensorInfo>& tensors() const;
  // The first tensor of that name (in index order); O(log n).
  std::optional<size_t> find(std::string_view name) const;

  // Decodes tensor i into out[0, tensors()[i].nbytes).
  Status read_tensor(size_t i, uint8_t* out, uint64_t out_size, const DecodeOptions& opts = {}) const;
  // Decodes tensors which[k] into outs[k][0, out_sizes[k]) with one pool, chunks of all of them
  // in parallel; each out_sizes[k] must be at least the tensor's nbytes, and no two outputs may
  // share a byte (kInvalidArgument). An index past tensors() is kInvalidArgument, as in read_tensor.
  Status read_tensors(const std::vector<size_t>& which, const std::vector<uint8_t*>& outs,
                      const std::vector<uint64_t>& out_sizes, const DecodeOptions& opts = {}) const;
  // Decodes bytes [begin, begin + out_size) of tensor i into out, decoding only the chunks that
  // hold them (a slice of a large tensor costs its own size, not the tensor's memory). With
  // opts.verify, the checksum of every chunk read is checked, and the first range read of a
  // tensor with tables also decodes the whole tensor once (in bounded memory) to check its
  // checksum: the tables have no checksum of their own, and damage there could decode wrongly.
  Status read_tensor_range(size_t i, uint64_t begin, uint8_t* out, uint64_t out_size,
                           const DecodeOptions& opts = {}) const;
  // Rebuilds the original safetensors file.
  Status restore(const std::string& out_path, const DecompressOptions& opts = {}) const;
  // The original safetensors file's bytes, front to back, through `write` (a pipe, a socket):
  // the header in one call, then a few MiB per call (2 MiB per thread, at least 4; bytes outside
  // tensors larger than that in one call), so memory stays bounded however large the tensors.
  // Chunk checksums are checked before their bytes are written; a tensor's own checksum (the
  // only check of its tables) before it is written for tensors up to a batch, after its last
  // bytes for larger ones (as zstd checks a frame's). A failure stops the stream and what was
  // written stays written: for damage in a large tensor's tables that may be wrong bytes, so a
  // caller must act on the returned Status, not on the bytes alone. A non-success Status from
  // `write` stops the restore and is returned as it is. opts.overwrite and opts.sync do not apply.
  Status restore_to(const std::function<Status(const uint8_t* data, uint64_t size)>& write,
                    const DecompressOptions& opts = {}) const;
  // Decodes everything and checks every checksum; the first problem found is returned.
  Status verify(const DecompressOptions& opts = {}) const;

  // Raw access for other decoders (GPU): coding and payload bytes of tensor i (i < tensors().size();
  // the pointer lives as long as this object).
  const TensorCoding& coding(size_t i) const;
  const uint8_t* payload(size_t i) const;
  // kTruncated naming the file when another program has cut it short since it was opened (its
  // payload pages past the new end would fault, SIGBUS, when read). Such decoders call it
  // before they read payload bytes, as this class's own reads do.
  Status check_not_truncated() const;


 private:
  friend struct detail::BsFileAccess;
  struct Impl;  // defined in src/container/bsfile.cpp
  std::unique_ptr<Impl> impl_;
};

// A tensor held in memory, for writing .bs files without a safetensors file in between.
struct TensorView {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
};

// Outputs are written under a temporary name and renamed into place; they take the input's
// permission bits less the umask (as zstd and gzip do: a private checkpoint stays private, and a
// read-only input gives a read-only output).
Status compress_file(const std::string& src, const std::string& dst, const CompressOptions& opts = {});
Status decompress_file(const std::string& src, const std::string& dst, const DecompressOptions& opts = {});
// compress_file for a safetensors file held in memory (read from a pipe, say): the same .bs,
// byte for byte, written to dst, or returned. `label` names the input in messages. The output
// takes the default permissions (0644 less the umask) and the current time.
Status compress_bytes(const uint8_t* data, uint64_t size, const std::string& dst, const CompressOptions& opts = {},
                      const std::string& label = "<memory>");
Result<std::vector<uint8_t>> compress_bytes_to_memory(const uint8_t* data, uint64_t size, const CompressOptions& opts = {},
                                                      const std::string& label = "<memory>");
// For readers of a stream (stdin, a pipe), what the first `available` bytes of a file tell
// before the rest arrives: 0 while more bytes are needed to tell; else the size its header
// declares (a .bs: exactly; a safetensors file: at least, as bytes may follow its last tensor);
// or the error those bytes already show (not that kind of file, a newer version, a header that
// lies), with the message opening the whole would give. `label` names it in messages.
Result<uint64_t> declared_bs_size(const uint8_t* data, uint64_t available, const std::string& label = "<memory>");
Result<uint64_t> declared_safetensors_size(const uint8_t* data, uint64_t available, const std::string& label = "<memory>");
// Writes tensors as a .bs whose restore is the safetensors file that safetensors itself would
// write for them: laid out as its writer lays them out (by its dtype enum, highest first, then
// by name), whatever the order given; names must be unique and none may be "__metadata__".
// Metadata is written in the order given (safetensors orders several keys at random); nullopt
// writes no "__metadata__" entry, an empty list an empty one (as safetensors does for {}).
Status write_tensors(const std::string& dst, const std::vector<TensorView>& tensors,
                     const std::optional<Metadata>& metadata, const CompressOptions& opts = {});
// The same .bs, byte for byte, returned in memory instead of written to a file (messages name it
// "<memory>"; opts.overwrite and opts.sync do not apply).
Result<std::vector<uint8_t>> write_tensors_to_memory(const std::vector<TensorView>& tensors,
                                                     const std::optional<Metadata>& metadata,
                                                     const CompressOptions& opts = {});

// Model directories: every *.safetensors becomes a .bs, every other file is copied, and
// bigsmall.index.json records the mapping; decompress_dir restores the original directory.
constexpr const char* kDirIndexName = "bigsmall.index.json";
// The layout version of that index (FORMAT.md, Directories), not the .bs format's: the two were
// both 1 and were once compared as one.
constexpr uint32_t kDirIndexLayoutVersion = 1;
Status compress_dir(const std::string& src, const std::string& dst, const CompressOptions& opts = {});
Status decompress_dir(const std::string& src, const std::string& dst, const DecompressOptions& opts = {});
// Decodes everything and checks every checksum of a .bs file or a compressed model directory
// (its index, every .bs it lists, every file it copied along), returning the first problem.
// With `each`, a directory's files after a damaged one are checked too, and every problem is
// passed to `each` as it is found (the returned one included), so that all the damage is named
// in one run.
Status verify_path(const std::string& path, const DecompressOptions& opts = {}, const ProblemFn& each = nullptr);
// The .bs files of a compressed model directory, as paths under it, in the order of its index
// (names with '..', '.' or an absolute path are refused; symbolic links are followed, as in a
// Hugging Face cache snapshot). With check_files, each file's header is read and checked against
// its index entry (size and bs_checksum where the index has them): a missing, damaged, swapped
// or replaced file is an error. Without, the index alone is read (to list what to remove).
Result<std::vector<std::string>> model_dir_files(const std::string& dir, bool check_files = true);
// The *.safetensors files compress_dir would compress, as paths under dir, sorted: the same walk
// (links followed; a link loop, a dangling link or a pipe is an error).
Result<std::vector<std::string>> model_dir_safetensors(const std::string& dir);
// The files a compressed model directory copied along (config, tokenizer), against the sizes and
// checksums its index lists (success when it lists none: an earlier writer's index); `only`, when
// not empty, names the paths (as the index spells them) to check, and a name the list does not
// hold is not checked (a file added after compression is not the index's to vouch for). For loaders that read such
// files from the directory itself (missing_ok: a listed file that is not there is left to the
// loader that needs it to name); verify_path checks them all and more.
Status verify_copied_files(const std::string& dir, const std::vector<std::string>& only = {}, bool missing_ok = false);

// Deletes the temporary files of outputs still being written. Async-signal-safe: for SIGINT
// and SIGTERM handlers, so an interrupted run leaves nothing behind. Meant for the way out: a
// -f merge into an existing directory that another thread is running is let finish first, and
// none starts afterwards in this process (it fails).
void remove_partial_outputs();
// Outputs are written under temporary names beside the final one ("NAME.tmp-bigsmall-L<pid>-<n>";
// directories hidden, ".NAME..."), which a run killed beyond any cleanup (SIGKILL, the OOM killer)
// leaves behind. Each output first removes those an earlier attempt at the same output left:
// this user's, a minute old or more, and held by no live run (writers keep theirs locked; the
// kernel drops a dead process's locks). This returns the paths removed since the last call, for
// a note to the user, and forgets them.
std::vector<std::string> take_removed_temporaries();
// What every output does first, for writers of their own (the Python package's staged saves):
// removes the temporaries of killed attempts at `output` (listed by take_removed_temporaries()).
void remove_stale_temporaries(const std::string& output);
// For SIGBUS handlers: the path of the input file the library has mapped at `addr` (a fault
// there means another program truncated the file while it was read), or null. Async-signal-safe.
const char* mapped_input_at(const void* addr);

}  // namespace bigsmall
