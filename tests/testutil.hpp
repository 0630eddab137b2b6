// Test data with the statistics of real weights plus every awkward bit pattern.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "bigsmall/dtype.hpp"
#include "encode/encoder.hpp"

namespace bstest {

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

inline uint16_t f32_to_f16(float f) {
  // Truncating conversion is enough for test data: every 16-bit pattern is a valid input.
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000;
  int e = static_cast<int>((u >> 23) & 0xFF) - 127 + 15;
  const uint32_t m = u & 0x7FFFFF;
  if (e <= 0) return static_cast<uint16_t>(sign | (e > -10 ? ((m | 0x800000) >> (14 - e)) : 0));
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7C00);
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(e) << 10) | (m >> 13));
}

// Gaussian weights (std 0.02) in the dtype's bit layout, with special values sprinkled in:
// NaNs with payloads, ±0, ±Inf, subnormals, max-magnitude values.
inline std::vector<uint8_t> weights(bigsmall::DType dt, size_t n, uint32_t seed, bool specials = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 0.02f);
  const auto& info = bigsmall::dtype_info(dt);
  const size_t width = info.bits / 8;
  std::vector<uint8_t> out(n * width);
  for (size_t i = 0; i < n; ++i) {
    const float f = g(rng);
    uint64_t v = 0;
    switch (dt) {
      case bigsmall::DType::kBF16: v = f32_to_bf16(f); break;
      case bigsmall::DType::kF16: v = f32_to_f16(f); break;
      case bigsmall::DType::kF32: { uint32_t u; std::memcpy(&u, &f, 4); v = u; break; }
      case bigsmall::DType::kF64: { double d = f * (1 + 1e-9 * static_cast<double>(rng() % 1000)); std::memcpy(&v, &d, 8); break; }
      default: v = static_cast<uint64_t>(f32_to_bf16(f)) >> (16 - info.bits); break;
    }
    std::memcpy(out.data() + i * width, &v, width);
  }
  if (specials && n > 0) {
    const int M = info.mantissa_bits, E = info.exponent_bits;
    const uint64_t exp_all = ((uint64_t{1} << E) - 1) << M;
    const uint64_t sign = uint64_t{1} << (M + E);
    const uint64_t patterns[] = {
        0, sign,                                  // +0, -0
        exp_all, exp_all | sign,                  // ±Inf (or max for E4M3)
        exp_all | 1, exp_all | sign | ((uint64_t{1} << M) - 1),  // NaN payloads
        exp_all | (uint64_t{1} << (M - 1)) | 5,   // quiet NaN with payload
        1, sign | 3, (uint64_t{1} << M) - 1,      // subnormals
        exp_all - 1, sign | (exp_all - 1),        // largest finite
    };
    for (size_t k = 0; k < n / 97 + 1; ++k) {
      const uint64_t v = patterns[rng() % std::size(patterns)];
      std::memcpy(out.data() + (rng() % n) * width, &v, width);
    }
  }
  return out;
}

inline std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

// While it lives, the encoder gives lanes as encoders before the twentieth session did (8 lanes
// for 8K-16K units, 4 for 2K-8K, 1 below): files written then use the kernels for those counts.
struct LanesBySizeOnly {
  LanesBySizeOnly() { bigsmall::detail::set_lanes_by_size_only_for_testing(true); }
  ~LanesBySizeOnly() { bigsmall::detail::set_lanes_by_size_only_for_testing(false); }
  LanesBySizeOnly(const LanesBySizeOnly&) = delete;
  LanesBySizeOnly& operator=(const LanesBySizeOnly&) = delete;
};

}  // namespace bstest
