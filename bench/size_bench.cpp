// Single-thread decode and encode speed per weight by tensor size, through the public API, with
// a memcpy of the same bytes as the baseline measured in the same process. Tensor size sets the
// lane count (1 lane below 256 elements, 4 below 2Ki, 16 below 32Ki, 32 above), so this shows where the
// small tensors of the corpus files lose speed. Each size is decoded repeatedly from a warm
// cache, so these are kernel speeds, not file speeds (bench.py measures those). Weights: the
// real values of one tensor of a .bs file, repeated, or (without a file) Gaussian weights
// rounded to the dtype.
//
//   build/size_bench [file.bs tensor-name]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bigsmall/codec.hpp"
#include "bigsmall/container.hpp"

using namespace bigsmall;
using clk = std::chrono::steady_clock;

namespace {

double seconds(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

std::vector<uint8_t> gaussian(DType dt, uint64_t n) {
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.f, 0.02f);
  const size_t w = dtype_info(dt).bits / 8;
  std::vector<uint8_t> out(n * w);
  for (uint64_t i = 0; i < n; ++i) {
    const float f = g(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (dt == DType::kF32) {
      std::memcpy(&out[i * 4], &u, 4);
    } else if (dt == DType::kBF16) {
      const uint16_t h = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);  // round to nearest even
      std::memcpy(&out[i * 2], &h, 2);
    } else {
      const _Float16 h = static_cast<_Float16>(f);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

// Median of 7 runs of fn, in seconds.
template <typename F>
double median_time(F&& fn) {
  std::vector<double> t;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = clk::now();
    fn();
    t.push_back(seconds(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> sources;
  DType file_dtype = DType::kBF16;
  if (argc == 3) {
    auto f = BsFile::open(argv[1]);  // a .bs file: decode the named tensor once
    if (!f) {
      std::fprintf(stderr, "size_bench: %s\n", f.status().message().c_str());
      return 1;
    }
    const auto i = f->find(argv[2]);
    if (!i) {
      std::fprintf(stderr, "size_bench: %s: no tensor '%s'\n", argv[1], argv[2]);
      return 1;
    }
    std::vector<uint8_t> t(f->tensors()[*i].nbytes);
    if (Status st = f->read_tensor(*i, t.data(), t.size()); !st.is_ok()) {
      std::fprintf(stderr, "size_bench: %s\n", st.message().c_str());
      return 1;
    }
    file_dtype = f->tensors()[*i].dtype;
    sources.emplace_back(std::string(dtype_info(file_dtype).safetensors_name) + " " + argv[2], std::move(t));
  } else {
    for (DType dt : {DType::kBF16, DType::kF16, DType::kF32})
      sources.emplace_back(std::string(dtype_info(dt).safetensors_name) + " gaussian", gaussian(dt, 1 << 22));
  }
  std::printf("| weights | elements | ns/weight decode | ns/weight encode | memcpy ns/weight | decode GB/s |\n");
  std::printf("|---|---|---|---|---|---|\n");
  size_t k = 0;
  for (const auto& [label, full] : sources) {
    const DType dt = argc == 3 ? file_dtype : std::vector<DType>{DType::kBF16, DType::kF16, DType::kF32}[k++];
    const size_t w = dtype_info(dt).bits / 8;
    for (uint64_t n : {uint64_t{4096}, uint64_t{12288}, uint64_t{24576}, uint64_t{65536}, uint64_t{1} << 22}) {
      // Repeat the source to n weights, then code it as `copies` tensors of n weights.
      std::vector<uint8_t> data(n * w);
      for (uint64_t i = 0; i < data.size(); ++i) data[i] = full[i % full.size()];
      const uint64_t copies = std::max<uint64_t>(1, (uint64_t{1} << 22) / n);
      EncodeOptions eo;
      eo.threads = 1;
      eo.allow_zstd = false;
      Result<EncodedTensor> enc = Status(Error::kInternal, "not run");
      const double te = median_time([&] { enc = encode_tensor(dt, data.data(), data.size(), eo); });
      if (!enc) {
        std::fprintf(stderr, "size_bench: %s\n", enc.status().message().c_str());
        return 1;
      }
      std::vector<uint8_t> out(data.size());
      DecodeOptions dop;
      dop.threads = 1;
      dop.verify = false;
      const double td = median_time([&] {
        for (uint64_t c = 0; c < copies; ++c)
          (void)decode_tensor(enc->coding, enc->payload.data(), enc->payload.size(), out.data(), out.size(), dop);
      });
      if (out != data) {
        std::fprintf(stderr, "size_bench: decode mismatch\n");
        return 1;
      }
      std::vector<uint8_t> copy(data.size());
      const double tm = median_time([&] {
        for (uint64_t c = 0; c < copies; ++c) std::memcpy(copy.data(), data.data() + (c & 1), data.size() - 1);
      });
      const double per = 1e9 / static_cast<double>(n * copies);
      std::printf("| %s | %llu | %.2f | %.2f | %.3f | %.2f |\n", label.c_str(), static_cast<unsigned long long>(n), td * per,
                  te * 1e9 / static_cast<double>(n), tm * per, static_cast<double>(data.size() * copies) / td / 1e9);
    }
  }
  return 0;
}
