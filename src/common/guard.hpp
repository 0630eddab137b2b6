#pragma once
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

#include "bigsmall/status.hpp"

namespace bigsmall::detail {

// Runs the body of a public entry point, turning the exceptions the core itself can raise into
// values: a failed allocation (a file may declare tensors larger than this machine's memory)
// and a refused thread outside the pool. Anything else, such as the exception of a caller's
// progress callback (Python's KeyboardInterrupt), passes through to the caller unchanged; a
// callback's own bad_alloc or system_error cannot be told apart and becomes a value too.
// `where` names the file, or is empty.
template <typename Fn>
auto guarded(const std::string& where, Fn&& fn) -> decltype(fn()) {
  const auto error = [&](Error code, const std::string& what) {
    return Status(code, where.empty() ? what : where + ": " + what);
  };
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return error(Error::kOutOfMemory, "out of memory");
  } catch (const std::length_error&) {
    return error(Error::kOutOfMemory, "out of memory (a size beyond what can be allocated)");
  } catch (const std::system_error& e) {
    return error(Error::kInternal, std::string("system error: ") + e.what());
  }
}

}  // namespace bigsmall::detail
