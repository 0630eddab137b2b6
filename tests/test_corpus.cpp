// Every real checkpoint in ../shared/corpus restores byte-identical (skipped, and reported as
// skipped, where that folder does not exist).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "bigsmall/container.hpp"

namespace fs = std::filesystem;
using namespace bigsmall;

TEST(Corpus, EveryFileRoundTripsByteIdentical) {
  const char* env = std::getenv("BIGSMALL_CORPUS_DIR");
  const fs::path corpus = env && *env ? env : BIGSMALL_CORPUS_DIR;
  if (!fs::is_directory(corpus))
    GTEST_SKIP() << corpus << " not present: set BIGSMALL_CORPUS_DIR (or -DBIGSMALL_CORPUS_DIR=) to a folder of .safetensors files";
  const fs::path tmp = fs::temp_directory_path() / ("bigsmall-corpus-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  int files = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    if (e.path().extension() != ".safetensors") continue;
    ++files;
    SCOPED_TRACE(e.path().filename().string());
    const std::string bs = (tmp / "x.bs").string(), out = (tmp / "x.safetensors").string();
    CompressOptions co;
    co.overwrite = true;
    co.sync = false;
    DecompressOptions dopt;
    dopt.overwrite = true;
    dopt.sync = false;
    ASSERT_TRUE(compress_file(e.path().string(), bs, co).is_ok());
    ASSERT_TRUE(verify_path(bs).is_ok());
    ASSERT_TRUE(decompress_file(bs, out, dopt).is_ok());
    std::ifstream a(e.path(), std::ios::binary), b(out, std::ios::binary);
    const std::string da((std::istreambuf_iterator<char>(a)), {}), db((std::istreambuf_iterator<char>(b)), {});
    EXPECT_TRUE(da == db) << "restored file differs";
    EXPECT_LT(fs::file_size(bs), fs::file_size(e.path()));
  }
  fs::remove_all(tmp);
  EXPECT_GT(files, 0);
}
