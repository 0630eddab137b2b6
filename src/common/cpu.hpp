// Run-time CPU feature checks shared by the SIMD encoder and decoder.
#pragma once

namespace bigsmall::detail {

// AVX-512 F, BW, VL, VBMI (byte permutes) and VBMI2 (word compress/expand), the set the SIMD
// coders are written for (Ice Lake, Zen 4 and later), and SIMD not switched off: by
// BIGSMALL_NO_SIMD=1 in the environment (read once, when the library is loaded: set it before the
// process starts) or set_simd_allowed.
// Encoders decide when they plan a tensor, decoders when they prepare one.
bool cpu_has_avx512_vbmi();
// Tests compare the SIMD coders against the scalar ones in one process.
void set_simd_allowed(bool allowed);

}  // namespace bigsmall::detail
