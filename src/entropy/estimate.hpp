// Table-cost estimates: the inner loop of planning. Planning calls these for every context at
// every candidate mantissa width and precision, so they come as a portable kernel and an
// AVX-512 one that return the same sums to the bit (see estimate_sums): on one machine, the
// SIMD switch (BIGSMALL_NO_SIMD) never changes what is written. (Across machines planning can
// still differ in the last bit of a cost: libm's log2, used elsewhere in planning, is itself
// dispatched by CPU in glibc.)
#pragma once
#include <cstdint>
#include <vector>

namespace bigsmall::detail {

// The present symbols of a histogram, ascending, with their counts. The lists keep 8 spare
// entries past the end: the SIMD kernels store whole vectors.
struct Present {
  std::vector<uint32_t> sym;
  std::vector<uint64_t> count;
  uint32_t size = 0;
  uint64_t total = 0;
  void gather(const uint64_t* counts, uint32_t alphabet);
};

// Over the present symbols i, with f_i = clamp(round(count_i * scale), 1, fmax):
// c_log_f = sum of count_i * log2(f_i), summed in 8 partial sums (i mod 8) added in a fixed
// order; fsum = sum of f_i; zig_sum = sum of zigzag(f_i - f_{i-1}) (f_{-1} = 0);
// gap_bits = sum of the Exp-Golomb(0) lengths of sym_i - sym_{i-1} - 1 (sym_{-1} = -1).
struct EstimateSums {
  double c_log_f = 0;
  uint64_t fsum = 0, zig_sum = 0, gap_bits = 0;
};
EstimateSums estimate_sums(const Present& h, double scale, uint32_t fmax);

// log2 of every possible frequency (0 .. 2^kMaxPrecision), so that estimates need no libm call.
const float* log2_of_freq();

// The AVX-512 kernels (F, VL, DQ, CD) and whether this CPU may use them.
bool estimate_simd_available();
void gather_present_avx512(const uint64_t* counts, uint32_t alphabet, Present* h);
EstimateSums estimate_sums_avx512(const Present& h, double scale, uint32_t fmax, const float* lg);

}  // namespace bigsmall::detail
