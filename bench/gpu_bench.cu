// GPU decode throughput on >= 2 GB of BF16, F16 and F32 weights made by tiling corpus tensors,
// against a device-to-device copy of the same output size (the ceiling), in one run.
// Usage: gpu_bench DIR [GB]     DIR holds .safetensors or .bs files
//
// Decode figures per dtype, medians of 5 after a warm-up:
//   call:   one Decoder::enqueue as a user makes it (tables built on the host, uploaded, launch)
//   device: the same work with the host part kept out of the clock (the stream is held by a gate
//           kernel until enqueue has returned), default settings
//   3/SM, 4/SM: as device, registers capped for 3 or 4 blocks of 16 warps per SM (default 2)
//   shared: as device, tables copied to shared memory per block
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bigsmall/codec.hpp"
#include "bigsmall/container.hpp"
#include "bigsmall/cuda.hpp"

using namespace bigsmall;
namespace fs = std::filesystem;

namespace {

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

__global__ void gate(const volatile int* flag) {
  while (*flag == 0) {
  }
}

// The largest tensor of the given dtype in DIR, tiled to `bytes`.
std::vector<uint8_t> tiled(const std::string& dir, DType dt, uint64_t bytes, std::string* from) {
  std::vector<uint8_t> best;
  const std::string tmp = (fs::temp_directory_path() / "gpu_bench.bs").string();
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string path = e.path().string();
    if (e.path().extension() == ".safetensors") {
      CompressOptions co;
      co.overwrite = true;
      co.sync = false;
      if (!compress_file(path, tmp, co).is_ok()) continue;
      path = tmp;
    } else if (e.path().extension() != ".bs") {
      continue;
    }
    auto f = BsFile::open(path);
    if (!f) continue;
    for (size_t i = 0; i < f->tensors().size(); ++i) {
      const auto& t = f->tensors()[i];
      // Float-coded tensors only: a zstd-routed one (few distinct values) decodes on the host.
      if (t.dtype != dt || t.nbytes <= best.size() || f->coding(i).codec != Codec::kFloat) continue;
      best.resize(t.nbytes);
      if (!f->read_tensor(i, best.data(), best.size()).is_ok()) best.clear();
      else *from = e.path().filename().string() + ":" + t.name;
    }
  }
  std::vector<uint8_t> out(bytes / 64 * 64);
  for (uint64_t o = 0; o < out.size() && !best.empty(); o += best.size())
    std::memcpy(out.data() + o, best.data(), std::min<uint64_t>(best.size(), out.size() - o));
  if (best.empty()) out.clear();
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Gate {
  int* host = nullptr;
  int* dev = nullptr;
  Gate() {
    CK(cudaHostAlloc(&host, sizeof(int), cudaHostAllocMapped));
    CK(cudaHostGetDevicePointer(&dev, host, 0));
  }
  ~Gate() { cudaFreeHost(host); }
};

// Seconds of one decode of `enc` into dout; `gated` keeps the host part out of the clock.
double time_decode(const EncodedTensor& enc, const uint8_t* dp, uint8_t* dout, uint64_t dout_size, cudaStream_t s,
                   bool shared, int blocks, bool gated, Gate& g) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  cuda::Decoder dec;
  dec.set_shared_tables(shared);
  dec.set_blocks_per_sm(blocks);
  std::thread opener;
  if (gated) {
    *reinterpret_cast<volatile int*>(g.host) = 0;
    gate<<<1, 1, 0, s>>>(g.dev);
    CK(cudaGetLastError());
    // If enqueue's pageable upload waits for the stream, the gate still opens; the host work
    // that remains after that point is a few launches.
    opener = std::thread([&g] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      reinterpret_cast<std::atomic<int>*>(g.host)->store(1);
    });
  }
  CK(cudaEventRecord(a, s));
  Status st = dec.enqueue({{&enc.coding, enc.payload.data(), enc.payload.size(), dp, dout, dout_size}}, s, false);
  CK(cudaEventRecord(b, s));
  if (gated) opener.join();
  CK(cudaEventSynchronize(b));
  if (st.is_ok()) static_cast<void>(st = dec.finish());
  if (!st.is_ok()) {
    std::fprintf(stderr, "decode failed: %s\n", st.message().c_str());
    std::exit(1);
  }
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return ms / 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: gpu_bench DIR [GB]\n");
    return 1;
  }
  if (!cuda::available()) {
    std::printf("no CUDA device: GPU benchmark skipped\n");
    return 0;
  }
  const uint64_t bytes = static_cast<uint64_t>((argc > 2 ? std::atof(argv[2]) : 2.0) * 1e9);
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  Gate g;
  std::vector<std::string> rows;
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    std::string from;
    const auto data = tiled(argv[1], dt, bytes, &from);
    const std::string name(dtype_info(dt).safetensors_name);
    if (data.empty()) {
      std::printf("%s: no tensor of this dtype in %s\n", name.c_str(), argv[1]);
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto enc = encode_tensor(dt, data.data(), data.size());
    if (!enc) {
      std::fprintf(stderr, "encode failed: %s\n", enc.status().message().c_str());
      return 1;
    }
    const double enc_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: %.2f GB tiled from %s, encoded in %.2f s, ratio %.4f\n", name.c_str(), data.size() / 1e9, from.c_str(), enc_s,
                static_cast<double>(enc->payload.size()) / data.size());
    std::fflush(stdout);
    uint8_t *dp = nullptr, *dout = nullptr, *dcopy = nullptr, *pinned = nullptr;
    CK(cudaMalloc(&dp, enc->payload.size()));
    CK(cudaMalloc(&dout, data.size()));
    CK(cudaMalloc(&dcopy, data.size()));
    CK(cudaMallocHost(&pinned, enc->payload.size()));
    std::memcpy(pinned, enc->payload.data(), enc->payload.size());
    CK(cudaMemcpy(dp, pinned, enc->payload.size(), cudaMemcpyHostToDevice));
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<double> tmode[5], tcopy, th2d;
    std::vector<uint8_t> back(data.size());
    bool exact = true;
    for (int rep = 0; rep < 6; ++rep) {
      for (int mode = 0; mode < 5; ++mode) {
        CK(cudaMemsetAsync(dout, 0x5a, data.size(), s));  // poison: every byte must be written
        const int blocks = mode == 2 ? 3 : mode == 3 ? 4 : 2;
        const double t = time_decode(enc.value(), dp, dout, data.size(), s, /*shared=*/mode == 4, blocks, /*gated=*/mode != 0, g);
        if (rep) tmode[mode].push_back(t);
        if (rep == 1) {  // every mode's output checked once
          CK(cudaMemcpy(back.data(), dout, back.size(), cudaMemcpyDeviceToHost));
          exact = exact && back == data;
        }
      }
      float ms = 0;
      CK(cudaEventRecord(a, s));
      CK(cudaMemcpyAsync(dcopy, dout, data.size(), cudaMemcpyDeviceToDevice, s));
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      CK(cudaEventElapsedTime(&ms, a, b));
      if (rep) tcopy.push_back(ms / 1e3);
      CK(cudaEventRecord(a, s));
      CK(cudaMemcpyAsync(dp, pinned, enc->payload.size(), cudaMemcpyHostToDevice, s));
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      CK(cudaEventElapsedTime(&ms, a, b));
      if (rep) th2d.push_back(ms / 1e3);
    }
    const double out_gb = static_cast<double>(data.size());
    const double copy_tbs = 2.0 * out_gb / median(tcopy) / 1e12;
    char row[512];
    double best = 0;
    for (int mode = 1; mode < 5; ++mode) best = std::max(best, out_gb / median(tmode[mode]) / 1e12);
    std::snprintf(row, sizeof row, "| %s | %.2f | %.4f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.2f | %.1f | %s |", name.c_str(),
                  out_gb / 1e9, static_cast<double>(enc->payload.size()) / out_gb, out_gb / median(tmode[0]) / 1e12,
                  out_gb / median(tmode[1]) / 1e12, out_gb / median(tmode[2]) / 1e12, out_gb / median(tmode[3]) / 1e12,
                  out_gb / median(tmode[4]) / 1e12, copy_tbs, best / (copy_tbs / 2),
                  enc->payload.size() / median(th2d) / 1e9, exact ? "yes" : "NO: OUTPUT DIFFERS");
    rows.push_back(row);
    CK(cudaFree(dp));
    CK(cudaFree(dout));
    CK(cudaFree(dcopy));
    CK(cudaFreeHost(pinned));
    CK(cudaStreamDestroy(s));
  }
  std::printf("\ndevice: %s, %d SMs\n\n", prop.name, prop.multiProcessorCount);
  std::printf(
      "| dtype | output GB | ratio | decode TB/s, call | device | device, 3/SM | device, 4/SM | device, shared tables | "
      "D2D copy TB/s (read+write) | best decode / copy output rate | H2D pinned GB/s of compressed | bit-exact (all modes) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) std::printf("%s\n", r.c_str());
  return 0;
}
