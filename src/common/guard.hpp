#pragma once
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

#include "bigsmall/status.hpp"

namespace bigsmall::detail {

// An error built where memory has just run out: its message may not get the memory it needs,
// and an exception thrown from a handler (or out of a thread) ends the process, so it falls back
// to a message short enough to live inside the string object itself, which allocates nothing.
inline Status error_in_low_memory(Error code, const std::string& where, const char* what, const char* detail = "") noexcept {
  try {
    std::string m = where.empty() ? std::string() : where + ": ";
    return Status(code, m.append(what).append(detail));
  } catch (...) {
    return Status(code, std::string(code == Error::kOutOfMemory ? "out of memory" : "internal"));
  }
}

// Runs the body of a public entry point, turning the exceptions the core itself can raise into
// values: a failed allocation (a file may declare tensors larger than this machine's memory)
// and a refused thread outside the pool. Anything else, such as the exception of a caller's
// progress callback (Python's KeyboardInterrupt), passes through to the caller unchanged; a
// callback's own bad_alloc or system_error cannot be told apart and becomes a value too.
// `where` names the file, or is empty.
template <typename Fn>
auto guarded(const std::string& where, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return error_in_low_memory(Error::kOutOfMemory, where, "out of memory");
  } catch (const std::length_error&) {
    return error_in_low_memory(Error::kOutOfMemory, where, "out of memory (a size beyond what can be allocated)");
  } catch (const std::system_error& e) {
    return error_in_low_memory(Error::kInternal, where, "system error: ", e.what());
  }
}

}  // namespace bigsmall::detail
