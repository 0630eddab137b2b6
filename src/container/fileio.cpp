#include "container/fileio.hpp"

#include "bigsmall/container.hpp"
#include "common/fork_safe.hpp"

#include <dirent.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace bigsmall::detail {

Status errno_status(const std::string& path, const std::string& what, int err) {
  const Error code = (err == ENOSPC || err == EDQUOT || err == EFBIG) ? Error::kNoSpace
                     : err == ENOMEM                                 ? Error::kOutOfMemory  // a mapping larger than memory allows
                                                                     : Error::kIo;
  // An empty name shown as '': a message opening with ": " names nothing.
  return Status(code, (path.empty() ? std::string("''") : path) + ": " + what + ": " + std::strerror(err)).with_errno(err);
}

bool path_is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool path_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

Status check_not_input(const std::string& src, const std::string& dst) {
  struct stat in, out;
  if (::stat(src.c_str(), &in) != 0 || ::stat(dst.c_str(), &out) != 0) return Status::success();
  if (in.st_dev == out.st_dev && in.st_ino == out.st_ino)
    return Status(Error::kInvalidArgument, dst + ": output and input are the same (choose another output name)");
  return Status::success();
}

// ---- pending temporary outputs, for cleanup on SIGINT/SIGTERM --------------------------------
namespace {
constexpr int kSlots = 64;
constexpr int kPathMax = 4096;
// Slot states: 0 free, 1 being written or cleared (the handler skips it), 2 holds a path.
// Outputs take the first kSlots, parents made for them the next kSlots: a deep -o path must not
// take the slots of the outputs themselves.
char g_pending[2 * kSlots][kPathMax];
std::atomic<int> g_state[2 * kSlots];
enum class Pending : uint8_t { kFile, kDir, kMadeParent };
Pending g_kind[2 * kSlots];  // written before the slot's state becomes 2

int register_pending(const std::string& p, Pending kind = Pending::kFile) {
  if (p.size() >= kPathMax) return -1;
  const int first = kind == Pending::kMadeParent ? kSlots : 0;
  for (int i = first; i < first + kSlots; ++i) {
    int expected = 0;
    if (g_state[i].compare_exchange_strong(expected, 1)) {
      std::memcpy(g_pending[i], p.c_str(), p.size() + 1);
      g_kind[i] = kind;
      g_state[i].store(2);
      return i;
    }
  }
  return -1;
}
void unregister_pending(const std::string& p) {
  for (int i = 0; i < 2 * kSlots; ++i) {
    int expected = 2;
    if (g_state[i].load() == 2 && p == g_pending[i] && g_state[i].compare_exchange_strong(expected, 1)) {
      g_state[i].store(0);
      return;
    }
  }
}
// Removes a directory tree with async-signal-safe calls only (no allocation, fixed buffers),
// rescanning while a pass removes something (entries removed during a scan may hide others).
// Returns whether `name` is gone.
bool remove_tree(int parent, const char* name, int depth) {
  const int fd = ::openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return ::unlinkat(parent, name, 0) == 0;
  for (bool removed = true; removed && depth <= kMaxDirDepth + 1;) {
    removed = false;
    ::lseek(fd, 0, SEEK_SET);
    alignas(8) char buf[1024];
    for (ssize_t n; (n = ::getdents64(fd, buf, sizeof buf)) > 0;) {
      for (ssize_t off = 0; off < n;) {
        const auto* d = reinterpret_cast<const struct dirent64*>(buf + off);
        off += d->d_reclen;
        if (std::strcmp(d->d_name, ".") == 0 || std::strcmp(d->d_name, "..") == 0) continue;
        const bool dir = d->d_type == DT_DIR || (d->d_type == DT_UNKNOWN && ::unlinkat(fd, d->d_name, 0) != 0 && errno == EISDIR);
        if (dir ? remove_tree(fd, d->d_name, depth + 1) : ::unlinkat(fd, d->d_name, 0) == 0 || errno == ENOENT) removed = true;
      }
    }
  }
  ::close(fd);
  return ::unlinkat(parent, name, AT_REMOVEDIR) == 0;
}
}  // namespace

void register_pending_dir(const std::string& p) { register_pending(p, Pending::kDir); }
void unregister_pending_dir(const std::string& p) { unregister_pending(p); }
void register_made_parent(const std::string& p) { register_pending(p, Pending::kMadeParent); }
void unregister_made_parent(const std::string& p) { unregister_pending(p); }

namespace {
std::atomic<int> g_held{0};       // SignalsHeld alive (on some thread)
std::atomic<bool> g_dying{false};  // a cleanup handler has begun: no hold may start now
}  // namespace

SignalsHeld::SignalsHeld() {
  sigset_t all;
  ::sigfillset(&all);
  for (int sync : {SIGBUS, SIGSEGV, SIGFPE, SIGILL, SIGTRAP, SIGSYS}) ::sigdelset(&all, sync);  // faults stay faults
  ::pthread_sigmask(SIG_BLOCK, &all, &old_);
  g_held.fetch_add(1);
  // A handler on another thread that looked before this hold began is removing the outputs and
  // will end the process: moving files now would race it. (Both sides write, then read the
  // other's flag, sequentially consistent: one of them sees the other.)
  if (g_dying.load()) {
    g_held.fetch_sub(1);
    closed_ = true;
  }
}

SignalsHeld::~SignalsHeld() {
  if (!closed_) g_held.fetch_sub(1);
  ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);  // a signal that came meanwhile is handled now
}

void reopen_outputs_for_testing() { g_dying.store(false); }

void remove_pending_outputs() {
  const int saved = errno;
  g_dying.store(true);
  // Renames moving an output into place are running on another thread: let them finish.
  for (int waited = 0; g_held.load() > 0 && waited < 10000; ++waited) {
    const struct timespec ms{0, 1000000};
    ::nanosleep(&ms, nullptr);
  }
  for (int i = 0; i < kSlots; ++i)
    if (g_state[i].load() == 2 && g_kind[i] == Pending::kFile) ::unlink(g_pending[i]);
  for (int i = 0; i < kSlots; ++i)
    if (g_state[i].load() == 2 && g_kind[i] == Pending::kDir) remove_tree(AT_FDCWD, g_pending[i], 0);
  // Parents made for an output, if empty now; a parent goes once its children have gone, in
  // whatever slots they are.
  for (bool removed = true; removed;) {
    removed = false;
    for (int i = kSlots; i < 2 * kSlots; ++i)
      if (g_state[i].load() == 2 && g_kind[i] == Pending::kMadeParent && ::rmdir(g_pending[i]) == 0) removed = true;
  }
  errno = saved;
}

// ---- mapped inputs, for naming the file in a SIGBUS message ---------------------------------
namespace {
// Slot states as for pending outputs: 0 free, 1 being written or cleared, 2 holds a mapping.
struct MapSlot {
  std::atomic<int> state{0};
  uintptr_t begin = 0, end = 0;
  char path[kPathMax];
};
MapSlot g_maps[kSlots];

void register_mapping(const uint8_t* p, uint64_t n, const std::string& path) {
  if (p == nullptr || path.size() >= kPathMax) return;
  for (auto& m : g_maps) {
    int expected = 0;
    if (m.state.compare_exchange_strong(expected, 1)) {
      m.begin = reinterpret_cast<uintptr_t>(p);
      m.end = m.begin + n;
      std::memcpy(m.path, path.c_str(), path.size() + 1);
      m.state.store(2);
      return;
    }
  }
}
void unregister_mapping(const uint8_t* p) {
  if (p == nullptr) return;
  for (auto& m : g_maps) {
    int expected = 2;
    if (m.state.load() == 2 && m.begin == reinterpret_cast<uintptr_t>(p) && m.state.compare_exchange_strong(expected, 1)) {
      m.state.store(0);
      return;
    }
  }
}
}  // namespace

// ---- MappedFile ----------------------------------------------------------------------------
namespace {
// Files this process has open as inputs (MappedFile), by identity: a run reading a temporary
// output of a killed run (salvaging it) must not have its input removed under it.
std::mutex g_inputs_mu;
std::multiset<std::pair<uint64_t, uint64_t>> g_inputs;  // (dev, ino), under g_inputs_mu
const bool g_inputs_fork_safe = (hold_across_fork(&g_inputs_mu), true);
void note_input(uint64_t dev, uint64_t ino, bool open) {
  std::lock_guard<std::mutex> lk(g_inputs_mu);
  if (open) g_inputs.insert({dev, ino});
  else if (auto it = g_inputs.find({dev, ino}); it != g_inputs.end()) g_inputs.erase(it);
}
bool is_open_input(uint64_t dev, uint64_t ino) {
  std::lock_guard<std::mutex> lk(g_inputs_mu);
  return g_inputs.count({dev, ino}) != 0;
}

// `path` prefixed with the working directory when it is relative; as given when that cannot be
// had (a deleted working directory: the check then stats the name as given, as before).
std::string absolute_path(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  std::vector<char> buf(4096);
  while (::getcwd(buf.data(), buf.size()) == nullptr) {
    if (errno != ERANGE || buf.size() > (1u << 20)) return path;
    buf.resize(buf.size() * 2);
  }
  std::string out(buf.data());
  if (out.empty() || out.back() != '/') out += '/';
  return out + path;
}
}  // namespace

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  std::swap(data_, o.data_);
  std::swap(size_, o.size_);
  std::swap(borrowed_, o.borrowed_);
  std::swap(mode_, o.mode_);
  std::swap(dev_, o.dev_);
  std::swap(ino_, o.ino_);
  std::swap(mtime_, o.mtime_);
  std::swap(ctime_, o.ctime_);
  std::swap(uid_, o.uid_);
  std::swap(gid_, o.gid_);
  std::swap(path_, o.path_);
  std::swap(stat_path_, o.stat_path_);
  return *this;
}

MappedFile::~MappedFile() {
  if (borrowed_) return;
  if (!path_.empty()) note_input(dev_, ino_, false);
  unregister_mapping(data_);
  if (data_ && size_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

bool MappedFile::stat_self(struct stat* st) const {
  // By the absolute name first (the working directory may have changed since the open), then by
  // the name as given (the absolute one may be too long for stat, or its directory renamed).
  for (const std::string* p : {&stat_path_, &path_})
    if (!p->empty() && ::stat(p->c_str(), st) == 0 && static_cast<uint64_t>(st->st_dev) == dev_ &&
        static_cast<uint64_t>(st->st_ino) == ino_)
      return true;
  return false;  // renamed over or deleted: the mapping keeps the file as it was opened
}

Status MappedFile::check_not_truncated() const {
  struct stat st;
  if (borrowed_ || !stat_self(&st) || static_cast<uint64_t>(st.st_size) >= size_) return Status::success();
  return Status(Error::kTruncated, path_ + ": truncated by another program while open (" + std::to_string(size_) +
                                       " bytes when opened, " + std::to_string(st.st_size) + " now)");
}

Status MappedFile::check_unchanged() const {
  struct stat st;
  if (borrowed_ || !stat_self(&st)) return Status::success();  // renamed over or deleted: the mapping kept the file as opened
  auto same = [](const struct timespec& a, const struct timespec& b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; };
  if (static_cast<uint64_t>(st.st_size) != size_ || !same(st.st_mtim, mtime_) || !same(st.st_ctim, ctime_))
    return Status(Error::kTruncated, path_ + ": changed by another program while it was read (nothing written; run again)");
  return Status::success();
}

MappedFile MappedFile::borrow(const uint8_t* data, uint64_t size, std::string label) {
  MappedFile m;
  m.data_ = data;
  m.size_ = size;
  m.borrowed_ = true;
  m.path_ = std::move(label);
  return m;
}

Result<MappedFile> MappedFile::open(const std::string& path) {
  // Non-blocking, so that a FIFO is refused below instead of waiting forever for a writer
  // (regular files ignore the flag).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno_status(path, "cannot open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return errno_status(path, "cannot stat", e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return S_ISDIR(st.st_mode) ? Status(Error::kIo, path + ": is a directory").with_errno(EISDIR)
                               : Status(Error::kIo, path + ": not a regular file (a device, pipe or socket)");
  }
  MappedFile m;
  m.path_ = path;
  m.stat_path_ = absolute_path(path);
  m.size_ = static_cast<uint64_t>(st.st_size);
  m.mode_ = static_cast<unsigned>(st.st_mode);
  if (m.size_ > 0) {
    void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      return errno_status(path, "cannot map", e);
    }
    m.data_ = static_cast<const uint8_t*>(p);
    register_mapping(m.data_, m.size_, path);
  }
  m.dev_ = static_cast<uint64_t>(st.st_dev);
  m.ino_ = static_cast<uint64_t>(st.st_ino);
  note_input(m.dev_, m.ino_, true);
  m.mtime_ = st.st_mtim;
  m.ctime_ = st.st_ctim;
  m.uid_ = st.st_uid;
  m.gid_ = st.st_gid;
  ::close(fd);
  return m;
}

void populate(const void* p, uint64_t n, bool for_write) {
  if (n == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + n;
#ifdef MADV_POPULATE_READ
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, for_write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0)
    return;
#endif
  (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
}

// ---- OutputFile ----------------------------------------------------------------------------
OutputFile& OutputFile::operator=(OutputFile&& o) noexcept {
  std::swap(fd_, o.fd_);
  std::swap(in_memory_, o.in_memory_);
  std::swap(memory_, o.memory_);
  std::swap(final_, o.final_);
  std::swap(temp_, o.temp_);
  std::swap(pos_, o.pos_);
  std::swap(committed_, o.committed_);
  std::swap(overwrite_, o.overwrite_);
  std::swap(mode_, o.mode_);
  std::swap(mtime_, o.mtime_);
  std::swap(has_mtime_, o.has_mtime_);
  std::swap(uid_, o.uid_);
  std::swap(gid_, o.gid_);
  std::swap(has_owner_, o.has_owner_);
  return *this;
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) {
    ::unlink(temp_.c_str());
    unregister_pending(temp_);
  }
}

namespace {
// Where an output named `path` goes when -f lets it replace what is there: the file a link
// points to (the link stays, as when a shell redirects through it), never a device, pipe or
// socket, which the rename of a finished output would replace by a regular file (as root,
// `-f -o /dev/null` would have replaced /dev/null).
Result<std::string> overwrite_target(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return path;  // nothing there (or unreachable: create reports it)
  std::string target = path;
  if (S_ISLNK(st.st_mode)) {
    // /dev/stdout and /proc/self/fd/N lead to a pipe or terminal that realpath cannot name
    // ("pipe:[N]"): stat follows them, and such a target is refused below, not taken for a
    // link to a file not created yet.
    struct stat through;
    if (::stat(path.c_str(), &through) == 0 && !S_ISREG(through.st_mode)) {
      st = through;
    } else if (char* resolved = ::realpath(path.c_str(), nullptr); resolved == nullptr && errno == ENOENT) {
      // A link to a file not there yet: it is created, as a shell's redirection would.
      char buf[4096];
      const ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
      if (n <= 0) return errno_status(path, "cannot follow link", errno);
      std::string to(buf, static_cast<size_t>(n));
      const size_t slash = path.rfind('/');
      if (to[0] != '/' && slash != std::string::npos) to = path.substr(0, slash + 1) + to;
      return to;
    } else {
      if (resolved == nullptr) return errno_status(path, "cannot follow link", errno);
      target = resolved;
      std::free(resolved);
      if (::stat(target.c_str(), &st) != 0) return errno_status(path, "cannot follow link", errno);
    }
  }
  if (S_ISDIR(st.st_mode)) return Status(Error::kIo, path + ": is a directory").with_errno(EISDIR);
  if (!S_ISREG(st.st_mode))
    return Status(Error::kIo, path + ": not a regular file (a device, pipe or socket): bigsmall writes files; "
                                     "`bigsmall verify` decodes without writing");
  return target;
}
}  // namespace

// ---- temporaries left by killed runs ----------------------------------------------------------
namespace {
constexpr int64_t kStaleAgeSeconds = 60;
std::atomic<int64_t> stale_age{kStaleAgeSeconds};
std::mutex g_stale_mu;
// Directories looked at, by device, inode and birth time: a long-lived process creates and
// deletes directories whose inodes come back (tests, notebooks), and a new directory under an
// old inode must be looked at too. Where the file system keeps no birth time, device and inode.
// With each, the names in it of the temporary form, as found then (acted on output by output).
std::map<std::tuple<uint64_t, uint64_t, int64_t, uint32_t>, std::vector<std::string>> g_stale_dirs_seen;  // under g_stale_mu
std::vector<std::string> g_stale_removed;  // under g_stale_mu
const bool g_stale_fork_safe = (hold_across_fork(&g_stale_mu), true);

// A name temp_beside(..., temp_suffix(n), ...) makes: "NAME.tmp-bigsmall-LPID-N", NAME not empty.
bool is_temp_name(std::string_view name) {
  constexpr std::string_view kMark = ".tmp-bigsmall-L";
  const size_t at = name.rfind(kMark);
  if (at == std::string_view::npos || at == 0) return false;
  const std::string_view rest = name.substr(at + kMark.size());
  const size_t dash = rest.find('-');
  auto digits = [](std::string_view v) {
    return !v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return dash != std::string_view::npos && digits(rest.substr(0, dash)) && digits(rest.substr(dash + 1));
}

// Whether `name` (of the temporary form) is a temporary of the output named `base`: base or
// ".base" before the suffix, or a prefix of either where temp_beside cut a long name.
bool temporary_of(std::string_view name, std::string_view base) {
  const std::string_view stem = name.substr(0, name.rfind(".tmp-bigsmall-L"));
  auto matches = [&](std::string_view s) {
    if (s == base) return true;
    return name.size() >= 240 && s.size() < base.size() && base.substr(0, s.size()) == s;  // cut at 255 bytes
  };
  return matches(stem) || (!stem.empty() && stem[0] == '.' && matches(stem.substr(1)));
}

// Locks on network and FUSE file systems may hold on one host only (NFS directories, nolock
// mounts, sshfs, object-store mounts), so that another host's live run would look dead: only
// file systems local to this kernel are swept.
bool on_local_file_system(int fd) {
  struct statfs fs;
  if (::fstatfs(fd, &fs) != 0) return false;
  switch (static_cast<unsigned long>(fs.f_type)) {
    case 0xEF53:      // ext2, ext3, ext4
    case 0x58465342:  // xfs
    case 0x9123683E:  // btrfs
    case 0x01021994:  // tmpfs
    case 0xF2F52010:  // f2fs
    case 0x2FC12FC1:  // zfs
    case 0x794C7630:  // overlayfs (containers)
      return true;
    default:
      return false;
  }
}

// Whether the entry `name` of dfd, opened as fd, is a temporary output left behind: ours, old,
// and locked by no one now (the lock taken here is held until fd closes, so no run can claim it).
bool left_behind(int dfd, const char* name, int fd) {
  struct stat st, again;
  if (::fstat(fd, &st) != 0 || st.st_uid != ::geteuid() || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) return false;
  if (is_open_input(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino))) return false;
  if (static_cast<int64_t>(::time(nullptr)) - static_cast<int64_t>(st.st_mtime) < stale_age.load()) return false;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) return false;  // a live run's, or no locks here
  // Still the entry that was locked (not replaced by another under the same name meanwhile).
  return ::fstatat(dfd, name, &again, AT_SYMLINK_NOFOLLOW) == 0 && again.st_dev == st.st_dev && again.st_ino == st.st_ino;
}
}  // namespace

namespace {
void remove_stale_temporaries_of(const std::string& output) {
  const size_t slash = output.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : slash == 0 ? "/" : output.substr(0, slash);
  const std::string base = output.substr(slash == std::string::npos ? 0 : slash + 1);
  if (base.empty()) return;
  const std::unique_ptr<DIR, int (*)(DIR*)> opened(::opendir(dir.empty() ? "." : dir.c_str()), ::closedir);
  DIR* const d = opened.get();
  if (d == nullptr) return;
  const int dfd = ::dirfd(d);
  struct statx sx;
  std::vector<std::string> candidates;
  if (::statx(dfd, "", AT_EMPTY_PATH, STATX_INO | STATX_BTIME, &sx) == 0 && on_local_file_system(dfd)) {
    const bool born = (sx.stx_mask & STATX_BTIME) != 0;
    const auto key = std::make_tuple(uint64_t{::makedev(sx.stx_dev_major, sx.stx_dev_minor)}, uint64_t{sx.stx_ino},
                                     born ? int64_t{sx.stx_btime.tv_sec} : 0, born ? sx.stx_btime.tv_nsec : 0u);
    bool scanned;
    {
      std::lock_guard<std::mutex> lk(g_stale_mu);
      scanned = g_stale_dirs_seen.count(key) != 0;
    }
    if (!scanned) {  // once per directory: a directory of thousands of outputs is read once, not per output
      std::vector<std::string> found;
      while (const dirent* e = ::readdir(d))
        if (is_temp_name(e->d_name)) found.emplace_back(e->d_name);
      std::lock_guard<std::mutex> lk(g_stale_mu);
      g_stale_dirs_seen.emplace(key, std::move(found));
    }
    // This output's own: only the leftovers of an earlier attempt at the same output are taken,
    // never another name's (an input named like a temporary, another run's work).
    std::lock_guard<std::mutex> lk(g_stale_mu);
    std::vector<std::string>& names = g_stale_dirs_seen[key];
    for (auto it = names.begin(); it != names.end();) {
      if (temporary_of(*it, base)) {
        candidates.push_back(std::move(*it));
        it = names.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::vector<std::string> removed;
  for (const std::string& name : candidates) {
    // Looked at before it is opened: opening a device can act on it (a tape rewinds).
    struct stat pre;
    if (::fstatat(dfd, name.c_str(), &pre, AT_SYMLINK_NOFOLLOW) != 0 || !(S_ISREG(pre.st_mode) || S_ISDIR(pre.st_mode))) continue;
    const int fd = ::openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    const std::unique_ptr<const int, void (*)(const int*)> closing(&fd, [](const int* f) { ::close(*f); });
    if (left_behind(dfd, name.c_str(), fd)) {
      const std::string path = (dir.empty() ? std::string() : dir + (dir.back() == '/' ? "" : "/")) + name;
      // Through the directory's descriptor, each level opened without following links.
      const bool gone = S_ISDIR(pre.st_mode) ? remove_tree(dfd, name.c_str(), 0) : ::unlinkat(dfd, name.c_str(), 0) == 0;
      if (gone) removed.push_back(path);
    }
  }
  if (removed.empty()) return;
  std::lock_guard<std::mutex> lk(g_stale_mu);
  g_stale_removed.insert(g_stale_removed.end(), removed.begin(), removed.end());
}
}  // namespace

void remove_stale_temporaries(const std::string& output) {
  // Tidying up after killed runs is best effort: with no memory for it, leftovers stay, and the
  // caller's own work (which has its own checks) goes on.
  try {
    remove_stale_temporaries_of(output);
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
}

InputInUse::InputInUse(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return;
  dev_ = static_cast<uint64_t>(st.st_dev);
  ino_ = static_cast<uint64_t>(st.st_ino);
  note_input(dev_, ino_, true);
  noted_ = true;
}

InputInUse::~InputInUse() {
  if (noted_) note_input(dev_, ino_, false);
}

void set_stale_age_for_testing(int64_t seconds) {
  stale_age.store(seconds < 0 ? kStaleAgeSeconds : seconds);
  std::lock_guard<std::mutex> lk(g_stale_mu);
  g_stale_dirs_seen.clear();
}

std::string temp_suffix(unsigned n) {
  // "-L": written by a run that holds it locked (remove_stale_temporaries removes only these; an
  // earlier bigsmall's temporaries, unlocked, could still be in use).
  std::string s = ".tmp-bigsmall-L";  // in steps: GCC 12's -Wrestrict misfires on a + b + c
  s += std::to_string(::getpid());
  s += '-';
  s += std::to_string(n);
  return s;
}

std::string temp_beside(const std::string& path, const std::string& suffix, bool hidden) {
  constexpr size_t kNameMax = 255;  // bytes in one name on Linux file systems
  const size_t slash = path.rfind('/');
  const size_t start = slash == std::string::npos ? 0 : slash + 1;
  std::string name = path.substr(start);
  constexpr size_t kAside = 4;  // ".old", added where a file system cannot exchange two names
  const size_t room = kNameMax - kAside - suffix.size() - (hidden ? 1 : 0);
  if (name.size() > room) {
    size_t cut = room;
    while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) --cut;  // whole UTF-8 characters
    name.resize(cut);
  }
  std::string out = path.substr(0, start);
  if (hidden) out += '.';
  out += name;
  out += suffix;
  return out;
}

unsigned process_umask() {
  // Read, not set: umask() can only be read by changing it, which races with other threads
  // creating files. Linux reports it in /proc/self/status; read at each output, since a program
  // may tighten it between two (as open() would honour). Where it cannot be read, 077: outputs
  // come out private rather than readable by all.
  unsigned m = 077;
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "Umask: %o", &m) == 1) break;
    std::fclose(f);
  }
  return m;
}

namespace {
Status check_name_length(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const long most = ::pathconf(dir.c_str(), _PC_NAME_MAX);
  const size_t limit = most > 0 ? static_cast<size_t>(most) : 255;
  if (name.size() <= limit) return Status::success();
  return Status(Error::kIo, path + ": file name too long (" + std::to_string(name.size()) + " bytes; its file system takes " +
                                std::to_string(limit) + ")")
      .with_errno(ENAMETOOLONG);
}
}  // namespace

Result<OutputFile> OutputFile::create(const std::string& final_path, bool overwrite) {
  // Said before any work: an empty name failed only at the rename, after a whole compression.
  if (final_path.empty()) return Status(Error::kInvalidArgument, "'': an empty output path");
  // A directory there is never replaced by a file: said at once, not "use -f" (which then fails).
  if (path_is_dir(final_path)) return Status(Error::kIo, final_path + ": is a directory").with_errno(EISDIR);
  if (!overwrite && path_exists(final_path))
    return Status(Error::kIo, final_path + ": already exists").with_errno(EEXIST);
  auto target = overwrite ? overwrite_target(final_path) : Result<std::string>(final_path);
  if (!target) return target.status();
  // The temporary's name is cut to fit (temp_beside), so a final name too long for its file
  // system would fail only at the rename, after all the work: said now.
  if (Status st = check_name_length(*target); !st.is_ok()) return st;
  static std::atomic<unsigned> counter{0};
  OutputFile f;
  f.final_ = *target;
  f.overwrite_ = overwrite;
  f.mode_ = 0644 & ~process_umask();
  // A name left by a killed run (no cleanup runs on SIGKILL; in a container the PID repeats) is
  // skipped, not an error.
  remove_stale_temporaries(f.final_);
  for (int attempt = 0; attempt < 100; ++attempt) {
    f.temp_ = temp_beside(f.final_, temp_suffix(counter++), false);
    register_pending(f.temp_);
    f.fd_ = ::open(f.temp_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (f.fd_ >= 0) {
      // Held while this run lives (remove_stale_temporaries); where locks are missing, none.
      if (::flock(f.fd_, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) return f;
      ::close(f.fd_);  // already held: a sweeper took the new name for one left behind; another
      f.fd_ = -1;
      unregister_pending(f.temp_);
      f.temp_.clear();
      continue;
    }
    const int e = errno;
    unregister_pending(f.temp_);
    f.temp_.clear();
    if (e == EACCES && path_exists(final_path)) {
      // The output is written beside its final name and renamed: the directory, not the file
      // there, refused.
      const size_t slash = f.final_.rfind('/');
      const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : f.final_.substr(0, slash);
      return errno_status(final_path, "cannot replace it: no right to create files in " + dir +
                                          " (outputs are written beside their final name, then renamed)", e);
    }
    if (e != EEXIST) return errno_status(final_path, "cannot create", e);
  }
  return Status(Error::kIo, final_path + ": cannot create a temporary file beside it");
}

OutputFile OutputFile::in_memory(std::string label) {
  OutputFile o;
  o.in_memory_ = true;
  o.final_ = std::move(label);
  return o;
}

std::atomic<int> pwrite_until_failure{0};
void fail_pwrite_for_testing(int n) { pwrite_until_failure.store(n, std::memory_order_relaxed); }

Status OutputFile::pwrite(const void* p, uint64_t n, uint64_t offset) {
  const auto* b = static_cast<const uint8_t*>(p);
  if (in_memory_) {
    if (n == 0) return Status::success();
    if (n > memory_.max_size() || offset > memory_.max_size() - n)
      return Status(Error::kOutOfMemory, final_ + ": output too large for memory");
    if (memory_.size() < offset + n) {
      // Doubling, as push_back would: a write per coded group must not copy all before it.
      if (memory_.capacity() < offset + n) memory_.reserve(std::max<uint64_t>(offset + n, 2 * memory_.capacity()));
      // Writes mostly append: appended bytes are copied once, not zeroed first and then copied.
      if (offset == memory_.size()) {
        memory_.insert(memory_.end(), b, b + n);
        return Status::success();
      }
      memory_.resize(offset + n);
    }
    std::memcpy(memory_.data() + offset, b, n);
    return Status::success();
  }
  if (pwrite_until_failure.load(std::memory_order_relaxed) > 0 && pwrite_until_failure.fetch_sub(1, std::memory_order_relaxed) == 1)
    return errno_status(final_, "write failed", ENOSPC);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, b, n > (1u << 30) ? (1u << 30) : n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno_status(final_, "write failed", errno);
    }
    b += w;
    n -= static_cast<uint64_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return Status::success();
}

Status OutputFile::write(const void* p, uint64_t n) {
  BIGSMALL_RETURN_IF_ERROR(pwrite(p, n, pos_));
  pos_ += n;
  return Status::success();
}

namespace {
std::atomic<int> write_pieces_until_failure{0};
}  // namespace

void fail_write_pieces_for_testing(int n) { write_pieces_until_failure.store(n, std::memory_order_relaxed); }


Status OutputFile::write_pieces(const std::vector<Piece>& pieces) {
  if (write_pieces_until_failure.load(std::memory_order_relaxed) > 0 &&
      write_pieces_until_failure.fetch_sub(1, std::memory_order_relaxed) == 1)
    return errno_status(final_, "write failed", ENOSPC);
  if (in_memory_) {
    for (const Piece& piece : pieces) BIGSMALL_RETURN_IF_ERROR(write(piece.p, piece.n));
    return Status::success();
  }
  constexpr size_t kMaxIov = 1024;  // IOV_MAX on Linux
  std::vector<iovec> iov;
  iov.reserve(std::min(pieces.size(), kMaxIov));
  size_t next = 0;
  while (next < pieces.size()) {
    iov.clear();
    uint64_t want = 0;
    // Each call moves at most 1 GiB, below the ~2 GiB Linux lets one write move.
    for (; next < pieces.size() && iov.size() < kMaxIov; ++next) {
      if (pieces[next].n == 0) continue;
      if (pieces[next].n >= (1u << 30)) {  // a huge piece goes alone through pwrite's loop
        if (!iov.empty()) break;
        BIGSMALL_RETURN_IF_ERROR(write(pieces[next].p, pieces[next].n));
        continue;
      }
      if (want + pieces[next].n > (1u << 30)) break;
      iov.push_back({const_cast<void*>(pieces[next].p), static_cast<size_t>(pieces[next].n)});
      want += pieces[next].n;
    }
    size_t first = 0;
    while (first < iov.size()) {
      const ssize_t w = ::pwritev(fd_, iov.data() + first, static_cast<int>(iov.size() - first), static_cast<off_t>(pos_));
      if (w < 0) {
        if (errno == EINTR) continue;
        return errno_status(final_, "write failed", errno);
      }
      pos_ += static_cast<uint64_t>(w);
      // Skip what went out; a piece written in part continues from where it stopped.
      uint64_t left = static_cast<uint64_t>(w);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (left) {
        iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
        iov[first].iov_len -= static_cast<size_t>(left);
      }
    }
  }
  return Status::success();
}

Status OutputFile::reserve(uint64_t n) {
  if (n == 0 || in_memory_) return Status::success();
  const int r = ::posix_fallocate(fd_, 0, static_cast<off_t>(n));
  // A file system without fallocate: writes report a full disk as they go (no mapping here
  // could fault instead).
  if (r != 0 && r != EOPNOTSUPP && r != EINVAL) return errno_status(final_, "cannot reserve space", r);
  return Status::success();
}

Status OutputFile::commit(bool sync) {
  if (in_memory_) {
    committed_ = true;
    return Status::success();
  }
  // Best effort, as zstd's: a file system without Unix modes (vfat) refuses some chmods, and
  // there the 0600 file is the most private it can be.
  // Owner first: a chown clears set-id bits that the chmod then sets as asked. Only root can
  // give a file away; others' outputs are theirs.
  if (has_owner_ && ::geteuid() == 0) (void)::fchown(fd_, uid_, gid_);
  (void)::fchmod(fd_, static_cast<mode_t>(mode_));
  // After the last write: a later write would set the time again.
  if (has_mtime_) {
    const struct timespec times[2] = {{0, UTIME_OMIT}, mtime_};
    (void)::futimens(fd_, times);
  }
  if (sync && ::fsync(fd_) != 0) return errno_status(final_, "cannot flush", errno);
  // The lock stays held through the rename (by a duplicate, which shares it): unlocked for a
  // moment under its temporary name, a finished file could be taken for one left behind.
  struct LockKeeper {
    int fd;
    ~LockKeeper() {
      if (fd >= 0) ::close(fd);
    }
  } keeper{::fcntl(fd_, F_DUPFD_CLOEXEC, 0)};
  if (::close(fd_) != 0) {
    fd_ = -1;
    return errno_status(final_, "cannot close", errno);
  }
  fd_ = -1;
  // Without overwrite, a file that appeared under the final name during the run is kept too.
  int r = overwrite_ ? ::rename(temp_.c_str(), final_.c_str())
                     : ::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, final_.c_str(), RENAME_NOREPLACE);
  if (r != 0 && !overwrite_ && errno == EINVAL) {  // file system without RENAME_NOREPLACE
    if (path_exists(final_)) return Status(Error::kIo, final_ + ": already exists").with_errno(EEXIST);
    r = ::rename(temp_.c_str(), final_.c_str());
  }
  if (r != 0 && !overwrite_ && errno == EEXIST)
    return Status(Error::kIo, final_ + ": already exists").with_errno(EEXIST);
  if (r != 0) return errno_status(final_, "cannot rename into place", errno);
  unregister_pending(temp_);
  committed_ = true;
  return Status::success();
}

}  // namespace bigsmall::detail

namespace bigsmall {
void remove_partial_outputs() { detail::remove_pending_outputs(); }

void remove_stale_temporaries(const std::string& output) { detail::remove_stale_temporaries(output); }

std::vector<std::string> take_removed_temporaries() {
  std::lock_guard<std::mutex> lk(detail::g_stale_mu);
  return std::exchange(detail::g_stale_removed, {});
}

const char* mapped_input_at(const void* addr) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  for (auto& m : detail::g_maps)
    if (m.state.load() == 2 && a >= m.begin && a < m.end) return m.path;
  return nullptr;
}
}  // namespace bigsmall
