// The SIMD coders against the scalar ones: identical payloads from both encoders, at every lane
// count the encoder uses (8, 16 and 32 lanes), with partial last rounds and several chunks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>

#include "bigsmall/codec.hpp"
#include "common/cpu.hpp"
#include "decode/decoder.hpp"
#include "decode/simd.hpp"
#include "encode/simd_enc.hpp"
#include "entropy/estimate.hpp"
#include "entropy/model.hpp"
#include "entropy/table.hpp"
#include "testutil.hpp"

using namespace bigsmall;

namespace {

struct SimdOff {
  SimdOff() { detail::set_simd_allowed(false); }
  ~SimdOff() { detail::set_simd_allowed(true); }
};

// Tensors of 2K+ units get 16 lanes, 32K+ 32 lanes (and from earlier encoders, 8K+ 8 lanes:
// kEarlierSize); odd sizes leave a partial last round, and 2^16+ units span chunks.
const uint64_t kEarlierSize = 8192 + 5;
const uint64_t kSizes[] = {2048 + 3, 8192, kEarlierSize, 16384 + 3, 32768 + 31, 65536, 65536 * 2 + 17};

class SimdDtype : public ::testing::TestWithParam<DType> {};

TEST_P(SimdDtype, EncoderMatchesScalarByteForByte) {
  if (!detail::cpu_has_avx512_vbmi()) GTEST_SKIP() << "this CPU has no AVX-512 VBMI2: only the scalar coder runs";
  const DType dt = GetParam();
  for (uint64_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::optional<bstest::LanesBySizeOnly> earlier;
    if (n == kEarlierSize) earlier.emplace();
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

// BF16 weights from a small codebook (so the mantissa tables use every mantissa bit) with a
// sprinkle of rare exponents (so the sign+exponent table wants a fine precision): the data that
// makes the decoder fall back from its other fused layouts to kSePermute, and with more than 64
// distinct exponents, to kSePermute256.
std::vector<uint8_t> codebook_weights(uint64_t n, int rare) {
  static const float kBook[12] = {0.013f, -0.021f, 0.0071f, -0.0093f, 0.031f, -0.047f,
                                  0.0027f, -0.0039f, 0.061f, -0.11f, 0.0011f, -0.0017f};
  std::mt19937 rng(3);
  std::vector<uint8_t> d(n * 2);
  for (uint64_t i = 0; i < n; ++i) {
    float f = kBook[rng() % 12];
    if (i % 97 == 0) {
      const uint64_t k = i / 97;
      f = std::ldexp(1.f + static_cast<float>(i % 7) / 8.f, -static_cast<int>(k % static_cast<uint64_t>(rare)) - 1) *
          (k % 2 ? -1.f : 1.f);
    }
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t h = static_cast<uint16_t>(u >> 16);
    std::memcpy(&d[i * 2], &h, 2);
  }
  return d;
}

// BF16 weights whose mantissas are uniformly random: no mantissa table pays, the planner codes
// 0 mantissa bits and the decoder skips the (identity) mantissa step: kSeOnly.
std::vector<uint8_t> raw_mantissa_weights(uint64_t n) {
  std::mt19937 rng(4);
  std::vector<uint8_t> d(n * 2);
  for (uint64_t i = 0; i < n; ++i) {
    const uint32_t sign = rng() & 1, exp = 117 + rng() % 4 + (rng() % 5 == 0 ? rng() % 6 : 0), man = rng() & 0x7F;
    const uint16_t h = static_cast<uint16_t>(sign << 15 | exp << 7 | man);
    std::memcpy(&d[i * 2], &h, 2);
  }
  return d;
}

// Codes a BF16 tensor with the SIMD and the scalar encoder, expects the same bytes and a
// reference decode equal to the input; *fm gets the chosen model.
void expect_simd_equals_scalar(const std::vector<uint8_t>& data, detail::FloatModel* fm) {
  EncodeOptions eo;
  eo.threads = 1;
  eo.allow_zstd = false;
  auto simd = encode_tensor(DType::kBF16, data.data(), data.size(), eo);
  ASSERT_TRUE(simd.is_ok()) << simd.status().message();
  ASSERT_EQ(simd->coding.codec, Codec::kFloat);
  ASSERT_TRUE(detail::read_float_model(simd->payload.data(), simd->coding.model_size, DType::kBF16, simd->coding.units(), fm).is_ok());
  Result<EncodedTensor> scalar = Status(Error::kInternal, "not run");
  {
    SimdOff off;
    scalar = encode_tensor(DType::kBF16, data.data(), data.size(), eo);
  }
  ASSERT_TRUE(scalar.is_ok()) << scalar.status().message();
  EXPECT_TRUE(simd->payload == scalar->payload) << "SIMD and scalar encoders disagree";
  std::vector<uint8_t> ref(data.size());
  ASSERT_TRUE(
      reference_decode_tensor(simd->coding, simd->payload.data(), simd->payload.size(), ref.data(), ref.size()).is_ok());
  EXPECT_TRUE(ref == data);
}

// Tensors with no coded mantissa bits skip the (identity) mantissa step in both encoders.
TEST(SimdEncoder, NoMantissaBitsMatchesScalarByteForByte) {
  if (!detail::cpu_has_avx512_vbmi()) GTEST_SKIP() << "this CPU has no AVX-512 VBMI2: only the scalar coder runs";
  for (uint64_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::optional<bstest::LanesBySizeOnly> earlier;  // 8 lanes, as earlier encoders wrote them
    if (n == kEarlierSize) earlier.emplace();
    detail::FloatModel fm;
    expect_simd_equals_scalar(raw_mantissa_weights(n), &fm);
    if (HasFatalFailure()) return;
    EXPECT_EQ(fm.hi_bits, 0) << "the generator no longer gives a tensor without coded mantissa bits";
  }
}

// BF16 weights over 100 exponents of both signs, each (sign, exponent) with its own mantissa
// distribution: no two rows merge, so the tensor gets one mantissa table per row (~200).
std::vector<uint8_t> many_context_weights(uint64_t n) {
  std::mt19937 rng(9);
  std::vector<uint8_t> d(n * 2);
  for (uint64_t i = 0; i < n; ++i) {
    const uint32_t sign = rng() & 1, exp = 20 + rng() % 100, row = sign * 100 + exp;
    const uint32_t man = (row * 37 + (rng() % 8 == 0 ? rng() % 128 : rng() % 4)) & 0x7F;
    const uint16_t h = static_cast<uint16_t>(sign << 15 | exp << 7 | man);
    std::memcpy(&d[i * 2], &h, 2);
  }
  return d;
}

// Large tensors of real weights can have more than 127 mantissa contexts; the SIMD encoder
// packs up to 255 in its se entries.
TEST(SimdEncoder, ManyContextsMatchScalarByteForByte) {
  if (!detail::cpu_has_avx512_vbmi()) GTEST_SKIP() << "this CPU has no AVX-512 VBMI2: only the scalar coder runs";
  detail::FloatModel fm;
  expect_simd_equals_scalar(many_context_weights(uint64_t{1} << 20), &fm);
  if (HasFatalFailure()) return;
  EXPECT_GT(fm.mant.size(), 127u) << "the generator no longer gives more than 127 contexts";
  EXPECT_LE(fm.mant.size(), 255u) << "the generator gives more contexts than the SIMD encoder takes";
}

TEST(SimdFused, EveryLayoutAtFewLanesMatchesTheReference) {
  // Small tensors take the 256-row layout when per-symbol rows would outnumber their weights;
  // here every layout must be reached at few lanes, so that rule is off.
  struct AllLayouts {
    AllLayouts() { detail::set_compact_rows_for_testing(false); }
    ~AllLayouts() { detail::set_compact_rows_for_testing(true); }
  } all_layouts;
  struct Want {
    int lanes, mode;
    bool earlier;  // lanes as earlier encoders gave them (4 from 2K units, 8 from 8K), as old files hold
  };
  const Want wants[] = {{4, detail::kSePermute, false},     {16, detail::kSePermute, false},
                        {16, detail::kSeInSe, false},       {16, detail::kSeInMant, false},
                        {16, detail::kSePermute256, false}, {32, detail::kSePermute256, false},
                        {4, detail::kSeOnly, false},        {16, detail::kSeOnly, false},
                        {32, detail::kSeOnly, false},       {4, detail::kSePermute, true},
                        {8, detail::kSePermute, true},      {8, detail::kSeInSe, true},
                        {8, detail::kSeInMant, true},       {8, detail::kSePermute256, true},
                        {4, detail::kSeOnly, true},         {8, detail::kSeOnly, true}};
  for (const Want& want : wants) {
    SCOPED_TRACE("lanes " + std::to_string(want.lanes) + " layout " + std::to_string(want.mode) +
                 (want.earlier ? " (earlier encoders)" : ""));
    std::optional<bstest::LanesBySizeOnly> rule;
    if (want.earlier) rule.emplace();
    bool reached = false, rows_past_192 = want.mode != detail::kSePermute256 || want.lanes != 32;
    for (uint64_t n : {uint64_t{1500}, uint64_t{5000}, uint64_t{10000}, uint64_t{14000}, uint64_t{70001}}) {
      if ((n > 20000) != (want.lanes == 32)) continue;
      if ((n < 2048) != (want.lanes == 4 && !want.earlier)) continue;
      for (int rare : {0, 30, 40, 48, 56, 80, 110, 125, -1}) {
        std::vector<uint8_t> data = rare < 0 ? raw_mantissa_weights(n)
                                    : rare   ? codebook_weights(n, rare)
                                             : bstest::weights(DType::kBF16, n, 11, false);
        EncodeOptions eo;
        eo.allow_zstd = false;
        auto enc = encode_tensor(DType::kBF16, data.data(), data.size(), eo);
        ASSERT_TRUE(enc.is_ok());
        if (enc->coding.codec != Codec::kFloat || (1 << enc->coding.lanes_log2) != want.lanes) continue;
        auto dec = detail::TensorDecoder::prepare(enc->coding, enc->payload.data(), enc->coding.model_size);
        ASSERT_TRUE(dec.is_ok());
        if (dec->fused_mode() != want.mode) continue;
        reached = true;
        if (want.mode == detail::kSePermute256) {
          detail::FloatModel fm;
          ASSERT_TRUE(detail::read_float_model(enc->payload.data(), enc->coding.model_size, DType::kBF16, enc->coding.units(), &fm).is_ok());
          const auto present = std::count_if(fm.se.freq.begin(), fm.se.freq.end(), [](uint32_t f) { return f != 0; });
          rows_past_192 |= present > 192;  // every one of the 8 table registers is read
        }
        std::vector<uint8_t> fast(data.size() + 8, 0x5A), ref(data.size(), 0);
        ASSERT_TRUE(decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), fast.data(), data.size()).is_ok());
        ASSERT_TRUE(
            reference_decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), ref.data(), ref.size()).is_ok());
        EXPECT_TRUE(std::equal(data.begin(), data.end(), fast.begin()));
        EXPECT_TRUE(ref == data);
        std::vector<uint8_t> scalar(data.size(), 0);
        {
          SimdOff off;  // the scalar loops on the same fused layout
          ASSERT_TRUE(
              decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), scalar.data(), scalar.size()).is_ok());
        }
        EXPECT_TRUE(scalar == data);
        for (int i = 0; i < 8; ++i) EXPECT_EQ(fast[data.size() + i], 0x5A) << "wrote past the end";
      }
    }
    EXPECT_TRUE(reached) << "no test tensor reaches this layout: adjust the generator";
    EXPECT_TRUE(rows_past_192) << "no test tensor has more than 192 rows: adjust the generator";
  }
}

TEST(SimdFused, SmallTensorsOfManySymbolsTakeTheCompactLayout) {
  // An F16 tensor of 5,000 weights has 24 sign+exponent symbols with 256-slot mantissa rows:
  // per-symbol rows (kSeInMant) would hold 6,144 entries, more than its weights, so it decodes
  // through the 256-row layout; one of 100,000 weights keeps kSeInMant. Both layouts must
  // give the same bytes.
  for (uint64_t n : {uint64_t{5000}, uint64_t{100000}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const auto data = bstest::weights(DType::kF16, n, 41, false);
    EncodeOptions eo;
    eo.allow_zstd = false;
    auto enc = encode_tensor(DType::kF16, data.data(), data.size(), eo);
    ASSERT_TRUE(enc.is_ok());
    ASSERT_EQ(enc->coding.codec, Codec::kFloat);
    int modes[2] = {-1, -1};
    for (bool rule : {true, false}) {
      detail::set_compact_rows_for_testing(rule);
      auto dec = detail::TensorDecoder::prepare(enc->coding, enc->payload.data(), enc->coding.model_size);
      ASSERT_TRUE(dec.is_ok());
      modes[rule] = dec->fused_mode();
      std::vector<uint8_t> out(data.size());
      EXPECT_TRUE(decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), out.data(), out.size()).is_ok());
      EXPECT_TRUE(out == data) << "rule " << rule;
    }
    detail::set_compact_rows_for_testing(true);
    EXPECT_EQ(modes[0], detail::kSeInMant) << "the generator no longer gives per-symbol rows: adjust it";
    EXPECT_EQ(modes[1], n == 5000 ? detail::kSePermute256 : detail::kSeInMant);
  }
}

// The planner's cost estimates decide what a .bs file holds, so the AVX-512 kernels must give
// what the portable ones give to the last bit, or output would depend on the CPU.
TEST(SimdEstimate, SumsFollowTheDefinition) {
  // counts {0, 3, 0, 1} at precision 2: f = {3, 1}, sum of c log2 f = 3 log2 3, zigzag deltas
  // 2*3 and 2*2-1, symbol gaps 1 and 1 (Exp-Golomb 3 bits each).
  const uint64_t counts[4] = {0, 3, 0, 1};
  for (bool simd : {true, false}) {
    detail::set_simd_allowed(simd);
    detail::Present h;
    h.gather(counts, 4);
    ASSERT_EQ(h.size, 2u);
    EXPECT_EQ(h.total, 4u);
    const detail::EstimateSums e = detail::estimate_sums(h, 1.0, 4);
    EXPECT_EQ(e.fsum, 4u);
    EXPECT_EQ(e.zig_sum, 9u);
    EXPECT_EQ(e.gap_bits, 6u);
    EXPECT_NEAR(e.c_log_f, 3 * std::log2(3.0), 1e-6);
  }
  detail::set_simd_allowed(true);
}

TEST(SimdEstimate, MatchesThePortableKernelToTheBit) {
  if (!detail::estimate_simd_available()) GTEST_SKIP() << "this CPU has no AVX-512 DQ/CD: only the portable kernel runs";
  std::mt19937_64 rng(7);
  for (uint32_t alphabet : {1u, 2u, 7u, 8u, 9u, 15u, 16u, 17u, 64u, 128u, 255u, 256u, 1000u, 1024u, 4096u}) {
    for (int pattern = 0; pattern < 5; ++pattern) {
      SCOPED_TRACE("alphabet=" + std::to_string(alphabet) + " pattern=" + std::to_string(pattern));
      std::vector<uint64_t> counts(alphabet);
      for (auto& c : counts) {
        switch (pattern) {
          case 0: c = rng() % 50; break;                                  // dense, small
          case 1: c = rng() % 10 == 0 ? rng() % 1000 : 0; break;          // sparse
          case 2: c = rng() % 3 == 0 ? rng() % (uint64_t{1} << 45) : 1; break;  // huge next to 1
          case 3: c = 0; break;                                           // one symbol, set below
          default: c = uint64_t{1} << (rng() % 30); break;                // geometric spread
        }
      }
      if (pattern == 3) counts[rng() % alphabet] = 12345;
      for (int precision = 1; precision <= detail::kMaxPrecision; ++precision) {
        const double simd = detail::estimate_table_bits(counts.data(), alphabet, precision);
        detail::set_simd_allowed(false);
        const double scalar = detail::estimate_table_bits(counts.data(), alphabet, precision);
        detail::set_simd_allowed(true);
        if (std::isinf(scalar)) {
          EXPECT_TRUE(std::isinf(simd));
          continue;
        }
        uint64_t a, b;
        std::memcpy(&a, &simd, 8);
        std::memcpy(&b, &scalar, 8);
        EXPECT_EQ(a, b) << "precision " << precision << ": " << simd << " vs " << scalar;
      }
    }
  }
}

// The planner's joint-floor term over sign twins: the AVX-512 sum against the portable one (16
// partial sums, k mod 16, combined by sum16), with counts past the c·log2(c) table among them.
TEST(SimdEstimate, TwinSumMatchesThePortableLoopToTheBit) {
  if (!detail::cpu_has_avx512_vbmi()) GTEST_SKIP() << "this CPU has no AVX-512 VBMI2: only the portable loop runs";
  std::vector<double> table(detail::kXlogxTable);
  for (uint32_t i = 1; i < detail::kXlogxTable; ++i) table[i] = i * std::log2(static_cast<double>(i));
  std::mt19937 rng(11);
  for (uint32_t sign_bit : {16u, 128u, 1u << 15}) {
    for (int pattern = 0; pattern < 3; ++pattern) {
      std::vector<uint32_t> bins(2 * size_t{sign_bit});
      for (auto& b : bins)
        b = pattern == 0 ? rng() % 50 : pattern == 1 ? (rng() % 7 == 0 ? rng() % 100000 : 0) : rng() % 5000;
      double part[16] = {};
      for (uint32_t k = 0; k < sign_bit; ++k) {
        const uint64_t c = uint64_t{bins[k]} + bins[k + sign_bit];
        const double v = static_cast<double>(c);
        part[k % 16] += c < detail::kXlogxTable ? table[c] : v * std::log2(v);
      }
      const double want = detail::sum16(part);
      const double got = detail::twin_xlogx_avx512(bins.data(), sign_bit, table.data());
      uint64_t a, b;
      std::memcpy(&a, &want, 8);
      std::memcpy(&b, &got, 8);
      EXPECT_EQ(a, b) << "sign_bit " << sign_bit << " pattern " << pattern << ": " << want << " vs " << got;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, SimdDtype, ::testing::Values(DType::kF16, DType::kBF16, DType::kF32, DType::kF64, DType::kF8_E4M3),
                         [](const auto& p) { return std::string(dtype_info(p.param).safetensors_name); });

}  // namespace
