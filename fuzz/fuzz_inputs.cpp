// libFuzzer target over what bigsmall reads besides .bs files: safetensors inputs to compress,
// and the bigsmall.index.json of compressed model directories. Input byte 0 selects the mode:
//   0: the rest is a whole .safetensors file;
//   1: the rest is [u16 header length][header][data], given the 8-byte length prefix here so
//      that mutations of the JSON reach the tensor checks and the encoders;
//   2: the rest is a bigsmall.index.json.
// Oracles besides the sanitizers: a file that compresses must decompress to its exact bytes,
// and a directory index may only name files inside its directory.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "bigsmall/container.hpp"

namespace {

namespace fs = std::filesystem;

// Under the current directory (scripts/test.sh runs the fuzzers in a temporary one it removes):
// libFuzzer ends with _Exit, so nothing would clean up after it.
const fs::path& work_dir() {
  static const fs::path p = [] {
    fs::path d = fs::absolute("fuzz-inputs-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return p;
}

bool write_bytes(const fs::path& p, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) return false;
  const bool ok = std::fwrite(data, 1, size, f) == size;
  return std::fclose(f) == 0 && ok;
}

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::vector<uint8_t> v;
  FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) return v;
  uint8_t buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + n);
  std::fclose(f);
  return v;
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_inputs: %s\n", what);
  std::abort();
}

void round_trip(const std::vector<uint8_t>& file) {
  const fs::path src = work_dir() / "in.safetensors", bs = work_dir() / "in.bs", back = work_dir() / "back.safetensors";
  fs::remove(bs);
  fs::remove(back);
  if (!write_bytes(src, file.data(), file.size())) return;
  bigsmall::CompressOptions co;
  co.threads = 1;
  co.sync = false;
  co.overwrite = true;
  if (!bigsmall::compress_file(src.string(), bs.string(), co).is_ok()) {
    if (fs::exists(bs)) fail("a failed compress left its output behind");
    return;
  }
  bigsmall::DecompressOptions d;
  d.threads = 1;
  d.sync = false;
  d.overwrite = true;
  if (!bigsmall::decompress_file(bs.string(), back.string(), d).is_ok()) fail("a file that compressed does not decompress");
  if (read_bytes(back) != file) fail("the restored file differs from the input");
}

// A real .bs inside the directory (model.bs) and one beside it (outside.bs), so that entries the
// index checks let through name files that exist: an entry escaping to ../outside.bs would be
// listed, and caught below, instead of failing on a missing file.
void place_bs_files(const fs::path& dir) {
  static bool placed = false;
  if (placed) return;
  const std::vector<uint16_t> w = {0x3c00, 0xbc00, 0x3555, 0x0001, 0x7c00};
  const std::vector<bigsmall::TensorView> ts = {
      {"w", bigsmall::DType::kF16, {5}, reinterpret_cast<const uint8_t*>(w.data()), w.size() * 2}};
  bigsmall::CompressOptions co;
  co.overwrite = true;
  for (const fs::path& p : {dir / "model.bs", dir.parent_path() / "outside.bs"})
    if (!bigsmall::write_tensors(p.string(), ts, std::nullopt, co).is_ok()) fail("cannot write the .bs files");
  placed = true;
}

void directory_index(const uint8_t* data, size_t size) {
  const fs::path dir = work_dir() / "model.bs";
  fs::create_directories(dir);
  place_bs_files(dir);
  if (!write_bytes(dir / bigsmall::kDirIndexName, data, size)) return;
  auto files = bigsmall::model_dir_files(dir.string());
  if (!files) return;
  for (const auto& f : *files) {
    const fs::path rel = fs::path(f).lexically_relative(dir);
    if (rel.empty() || rel.is_absolute() || *rel.begin() == "..") fail("an index entry leaves its directory");
  }
  (void)bigsmall::verify_path(dir.string());  // the named files do not exist: an error, not a crash
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > (1u << 20)) return 0;
  const uint8_t mode = data[0] % 3;
  ++data;
  --size;
  if (mode == 0) {
    round_trip(std::vector<uint8_t>(data, data + size));
  } else if (mode == 1) {
    if (size < 2) return 0;
    const size_t hlen = std::min<size_t>(data[0] | (size_t{data[1]} << 8), size - 2);
    std::vector<uint8_t> file(8, 0);
    for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<uint8_t>(static_cast<uint64_t>(hlen) >> (8 * i));
    file.insert(file.end(), data + 2, data + size);
    round_trip(file);
  } else {
    directory_index(data, size);
  }
  return 0;
}
