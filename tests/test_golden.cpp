// Golden files freeze the format (1.0, 1.1): files written by earlier bigsmall versions keep decoding.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "bigsmall/container.hpp"

namespace fs = std::filesystem;
using namespace bigsmall;

namespace {
std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}
}  // namespace

TEST(Golden, V1RestoresByteIdentical) {
  const std::string dir = BIGSMALL_GOLDEN_DIR;
  const fs::path out = fs::temp_directory_path() / ("bigsmall-golden-" + std::to_string(::getpid()) + ".safetensors");
  ASSERT_TRUE(decompress_file(dir + "/golden-v1.bs", out.string()).is_ok());
  EXPECT_TRUE(slurp(out.string()) == slurp(dir + "/golden-v1.safetensors"));
  fs::remove(out);
}

TEST(Golden, V1TensorsMatchTheReferenceDecoder) {
  const std::string dir = BIGSMALL_GOLDEN_DIR;
  auto f = BsFile::open(dir + "/golden-v1.bs");
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  ASSERT_EQ(f->tensors().size(), 8u);
  int codecs_seen = 0;
  for (size_t i = 0; i < f->tensors().size(); ++i) {
    const auto& t = f->tensors()[i];
    std::vector<uint8_t> fast(t.nbytes), ref(t.nbytes);
    ASSERT_TRUE(f->read_tensor(i, fast.data(), fast.size()).is_ok()) << t.name;
    ASSERT_TRUE(reference_decode_tensor(f->coding(i), f->payload(i), t.stored_bytes, ref.data(), ref.size()).is_ok()) << t.name;
    EXPECT_EQ(fast, ref) << t.name;
    codecs_seen |= 1 << static_cast<int>(t.codec);
  }
  EXPECT_EQ(codecs_seen, 0xF) << "the golden file must exercise store, float, bytes and zstd";
}

// Format 1.1 (dtype ids 20 and 21); written by a 1.1 writer, frozen like v1.
TEST(Golden, V1_1RestoresByteIdenticalAndMatchesTheReferenceDecoder) {
  const std::string dir = BIGSMALL_GOLDEN_DIR;
  const fs::path out = fs::temp_directory_path() / ("bigsmall-golden11-" + std::to_string(::getpid()) + ".safetensors");
  ASSERT_TRUE(decompress_file(dir + "/golden-v1.1.bs", out.string()).is_ok());
  EXPECT_TRUE(slurp(out.string()) == slurp(dir + "/golden-v1.1.safetensors"));
  fs::remove(out);
  auto f = BsFile::open(dir + "/golden-v1.1.bs");
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  ASSERT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->tensors()[0].dtype, DType::kF8_E4M3FNUZ);
  EXPECT_EQ(f->tensors()[1].dtype, DType::kF8_E5M2FNUZ);
  for (size_t i = 0; i < f->tensors().size(); ++i) {
    const auto& t = f->tensors()[i];
    std::vector<uint8_t> fast(t.nbytes), ref(t.nbytes);
    ASSERT_TRUE(f->read_tensor(i, fast.data(), fast.size()).is_ok()) << t.name;
    ASSERT_TRUE(reference_decode_tensor(f->coding(i), f->payload(i), t.stored_bytes, ref.data(), ref.size()).is_ok()) << t.name;
    EXPECT_EQ(fast, ref) << t.name;
  }
  EXPECT_EQ(f->tensors()[0].codec, Codec::kFloat);  // the FNUZ dtypes use the float model
}
