// The SIMD coders against the scalar ones: identical payloads from both encoders, at every lane
// count the encoder uses (8, 16 and 32 lanes), with partial last rounds and several chunks.
#include <gtest/gtest.h>

#include <algorithm>

#include "bigsmall/codec.hpp"
#include "common/cpu.hpp"
#include "testutil.hpp"

using namespace bigsmall;

namespace {

struct SimdOff {
  SimdOff() { detail::set_simd_allowed(false); }
  ~SimdOff() { detail::set_simd_allowed(true); }
};

// Tensors of 8K+ units get 8 lanes, 16K+ 16 lanes, 32K+ 32 lanes; odd sizes leave a partial
// last round, and 2^16+ units span chunks.
const uint64_t kSizes[] = {8192, 8192 + 5, 16384 + 3, 32768 + 31, 65536, 65536 * 2 + 17};

class SimdDtype : public ::testing::TestWithParam<DType> {};

TEST_P(SimdDtype, EncoderMatchesScalarByteForByte) {
  if (!detail::cpu_has_avx512_vbmi()) GTEST_SKIP() << "this CPU has no AVX-512 VBMI2: only the scalar coder runs";
  const DType dt = GetParam();
  for (uint64_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    auto data = bstest::weights(dt, n, static_cast<uint32_t>(n));
    // Special values among the weights: NaN payloads, infinities, -0, subnormals.
    const size_t w = dtype_info(dt).bits / 8;
    for (size_t i = 0; i < 64 && (i + 1) * 97 < n; ++i) data[(i + 1) * 97 * w + w - 1] ^= 0x7F;
    EncodeOptions eo;
    eo.threads = 1;
    eo.allow_zstd = false;
    auto simd = encode_tensor(dt, data.data(), data.size(), eo);
    ASSERT_TRUE(simd.is_ok()) << simd.status().message();
    ASSERT_EQ(simd->coding.codec, Codec::kFloat);
    Result<EncodedTensor> scalar = Status(Error::kInternal, "not run");
    {
      SimdOff off;
      scalar = encode_tensor(dt, data.data(), data.size(), eo);
    }
    ASSERT_TRUE(scalar.is_ok()) << scalar.status().message();
    EXPECT_TRUE(simd->payload == scalar->payload) << "SIMD and scalar encoders disagree";
    std::vector<uint8_t> out(data.size());
    ASSERT_TRUE(decode_tensor(simd->coding, simd->payload.data(), simd->payload.size(), out.data(), out.size()).is_ok());
    EXPECT_TRUE(out == data);
    std::fill(out.begin(), out.end(), 0);
    {
      SimdOff off;
      ASSERT_TRUE(decode_tensor(simd->coding, simd->payload.data(), simd->payload.size(), out.data(), out.size()).is_ok());
    }
    EXPECT_TRUE(out == data);
  }
}

INSTANTIATE_TEST_SUITE_P(All, SimdDtype, ::testing::Values(DType::kF16, DType::kBF16, DType::kF32),
                         [](const auto& p) { return std::string(dtype_info(p.param).safetensors_name); });

}  // namespace
