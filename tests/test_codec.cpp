// Every dtype, awkward sizes, special values: the fast decoder against the reference decoder and
// against the original bytes.
#include <gtest/gtest.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <type_traits>

#include "bigsmall/codec.hpp"
#include "common/bytes.hpp"
#include "common/checksum.hpp"
#include "common/cpu.hpp"
#include "decode/decoder.hpp"
#include "encode/encoder.hpp"
#include "entropy/model.hpp"
#include "testutil.hpp"

using namespace bigsmall;

namespace {

constexpr uint64_t kChunk = 1 << 16;  // float and byte codecs' chunk, in units

struct Case {
  DType dtype;
  uint64_t units;
};

void check(DType dt, const std::vector<uint8_t>& data, const char* what, int threads = 0) {
  SCOPED_TRACE(std::string(dtype_info(dt).safetensors_name) + " " + what + " n=" + std::to_string(data.size()));
  EncodeOptions eo;
  eo.threads = threads;
  auto enc = encode_tensor(dt, data.data(), data.size(), eo);
  ASSERT_TRUE(enc.is_ok()) << enc.status().message();
  EXPECT_EQ(enc->coding.nbytes, data.size());
  std::vector<uint8_t> fast(data.size() + 8, 0x5A), ref(data.size() + 8, 0xA5);
  DecodeOptions dop;
  dop.threads = threads;
  const Status a = decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), fast.data(), data.size(), dop);
  const Status b = reference_decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), ref.data(), data.size());
  ASSERT_TRUE(a.is_ok()) << a.message();
  ASSERT_TRUE(b.is_ok()) << b.message();
  EXPECT_TRUE(std::equal(data.begin(), data.end(), fast.begin()));
  EXPECT_TRUE(std::equal(data.begin(), data.end(), ref.begin()));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(fast[data.size() + i], 0x5A) << "wrote past the end";
  // On an AVX-512 machine the decode above took the SIMD kernels: the portable loops, which
  // other CPUs run, are held to the same bytes here too.
  if (detail::cpu_has_avx512_vbmi()) {
    std::vector<uint8_t> scalar(data.size() + 8, 0x3C);
    detail::set_simd_allowed(false);
    const Status c = decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), scalar.data(), data.size(), dop);
    detail::set_simd_allowed(true);  // it was allowed: the kernels ran above
    ASSERT_TRUE(c.is_ok()) << c.message();
    EXPECT_TRUE(std::equal(data.begin(), data.end(), scalar.begin())) << "portable decoder";
    for (int i = 0; i < 8; ++i) EXPECT_EQ(scalar[data.size() + i], 0x3C) << "portable decoder wrote past the end";
  }
  // Never grows by more than the model and per-chunk bookkeeping.
  EXPECT_LE(enc->payload.size(), data.size() + 4096);
}

const DType kAll[] = {DType::kBool, DType::kU8, DType::kI8, DType::kF8_E5M2, DType::kF8_E4M3, DType::kF8_E8M0,
                      DType::kI16, DType::kU16, DType::kF16, DType::kBF16, DType::kI32, DType::kU32,
                      DType::kF32, DType::kF64, DType::kI64, DType::kU64, DType::kC64, DType::kF4,
                      DType::kF6_E2M3, DType::kF6_E3M2, DType::kF8_E4M3FNUZ, DType::kF8_E5M2FNUZ};

}  // namespace

class EveryDtype : public ::testing::TestWithParam<DType> {};

TEST_P(EveryDtype, AwkwardSizesRandomBits) {
  const DType dt = GetParam();
  const uint64_t unit = std::max<uint64_t>(1, dtype_info(dt).bits / 8);
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{31}, uint64_t{33}, kChunk - 1, kChunk, kChunk + 1}) {
    check(dt, bstest::random_bytes(n * unit, static_cast<uint32_t>(n)), "random");
  }
}

class FloatDtype : public ::testing::TestWithParam<DType> {};

TEST_P(FloatDtype, AwkwardSizesWeightLike) {
  const DType dt = GetParam();
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{31}, uint64_t{32}, uint64_t{33}, uint64_t{1000}, kChunk - 1, kChunk,
                     kChunk + 1, 3 * kChunk + 17}) {
    check(dt, bstest::weights(dt, n, static_cast<uint32_t>(n) + 7), "weights");
  }
}

// The byte coder's, zstd's and the store's own chunk boundaries (2^16 units; 2^20 units), which
// random bits (always stored) and weights (float-coded) do not reach; each size checked against
// the reference decoder, with the codec each data kind is written for asserted.
TEST(ChunkBoundaries, EveryCodecAtAwkwardSizes) {
  std::mt19937 rng(31);
  std::geometric_distribution<int> skew(0.3);
  const auto codec_of = [](DType dt, const std::vector<uint8_t>& d) {
    auto e = encode_tensor(dt, d.data(), d.size());
    return e.is_ok() ? e->coding.codec : Codec::kStore;
  };
  for (const uint64_t n : {uint64_t{0}, uint64_t{1}, kChunk - 1, kChunk, kChunk + 1, 2 * kChunk + 1}) {
    std::vector<uint8_t> skewed(n * 2);  // I16 values near zero: low bytes skewed, high bytes zero
    for (size_t i = 0; i < n; ++i) {
      const int v = skew(rng) * (rng() & 1 ? -1 : 1);
      const uint16_t u = static_cast<uint16_t>(v);
      std::memcpy(&skewed[2 * i], &u, 2);
    }
    check(DType::kI16, skewed, "skewed bytes");
    if (n >= kChunk - 1) {
      EXPECT_EQ(codec_of(DType::kI16, skewed), Codec::kBytes) << n;
    }
  }
  constexpr uint64_t kBig = uint64_t{1} << 20;
  std::vector<uint8_t> phrase = bstest::random_bytes(1000, 32);
  for (const uint64_t n : {kBig - 1, kBig, kBig + 1}) {
    std::vector<uint8_t> tiled(n);
    for (size_t i = 0; i < n; ++i) tiled[i] = phrase[i % phrase.size()];
    check(DType::kU8, tiled, "tiled");
    EXPECT_EQ(codec_of(DType::kU8, tiled), Codec::kZstd) << n;
    const std::vector<uint8_t> noise = bstest::random_bytes(n, static_cast<uint32_t>(n));
    check(DType::kU8, noise, "noise");
    EXPECT_EQ(codec_of(DType::kU8, noise), Codec::kStore) << n;
  }
}

INSTANTIATE_TEST_SUITE_P(All, EveryDtype, ::testing::ValuesIn(kAll),
                         [](const auto& p) { return std::string(dtype_info(p.param).safetensors_name); });
INSTANTIATE_TEST_SUITE_P(All, FloatDtype,
                         ::testing::Values(DType::kF8_E5M2, DType::kF8_E4M3, DType::kF16, DType::kBF16, DType::kF32,
                                           DType::kF64, DType::kF8_E4M3FNUZ, DType::kF8_E5M2FNUZ),
                         [](const auto& p) { return std::string(dtype_info(p.param).safetensors_name); });

TEST(DTypes, ByteSizesNeverWrap) {
  EXPECT_EQ(dtype_nbytes(DType::kF4, 3).value_or(0), 2u);
  EXPECT_EQ(dtype_nbytes(DType::kF6_E2M3, 4).value_or(0), 3u);
  // numel · bits fits 64 bits here, but numel · bits + 7 does not: once it wrapped to 0 bytes.
  EXPECT_FALSE(dtype_nbytes(DType::kF4, (uint64_t{1} << 62) - 1).has_value());
  EXPECT_FALSE(dtype_nbytes(DType::kF6_E3M2, 3074457345618258602ull).has_value());
  EXPECT_FALSE(dtype_nbytes(DType::kU64, uint64_t{1} << 58).has_value());  // 2^64 bits
  EXPECT_EQ(dtype_nbytes(DType::kU64, (uint64_t{1} << 58) - 1).value_or(0), ((uint64_t{1} << 58) - 1) * 8);
}

TEST(Coding, ACodedChunkOfNoInformationIsRefusedBeforeItIsDecoded) {
  // A model of one symbol at probability one codes a weight in no bits: 4 bytes of states stood
  // for 2^24 F64 units (128 MiB), and a 262 KB file of such chunks for 8 TiB of decoding.
  TensorCoding c;
  c.dtype = DType::kF64;
  c.codec = Codec::kFloat;
  c.chunk_log2 = 24;
  c.lanes_log2 = 0;
  c.nbytes = (uint64_t{1} << 24) * 8;
  c.model_size = 5;
  c.chunks = {{5, 4, 0, ChunkMode::kCoded}};
  const Status st = c.validate(1 << 20);
  EXPECT_EQ(st.code(), Error::kCorrupt);
  EXPECT_NE(st.message().find("more than 4096 units per byte"), std::string::npos) << st.message();
  c.chunks[0].size = (1u << 24) / 4096;  // at the bound: taken
  EXPECT_TRUE(c.validate(1 << 20).is_ok()) << c.validate(1 << 20).message();
  c.codec = Codec::kBytes;
  c.chunks[0].size = 4;
  EXPECT_EQ(c.validate(1 << 20).code(), Error::kCorrupt);
  // What the encoder writes for tensors of no information, when it may not route them to zstd,
  // stays far inside the bound (its states alone: 4 bytes a lane).
  size_t coded = 0;
  for (const uint64_t n : {uint64_t{100}, uint64_t{300}, uint64_t{3000}, uint64_t{40000}, uint64_t{1} << 20}) {
    for (DType dt : {DType::kBF16, DType::kF32, DType::kI32}) {
      const std::vector<uint8_t> zeros(n * dtype_info(dt).bits / 8, 0);
      EncodeOptions o;
      o.allow_zstd = false;
      auto enc = encode_tensor(dt, zeros.data(), zeros.size(), o);
      ASSERT_TRUE(enc.is_ok());
      EXPECT_TRUE(enc->coding.validate(enc->payload.size()).is_ok()) << n << " " << dtype_info(dt).safetensors_name;
      for (size_t i = 0; i < enc->coding.chunks.size(); ++i) {
        if (enc->coding.chunks[i].mode == ChunkMode::kCoded) {
          ++coded;
          EXPECT_LE(enc->coding.chunk_out_size(i) / enc->coding.unit_bytes(), 1024u * enc->coding.chunks[i].size);
        }
      }
    }
  }
  EXPECT_GT(coded, 15u);
}

// A tensor of several zstd chunks whose first chunk repeats itself more than the rest: a level-19
// trial of that chunk passed zstd's margin where the default level's did not, and every chunk then
// went to zstd, larger than the entropy coder (an 8 MiB BF16 tensor came out 3.3% larger with
// --best). A higher level decides as the default does; each of its chunks is no larger. (The
// data here guards that invariant around where zstd starts to win; the window in which the two
// levels' trials disagree is too narrow to hit with a fixed seed in a test's time.)
TEST(ZstdCodec, AHigherLevelNeverMakesATensorLarger) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto bf16 = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>(u >> 16);
  };
  constexpr size_t kChunk = size_t{1} << 20, kUnits = 3 * kChunk;
  std::vector<uint16_t> phrases(64 * 4);
  for (auto& v : phrases) v = bf16(normal(rng));
  for (const double p : {0.37, 0.38, 0.39}) {
    std::vector<uint16_t> w(kUnits);
    for (auto& v : w) v = bf16(normal(rng));
    std::uniform_real_distribution<double> u01(0, 1);
    // The first chunk, and pieces of the others that the planner's zstd probe samples, mix
    // repeated 4-weight phrases into fresh weights.
    auto mix = [&](size_t from, size_t n, double share) {
      for (size_t i = from; i + 4 <= from + n; i += 4) {
        if (u01(rng) < share) std::memcpy(&w[i], &phrases[4 * (rng() % 64)], 8);
      }
    };
    mix(0, kChunk, p);
    for (size_t k = 1; k <= 2; ++k) mix(k * kChunk + kChunk / 2, size_t{128} << 10, 1.0);
    const auto* data = reinterpret_cast<const uint8_t*>(w.data());
    EncodeOptions best;
    best.zstd_level = 19;
    auto a = encode_tensor(DType::kBF16, data, w.size() * 2);
    auto b = encode_tensor(DType::kBF16, data, w.size() * 2, best);
    ASSERT_TRUE(a.is_ok() && b.is_ok());
    EXPECT_EQ(b->coding.codec, a->coding.codec) << p;
    EXPECT_LE(b->payload.size(), a->payload.size()) << p;
  }
}

TEST(FloatCodec, WeightsUseTheFloatModelAndCompress) {
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    auto d = bstest::weights(dt, 200000, 11, false);
    auto enc = encode_tensor(dt, d.data(), d.size());
    ASSERT_TRUE(enc.is_ok());
    EXPECT_EQ(enc->coding.codec, Codec::kFloat) << dtype_info(dt).safetensors_name;
    EXPECT_LT(enc->payload.size(), d.size() * 0.9) << dtype_info(dt).safetensors_name;
  }
}

TEST(FloatCodec, Bf16UpcastToF32CostsWhatBf16Costs) {
  auto bf = bstest::weights(DType::kBF16, 300000, 12, false);
  std::vector<uint8_t> f32(bf.size() * 2, 0);
  for (size_t i = 0; i < bf.size() / 2; ++i) std::memcpy(f32.data() + 4 * i + 2, bf.data() + 2 * i, 2);
  auto a = encode_tensor(DType::kBF16, bf.data(), bf.size());
  auto b = encode_tensor(DType::kF32, f32.data(), f32.size());
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_LE(static_cast<double>(b->payload.size()), 1.005 * static_cast<double>(a->payload.size()));
  check(DType::kF32, f32, "bf16 upcast");
}

TEST(FloatCodec, AllNaNsAndZeros) {
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    const size_t w = dtype_info(dt).bits / 8;
    std::vector<uint8_t> zeros(100003 * w, 0), nans(100003 * w, 0xFF);
    check(dt, zeros, "zeros");
    check(dt, nans, "nans");
  }
}

TEST(FloatCodec, PlannerCountsHugeTensorsInSlabsWithTheSameResult) {
  // Tensors of more than 2^31 elements are counted in slabs into 64-bit totals; a slab of 1000
  // elements takes that path here, and must give the same model, hence the same bytes.
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8_E4M3}) {
    auto d = bstest::weights(dt, 150001, 21);
    auto whole = encode_tensor(dt, d.data(), d.size());
    const auto plan_whole = detail::TensorEncoder::plan(dt, d.data(), d.size(), {});
    detail::set_key_slab_for_testing(1000);
    auto slabs = encode_tensor(dt, d.data(), d.size());
    const auto plan_slabs = detail::TensorEncoder::plan(dt, d.data(), d.size(), {});
    detail::set_key_slab_for_testing(0);
    ASSERT_TRUE(whole.is_ok() && slabs.is_ok());
    const char* name = dtype_info(dt).safetensors_name.data();
    EXPECT_EQ(whole->payload, slabs->payload) << name;
    // The floor is a function of every count: a slab counted twice or not at all changes it.
    EXPECT_EQ(plan_whole.floor_bits(), plan_slabs.floor_bits()) << name;
    EXPECT_EQ(plan_whole.model_blob(), plan_slabs.model_blob()) << name;
  }
}

TEST(FloatCodec, PlannerCountsF64InSlabsWithTheSameResult) {
  // F64 keys have 20 bits: the dense count path starts at 2^19 elements. On AVX-512 machines the
  // whole count takes the AVX-512 twin sum and the slabs the portable one: same floor to the bit.
  auto d = bstest::weights(DType::kF64, 600001, 22);
  const auto plan_whole = detail::TensorEncoder::plan(DType::kF64, d.data(), d.size(), {});
  detail::set_key_slab_for_testing(100000);
  const auto plan_slabs = detail::TensorEncoder::plan(DType::kF64, d.data(), d.size(), {});
  detail::set_key_slab_for_testing(0);
  EXPECT_EQ(plan_whole.floor_bits(), plan_slabs.floor_bits());
  EXPECT_EQ(plan_whole.model_blob(), plan_slabs.model_blob());
}

TEST(FloatCodec, PlannerLeavesItsScratchClean) {
  // Per-thread key bins must be empty after every plan, whichever path counted: a small tensor
  // planned after a large one (dense path) gets the model it gets on its own.
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32, DType::kF64, DType::kF8_E5M2}) {
    const auto small = bstest::weights(dt, 3001, 23);
    const auto before = detail::TensorEncoder::plan(dt, small.data(), small.size(), {});
    const auto big = bstest::weights(dt, dt == DType::kF64 ? 600001 : 150001, 24);
    (void)detail::TensorEncoder::plan(dt, big.data(), big.size(), {});
    const auto after = detail::TensorEncoder::plan(dt, small.data(), small.size(), {});
    const char* name = dtype_info(dt).safetensors_name.data();
    EXPECT_EQ(before.model_blob(), after.model_blob()) << name;
    EXPECT_EQ(before.floor_bits(), after.floor_bits()) << name;
  }
}

TEST(FloatCodec, RepeatsFarApartGoToZstd) {
  // A tensor made of one block of weights repeated (tied or copied rows): only zstd sees the
  // repeats, up to 256 KiB apart, and must get it even when a small sample would miss them.
  for (size_t block : {size_t{16} << 10, size_t{128} << 10}) {
    const auto row = bstest::weights(DType::kBF16, block / 2, 31, false);
    std::vector<uint8_t> d;
    for (int copy = 0; copy < 8; ++copy) d.insert(d.end(), row.begin(), row.end());
    auto enc = encode_tensor(DType::kBF16, d.data(), d.size());
    ASSERT_TRUE(enc.is_ok());
    EXPECT_EQ(enc->coding.codec, Codec::kZstd) << block;
    EXPECT_LT(enc->payload.size(), d.size() / 5) << block;
    check(DType::kBF16, d, "repeated rows");
  }
}

TEST(FloatCodec, SingleThreadAndManyThreadsAgree) {
  auto d = bstest::weights(DType::kBF16, 5 * kChunk + 3, 13);
  check(DType::kBF16, d, "1 thread", 1);
  check(DType::kBF16, d, "4 threads", 4);
  EncodeOptions one, many;
  one.threads = 1;
  many.threads = 4;
  auto a = encode_tensor(DType::kBF16, d.data(), d.size(), one);
  auto b = encode_tensor(DType::kBF16, d.data(), d.size(), many);
  EXPECT_EQ(a->payload, b->payload) << "output must not depend on the thread count";
}

TEST(Corruption, FlippedPayloadBitsAreDetectedNeverCrash) {
  auto d = bstest::weights(DType::kBF16, 2 * kChunk + 5, 14);
  auto enc = encode_tensor(DType::kBF16, d.data(), d.size());
  ASSERT_TRUE(enc.is_ok());
  std::mt19937 rng(15);
  std::vector<uint8_t> out(d.size());
  for (int trial = 0; trial < 300; ++trial) {
    auto p = enc->payload;
    p[rng() % p.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    const Status st = decode_tensor(enc->coding, p.data(), p.size(), out.data(), out.size());
    EXPECT_FALSE(st.is_ok());
    EXPECT_EQ(st.code(), Error::kCorrupt);
    // Without checksums the decoders must still stay in bounds and report or return data.
    DecodeOptions nov;
    nov.verify = false;
    (void)decode_tensor(enc->coding, p.data(), p.size(), out.data(), out.size(), nov);
    // The oracle checks its checksums always: damage is an error there too, never data.
    EXPECT_EQ(reference_decode_tensor(enc->coding, p.data(), p.size(), out.data(), out.size()).code(), Error::kCorrupt);
  }
}

TEST(Corruption, HostileCodingIsRejectedBeforeDecoding) {
  auto d = bstest::weights(DType::kF16, 1000, 16);
  auto enc = encode_tensor(DType::kF16, d.data(), d.size());
  std::vector<uint8_t> out(2 * d.size());  // room for what a lying coding declares: not refused for that
  ASSERT_TRUE(enc.is_ok());
  // Each refused by the fast decoder and by the reference one, as corrupt.
  const auto refused = [&](const TensorCoding& c, const char* what) {
    EXPECT_EQ(decode_tensor(c, enc->payload.data(), enc->payload.size(), out.data(), out.size()).code(), Error::kCorrupt) << what;
    EXPECT_EQ(reference_decode_tensor(c, enc->payload.data(), enc->payload.size(), out.data(), out.size()).code(), Error::kCorrupt)
        << what;
  };
  TensorCoding c = enc->coding;
  c.chunks[0].size += 1000;
  refused(c, "a chunk beyond the payload");
  c = enc->coding;
  c.nbytes *= 2;
  refused(c, "more output than chunks");
  c = enc->coding;
  c.lanes_log2 = 9;
  refused(c, "more lanes than the format has");
  EXPECT_EQ(decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), out.data(), d.size() - 1).code(),
            Error::kInvalidArgument);
}

namespace {
// n values of ±[1, 1.9) in dt's layout: two sign+exponent values only.
std::vector<uint8_t> narrow_exponent_range(DType dt, uint64_t n, std::mt19937& rng) {
  const size_t w = dtype_info(dt).bits / 8;
  std::vector<uint8_t> d(n * w);
  std::uniform_real_distribution<float> u(1.0f, 1.9f);
  for (size_t i = 0; i < n; ++i) {
    const float f = (rng() & 1 ? -1.0f : 1.0f) * u(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (dt == DType::kBF16) { const uint16_t b = static_cast<uint16_t>(bits >> 16); std::memcpy(&d[i * w], &b, 2); }
    else if (dt == DType::kF16) { const uint16_t h = bstest::f32_to_f16(f); std::memcpy(&d[i * w], &h, 2); }
    else std::memcpy(&d[i * w], &bits, 4);
  }
  return d;
}
}  // namespace

TEST(FloatCodec, NarrowExponentRangeTakesEveryDecoderPath) {
  // Few sign+exponent values give low table precisions, which the fused single-lookup SIMD
  // path handles; wide ranges give the generic one. Both must match the reference decoder.
  std::mt19937 rng(17);
  for (DType dt : {DType::kBF16, DType::kF32, DType::kF16})
    check(dt, narrow_exponent_range(dt, 3 * kChunk + 5, rng), "narrow exponent range");
}

TEST(FloatCodec, FewLaneChunksMatchTheReference) {
  // Tensors of 256-2K elements get 4 lanes and 2K-32K 16, which have SIMD kernels of their own;
  // files of earlier encoders also hold 4 lanes at 2K-8K and 8 lanes at 8K-16K. Awkward sizes
  // leave partial last rounds for the checked scalar loop.
  std::mt19937 rng(18);
  for (const bool earlier : {false, true}) {
    std::optional<bstest::LanesBySizeOnly> rule;
    if (earlier) rule.emplace();
    for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
      for (uint64_t n : {uint64_t{256}, uint64_t{259}, uint64_t{1000}, uint64_t{2047}, uint64_t{2049}, uint64_t{4096},
                         uint64_t{5003}, uint64_t{8192}, uint64_t{8199}, uint64_t{12345}, uint64_t{16383}}) {
        check(dt, bstest::weights(dt, n, static_cast<uint32_t>(n)), "few lanes weights", 1);
        check(dt, narrow_exponent_range(dt, n, rng), "few lanes narrow exponent range", 1);
      }
    }
  }
}

TEST(FloatCodec, LanesFollowTensorSize) {
  // Lanes share a word pointer: few of them decode as one dependency chain, so small tensors get
  // a SIMD register's worth (16) from 2K units and the narrowest kernel's 4 from 256; each lane
  // costs 4 bytes of final state, so tensors under 256 units keep one.
  const std::pair<uint64_t, int> want[] = {{100, 0},   {255, 0},   {256, 2},   {2047, 2},  {2048, 4},
                                           {3001, 4},  {8192, 4},  {32767, 4}, {32768, 5}, {100000, 5}};
  for (const auto& [n, lanes_log2] : want) {
    auto d = bstest::weights(DType::kBF16, n, 21, false);
    EncodeOptions eo;
    eo.allow_zstd = false;
    auto enc = encode_tensor(DType::kBF16, d.data(), d.size(), eo);
    ASSERT_TRUE(enc.is_ok());
    ASSERT_EQ(enc->coding.codec, Codec::kFloat) << n;
    EXPECT_EQ(enc->coding.lanes_log2, lanes_log2) << n;
  }
  // The earlier rule, which the tests of kernels for 8 lanes use: 2 lanes would have left 2K-4K
  // weight tensors to the scalar loop (the SIMD kernels start at 4).
  bstest::LanesBySizeOnly earlier;
  for (const auto& [n, lanes_log2] : {std::pair<uint64_t, int>{1000, 0}, {2048, 2}, {4095, 2}, {8192, 3}, {16384, 4}}) {
    auto d = bstest::weights(DType::kBF16, n, 21, false);
    auto enc = encode_tensor(DType::kBF16, d.data(), d.size());
    ASSERT_TRUE(enc.is_ok());
    EXPECT_EQ(enc->coding.lanes_log2, lanes_log2) << n;
  }
}

TEST(Corruption, FewLaneChunksStayInBounds) {
  std::mt19937 rng(19);
  for (DType dt : {DType::kBF16, DType::kF32}) {
    // 4 and 16 lanes, then 4 and 8 as earlier encoders wrote them.
    for (uint64_t n : {uint64_t{1003}, uint64_t{5003}, uint64_t{5003 + 1}, uint64_t{12345}}) {
      std::optional<bstest::LanesBySizeOnly> earlier;
      if (n == 5003 + 1 || n == 12345) earlier.emplace();
      auto d = bstest::weights(dt, n, 20);
      auto enc = encode_tensor(dt, d.data(), d.size());
      ASSERT_TRUE(enc.is_ok());
      std::vector<uint8_t> out(d.size());
      for (int trial = 0; trial < 100; ++trial) {
        auto p = enc->payload;
        p[rng() % p.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        const Status st = decode_tensor(enc->coding, p.data(), p.size(), out.data(), out.size());
        EXPECT_EQ(st.code(), Error::kCorrupt);
        DecodeOptions nov;
        nov.verify = false;
        (void)decode_tensor(enc->coding, p.data(), p.size(), out.data(), out.size(), nov);
      }
    }
  }
}

namespace {
long rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return 0;
}
}  // namespace

// A 200-byte model for a one-element F32 tensor with 512 sign+exponent symbols, all on the
// uniform mantissa table: the fused decoder tables repeat that table per symbol (8 MiB), so
// they must stay within the bound the data allows (found in review).
TEST(Corruption, TinyModelCannotDemandLargeDecoderTables) {
  using namespace bigsmall::detail;
  FloatModel m;
  m.exp_bits = 8;
  m.man_bits = 23;
  m.hi_bits = 8;
  m.raw_bits = 15;
  m.zero_bits = 0;
  m.mant_precision = 12;
  m.se.alphabet = m.se_alphabet();
  m.se.precision = 11;
  m.se.freq.assign(m.se.alphabet, 0);
  for (uint32_t s = 0; s < 512; ++s) m.se.freq[s] = 4;
  m.se.rebuild_cum();
  m.ctx.assign(m.se.alphabet, 0);
  BitWriter bw;
  write_float_model(m, bw);
  const std::vector<uint8_t> blob = bw.buf();
  ASSERT_LT(blob.size(), 512u);
  TensorCoding c;
  c.dtype = DType::kF32;
  c.codec = Codec::kFloat;
  c.nbytes = 4;
  c.chunk_log2 = 6;
  c.lanes_log2 = 0;
  c.model_size = static_cast<uint32_t>(blob.size());
  std::vector<TensorDecoder> keep;
  const long before = rss_kib();
  ASSERT_GT(before, 0) << "no VmRSS in /proc/self/status: nothing would be measured";
  for (int i = 0; i < 50; ++i) {
    auto d = TensorDecoder::prepare(c, blob.data(), blob.size());
    ASSERT_TRUE(d.is_ok()) << d.status().message();
    keep.push_back(std::move(d.value()));
  }
  EXPECT_LT(rss_kib() - before, 50 * 1024) << "decoder tables grow with the model, not with the data";
}

TEST(TensorChecksum, PiecesInOrderGiveTheTensorsChecksum) {
  // The public streaming checksum (the GPU path hashes copies back piece by piece) agrees with
  // the checksum every encoder writes, however the bytes are cut, an empty tensor included.
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{4095}, uint64_t{300001}}) {
    const auto data = bstest::random_bytes(n, static_cast<uint32_t>(n));
    auto e = encode_tensor(DType::kU8, data.data(), data.size());
    ASSERT_TRUE(e.is_ok());
    for (uint64_t piece : {uint64_t{1}, uint64_t{7}, uint64_t{65536}, n + 1}) {
      if (piece > 4096 && n > 4096 && piece < 65536) continue;
      if (piece == 1 && n > 5000) continue;  // byte by byte is slow under the sanitizers
      TensorChecksum sum;
      ASSERT_TRUE(sum.ok());
      for (uint64_t off = 0; off < n; off += piece) sum.update(data.data() + off, std::min(piece, n - off));
      EXPECT_EQ(sum.digest(), e->coding.checksum) << n << " in pieces of " << piece;
    }
  }
  static_assert(std::is_nothrow_default_constructible_v<TensorChecksum>);  // errors are values: see ok()
  TensorChecksum other;
  other.update(reinterpret_cast<const uint8_t*>("x"), 1);
  auto e = encode_tensor(DType::kU8, reinterpret_cast<const uint8_t*>("y"), 1);
  ASSERT_TRUE(e.is_ok());
  EXPECT_NE(other.digest(), e->coding.checksum);
}

// FORMAT.md: a float or bytes tensor whose chunks are all stored may have no model (model_size
// 0). The fast decoder took such a tensor; the reference decoder (the oracle) refused it.
TEST(Reference, FloatAndBytesTensorsWithoutAModelDecodeAsStored) {
  std::vector<uint8_t> data(4 * 3000);
  std::mt19937 rng(7);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (Codec codec : {Codec::kFloat, Codec::kBytes}) {
    auto enc = encode_tensor(DType::kF32, data.data(), data.size());
    ASSERT_TRUE(enc.is_ok()) << enc.status().message();
    ASSERT_EQ(enc->coding.model_size, 0u);  // random bits: stored
    for (const ChunkRef& c : enc->coding.chunks) ASSERT_EQ(c.mode, ChunkMode::kStored);
    TensorCoding coding = enc->coding;
    coding.codec = codec;
    std::vector<uint8_t> fast(data.size()), ref(data.size());
    ASSERT_TRUE(decode_tensor(coding, enc->payload.data(), enc->payload.size(), fast.data(), fast.size()).is_ok());
    const Status st = reference_decode_tensor(coding, enc->payload.data(), enc->payload.size(), ref.data(), ref.size());
    ASSERT_TRUE(st.is_ok()) << st.message();
    EXPECT_EQ(fast, data);
    EXPECT_EQ(ref, data);
  }
}

// The encoder must still pick the bytes coder where it wins on a float dtype, planned with the
// cheap estimate that screens the bytes coder out where it cannot win: F32 of random high bytes
// (nothing for the float model to gain) whose two low bytes take 16 values each, which the float
// model, coding the low 15 mantissa bits raw, cannot see, nor zstd, whose one Huffman table is
// shared by all four bytes.
TEST(Planner, BytesCoderIsChosenWhereItBeatsTheFloatModel) {
  std::mt19937 rng(11);
  for (const size_t n : {size_t{3000}, size_t{70000}}) {
    std::vector<uint8_t> d(4 * n);
    for (size_t i = 0; i < 4 * n; ++i) d[i] = static_cast<uint8_t>(i % 4 < 2 ? 16 * (i % 4) + rng() % 16 : rng());
    auto enc = encode_tensor(DType::kF32, d.data(), d.size());
    ASSERT_TRUE(enc.is_ok()) << enc.status().message();
    EXPECT_EQ(enc->coding.codec, Codec::kBytes) << n << " weights";
    EXPECT_LT(enc->payload.size(), d.size() * 25 / 32) << n;  // 6 bits a byte, with tables
    std::vector<uint8_t> back(d.size());
    ASSERT_TRUE(decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), back.data(), back.size()).is_ok());
    EXPECT_EQ(back, d);
  }
}

TEST(Codec, ZstdChunksMustBeExactlyOneFrameOfTheChunksSize) {
  // FORMAT.md's rule, checked before decoding by the fast and the reference decoder alike (and
  // the GPU decoder's host side, through the same function): a chunk whose checksum is right may
  // still carry a skippable frame after its frame, or a frame declaring another size.
  std::vector<uint8_t> data(5000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i % 7);
  auto enc = encode_tensor(DType::kU8, data.data(), data.size());
  ASSERT_TRUE(enc.is_ok());
  ASSERT_EQ(enc->coding.codec, Codec::kZstd);
  ASSERT_EQ(enc->coding.chunks.size(), 1u);
  const uint64_t at = enc->coding.chunks[0].offset;
  ASSERT_EQ(at + enc->coding.chunks[0].size, enc->payload.size()) << "the chunk ends the payload";
  auto with_chunk = [&](const std::vector<uint8_t>& chunk) {
    EncodedTensor t = *enc;
    t.payload.resize(at);
    t.payload.insert(t.payload.end(), chunk.begin(), chunk.end());
    t.coding.chunks[0].size = static_cast<uint32_t>(chunk.size());
    t.coding.chunks[0].checksum = static_cast<uint32_t>(detail::xxh3_64(chunk.data(), chunk.size()));
    return t;
  };
  auto expect_refused = [&](const EncodedTensor& t, const std::string& problem) {
    std::vector<uint8_t> out(data.size());
    const Status fast = decode_tensor(t.coding, t.payload.data(), t.payload.size(), out.data(), out.size());
    const Status ref = reference_decode_tensor(t.coding, t.payload.data(), t.payload.size(), out.data(), out.size());
    EXPECT_EQ(fast.code(), Error::kCorrupt) << problem;
    EXPECT_EQ(ref.code(), Error::kCorrupt) << problem;
    EXPECT_NE(fast.message().find(problem), std::string::npos) << fast.message();
    EXPECT_NE(ref.message().find(problem), std::string::npos) << ref.message();
  };
  const std::vector<uint8_t> frame(enc->payload.begin() + static_cast<long>(at), enc->payload.end());
  {
    std::vector<uint8_t> out(data.size());
    const EncodedTensor same = with_chunk(frame);
    ASSERT_TRUE(decode_tensor(same.coding, same.payload.data(), same.payload.size(), out.data(), out.size()).is_ok());
    EXPECT_EQ(out, data) << "the rebuilt chunk itself is good";
  }
  std::vector<uint8_t> skippable = frame;
  for (uint8_t b : {0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}) skippable.push_back(b);
  expect_refused(with_chunk(skippable), "not exactly one zstd frame");
  std::vector<uint8_t> shorter(ZSTD_compressBound(data.size()));
  shorter.resize(ZSTD_compress(shorter.data(), shorter.size(), data.data(), data.size() - 1, 3));
  expect_refused(with_chunk(shorter), "zstd frame size mismatch");
  // Only standard frames (RFC 8878), without a dictionary: a skippable frame alone, and the same
  // frame with a dictionary ID put into its header, are refused whatever libzstd accepts.
  expect_refused(with_chunk({0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}), "not a zstd frame");
  std::vector<uint8_t> with_dict = frame;
  const bool single_segment = (with_dict[4] >> 5) & 1;
  with_dict[4] |= 1;  // Dictionary_ID_flag: one byte of ID, after the window descriptor if any
  with_dict.insert(with_dict.begin() + (single_segment ? 5 : 6), uint8_t{7});
  ASSERT_EQ(ZSTD_getDictID_fromFrame(with_dict.data(), with_dict.size()), 7u);
  expect_refused(with_chunk(with_dict), "zstd frame needs a dictionary");
  std::vector<uint8_t> damaged = frame;
  damaged[damaged.size() / 2] ^= 0xFF;
  expect_refused(with_chunk(damaged), "");  // the frame or, where it still decodes, the tensor checksum
}

TEST(Codec, ChunkRangesPastTheLastChunkAreEmptyAtTheEnd) {
  // A public helper given a bad index once multiplied past the tensor (and chunk_out_size then
  // wrapped to a full chunk): the range is now empty at the tensor's end.
  TensorCoding c;
  c.dtype = DType::kBF16;
  c.nbytes = 2 * 100;  // 100 units, chunks of 64: two chunks, the last of 36 units
  c.chunk_log2 = 6;
  ASSERT_EQ(c.chunk_count(), 2u);
  EXPECT_EQ(c.chunk_out_offset(1), 128u);
  EXPECT_EQ(c.chunk_out_size(0), 128u);
  EXPECT_EQ(c.chunk_out_size(1), 72u);
  EXPECT_EQ(c.chunk_out_offset(2), 200u);
  EXPECT_EQ(c.chunk_out_size(2), 0u);
  EXPECT_EQ(c.chunk_out_size(SIZE_MAX), 0u);
}
