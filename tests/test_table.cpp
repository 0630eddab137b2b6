// Frequency tables and the rANS core, through the byte coder on adversarial distributions.
#include <gtest/gtest.h>

#include <algorithm>

#include "bigsmall/codec.hpp"
#include "common/bytes.hpp"
#include "entropy/table.hpp"
#include "testutil.hpp"

using namespace bigsmall;
using namespace bigsmall::detail;

TEST(Table, NormalizeKeepsEveryPresentSymbolAndSums) {
  std::vector<uint64_t> counts(256, 0);
  counts[0] = 1000000000;
  counts[7] = 1;
  counts[255] = 3;
  FreqTable t;
  ASSERT_TRUE(normalize(counts.data(), 256, 12, &t));
  uint64_t sum = 0;
  for (uint32_t s = 0; s < 256; ++s) {
    sum += t.freq[s];
    EXPECT_EQ(t.freq[s] > 0, counts[s] > 0) << s;
  }
  EXPECT_EQ(sum, 4096u);
}

TEST(Table, NormalizeRefusesMoreSymbolsThanSlots) {
  std::vector<uint64_t> counts(256, 1);
  FreqTable t;
  EXPECT_FALSE(normalize(counts.data(), 256, 7, &t));
  EXPECT_TRUE(normalize(counts.data(), 256, 8, &t));
}

TEST(Table, SerializationRoundTrips) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const uint32_t alphabet = 1u << (1 + rng() % 12);
    std::vector<uint64_t> counts(alphabet, 0);
    const int present = 1 + static_cast<int>(rng() % std::min<uint32_t>(alphabet, 300));
    for (int i = 0; i < present; ++i) counts[rng() % alphabet] += 1 + (rng() % 3 == 0 ? rng() % 100000 : rng() % 10);
    FreqTable t;
    ASSERT_TRUE(normalize(counts.data(), alphabet, 12, &t));
    BitWriter bw;
    write_table(t, bw);
    EXPECT_EQ(table_bits(t), bw.bits()) << "planning prices tables with table_bits";
    BitReader br(bw.buf().data(), bw.buf().size());
    FreqTable u;
    ASSERT_TRUE(read_table(br, alphabet, &u).is_ok());
    EXPECT_EQ(t.freq, u.freq);
    EXPECT_EQ(t.precision, u.precision);
  }
}

TEST(Table, ReaderRejectsGarbage) {
  std::mt19937 rng(2);
  int rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<uint8_t> junk(1 + rng() % 64);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    BitReader br(junk.data(), junk.size());
    FreqTable t;
    const Status st = read_table(br, 256, &t);
    if (!st.is_ok()) {
      ++rejected;
      continue;
    }
    uint64_t sum = 0;  // anything accepted must be a valid table
    for (uint32_t f : t.freq) sum += f;
    EXPECT_EQ(sum, 1u << t.precision);
  }
  EXPECT_GT(rejected, 0);
}

namespace {
void round_trip_bytes(const std::vector<uint8_t>& data, DType dt = DType::kU8) {
  auto enc = encode_tensor(dt, data.data(), data.size());
  ASSERT_TRUE(enc.is_ok()) << enc.status().message();
  std::vector<uint8_t> fast(data.size() + 1, 0xAB), ref(data.size() + 1, 0xCD);
  ASSERT_TRUE(decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), fast.data(), data.size()).is_ok());
  ASSERT_TRUE(reference_decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), ref.data(), data.size()).is_ok());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), fast.begin()));
  EXPECT_TRUE(std::equal(data.begin(), data.end(), ref.begin()));
  EXPECT_EQ(fast[data.size()], 0xAB) << "decoder wrote past the tensor";
  EXPECT_LE(enc->payload.size(), data.size() + 1024) << "no tensor may grow by more than header bytes";
}
}  // namespace

TEST(Rans, SingleSymbol) {
  round_trip_bytes(std::vector<uint8_t>(300000, 42));
}

TEST(Rans, AllSymbolsUniform) {
  std::vector<uint8_t> d(200000);
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<uint8_t>(i * 131 + (i >> 8));
  round_trip_bytes(d);
}

TEST(Rans, ExtremeProbabilities) {
  std::mt19937 rng(3);
  std::vector<uint8_t> d(500000, 0);
  for (int i = 0; i < 20; ++i) d[rng() % d.size()] = static_cast<uint8_t>(1 + rng() % 255);
  round_trip_bytes(d);
}

TEST(Rans, GeometricAlphabet) {
  std::mt19937 rng(4);
  std::geometric_distribution<int> geo(0.3);
  std::vector<uint8_t> d(300001);
  for (auto& b : d) b = static_cast<uint8_t>(std::min(geo(rng), 255));
  round_trip_bytes(d);
  auto enc = encode_tensor(DType::kU8, d.data(), d.size());
  EXPECT_EQ(enc->coding.codec, Codec::kBytes);
  EXPECT_LT(enc->payload.size(), d.size() / 2);
}

TEST(Rans, MultiByteIntegers) {
  std::mt19937 rng(5);
  for (DType dt : {DType::kI16, DType::kI32, DType::kI64, DType::kU16, DType::kU32, DType::kU64}) {
    const size_t w = dtype_info(dt).bits / 8;
    std::vector<uint8_t> d(70001 * w, 0);
    for (size_t i = 0; i < d.size(); i += w) d[i] = static_cast<uint8_t>(rng() % 7);
    round_trip_bytes(d, dt);
  }
}

TEST(Table, HostileCountsAndGapsAreRejected) {
  // present - 1 = 2^32 - 1 once wrapped to zero symbols; a gap of 2^32 - 1 once wrapped to a
  // repeated symbol. Both must be refused, not decoded.
  {
    BitWriter bw;
    bw.put(12, 4);
    bw.ue(0xFFFFFFFFu);
    bw.put(0, 4);
    BitReader br(bw.buf().data(), bw.buf().size());
    FreqTable t;
    EXPECT_FALSE(read_table(br, 256, &t).is_ok());
  }
  {
    BitWriter bw;
    bw.put(1, 4);
    bw.ue(1);            // two symbols
    bw.ue(0x80);         // first
    bw.ue(0xFFFFFFFFu);  // gap that wraps in 32 bits
    bw.put(0, 4);
    bw.ue(2);
    BitReader br(bw.buf().data(), bw.buf().size());
    FreqTable t;
    EXPECT_FALSE(read_table(br, 512, &t).is_ok());
  }
}

namespace {
// The bit reader's definition, one bit at a time: the fast reader must agree with it on every
// value and on where it fails, on any bytes.
struct SlowBitReader {
  const uint8_t* p;
  size_t nbits, pos = 0;
  bool ok = true;
  uint64_t get(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) {
      if (pos >= nbits) {
        ok = false;
        return 0;
      }
      v |= static_cast<uint64_t>((p[pos >> 3] >> (pos & 7)) & 1u) << i;
      ++pos;
    }
    return v;
  }
  uint32_t ue(int k) {
    int len = 0;
    while (get(1) == 0) {
      if (!ok || ++len > 32) {
        ok = false;
        return 0;
      }
    }
    const uint64_t w = (uint64_t{1} << len) | get(len);
    const uint64_t v = ((w - 1) << k) | get(k);
    if (!ok || v > UINT32_MAX) {
      ok = false;
      return 0;
    }
    return static_cast<uint32_t>(v);
  }
};
}  // namespace

TEST(BitIO, ReaderAgreesWithTheBitByBitDefinition) {
  std::mt19937 rng(9);
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> bytes(rng() % 24);
    const int style = trial % 3;  // random bytes, mostly zeros (long Exp-Golomb prefixes), mostly ones
    for (auto& b : bytes) b = static_cast<uint8_t>(style == 0 ? rng() : style == 1 ? (rng() % 8 == 0 ? rng() : 0) : rng() | 0xF0);
    BitReader fast(bytes.data(), bytes.size());
    SlowBitReader slow{bytes.data(), bytes.size() * 8};
    for (int op = 0; op < 40 && slow.ok; ++op) {
      if (rng() % 2) {
        const int n = static_cast<int>(rng() % 65);
        ASSERT_EQ(fast.get(n), slow.get(n)) << "trial " << trial << " op " << op;
      } else {
        const int k = static_cast<int>(rng() % 16);
        ASSERT_EQ(fast.ue(k), slow.ue(k)) << "trial " << trial << " op " << op;
      }
      ASSERT_EQ(fast.ok(), slow.ok) << "trial " << trial << " op " << op;
      if (slow.ok) {
        ASSERT_EQ(fast.bytes_used(), (slow.pos + 7) / 8);
      }
    }
  }
}

// Every prefix length and order at every bit offset, with the code ending at the buffer's end or
// well before it: both of ue()'s paths (codes read from one word, longer ones), including values
// past 32 bits, which must fail on either.
TEST(BitIO, ExpGolombCodesOfEveryLengthAgreeWithTheDefinition) {
  int overflows = 0;
  for (int zeros = 0; zeros <= 33; ++zeros)
    for (int k = 0; k < 16; ++k)
      for (int offset = 0; offset < 8; ++offset)
        for (int tail : {0, 9}) {
          std::vector<uint8_t> bytes((offset + 2 * zeros + 1 + k + 7) / 8 + static_cast<size_t>(tail), 0);
          auto set = [&](int bit) { bytes[static_cast<size_t>(bit) >> 3] |= static_cast<uint8_t>(1u << (bit & 7)); };
          const int one = offset + zeros;
          set(one);
          // Body bits alternate, in a phase set by the case: a reader that swapped the prefix's
          // value bits and the k low bits, or read either reversed, gets another value.
          for (int b = one + 1; b < one + 1 + zeros + k; ++b)
            if ((b + zeros + k) % 3 != 0) set(b);
          BitReader fast(bytes.data(), bytes.size());
          SlowBitReader slow{bytes.data(), bytes.size() * 8};
          ASSERT_EQ(fast.get(offset), slow.get(offset));
          ASSERT_EQ(fast.ue(k), slow.ue(k)) << zeros << " " << k << " " << offset << " " << tail;
          ASSERT_EQ(fast.ok(), slow.ok) << zeros << " " << k << " " << offset << " " << tail;
          if (slow.ok) {
            ASSERT_EQ(fast.bytes_used(), (slow.pos + 7) / 8);
          }
          overflows += !slow.ok && zeros <= 32;
        }
  EXPECT_GT(overflows, 0);  // the grid reaches values that do not fit 32 bits
}

TEST(ByteBuffer, KeepsItsMemoryAcrossResetsAndCopiesWhatItIsGiven) {
  ByteBuffer b;
  EXPECT_TRUE(b.empty());
  uint8_t* p = b.reset(100, 8);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(b.size(), 100u);
  EXPECT_GE(b.capacity(), 108u);
  p[107] = 1;  // the slack is writable
  EXPECT_EQ(b.reset(50, 8), p);  // smaller: same memory, new size
  EXPECT_EQ(b.size(), 50u);
  b.shrink(60);  // never grows
  EXPECT_EQ(b.size(), 50u);
  b.shrink(3);
  EXPECT_EQ(b.size(), 3u);
  const std::vector<uint8_t> src = {9, 8, 7, 6, 5};
  b.assign(src.data(), src.size());
  EXPECT_EQ(std::vector<uint8_t>(b.data(), b.data() + b.size()), src);
  b.assign(nullptr, 0);
  EXPECT_TRUE(b.empty());
  // Contents laid out from the end: narrowed to where they start, until the next reset.
  uint8_t* q = b.reset(100);
  b.narrow(30, 60);
  EXPECT_EQ(b.data(), q + 30);
  EXPECT_EQ(b.size(), 60u);
  b.narrow(50, 20);  // within what is left
  EXPECT_EQ(b.data(), q + 80);
  EXPECT_EQ(b.size(), 10u);
  EXPECT_EQ(b.reset(10), q);
  EXPECT_EQ(b.data(), q);
  b.release();
  EXPECT_EQ(b.capacity(), 0u);
  EXPECT_EQ(b.data(), nullptr);
}
