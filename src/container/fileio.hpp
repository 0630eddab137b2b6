// File access for the container: read-only mappings for inputs, and outputs that are written
// under a temporary name and renamed into place only when complete.
#pragma once
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bigsmall/status.hpp"

namespace bigsmall::detail {

Status errno_status(const std::string& path, const std::string& what, int err);
// The process umask as it is now (read without changing it; 077 where it cannot be read).
unsigned process_umask();

// Tests only: the n-th OutputFile::write_pieces call from now on (1 = the next) fails as on a
// full disk, once; 0 turns it off.
void fail_write_pieces_for_testing(int n);
// Tests only: the n-th OutputFile::pwrite call to a file from now on (1 = the next) fails as on
// a full disk, once; 0 turns it off.
void fail_pwrite_for_testing(int n);
// Tests only: a -f merge into an existing directory fails (as a refused rename) before it moves
// its (n+1)-th file in, once; -1 turns it off.
void fail_merge_after_for_testing(int n);
// Tests only: the process ends (_exit(77), no cleanup: as kill -9) when a -f merge into a directory
// has placed n files (n < 0: never).
void exit_in_merge_after_for_testing(int n);
// Tests only: false makes -f merges take the path of file systems that cannot exchange two names.
void merge_exchange_for_testing(bool on);
// Tests only: outputs open again after a remove_pending_outputs (which closes them for good).
void reopen_outputs_for_testing();

class MappedFile {
 public:
  static Result<MappedFile> open(const std::string& path);
  // Bytes the caller holds, read in place as if they were a file's mapping (not copied: they must
  // stay alive and unchanged for this object's life). `label` stands for the file name in
  // messages; the file checks below have no file to look at and pass.
  static MappedFile borrow(const uint8_t* data, uint64_t size, std::string label);
  bool borrowed() const { return borrowed_; }
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept { *this = std::move(o); }
  MappedFile& operator=(MappedFile&& o) noexcept;
  ~MappedFile();
  // An error if the file is now shorter than its mapping (another program truncated or
  // rewrote it in place): reading the pages past its end would fault (SIGBUS). Checked before
  // each read, by path (no descriptor is held: a model of thousands of shards would run out);
  // a truncation during a read still faults. A file replaced by a rename or deleted is not this
  // one any more: the mapping keeps the old one, which stays readable.
  Status check_not_truncated() const;
  // An error if another program changed the file since it was opened (size, modification or
  // status-change time): a file rewritten in place while it was read would otherwise give an
  // output that matches neither version (as tar's "file changed as we read it"). Checked after
  // the last read, before the output is committed.
  Status check_unchanged() const;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Permission bits an output made from this file takes (as zstd and gzip give theirs): those of
  // the file, less the umask, so that a private checkpoint does not come out world-readable.
  unsigned output_mode() const { return mode_ & 0777 & ~process_umask(); }
  // Modification time as opened: an output made from this file takes it, as zstd's and gzip's do.
  const struct timespec& mtime() const { return mtime_; }
  uid_t uid() const { return uid_; }
  gid_t gid() const { return gid_; }

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  bool borrowed_ = false;  // data_ is the caller's, not a mapping of ours
  unsigned mode_ = 0644;
  uint64_t dev_ = 0, ino_ = 0;  // which file was mapped, for check_not_truncated
  struct timespec mtime_ {}, ctime_ {};  // as opened, for check_unchanged
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  std::string path_;
  // path_ made absolute at open, for the checks: a program that changes its working directory
  // after opening a file by a relative name must still have that file checked (with path_ the
  // check would stat another file, or none, and let a read fault on a truncated mapping).
  std::string stat_path_;
  // The status of the file this maps, found by name; false when no name leads to it any more.
  bool stat_self(struct stat* st) const;
};

// Maps the pages of [p, p + n) of a file mapping in one call (advice: ignored where the kernel
// cannot). Touching them one by one costs a fault per few pages, a visible share of a pass
// that reads each byte once.
void populate(const void* p, uint64_t n, bool for_write = false);

class OutputFile {
 public:
  // Fails if final_path exists and overwrite is false.
  static Result<OutputFile> create(const std::string& final_path, bool overwrite);
  // An output that collects its bytes in memory (no file, no temporary name); `label` names it in
  // messages. commit() only marks it done; take_memory() hands the bytes over.
  static OutputFile in_memory(std::string label);
  std::vector<uint8_t> take_memory() { return std::move(memory_); }
  // Room for n bytes of an in-memory output up front: growth by doubling would end with up to
  // twice the output reserved (pages never written cost nothing).
  void reserve_memory(uint64_t n) {
    if (in_memory_ && n <= memory_.max_size()) memory_.reserve(n);
  }
  OutputFile() = default;
  OutputFile(OutputFile&& o) noexcept { *this = std::move(o); }
  OutputFile& operator=(OutputFile&& o) noexcept;
  ~OutputFile();  // removes the temporary file unless committed

  Status write(const void* p, uint64_t n);                    // appends
  // Appends the pieces in order, in as few system calls as the kernel allows: a batch of
  // hundreds of small chunks cost a syscall each.
  struct Piece {
    const void* p;
    uint64_t n;
  };
  Status write_pieces(const std::vector<Piece>& pieces);
  Status pwrite(const void* p, uint64_t n, uint64_t offset);  // at an absolute offset
  uint64_t size() const { return pos_; }
  // Reserves n bytes on disk where the file system can (so a full disk fails here, not later).
  Status reserve(uint64_t n);
  // The permission bits the file gets when committed (default 0644 less the umask). The
  // temporary file is 0600 until then, so that a private input is never readable by others
  // while it is written (a reader could keep the descriptor past a later chmod).
  void set_permissions(unsigned mode) { mode_ = mode; }
  // The modification time the file gets when committed (default: when it was written): that of
  // the input it restores or compresses, so that make, rsync -u and the like see the model's age.
  void set_mtime(const struct timespec& t) {
    mtime_ = t;
    has_mtime_ = true;
  }
  // The input's owner and group: taken when running as root (as zstd's outputs take them), so
  // that weights compressed in a root container stay their owner's.
  void set_owner(uid_t uid, gid_t gid) {
    uid_ = uid;
    gid_ = gid;
    has_owner_ = true;
  }
  // All three from the file an output is made from.
  void take_attributes(const MappedFile& from) {
    set_permissions(from.output_mode());
    set_mtime(from.mtime());
    set_owner(from.uid(), from.gid());
  }
  Status commit(bool sync = true);  // flush (fsync when sync), close, rename over the final name
  const std::string& final_path() const { return final_; }

 private:
  int fd_ = -1;
  bool in_memory_ = false;
  std::vector<uint8_t> memory_;  // the bytes of an in-memory output
  std::string final_, temp_;
  uint64_t pos_ = 0;
  bool committed_ = false;
  bool overwrite_ = false;
  unsigned mode_ = 0644;
  struct timespec mtime_ {};
  bool has_mtime_ = false;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  bool has_owner_ = false;
};

// Removes every temporary output still open: called from signal handlers (async-signal-safe).
void remove_pending_outputs();
// Deepest directory a model directory may hold (links that loop back up would otherwise never
// end); the signal cleanup empties trees one level deeper than this.
constexpr int kMaxDirDepth = 64;
// A directory being built under a temporary name: remove_pending_outputs removes it and all
// it holds.
void register_pending_dir(const std::string& p);

// While one lives, the signals that end the process are held off: masked on this thread, and a
// cleanup handler (remove_pending_outputs) on another thread waits for it to end. For the few
// renames that move an output into place, so that a signal cannot leave it half moved. Once a
// cleanup has begun, outputs are closed: a hold begun later says so, and nothing may be moved.
class SignalsHeld {
 public:
  SignalsHeld();
  ~SignalsHeld();
  SignalsHeld(const SignalsHeld&) = delete;
  SignalsHeld& operator=(const SignalsHeld&) = delete;
  bool outputs_closed() const { return closed_; }

 private:
  sigset_t old_;
  bool closed_ = false;
};
void unregister_pending_dir(const std::string& p);
// A parent directory created for an output: remove_pending_outputs removes it if it is empty.
void register_made_parent(const std::string& p);
void unregister_made_parent(const std::string& p);

// A temporary name beside `path`: its name (after a dot when hidden) and `suffix`, the name cut
// at a character boundary where the whole would pass the 255 bytes a name may have (an output
// whose own name fits must not fail for its temporary one).
std::string temp_beside(const std::string& path, const std::string& suffix, bool hidden);
// ".tmp-bigsmall-PID-N".
std::string temp_suffix(unsigned n);

// Removes the temporaries ("NAME.tmp-bigsmall-LPID-N" files, ".NAME.tmp-bigsmall-LPID-N"
// directories) that earlier attempts at the output `output` left when killed beyond any cleanup
// (SIGKILL, the OOM killer, a power cut): only this output's, only this user's, at least a
// minute old, not open as an input here, and only those no run holds: every writer keeps its
// temporary locked (flock) until it is renamed into place, and the kernel drops the lock when the
// process dies, whatever killed it. Only on local file systems (on_local_file_system: elsewhere a
// lock may not reach other hosts); where locks fail, nothing is removed. Each directory is read
// once per process. What it removes is kept for take_removed_temporaries().
void remove_stale_temporaries(const std::string& output);
// While one lives, the directory (or file) at `path` counts as an input this process reads, which
// remove_stale_temporaries never removes (a model directory given as an input whose name looks
// like a temporary's). Files opened as MappedFile count already.
class InputInUse {
 public:
  explicit InputInUse(const std::string& path);
  ~InputInUse();
  InputInUse(const InputInUse&) = delete;
  InputInUse& operator=(const InputInUse&) = delete;

 private:
  uint64_t dev_ = 0, ino_ = 0;
  bool noted_ = false;
};
// Tests only: the age from which an unlocked temporary output counts as left behind (seconds;
// negative restores the minute), and forgetting which directories were looked at.
void set_stale_age_for_testing(int64_t seconds);

bool path_is_dir(const std::string& p);
bool path_exists(const std::string& p);
// Refuses an output that is its input (the same file or directory, by device and inode): with
// -f the input would be replaced by its own compressed bytes.
Status check_not_input(const std::string& src, const std::string& dst);

}  // namespace bigsmall::detail
