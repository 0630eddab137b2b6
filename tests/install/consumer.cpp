// Uses only the installed public headers: writes a .bs of two tensors, reads one back by name,
// and round-trips a tensor through the codec into a buffer it owns. Exit 0 when every byte agrees.
#include <bigsmall/codec.hpp>
#include <bigsmall/container.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer OUT.bs\n");
    return 2;
  }
  std::vector<uint16_t> w(5000);
  for (size_t i = 0; i < w.size(); ++i) {  // BF16 of small sine values: a trained-like spread
    const float f = 0.02f * std::sin(0.37f * static_cast<float>(i));
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    w[i] = static_cast<uint16_t>(bits >> 16);
  }
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  const auto* wb = reinterpret_cast<const uint8_t*>(w.data());
  const auto* ib = reinterpret_cast<const uint8_t*>(ids.data());
  std::vector<bigsmall::TensorView> tensors = {{"w", bigsmall::DType::kBF16, {50, 100}, wb, w.size() * 2},
                                               {"ids", bigsmall::DType::kI32, {8}, ib, ids.size() * 4}};
  bigsmall::CompressOptions co;
  co.overwrite = true;
  if (auto st = bigsmall::write_tensors(argv[1], tensors, bigsmall::Metadata{{"format", "pt"}}, co); !st.is_ok()) {
    std::fprintf(stderr, "write_tensors: %s\n", st.message().c_str());
    return 1;
  }
  auto file = bigsmall::BsFile::open(argv[1]);
  if (!file) {
    std::fprintf(stderr, "open: %s\n", file.status().message().c_str());
    return 1;
  }
  std::vector<uint16_t> back(w.size());
  for (size_t i = 0; i < file->tensors().size(); ++i)
    if (file->tensors()[i].name == "w" &&
        !file->read_tensor(i, reinterpret_cast<uint8_t*>(back.data()), back.size() * 2).is_ok())
      return 1;
  auto enc = bigsmall::encode_tensor(bigsmall::DType::kBF16, wb, w.size() * 2);
  if (!enc) return 1;
  std::vector<uint16_t> dec(w.size());
  if (!bigsmall::decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(),
                               reinterpret_cast<uint8_t*>(dec.data()), dec.size() * 2).is_ok())
    return 1;
  const bool same = back == w && dec == w;
  // The installed headers and the installed library are the same release.
  const bool versions = bigsmall::version_number() == BIGSMALL_VERSION_NUMBER;
  std::printf("consumer: %s (%zu BF16 weights, %zu coded bytes), library %s, headers %d\n",
              same && versions ? "ok" : "MISMATCH", w.size(), enc->payload.size(), bigsmall::version_string(),
              BIGSMALL_VERSION_NUMBER);
  if (!versions) return 1;
  return same ? 0 : 1;
}
