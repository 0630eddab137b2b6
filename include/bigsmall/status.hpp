// Errors are values inside the core: every fallible call returns Status or Result<T>.
// Only the CLI maps them to exit codes and only the Python binding to exceptions.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace bigsmall {

// Stable numbering: callers may store and compare these values, and the Python binding's
// exception classes follow them. They are not exit codes: the CLI maps them onto its own
// (bigsmall --help; kCorrupt, for one, exits 5).
enum class Error : int {
  kOk = 0,
  kInvalidArgument = 1,   // caller passed something unusable
  kIo = 2,                // open/read/write/rename failed (errno text in the message)
  kNoSpace = 3,           // the output disk is full
  kNotSafetensors = 4,    // input is not a well-formed safetensors file
  kNotBigsmall = 5,       // input is not a .bs file (bad magic)
  kUnsupportedVersion = 6,// .bs written by a newer format version
  kCorrupt = 7,           // checksum mismatch or inconsistent structure
  kTruncated = 8,         // file ends before the structures it declares
  kUnknownDtype = 9,      // dtype name outside the dtype table
  kLimit = 10,            // a declared size exceeds a hard cap
  kNotFound = 11,         // tensor name not present
  kInternal = 12,
  kOutOfMemory = 13,      // an allocation failed (a file may declare tensors larger than memory)
};

const char* error_name(Error e);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status success() { return {}; }  // (not ok(): st.ok() would compile and mean nothing)
  bool is_ok() const { return code_ == Error::kOk; }
  explicit operator bool() const { return is_ok(); }
  Error code() const { return code_; }
  const std::string& message() const { return message_; }
  // The operating system's errno behind a kIo or kNoSpace error, 0 when there is none: lets the
  // Python binding raise FileNotFoundError / PermissionError as Python's own calls would.
  int sys_errno() const { return sys_errno_; }
  Status with_errno(int e) const {
    Status s = *this;
    s.sys_errno_ = e;
    return s;
  }
  // Prefixes context (usually a file name) so the final error names the file. Messages carry
  // file and tensor names as they are, control characters included (a name read from a hostile
  // file may hold a newline or a terminal escape): escape them before printing to a terminal or
  // a log, as the CLI and the Python binding do.
  Status with_context(const std::string& ctx) const {
    if (is_ok()) return *this;
    Status s(code_, ctx + ": " + message_);
    s.sys_errno_ = sys_errno_;
    return s;
  }

 private:
  Error code_ = Error::kOk;
  std::string message_;
  int sys_errno_ = 0;
};

// A value or the Status saying why there is none. value(), -> and * require is_ok(): on an error
// they throw std::bad_variant_access. The library's own calls throw nothing (a failed allocation
// is kOutOfMemory); an exception thrown by a caller's callback (a progress function) passes
// through them to the caller, except std::bad_alloc, std::length_error and std::system_error,
// which become kOutOfMemory and kInternal as the library's own do.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  // A Status with no value must be an error: a success Status here would make a Result that
  // says ok and holds nothing (BIGSMALL_ASSIGN_OR_RETURN would then return success without ever
  // producing its value), so it becomes kInternal.
  Result(Status status)
      : v_(status.is_ok() ? Status(Error::kInternal, "a Result was made from a success Status, with no value")
                          : std::move(status)) {}
  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  T& value() & { return std::get<0>(v_); }
  // From a temporary Result: the value moved out, not a reference into the temporary, which
  // `auto&& f = *BsFile::open(p);` would have kept after the Result was gone.
  T value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return value(); }
  T operator*() && { return std::move(*this).value(); }
  const T& operator*() const& { return value(); }
  Status status() const { return is_ok() ? Status::success() : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

#define BIGSMALL_CONCAT_INNER(a, b) a##b
#define BIGSMALL_CONCAT(a, b) BIGSMALL_CONCAT_INNER(a, b)
// Early returns for functions that return Status or Result<T> (prefixed: a public header's
// macros share every includer's namespace).
#define BIGSMALL_RETURN_IF_ERROR_IMPL(tmp, expr) \
  do {                                           \
    ::bigsmall::Status tmp = (expr);             \
    if (!tmp.is_ok()) return tmp;                \
  } while (0)
#define BIGSMALL_RETURN_IF_ERROR(expr) BIGSMALL_RETURN_IF_ERROR_IMPL(BIGSMALL_CONCAT(bs_st_, __COUNTER__), expr)

#define BIGSMALL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.is_ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
#define BIGSMALL_ASSIGN_OR_RETURN(lhs, expr) BIGSMALL_ASSIGN_OR_RETURN_IMPL(BIGSMALL_CONCAT(bs_r_, __COUNTER__), lhs, expr)

}  // namespace bigsmall
