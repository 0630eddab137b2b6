// Golden files freeze the format (1.0, 1.1, 1.2): files written by earlier bigsmall versions keep decoding.
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

// The golden .bs restores its .safetensors byte for byte.
void expect_restores(const std::string& name) {
  const std::string dir = BIGSMALL_GOLDEN_DIR;
  const fs::path out = fs::temp_directory_path() / ("bigsmall-" + name + "-" + std::to_string(::getpid()) + ".safetensors");
  ASSERT_TRUE(decompress_file(dir + "/" + name + ".bs", out.string()).is_ok());
  EXPECT_TRUE(slurp(out.string()) == slurp(dir + "/" + name + ".safetensors"));
  fs::remove(out);
}

// Every tensor of f decodes to the reference decoder's bytes; returns the codecs seen (bit per codec).
int expect_matches_reference(const BsFile& f) {
  int codecs_seen = 0;
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const auto& t = f.tensors()[i];
    std::vector<uint8_t> fast(t.nbytes), ref(t.nbytes);
    EXPECT_TRUE(f.read_tensor(i, fast.data(), fast.size()).is_ok()) << t.name;
    EXPECT_TRUE(reference_decode_tensor(f.coding(i), f.payload(i), t.stored_bytes, ref.data(), ref.size()).is_ok()) << t.name;
    EXPECT_EQ(fast, ref) << t.name;
    codecs_seen |= 1 << static_cast<int>(t.codec);
  }
  return codecs_seen;
}
}  // namespace

TEST(Golden, V1RestoresByteIdentical) { expect_restores("golden-v1"); }

TEST(Golden, V1TensorsMatchTheReferenceDecoder) {
  auto f = BsFile::open(std::string(BIGSMALL_GOLDEN_DIR) + "/golden-v1.bs");
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  ASSERT_EQ(f->tensors().size(), 8u);
  EXPECT_EQ(expect_matches_reference(*f), 0xF) << "the golden file must exercise store, float, bytes and zstd";
}

// Format 1.1 (dtype ids 20 and 21); written by a 1.1 writer, frozen like v1.
TEST(Golden, V1_1RestoresByteIdenticalAndMatchesTheReferenceDecoder) {
  expect_restores("golden-v1.1");
  auto f = BsFile::open(std::string(BIGSMALL_GOLDEN_DIR) + "/golden-v1.1.bs");
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  ASSERT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->tensors()[0].dtype, DType::kF8_E4M3FNUZ);
  EXPECT_EQ(f->tensors()[1].dtype, DType::kF8_E5M2FNUZ);
  expect_matches_reference(*f);
  EXPECT_EQ(f->tensors()[0].codec, Codec::kFloat);  // the FNUZ dtypes use the float model
}

// Format 1.2 (a null __metadata__); written by a 1.2 writer, frozen like v1.
TEST(Golden, V1_2RestoresByteIdenticalAndMatchesTheReferenceDecoder) {
  expect_restores("golden-v1.2");
  auto f = BsFile::open(std::string(BIGSMALL_GOLDEN_DIR) + "/golden-v1.2.bs");
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_FALSE(f->metadata().has_value());
  EXPECT_EQ(f->tensors()[0].codec, Codec::kFloat);
  expect_matches_reference(*f);
}

// Layouts readers promise to keep reading, which the files above lack: bytes between and after
// tensors (fillers), a stored chunk inside a float tensor, an empty tensor, a scalar, a
// non-ASCII name, metadata. Written by a 1.2 writer, frozen like the others.
TEST(Golden, V1_2LayoutRestoresByteIdenticalAndMatchesTheReferenceDecoder) {
  expect_restores("golden-v1.2-layout");
  auto f = BsFile::open(std::string(BIGSMALL_GOLDEN_DIR) + "/golden-v1.2-layout.bs");
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  ASSERT_EQ(f->tensors().size(), 4u);
  const TensorCoding& mixed = f->coding(0);
  EXPECT_EQ(mixed.codec, Codec::kFloat);
  ASSERT_EQ(mixed.chunks.size(), 2u);
  EXPECT_EQ(mixed.chunks[0].mode, ChunkMode::kCoded);
  EXPECT_EQ(mixed.chunks[1].mode, ChunkMode::kStored) << "the incompressible half";
  EXPECT_EQ(f->tensors()[1].name, "h\xc3\xa9llo.w\xc3\xa9ight");
  EXPECT_EQ(f->tensors()[2].nbytes, 0u);
  EXPECT_TRUE(f->tensors()[3].shape.empty());
  uint64_t tensor_bytes = 0;
  for (const auto& t : f->tensors()) tensor_bytes += t.nbytes;
  EXPECT_EQ(f->original_size() - 8 - f->safetensors_header().size() - tensor_bytes, 9u) << "7 + 2 bytes of fillers";
  ASSERT_TRUE(f->metadata().has_value());
  EXPECT_EQ(f->metadata()->size(), 2u);
  expect_matches_reference(*f);
}
