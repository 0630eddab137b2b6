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

std::atomic<bool>& simd_allowed() {
  static std::atomic<bool> allowed{env_allows_simd()};
  return allowed;
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

}  // namespace

bool cpu_has_avx512_vbmi() {
  static const bool supported = cpu_supports();
  return supported && simd_allowed().load(std::memory_order_relaxed);
}

void set_simd_allowed(bool allowed) { simd_allowed().store(allowed, std::memory_order_relaxed); }

}  // namespace bigsmall::detail
