#include "common/cpu.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace bigsmall::detail {
namespace {

bool env_allows_simd() {
  const char* v = std::getenv("BIGSMALL_NO_SIMD");
  return v == nullptr || *v == '\0' || std::strcmp(v, "0") == 0;
}

bool cpu_supports() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
         __builtin_cpu_supports("avx512vbmi2");
#else
  return false;
#endif
}

// Read when the library is loaded, not at the first decode: a lazy static's guard, caught half
// taken by a fork in another thread's first call, would hang the child's first decode.
const bool g_cpu_supported = cpu_supports();
std::atomic<bool> g_simd_allowed{env_allows_simd()};

}  // namespace

bool cpu_has_avx512_vbmi() { return g_cpu_supported && g_simd_allowed.load(std::memory_order_relaxed); }

void set_simd_allowed(bool allowed) { g_simd_allowed.store(allowed, std::memory_order_relaxed); }

}  // namespace bigsmall::detail
