// Model directories: *.safetensors become .bs files, everything else is copied byte for byte,
// and bigsmall.index.json maps each .bs back to its original name.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "bigsmall/container.hpp"
#include "common/checksum.hpp"
#include "common/guard.hpp"
#include "container/bsfile.hpp"
#include "container/fileio.hpp"
#include "container/json.hpp"
#include "encode/encoder.hpp"

namespace bigsmall {
namespace fs = std::filesystem;
namespace {
std::atomic<int> merge_failure_after{-1};
std::atomic<int> merge_exit_after{-1};
std::atomic<bool> merge_exchange{true};
}  // namespace

void detail::fail_merge_after_for_testing(int n) { merge_failure_after.store(n); }
void detail::exit_in_merge_after_for_testing(int n) { merge_exit_after.store(n); }
void detail::merge_exchange_for_testing(bool on) { merge_exchange.store(on); }

namespace {

constexpr std::string_view kStExt = ".safetensors";

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Into a directory being built: nothing there to overwrite.
// A file's size for progress reports: 0 where it cannot be read (file_size gives -1, which a
// total would wrap on; the read itself reports the error).
uint64_t bytes_of(const fs::path& p) {
  std::error_code ec;
  const uintmax_t n = fs::file_size(p, ec);
  return ec ? 0 : n;
}

// A file copied along with a model (config, tokenizer): its size and XXH3-64, as the directory
// index records them (FORMAT.md, `copied`).
struct CopiedFile {
  std::string path;
  uint64_t size = 0, checksum = 0;
};

// Copies src to dst; `copied`, when given, receives the size and checksum of the bytes copied.
Status copy_into(const fs::path& src, const fs::path& dst, CopiedFile* copied = nullptr) {
  BIGSMALL_ASSIGN_OR_RETURN(detail::MappedFile in, detail::MappedFile::open(src.string()));
  BIGSMALL_ASSIGN_OR_RETURN(detail::OutputFile out, detail::OutputFile::create(dst.string(), false));
  BIGSMALL_RETURN_IF_ERROR(out.write(in.data(), in.size()));
  out.take_attributes(in);  // a run.sh stays executable, as cp copies it
  if (copied) *copied = {copied->path, in.size(), detail::xxh3_64(in.data(), in.size())};
  BIGSMALL_RETURN_IF_ERROR(in.check_unchanged());
  return out.commit();
}

// Errors inside a directory being built name its temporary path; the user knows the final one.
Status in_final_names(const Status& st, const fs::path& temp, const std::string& dst) {
  if (st.is_ok()) return st;
  std::string m = st.message();
  const std::string from = temp.string();
  std::string to = dst;
  while (to.size() > 1 && to.back() == '/') to.pop_back();
  for (size_t at = m.find(from); at != std::string::npos; at = m.find(from, at + to.size())) m.replace(at, from.size(), to);
  return Status(st.code(), m).with_errno(st.sys_errno());
}

Status write_text(const fs::path& dst, const std::string& text) {
  BIGSMALL_ASSIGN_OR_RETURN(detail::OutputFile out, detail::OutputFile::create(dst.string(), false));
  BIGSMALL_RETURN_IF_ERROR(out.write(text.data(), text.size()));
  return out.commit();
}

// Paths by which links may make one directory reachable in a walk, its own included.
constexpr int kMaxDirPaths = 4;

// Every file under root, by its path relative to root as spelled there (links are not resolved
// in names: a Hugging Face cache snapshot is all links into ../../blobs, and resolving them
// would name files outside the directory). Links to files and directories are followed for their
// contents; anything that is neither (a dangling link, a pipe) is an error, not a silent gap.
// `dirs`, when given, receives every directory under root (empty ones come back too).

Result<std::vector<fs::path>> list_files(const fs::path& root, const fs::path& skip_dir = {},
                                         std::vector<fs::path>* dirs = nullptr) {
  std::vector<fs::path> files;
  std::error_code ec;
  fs::path entered = root;  // the directory whose listing a failed increment was opening
  // Links are followed (a Hugging Face snapshot is made of them), so one directory can be reached
  // by several paths, and directories holding two links to the next reach the last 2^depth
  // times: a small directory would cost hours. An alias or two is fine; more is refused.
  std::map<std::pair<dev_t, ino_t>, int> reached;
  for (fs::recursive_directory_iterator it(root, fs::directory_options::follow_directory_symlink, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it.depth() > detail::kMaxDirDepth)
      return Status(Error::kLimit, it->path().string() + ": directories nest too deep (a link loop?)");
    const fs::file_status st = it->status(ec);  // through links
    if (std::error_code lec; ec && fs::is_symlink(it->symlink_status(lec)) && ec == std::errc::no_such_file_or_directory)
      return Status(Error::kIo, it->path().string() + ": dangling link (its target does not exist)").with_errno(ENOENT);
    if (ec == std::errc::too_many_symbolic_link_levels)  // worded as for an input given by name
      return Status(Error::kIo, it->path().string() + ": too many levels of links (a link loop?)").with_errno(ELOOP);
    if (ec) return Status(Error::kIo, it->path().string() + ": " + ec.message());
    if (fs::is_directory(st)) {
      std::error_code e2;
      if (!skip_dir.empty() && fs::weakly_canonical(it->path(), e2) == skip_dir) {
        it.disable_recursion_pending();  // the output, inside its own input
        continue;
      }
      if (struct stat sb; ::stat(it->path().c_str(), &sb) == 0 && ++reached[{sb.st_dev, sb.st_ino}] > kMaxDirPaths)
        return Status(Error::kIo, it->path().string() + ": links make this directory reachable by more than " +
                                      std::to_string(kMaxDirPaths) + " paths, its own included (a link loop, or links fanning out)")
            .with_errno(ELOOP);  // as the system reports a loop of links
      entered = it->path();
      if (dirs) dirs->push_back(it->path().lexically_relative(root));
      continue;
    }
    if (!fs::is_regular_file(st))
      return Status(Error::kIo, it->path().string() + ": not a regular file or directory");
    files.push_back(it->path().lexically_relative(root));
  }
  if (ec) return Status(Error::kIo, entered.string() + ": cannot list directory: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// Where -f merges into an existing directory that holds the input (-o .. of a model, or the
// directory of a DIR.bs being restored): the input's path relative to it, so that the merge can
// refuse a file that would land on the input or inside it. Empty when the output does not hold
// the input (compared by device and inode up the input's real path).
fs::path input_inside(const std::string& src, const fs::path& out) {
  struct stat o;
  if (::stat(out.c_str(), &o) != 0 || !S_ISDIR(o.st_mode)) return {};
  std::error_code ec;
  const fs::path in = fs::canonical(src, ec);
  if (ec) return {};  // reading the input reports it
  for (fs::path p = in;; p = p.parent_path()) {
    struct stat s;
    if (::stat(p.c_str(), &s) == 0 && s.st_dev == o.st_dev && s.st_ino == o.st_ino) return in.lexically_relative(p);
    if (p == p.parent_path()) return {};
  }
}

// The mode an output directory takes from the input directory it stands for: the input's group
// and other bits (less the umask), as each file takes its input's, so that a private directory
// stays private, at any depth. The owner gets every right the umask leaves, so that a read-only
// input does not give an output that -f cannot update (or that the cleanup cannot empty).
unsigned output_dir_mode(const fs::path& src) {
  std::error_code ec;
  const fs::perms perms = fs::status(src, ec).permissions();
  return (ec ? 0777u : 0700u | (static_cast<unsigned>(perms) & 077u)) & ~detail::process_umask();
}

// Where a -f merge puts the files it replaces on a file system that cannot exchange two names in
// one step: a directory beside the output, named as its temporaries are and locked while this run
// lives, so that a run killed partway leaves only what a later run's sweep of temporaries removes.
// Made at the first file it takes. Removed whole once the merge is done; after a failed merge,
// whose undo has moved every file back, only its empty directories go (a file whose move back
// failed stays, locked until this process ends).
class AsideDir {
 public:
  explicit AsideDir(fs::path output) : output_(std::move(output)) {}
  AsideDir(const AsideDir&) = delete;
  AsideDir& operator=(const AsideDir&) = delete;
  ~AsideDir() {
    if (root_.empty()) return;
    std::error_code ec;
    if (done_) {
      fs::remove_all(root_, ec);
    } else {
      std::vector<fs::path> dirs;
      for (fs::recursive_directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec))
        if (it->is_directory(ec)) dirs.push_back(it->path());
      for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) fs::remove(*it, ec);  // only if empty
      fs::remove(root_, ec);
    }
    ::close(fd_);  // after the removal: no sweeper takes a tree half removed
  }
  // The place for the file of relative path rel, its directories made; empty if there is none.
  fs::path place_for(const fs::path& rel) {
    if (root_.empty() && !make()) return {};
    std::error_code ec;
    const fs::path at = root_ / rel;
    fs::create_directories(at.parent_path(), ec);
    return ec ? fs::path() : at;
  }
  void done() { done_ = true; }
  static unsigned next_name();

 private:
  bool make() {
    for (int attempt = 0; attempt < 100 && root_.empty(); ++attempt) {
      const fs::path p = detail::temp_beside(output_.string(), detail::temp_suffix(next_name()), true);
      if (::mkdir(p.c_str(), 0700) == 0) root_ = p;
      else if (errno != EEXIST) return false;
    }
    if (root_.empty()) return false;
    fd_ = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd_ < 0 || ::flock(fd_, LOCK_EX | LOCK_NB) != 0) {  // a sweeper took the new name: go without
      if (fd_ >= 0) ::close(fd_);
      fd_ = -1;
      ::rmdir(root_.c_str());
      root_.clear();
      return false;
    }
    return true;
  }
  fs::path output_, root_;
  int fd_ = -1;
  bool done_ = false;
};

unsigned AsideDir::next_name() {
  static std::atomic<unsigned> counter{0};  // the temporaries of this process: a name each
  return counter++;
}

// A directory output is built under a temporary sibling name and moved into place once
// complete, so that a failure leaves nothing under the final name; with -f over an existing
// directory, every target is checked before the first file moves. The temporary tree is
// removed whatever happens (and by the signal cleanup on SIGINT/SIGTERM).
class OutputDir {
 public:
  static Result<OutputDir> create(const std::string& src, const std::string& dst, bool overwrite) {
    std::error_code ec, ec2;
    OutputDir d;
    d.overwrite_ = overwrite;
    fs::path final_path(dst);
    if (!final_path.has_filename()) final_path = final_path.parent_path();
    // Parents first, then the checks on the path as it now resolves: "nope/../x" names x only
    // once nope exists.
    // Made one at a time, so that only those this run made are removed again if it fails (an
    // empty a/b/ of -o a/b/out.bs), never one that was there ("nodir/../keep/x": keep is not
    // ours), and a part that cannot be made is named with its reason.
    fs::path built;
    for (const auto& part : final_path.parent_path()) {
      built /= part;
      if (part == built.root_path() || part == built.root_name()) continue;
      if (::mkdir(built.c_str(), 0777) == 0) {
        d.made_parents_.insert(d.made_parents_.begin(), built);  // innermost first
        detail::register_made_parent(built.string());
      } else if (errno != EEXIST) {
        return Status(Error::kIo, built.string() + ": cannot create directory: " + std::strerror(errno)).with_errno(errno);
      }
    }
    const fs::path resolved = fs::weakly_canonical(final_path, ec);
    d.final_ = ec ? final_path : resolved;
    BIGSMALL_RETURN_IF_ERROR(detail::check_not_input(src, d.final_.string()));
    d.src_ = src;
    d.input_rel_ = input_inside(src, d.final_);
    if (fs::exists(fs::symlink_status(d.final_, ec)) && !overwrite)
      return Status(Error::kIo, dst + ": already exists").with_errno(EEXIST);
    // -f swaps the finished directory in and removes what was there: never a device, pipe or
    // socket (as root, -f -o /dev/null would have deleted /dev/null).
    if (const auto st = fs::status(d.final_, ec); !ec && fs::exists(st) && !fs::is_directory(st)) {
      if (!fs::is_regular_file(st)) return Status(Error::kIo, dst + ": not a regular file or directory (a device, pipe or socket)");
      // -f replaces a file with a file and merges into a directory; a file is not a directory's
      // earlier version (as the merge refuses a directory where a file goes).
      return Status(Error::kIo, dst + ": is a file, cannot replace it with a directory");
    }
    // A name left by a killed run (no handler runs on SIGKILL) is skipped, not an error; one
    // left long enough ago, and no longer locked, is removed.
    detail::remove_stale_temporaries(d.final_.string());
    for (int attempt = 0; attempt < 100; ++attempt) {
      const fs::path temp = detail::temp_beside(d.final_.string(), detail::temp_suffix(AsideDir::next_name()), true);
      detail::register_pending_dir(temp.string());  // before it exists: a signal may come at any time
      // Private while it is filled (0700): a reader must not get into a directory of private
      // files before its mode is final.
      if (::mkdir(temp.c_str(), 0700) == 0) {
        d.temp_ = temp;
        // Locked while this run lives, so that no other run takes it for one left behind (where
        // the file system has no locks, no sweeper can take one either).
        d.lock_fd_ = ::open(temp.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (d.lock_fd_ < 0 || (::flock(d.lock_fd_, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)) {
          const int e = d.lock_fd_ < 0 ? errno : 0;  // 0: a sweeper holds the new name: the next one
          if (d.lock_fd_ >= 0) ::close(d.lock_fd_);
          d.lock_fd_ = -1;
          ::rmdir(temp.c_str());
          d.temp_.clear();
          detail::unregister_pending_dir(temp.string());
          if (e != 0) return Status(Error::kIo, temp.string() + ": cannot open: " + std::strerror(e)).with_errno(e);
          continue;
        }
        d.mode_ = output_dir_mode(src);  // set when the tree is complete: private until then
        return d;
      }
      ec.assign(errno, std::generic_category());
      if (ec == std::errc::file_exists) ec.clear();
      detail::unregister_pending_dir(temp.string());
      if (ec == std::errc::permission_denied && fs::exists(fs::symlink_status(d.final_, ec2)))
        return Status(Error::kIo, dst + ": cannot replace it: no right to create directories in " +
                                      d.final_.parent_path().string() + " (outputs are built beside their final name, then renamed)")
            .with_errno(EACCES);
      if (ec) return Status(Error::kIo, dst + ": cannot create directory: " + ec.message());
    }
    return Status(Error::kIo, dst + ": cannot create a temporary directory beside it");
  }
  OutputDir() = default;
  OutputDir(OutputDir&& o) noexcept
      : final_(std::move(o.final_)), temp_(std::exchange(o.temp_, {})), overwrite_(o.overwrite_), mode_(o.mode_),
        made_parents_(std::exchange(o.made_parents_, {})), src_(std::move(o.src_)), input_rel_(std::move(o.input_rel_)),
        lock_fd_(std::exchange(o.lock_fd_, -1)) {}
  OutputDir& operator=(OutputDir&&) = delete;
  ~OutputDir() {
    std::error_code ec;
    if (!temp_.empty()) {
      fs::remove_all(temp_, ec);
      detail::unregister_pending_dir(temp_.string());
    }
    if (lock_fd_ >= 0) ::close(lock_fd_);  // after the removal: no sweeper takes a tree half removed
    for (const auto& p : made_parents_) {  // not committed: innermost first, if empty
      ::rmdir(p.c_str());
      detail::unregister_made_parent(p.string());
    }
  }
  const fs::path& path() const { return temp_; }

  Status commit() {
    std::error_code ec;
    if (overwrite_ && fs::is_directory(final_, ec)) return merge();  // the directory there keeps its own
    const std::string from = temp_.string(), to = final_.string();
    // Best effort, as for files: a file system without Unix modes (vfat) refuses some.
    if (mode_) chmod_no_follow(from, *mode_);
    Status st = move_into_place(from, to);
    if (!st.is_ok() && mode_) chmod_no_follow(from, 0700);  // so that the destructor can empty it
    return st;
  }

 private:
  // Through a descriptor of the directory itself: where others may write in the output's parent,
  // a link put in the temporary directory's place must not have its target's mode changed.
  static void chmod_no_follow(const std::string& dir, unsigned mode) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
      (void)::fchmod(fd, static_cast<mode_t>(mode));
      ::close(fd);
      return;
    }
    // Unreadable to its owner (a umask without the owner's read bit): by name, if no link is there.
    if (struct stat sb; ::lstat(dir.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode)) (void)::chmod(dir.c_str(), static_cast<mode_t>(mode));
  }

  Status move_into_place(const std::string& from, const std::string& to) {
    std::error_code ec;
    // Without -f nothing may have appeared meanwhile: never replace, never merge.
    if (!overwrite_) {
      if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0)
        return errno == EEXIST ? Status(Error::kIo, to + ": already exists").with_errno(EEXIST)
                               : Status(Error::kIo, to + ": cannot create: " + std::strerror(errno));
      return done();
    }
    // -f over a file: swapped in one step, then the old file removed, so a failure loses nothing.
    if (fs::exists(fs::symlink_status(final_, ec))) {
      if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
        ::unlink(from.c_str());  // now the old file
        return done();
      }
      if (errno != EINVAL && errno != ENOSYS) return Status(Error::kIo, to + ": cannot replace: " + std::strerror(errno));
      // A filesystem without the exchange: the old file is moved aside, and back on failure.
      const std::string aside = from + ".old";
      if (::rename(to.c_str(), aside.c_str()) != 0) return Status(Error::kIo, to + ": cannot replace: " + std::strerror(errno));
      if (::rename(from.c_str(), to.c_str()) != 0) {
        const int e = errno;
        ::rename(aside.c_str(), to.c_str());
        return Status(Error::kIo, to + ": cannot replace: " + std::strerror(e));
      }
      ::unlink(aside.c_str());
      return done();
    }
    if (::rename(from.c_str(), to.c_str()) != 0) return Status(Error::kIo, to + ": cannot create: " + std::strerror(errno));
    return done();
  }

  Status done() {
    detail::unregister_pending_dir(temp_.string());
    temp_.clear();
    // Unlocked for every copy of the descriptor (a child forked meanwhile holds one): the lock
    // would otherwise stay on the finished directory for that child's life.
    if (lock_fd_ >= 0) {
      (void)::flock(lock_fd_, LOCK_UN);
      ::close(lock_fd_);
      lock_fd_ = -1;
    }
    for (const auto& p : made_parents_) detail::unregister_made_parent(p.string());
    made_parents_.clear();
    return Status::success();
  }

  // -f into an existing directory: each new file replaces one of the same name and nothing else
  // there is touched (-o may name a directory that holds other work). Every target is checked
  // first; then each file there is moved aside and the new one moved in, the directory index
  // last. A failure partway moves every file back (a compressed model half replaced would no
  // longer verify, and a restored one would mix two versions silently), and signals wait until
  // the moves are done or undone (kill -9 aside: it leaves the directory half merged, every file
  // old or new, the files replaced so far in a temporary that a later run removes; the same run
  // again finishes it).
  Status merge() {
    std::error_code ec;
    std::vector<fs::path> files, dirs;
    for (fs::recursive_directory_iterator it(temp_, ec), end; !ec && it != end; it.increment(ec))
      (it->is_directory(ec) ? dirs : files).push_back(it->path().lexically_relative(temp_));
    if (ec) return Status(Error::kIo, temp_.string() + ": cannot list: " + ec.message());
    std::stable_partition(files.begin(), files.end(), [](const fs::path& f) { return f != kDirIndexName; });
    for (const auto& f : files) {  // the output holds the input: nothing may land on it or in it
      if (input_rel_.empty()) break;
      auto fi = f.begin();
      auto ri = input_rel_.begin();
      for (; fi != f.end() && ri != input_rel_.end() && *fi == *ri; ++fi, ++ri) {
      }
      if (ri == input_rel_.end())
        return Status(Error::kInvalidArgument, (final_ / f).string() + ": would replace a file of the input " + src_ +
                                                   " (the output directory holds it; choose an output outside it)");
    }
    for (const auto& f : files) {
      fs::path at = final_;
      for (auto part = f.begin(); part != f.end(); ++part) {
        at /= *part;
        const bool last = std::next(part) == f.end();
        const fs::file_status st = fs::status(at, ec);
        if (!fs::exists(st)) break;
        if (last ? fs::is_directory(st) : !fs::is_directory(st))
          return Status(Error::kIo, at.string() + (last ? ": is a directory, cannot replace it with a file" : ": is not a directory"));
        // A link there is replaced where a file goes, but a directory's files would go through
        // it, wherever it points (outside the output, say).
        if (!last && fs::is_symlink(fs::symlink_status(at, ec)))
          return Status(Error::kIo, at.string() + ": is a link to a directory; not writing through it (remove it, or choose another output)");
      }
    }
    for (const auto& d : dirs) {  // empty directories of the input are made there too
      fs::path at = final_;
      for (const auto& part : d) {
        at /= part;
        if (fs::is_symlink(fs::symlink_status(at, ec)))
          return Status(Error::kIo, at.string() + ": is a link to a directory; not writing through it (remove it, or choose another output)");
      }
    }
    const detail::SignalsHeld held;
    if (held.outputs_closed())  // a cleanup (signal) removed the outputs: the process is ending
      return Status(Error::kIo, final_.string() + ": not updated: the run is being stopped");
    std::vector<fs::path> made;  // directories created here, parents first
    struct Placed {
      fs::path target, aside;  // aside: where the old file waits (empty: there was none)
      bool exchanged;          // swapped with the new one: the old file waits in the temporary tree
    };
    std::vector<Placed> placed;
    auto undo = [&] {
      std::error_code e;
      for (auto it = placed.rbegin(); it != placed.rend(); ++it) {
        if (it->exchanged) {  // one step back: the old file at the target, the new one in the temporary
          (void)::renameat2(AT_FDCWD, it->aside.c_str(), AT_FDCWD, it->target.c_str(), RENAME_EXCHANGE);
          continue;
        }
        fs::remove(it->target, e);
        if (!it->aside.empty()) fs::rename(it->aside, it->target, e);
      }
      for (auto it = made.rbegin(); it != made.rend(); ++it) fs::remove(*it, e);  // only if empty
    };
    auto make_dirs = [&](const fs::path& dir) {
      std::vector<fs::path> missing;
      for (fs::path d = dir; !d.empty() && d != final_ && !fs::exists(fs::symlink_status(d, ec)); d = d.parent_path())
        missing.push_back(d);
      ec.clear();
      for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
        // Private when made, then the mode its temporary twin took from the input (a private
        // subdirectory new to the target must not be open to others, even for a moment).
        if (::mkdir(it->c_str(), 0700) != 0) {
          ec.assign(errno, std::generic_category());
          return false;
        }
        made.push_back(*it);
        if (struct stat twin; ::stat((temp_ / it->lexically_relative(final_)).c_str(), &twin) == 0)
          chmod_no_follow(it->string(), static_cast<unsigned>(twin.st_mode) & 07777u);
      }
      return true;
    };
    // A file replaced is swapped with its new version in one step (RENAME_EXCHANGE): the target
    // is the old file or the new one at every instant, and the old one lands in the temporary
    // tree, removed when the merge is done, and after a kill -9 partway by a later run's sweep of
    // temporaries. (Old files waited beside each target as hidden `.NAME.old-bigsmall-PID-N`,
    // which nothing removed after a kill -9.) A file system that cannot exchange gets the old
    // file moved aside first (AsideDir), then the new one in.
    AsideDir replaced(final_);
    unsigned aside_counter = 0;
    for (const auto& f : files) {
      const fs::path target = final_ / f, from = temp_ / f;
      if (!make_dirs(target.parent_path())) {
        const std::string why = ec.message();
        undo();
        return Status(Error::kIo, target.parent_path().string() + ": cannot create directory: " + why);
      }
      if (static_cast<int>(placed.size()) == merge_exit_after.load()) ::_exit(77);
      if (static_cast<int>(placed.size()) == merge_failure_after.load() && merge_failure_after.exchange(-1) >= 0) {
        undo();
        return Status(Error::kIo, target.string() + ": cannot create: " + std::strerror(EIO));
      }
      fs::path aside;
      if (fs::exists(fs::symlink_status(target, ec))) {
        const bool can = merge_exchange.load();
        if (can && ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
          placed.push_back({target, from, true});
          continue;
        }
        if (can && errno != EINVAL && errno != ENOSYS) {
          const int e = errno;
          undo();
          return Status(Error::kIo, target.string() + ": cannot replace: " + std::strerror(e));
        }
        aside = replaced.place_for(f);
        if (aside.empty() || ::rename(target.c_str(), aside.c_str()) != 0) {
          // No room for it there: beside it, hidden.
          std::string suffix = ".old-bigsmall-";  // built in steps (GCC 12's -Wrestrict misfires on a + b + c)
          suffix += std::to_string(::getpid());
          suffix += '-';
          suffix += std::to_string(aside_counter++);
          aside = detail::temp_beside(target.string(), suffix, true);
          if (::rename(target.c_str(), aside.c_str()) != 0) {
            const int e = errno;
            undo();
            return Status(Error::kIo, target.string() + ": cannot replace: " + std::strerror(e));
          }
        }
      }
      if (::rename(from.c_str(), target.c_str()) != 0) {
        const int e = errno;
        if (!aside.empty()) ::rename(aside.c_str(), target.c_str());
        undo();
        return Status(Error::kIo, target.string() + ": cannot create: " + std::strerror(e));
      }
      placed.push_back({target, aside, false});
    }
    // Empty directories of the input come along too (the others exist by now).
    for (const auto& d : dirs) {
      if (!make_dirs(final_ / d)) {
        const std::string why = ec.message();
        undo();
        return Status(Error::kIo, (final_ / d).string() + ": cannot create directory: " + why);
      }
    }
    for (const auto& p : placed)
      if (!p.aside.empty() && !p.exchanged) fs::remove(p.aside, ec);  // the old files, now replaced
    replaced.done();
    return Status::success();  // the destructor removes the temporary tree, with the old files exchanged into it
  }

  fs::path final_, temp_;
  bool overwrite_ = false;
  std::optional<unsigned> mode_;
  std::vector<fs::path> made_parents_;  // created for this output, innermost first
  std::string src_;
  fs::path input_rel_;  // the input's place inside the output, when -f merges into a directory holding it
  int lock_fd_ = -1;    // the temporary directory, locked (flock) while this run lives
};

struct DirEntry {
  std::string source, bs;
  // What the index records of the .bs (both optional: indexes of earlier writers lack one or
  // both), checked against its header before it is used.
  std::optional<uint64_t> size;         // of the source
  std::optional<uint64_t> bs_checksum;  // the .bs file's header checksum
};

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// A .bs of the directory that is not the one its index entry describes: two .bs files swapped
// (or one copied over another) would otherwise restore each under the other's name, and
// verify would pass them both.
Status check_entry(const fs::path& dir, const DirEntry& e) {
  const std::string path = (dir / e.bs).string();
  BIGSMALL_ASSIGN_OR_RETURN(detail::BsHeaderFacts facts, detail::read_bs_header_facts(path));
  if (e.size && *e.size != facts.original_size)
    return Status(Error::kCorrupt, path + ": restores " + std::to_string(facts.original_size) + " bytes, but " +
                                       kDirIndexName + " lists '" + e.source + "' as " + std::to_string(*e.size) +
                                       " bytes (files swapped or replaced?)");
  if (e.bs_checksum && *e.bs_checksum != facts.fingerprint)
    return Status(Error::kCorrupt, path + ": not the file " + kDirIndexName + " lists for '" + e.source +
                                       "' (its header checksum differs: files swapped or replaced?)");
  return Status::success();
}

// FORMAT.md: no object of the index gives a key twice (the root, a `files` entry, or any other
// object a later writer may add); a walk with its own stack, as deep as the parser lets it be.
std::optional<std::string> duplicate_key_anywhere(detail::JsonValue root) {
  using Kind = detail::JsonValue::Kind;
  std::vector<detail::JsonValue> todo{root};
  while (!todo.empty()) {
    const detail::JsonValue v = todo.back();
    todo.pop_back();
    if (v.kind() == Kind::kObject) {
      if (auto dup = detail::first_duplicate_key(v)) return dup;
      for (auto it = v.begin(); it != v.end(); ++it) todo.push_back(it.member().second);
    } else if (v.kind() == Kind::kArray) {
      for (const detail::JsonValue e : v) todo.push_back(e);
    }
  }
  return std::nullopt;
}

// 16 lowercase hex digits, as the index writes checksums.
std::optional<uint64_t> parse_hex64(std::string_view hex) {
  uint64_t v = 0;
  if (hex.size() != 16) return std::nullopt;
  for (const char ch : hex) {
    const int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
    if (d < 0) return std::nullopt;
    v = v << 4 | static_cast<uint64_t>(d);
  }
  return v;
}

// A relative name inside the directory: nothing may escape it or name the directory itself. A
// NUL ends the name the OS sees: "w.bs\0k.bs" would pass the checks here as a name of its own
// and open w.bs once more (any number of times, from a small index).
// In normal form too ("a//b" or "a/" name a/b and a to the system but not to duplicate checks);
// every writer wrote names so.
bool safe_relative(const std::string& name) {
  const fs::path rel(name);
  return name.find('\0') == std::string::npos && !rel.empty() && !rel.is_absolute() &&
         std::none_of(rel.begin(), rel.end(), [](const fs::path& c) { return c == ".." || c == "." || c.empty(); }) &&
         rel.lexically_normal().string() == name;
}

struct DirIndex {
  std::vector<DirEntry> files;
  // Every file copied along, where the index lists them (writers since 2026-11-28): restored
  // and verified by their checksums; other files of the directory are not part of the model.
  std::optional<std::vector<CopiedFile>> copied;
};

Result<DirIndex> read_dir_index_full(const fs::path& dir);

Result<std::vector<DirEntry>> read_dir_index(const fs::path& dir) {
  BIGSMALL_ASSIGN_OR_RETURN(DirIndex index, read_dir_index_full(dir));
  return std::move(index.files);
}

// The `copied` list of an index, checked: safe names, each once, none a .bs or source of `files`
// or the index itself, sizes and checksums well formed.
Result<std::vector<CopiedFile>> read_copied(const detail::JsonValue& list, const fs::path& p, const std::vector<DirEntry>& files) {
  using Kind = detail::JsonValue::Kind;
  if (list.kind() != Kind::kArray) return Status(Error::kCorrupt, p.string() + ": copied is not a list");
  std::vector<CopiedFile> out;
  for (const detail::JsonValue c : list) {
    const auto name = c.get("path");
    const auto size = c.get("size");
    const auto sum = c.get("checksum");
    if (!name || name->kind() != Kind::kString || !size || !size->is_uint() || !sum || sum->kind() != Kind::kString)
      return Status(Error::kCorrupt, p.string() + ": invalid copied entry");
    const std::string path(name->str());
    if (!safe_relative(path))
      return Status(Error::kCorrupt, p.string() + ": unsafe path '" + path + "'");
    const auto v = parse_hex64(sum->str());
    if (!v) return Status(Error::kCorrupt, p.string() + ": checksum of '" + path + "' is not 16 lowercase hex digits");
    out.push_back({path, size->uint(), *v});
  }
  std::vector<std::string_view> names;
  for (const auto& c : out) names.push_back(c.path);
  for (const auto& e : files) names.insert(names.end(), {e.bs, e.source});
  names.push_back(kDirIndexName);
  std::sort(names.begin(), names.end());
  if (const auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
    return Status(Error::kCorrupt, p.string() + ": '" + std::string(*dup) + "' is listed twice");
  return out;
}

// Anything in a compressed directory where one of its .bs files restores to (a file, a
// directory): compress never writes such a directory, and a restore could not place the file.
Status check_sources_free(const fs::path& dir, const std::vector<DirEntry>& entries) {
  std::error_code ec;
  for (const auto& e : entries)
    if (fs::exists(fs::symlink_status(dir / e.source, ec)))
      return Status(Error::kCorrupt, (dir / e.source).string() + ": a file of the name " + e.bs +
                                         " restores to (the directory was changed after compression?)");
  return Status::success();
}

// A file the index lists as copied that is not there: an I/O error naming it, as a missing .bs is.
Status copied_missing(const fs::path& at) {
  return Status(Error::kIo, at.string() + ": missing (" + kDirIndexName + " lists it)").with_errno(ENOENT);
}

// A copied file against its entry in the index; `at` is where it is now.
Status check_copied(const fs::path& at, const CopiedFile& c, uint64_t size, uint64_t checksum) {
  if (size != c.size || checksum != c.checksum)
    return Status(Error::kCorrupt, at.string() + ": changed after compression (" + kDirIndexName + " lists it as " +
                                       std::to_string(c.size) + " bytes with another checksum)");
  return Status::success();
}

Result<DirIndex> read_dir_index_full(const fs::path& dir) {
  const fs::path p = dir / kDirIndexName;
  auto mf = detail::MappedFile::open(p.string());
  // Only a missing index means "not a compressed directory"; one that cannot be read (a
  // directory of that name, no permission) is named for what it is.
  if (!mf && mf.status().sys_errno() != ENOENT) return mf.status();
  if (!mf) return Status(Error::kNotBigsmall, dir.string() + ": not a bigsmall model directory (no " + kDirIndexName + ")");
  auto doc = detail::parse_json(std::string_view(reinterpret_cast<const char*>(mf->data()), mf->size()), detail::JsonStrings::kFileNames);
  using Kind = detail::JsonValue::Kind;
  const auto j = doc ? std::optional(doc->root()) : std::nullopt;
  const auto files = j ? j->get("files") : std::nullopt;
  if (!files || files->kind() != Kind::kArray) return Status(Error::kCorrupt, p.string() + ": invalid index");
  // bigsmall writes every key once: one given twice (read here as its first value, by Python's
  // json as its last) is damage, or an index made to be read two ways.
  auto twice = [&](const std::string& key) { return Status(Error::kCorrupt, p.string() + ": key '" + key + "' given twice"); };
  if (const auto dup = duplicate_key_anywhere(*j)) return twice(*dup);
  const auto format = j->get("format");
  const auto version = j->get("format_version");
  if (!format || format->kind() != Kind::kString || format->str() != "bigsmall")
    return Status(Error::kNotBigsmall, p.string() + ": not a bigsmall index");
  if (version && !version->is_uint())
    return Status(Error::kCorrupt, p.string() + ": format_version is not a non-negative integer");
  if (version && version->uint() > kDirIndexLayoutVersion)
    return Status(Error::kUnsupportedVersion, p.string() + ": index of a newer format version");
  std::vector<DirEntry> out;
  for (const detail::JsonValue f : *files) {
    const auto s = f.get("source");
    const auto b = f.get("bs");
    if (!s || !b || s->kind() != Kind::kString || b->kind() != Kind::kString)
      return Status(Error::kCorrupt, p.string() + ": invalid file entry");
    const std::string source(s->str()), bs(b->str());
    // Index entries are relative names of files inside the directory; nothing may escape it or
    // name the directory itself.
    for (const std::string* name : {&source, &bs})
      if (!safe_relative(*name)) return Status(Error::kCorrupt, p.string() + ": unsafe path '" + *name + "'");
    if (!ends_with(bs, ".bs")) return Status(Error::kCorrupt, p.string() + ": '" + bs + "' is not a .bs name");
    // Every writer names the .bs after its source; a name that does not follow is damage, which
    // would otherwise restore a file under a name the original directory never had.
    const std::string expected = bs.substr(0, bs.size() - 3) + ".safetensors";
    if (source != expected)
      return Status(Error::kCorrupt, p.string() + ": '" + bs + "' is listed as the .bs of '" + source + "', not of '" + expected +
                                         "' (a damaged index?)");
    // A restored file under the index's own name would make the restored directory look like a
    // compressed one (and compress would refuse it).
    if (fs::path(source) == kDirIndexName) return Status(Error::kCorrupt, p.string() + ": a file entry restores over '" + source + "'");
    DirEntry entry{source, bs, std::nullopt, std::nullopt};
    if (const auto z = f.get("size")) {
      if (!z->is_uint()) return Status(Error::kCorrupt, p.string() + ": size of '" + source + "' is not a byte count");
      entry.size = z->uint();
    }
    if (const auto c = f.get("bs_checksum")) {
      const auto v = c->kind() == Kind::kString ? parse_hex64(c->str()) : std::nullopt;
      if (!v) return Status(Error::kCorrupt, p.string() + ": bs_checksum of '" + source + "' is not 16 lowercase hex digits");
      entry.bs_checksum = v;
    }
    out.push_back(std::move(entry));
  }
  // A name listed twice would be restored or verified twice (a small index could ask for any
  // amount of work) or one source written over another.
  for (const auto field : {&DirEntry::source, &DirEntry::bs}) {
    std::vector<std::string_view> names;
    for (const auto& e : out) names.push_back(e.*field);
    std::sort(names.begin(), names.end());
    if (const auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
      return Status(Error::kCorrupt, p.string() + ": '" + std::string(*dup) + "' is listed twice");
  }
  DirIndex index{std::move(out), std::nullopt};
  if (const auto copied = j->get("copied")) {
    BIGSMALL_ASSIGN_OR_RETURN(std::vector<CopiedFile> list, read_copied(*copied, p, index.files));
    index.copied = std::move(list);
  }
  return index;
}

// A path inside dir that reaches its file through real directories only: a name of an index
// (even a damaged one) must not lead a removal through a link out of dir, nor be spelled so that
// it names another file than the one compared (".", "..", empty parts, NUL).
bool plain_inside(const fs::path& dir, const std::string& rel) {
  if (rel.empty() || rel.find('\0') != std::string::npos) return false;
  const fs::path r(rel);
  if (r.is_absolute()) return false;
  std::error_code ec;
  fs::path at = dir;
  size_t parts = 0, n = static_cast<size_t>(std::distance(r.begin(), r.end()));
  for (const auto& c : r) {
    const std::string part = c.string();
    if (part.empty() || part == "." || part == "..") return false;
    at /= c;
    if (++parts < n) {
      const fs::file_status st = fs::symlink_status(at, ec);
      if (ec || fs::is_symlink(st) || !fs::is_directory(st)) return false;
    }
  }
  return fs::is_regular_file(fs::symlink_status(at, ec));
}

// compress -f over an earlier DIR.bs/: the copy of an earlier model's safetensors shard index
// that this run does not write would, restored, send loaders that follow it (vLLM filters shards
// by it) to shards the restore does not have.
std::vector<std::string> earlier_shard_index(const std::vector<std::string>& written) {
  constexpr std::string_view kShardIndex = "model.safetensors.index.json";
  if (std::find(written.begin(), written.end(), kShardIndex) != written.end()) return {};
  return {std::string(kShardIndex)};
}

// Removes the files rels of dir that are plain files inside it, never one of the input src (a run
// whose input lies inside its output: compress -f DIR.bs/model -o DIR.bs).
void remove_leftovers(const fs::path& dir, const std::vector<std::string>& rels, const std::string& src) {
  std::error_code ec;
  const fs::path input = fs::weakly_canonical(src, ec);
  for (const auto& r : rels) {
    if (!plain_inside(dir, r)) continue;
    const fs::path at = fs::weakly_canonical(dir / r, ec);
    if (ec) continue;
    const auto [i_end, a_end] = std::mismatch(input.begin(), input.end(), at.begin(), at.end());
    if (i_end == input.end()) continue;  // the input itself, or inside it
    fs::remove(dir / r, ec);
  }
}

// Whether the file at `at` is still what the index says was copied there.
bool unchanged_copy(const fs::path& at, const CopiedFile& c) {
  auto m = detail::MappedFile::open(at.string());
  return m && m->size() == c.size && detail::xxh3_64(m->data(), m->size()) == c.checksum;
}

// Progress over several files: each file reports its own bytes; this adds what came before.
// Each file's own progress is scaled to that file's share (its size) of the directory total.
struct DirProgress {
  ProgressFn outer;
  uint64_t base = 0, total = 0;
  ProgressFn for_file(uint64_t share) {
    if (!outer) return nullptr;
    return [this, share](uint64_t done, uint64_t file_total) {
      const double frac = file_total ? static_cast<double>(done) / static_cast<double>(file_total) : 1.0;
      outer(base + static_cast<uint64_t>(frac * static_cast<double>(share)), total);
    };
  }
};

}  // namespace

// The files of input directory src (leaving out dst if it lies inside), and the output
// directory, begun under its temporary name with every input directory, empty ones included.
struct DirOutput {
  std::vector<fs::path> files;
  OutputDir out;
};

// A Hugging Face cache repository (models--ORG--NAME: blobs/, snapshots/REV/ of links into the
// blobs) compressed whole would keep every weight twice: the blobs, named by hash, copied as they
// are, and the snapshots' links compressed. Refused, with what to give instead.
// Told by its links, not its names alone (a training run may well have folders of those names):
// a file under snapshots/ that is a link resolving into blobs/.
bool is_hub_cache_repo(const fs::path& d) {
  std::error_code ec;
  if (!fs::is_directory(d / "blobs", ec) || !fs::is_directory(d / "snapshots", ec)) return false;
  const fs::path blobs = fs::weakly_canonical(d / "blobs", ec);
  if (ec) return false;
  int looked = 0;  // a repository's first snapshot says it; a huge tree of other files is not walked
  for (fs::recursive_directory_iterator it(d / "snapshots", ec), end; !ec && it != end && looked < 10000; it.increment(ec), ++looked) {
    std::error_code lec;
    if (!it->is_symlink(lec)) continue;
    const fs::path target = fs::weakly_canonical(it->path(), lec);
    if (!lec && target.parent_path() == blobs) return true;
  }
  return false;
}

Status refuse_hub_cache_repo(const fs::path& src, const std::vector<fs::path>& dirs) {
  const auto is_repo = is_hub_cache_repo;
  for (size_t i = 0; i <= dirs.size(); ++i) {
    const fs::path d = i == dirs.size() ? src : src / dirs[i];
    if (is_repo(d))
      return Status(Error::kInvalidArgument,
                    d.string() + ": a Hugging Face cache repository (blobs/ and snapshots/): compressed whole, its weights " +
                        "would be kept twice (the blobs copied, the snapshots' links compressed); compress " +
                        (d / "snapshots" / "REVISION").string() + " instead");
  }
  return Status::success();
}

// compressing: a hub cache repository is refused (a compressed directory holding folders of
// those names, from an earlier writer, still restores).
Result<DirOutput> start_dir_output(const std::string& src, const std::string& dst, bool overwrite, bool compressing) {
  std::error_code canon_ec;
  const fs::path dst_at = fs::weakly_canonical(dst, canon_ec);
  std::vector<fs::path> dirs;
  BIGSMALL_ASSIGN_OR_RETURN(std::vector<fs::path> files, list_files(fs::path(src), canon_ec ? fs::path() : dst_at, &dirs));
  if (compressing) BIGSMALL_RETURN_IF_ERROR(refuse_hub_cache_repo(fs::path(src), dirs));
  BIGSMALL_ASSIGN_OR_RETURN(OutputDir out, OutputDir::create(src, dst, overwrite));
  for (const auto& d : dirs) {
    std::error_code ec;
    fs::create_directories(out.path() / d, ec);
    if (ec) return Status(Error::kIo, (fs::path(dst) / d).string() + ": cannot create directory: " + ec.message());
    // Inside the private temporary directory, where no one else can put a link: by name. Best
    // effort, as for files (a file system without Unix modes refuses).
    (void)::chmod((out.path() / d).c_str(), static_cast<mode_t>(output_dir_mode(fs::path(src) / d)));
  }
  return DirOutput{std::move(files), std::move(out)};
}

Status compress_dir(const std::string& src, const std::string& dst, const CompressOptions& opts) {
  return detail::guarded(src, [&]() -> Status {
    const detail::InputInUse reading(src);
    BIGSMALL_RETURN_IF_ERROR(detail::check_zstd_level(opts.zstd_level).with_context(src));
    const fs::path in(src);
    // Its .bs files would be copied as they are and its index dropped: no byte-identical restore.
    if (detail::path_exists((in / kDirIndexName).string())) {
      if (read_dir_index(in))
        return Status(Error::kNotSafetensors, src + ": already a compressed model directory (decompress it, or compress the original)");
      return Status(Error::kInvalidArgument, (in / kDirIndexName).string() +
                                                 ": a file of the name bigsmall gives its index (rename it to compress this directory)");
    }
    BIGSMALL_ASSIGN_OR_RETURN(DirOutput run, start_dir_output(src, dst, opts.overwrite, /*compressing=*/true));
    const std::vector<fs::path>& files = run.files;
    OutputDir& out_dir = run.out;
    const fs::path& out = out_dir.path();
    // Files go into the new, empty temporary directory: nothing there to overwrite.
    CompressOptions fo = opts;
    fo.overwrite = false;
    DirProgress prog{opts.progress};
    std::error_code ec;
    for (const auto& f : files)
      if (ends_with(f.string(), kStExt)) prog.total += bytes_of(in / f);
    // Whether a file of the input is named bs_rel or lies under a directory of that name; by
    // binary search in the sorted names (a scan per shard was files x shards).
    std::vector<std::string> names;
    for (const auto& f : files) names.push_back(f.string());
    std::sort(names.begin(), names.end());
    auto in_the_way = [&](const std::string& bs_rel) {
      if (std::binary_search(names.begin(), names.end(), bs_rel)) return true;
      const std::string under = bs_rel + "/";
      const auto it = std::lower_bound(names.begin(), names.end(), under);
      return it != names.end() && it->compare(0, under.size(), under) == 0;
    };
    std::string index = "{\n  \"format\": \"bigsmall\",\n  \"format_version\": " + std::to_string(kDirIndexLayoutVersion) +
                        ",\n  \"files\": [";
    std::string copied_list;  // the index's `copied`: each file copied along, so that verify covers it
    bool first = true;
    for (const auto& f : files) {
      const std::string rel = f.string();
      if (rel == kDirIndexName) continue;
      fs::create_directories((out / f).parent_path(), ec);
      if (!ends_with(rel, kStExt)) {
        CopiedFile c{rel};
        BIGSMALL_RETURN_IF_ERROR(in_final_names(copy_into(in / f, out / f, &c), out, dst));
        copied_list += std::string(copied_list.empty() ? "" : ",") + "\n    {\"path\": " + detail::json_quote(rel, /*file_name=*/true) +
                       ", \"size\": " + std::to_string(c.size) + ", \"checksum\": \"" + hex64(c.checksum) + "\"}";
        continue;
      }
      const std::string bs_rel = rel.substr(0, rel.size() - kStExt.size()) + ".bs";
      // A file of that name, or a directory (its files listed under it; an empty one is already
      // made in the output), is in the way.
      if (in_the_way(bs_rel) || fs::exists(fs::symlink_status(out / bs_rel, ec)))
        return Status(Error::kInvalidArgument, (in / bs_rel).string() + ": would be overwritten by the compressed " + rel);
      fo.progress = prog.for_file(bytes_of(in / f));
      BIGSMALL_RETURN_IF_ERROR(in_final_names(compress_file((in / f).string(), (out / bs_rel).string(), fo), out, dst));
      prog.base += bytes_of(in / f);
      if (opts.progress) opts.progress(prog.base, prog.total);
      // What the .bs just written says of itself, not a second look at the input (which may have
      // changed meanwhile).
      auto facts = detail::read_bs_header_facts((out / bs_rel).string());
      BIGSMALL_RETURN_IF_ERROR(in_final_names(facts.status(), out, dst));
      index += std::string(first ? "" : ",") + "\n    {\"source\": " + detail::json_quote(rel, /*file_name=*/true) +
               ", \"bs\": " + detail::json_quote(bs_rel, /*file_name=*/true) +
               ", \"size\": " + std::to_string(facts->original_size) + ", \"bs_checksum\": \"" + hex64(facts->fingerprint) + "\"}";
      first = false;
    }
    index += "\n  ],\n  \"copied\": [" + copied_list + (copied_list.empty() ? "]" : "\n  ]") + "\n}\n";
    BIGSMALL_RETURN_IF_ERROR(in_final_names(write_text(out / kDirIndexName, index), out, dst));
    // -f over an earlier compressed directory: the .bs files its index listed that this run did
    // not write are an older model's (a shard count that went down). Left there, they would be
    // copied into every restore as stray files.
    std::vector<std::string> stale;
    if (opts.overwrite && detail::path_exists((fs::path(dst) / kDirIndexName).string())) {
      std::vector<std::string> written;
      for (const auto& f : files) {
        const std::string n = f.string();
        written.push_back(ends_with(n, kStExt) ? n.substr(0, n.size() - kStExt.size()) + ".bs" : n);
      }
      if (auto old = read_dir_index_full(fs::path(dst))) {
        const std::unordered_set<std::string> now(written.begin(), written.end());
        for (const auto& e : old->files)
          if (!now.count(e.bs)) stale.emplace_back(e.bs);
        // Files the earlier run copied that this one did not: a restore leaves them out, but
        // loaders reading the directory itself (a generation_config.json) would take them.
        // Only those still as that run copied them: one the user has edited since is theirs.
        if (old->copied)
          for (const auto& c : *old->copied)
            if (!now.count(c.path) && unchanged_copy(fs::path(dst) / c.path, c)) stale.emplace_back(c.path);
      }
      const auto copied_index = earlier_shard_index(written);
      stale.insert(stale.end(), copied_index.begin(), copied_index.end());
    }
    BIGSMALL_RETURN_IF_ERROR(out_dir.commit());
    remove_leftovers(fs::path(dst), stale, src);
    return Status::success();
  });
}

Status decompress_dir(const std::string& src, const std::string& dst, const DecompressOptions& opts) {
  return detail::guarded(src, [&]() -> Status {
    const detail::InputInUse reading(src);
    const fs::path in(src);
    BIGSMALL_ASSIGN_OR_RETURN(DirIndex index, read_dir_index_full(in));
    const std::vector<DirEntry>& entries = index.files;
    // Compress skips its output inside its input; a restore there would become part of the
    // compressed directory, copied along by every later restore.
    std::error_code e1, e2;
    const fs::path src_at = fs::canonical(in, e1), dst_at = fs::weakly_canonical(dst, e2);
    if (!e1 && !e2) {
      const auto [s_end, d_end] = std::mismatch(src_at.begin(), src_at.end(), dst_at.begin(), dst_at.end());
      if (s_end == src_at.end() && d_end != dst_at.end())
        return Status(Error::kInvalidArgument, dst + ": lies inside the compressed directory " + src +
                                                   " (it would become part of it); choose an output outside it");
    }
    BIGSMALL_ASSIGN_OR_RETURN(DirOutput run, start_dir_output(src, dst, opts.overwrite, /*compressing=*/false));  // walks the input first, as verify does
    BIGSMALL_RETURN_IF_ERROR(check_sources_free(in, entries));
    const std::vector<fs::path>& files = run.files;
    OutputDir& out_dir = run.out;
    const fs::path& out = out_dir.path();
    DirProgress prog{opts.progress};
    std::error_code ec;
    for (const auto& e : entries) prog.total += bytes_of(in / e.bs);
    std::unordered_map<std::string, const DirEntry*> by_bs;  // (a set per name: not files x entries)
    for (const auto& e : entries) {
      by_bs.emplace(e.bs, &e);
    }
    std::unordered_map<std::string, const CopiedFile*> listed;
    if (index.copied)
      for (const auto& c : *index.copied) listed.emplace(c.path, &c);
    for (const auto& f : files) {
      const std::string rel = f.string();
      if (rel == kDirIndexName || by_bs.count(rel)) continue;
      // Where the index lists what was copied, a file it does not list is not part of the model
      // (one left by an earlier -f merge, or added since): not restored.
      const auto it = listed.find(rel);
      if (index.copied && it == listed.end()) continue;
      fs::create_directories((out / f).parent_path(), ec);
      CopiedFile got{rel};
      BIGSMALL_RETURN_IF_ERROR(in_final_names(copy_into(in / f, out / f, &got), out, dst));
      if (index.copied && opts.verify) BIGSMALL_RETURN_IF_ERROR(check_copied(in / f, *it->second, got.size, got.checksum));
      if (index.copied) listed.erase(it);
    }
    if (!listed.empty() && opts.verify)  // listed, but not a file of the directory
      return copied_missing(in / listed.begin()->first);
    for (const auto& e : entries) {
      fs::create_directories((out / e.source).parent_path(), ec);
      DecompressOptions fo = opts;
      fo.overwrite = false;
      fo.progress = prog.for_file(bytes_of(in / e.bs));
      BIGSMALL_RETURN_IF_ERROR(check_entry(in, e));
      BIGSMALL_RETURN_IF_ERROR(in_final_names(decompress_file((in / e.bs).string(), (out / e.source).string(), fo), out, dst));
      prog.base += bytes_of(in / e.bs);
      if (opts.progress) opts.progress(prog.base, prog.total);
    }
    return out_dir.commit();
  });
}

namespace {
// One copied file against its index entry (missing_ok: absent is fine).
Status check_one_copied(const fs::path& dir, const CopiedFile& c, bool missing_ok) {
  const fs::path at = dir / c.path;
  auto m = detail::MappedFile::open(at.string());
  if (!m && m.status().sys_errno() == ENOENT) return missing_ok ? Status::success() : copied_missing(at);
  if (!m) return m.status();
  return check_copied(at, c, m->size(), detail::xxh3_64(m->data(), m->size()));
}
}  // namespace

Status verify_path(const std::string& path, const DecompressOptions& opts, const ProblemFn& each) {
  // Each problem goes to `each` as it is found; with `each`, the files after a damaged one are
  // still checked (a user learns all the damage in one run), and the first problem is returned.
  Status first;
  auto problem = [&](Status st) {
    if (st.is_ok()) return true;
    if (first.is_ok()) first = st;
    if (each) each(st);
    return static_cast<bool>(each);  // go on?
  };
  const Status st = detail::guarded(path, [&]() -> Status {
    if (!detail::path_is_dir(path)) {
      BIGSMALL_ASSIGN_OR_RETURN(BsFile f, BsFile::open(path));
      return f.verify(opts);
    }
    // The walk a restore makes: what it would refuse (a dangling link, a pipe, links that loop),
    // verify refuses too; and the index, every path it names checked.
    BIGSMALL_ASSIGN_OR_RETURN(std::vector<std::string> files, model_dir_files(path, /*check_files=*/false));
    BIGSMALL_RETURN_IF_ERROR(list_files(fs::path(path)).status());
    BIGSMALL_ASSIGN_OR_RETURN(DirIndex index, read_dir_index_full(fs::path(path)));
    for (const auto& e : index.files)  // a file where a .bs restores to, each named
      if (!problem(check_sources_free(fs::path(path), {e}))) return Status::success();
    if (index.copied)
      for (const auto& c : *index.copied)
        if (!problem(check_one_copied(fs::path(path), c, false))) return Status::success();
    for (size_t i = 0; i < index.files.size(); ++i) {
      Status one = check_entry(fs::path(path), index.files[i]);  // missing, damaged, swapped or replaced
      if (one.is_ok()) {
        auto f = BsFile::open(files[i]);
        one = f ? f->verify(opts) : f.status();
      }
      if (!problem(std::move(one))) return Status::success();
    }
    return Status::success();
  });
  if (!st.is_ok()) {  // a problem that ends the check (the index, the walk, the single file)
    problem(st);
    return st;
  }
  return first;
}

Status verify_copied_files(const std::string& dir, const std::vector<std::string>& only, bool missing_ok) {
  return detail::guarded(dir, [&]() -> Status {
    BIGSMALL_ASSIGN_OR_RETURN(DirIndex index, read_dir_index_full(fs::path(dir)));
    if (!index.copied) return Status::success();  // an index of an earlier writer: nothing to check
    for (const auto& c : *index.copied) {
      if (!only.empty() && std::find(only.begin(), only.end(), c.path) == only.end()) continue;
      BIGSMALL_RETURN_IF_ERROR(check_one_copied(fs::path(dir), c, missing_ok));
    }
    return Status::success();
  });
}

Result<std::vector<std::string>> model_dir_safetensors(const std::string& dir) {
  return detail::guarded(dir, [&]() -> Result<std::vector<std::string>> {
    BIGSMALL_ASSIGN_OR_RETURN(std::vector<fs::path> files, list_files(fs::path(dir)));
    std::vector<std::string> out;
    for (const auto& f : files)
      if (ends_with(f.string(), kStExt)) out.push_back((fs::path(dir) / f).string());
    return out;
  });
}

Result<std::vector<std::string>> model_dir_files(const std::string& dir, bool check_files) {
  return detail::guarded(dir, [&]() -> Result<std::vector<std::string>> {
    BIGSMALL_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, read_dir_index(dir));
    std::vector<std::string> out;
    out.reserve(entries.size());
    for (const auto& e : entries) {
      if (check_files) BIGSMALL_RETURN_IF_ERROR(check_entry(dir, e));  // 64 bytes of each file
      out.push_back((fs::path(dir) / e.bs).string());
    }
    return out;
  });
}

}  // namespace bigsmall
