// GPU decoder against the reference decoder, bit for bit, with tables in shared memory and in
// global memory. Without a CUDA device every test here is reported as skipped, never as passed.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>

#include "bigsmall/container.hpp"
#include "bigsmall/cuda.hpp"
#include "testutil.hpp"

#if BIGSMALL_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace bigsmall;
namespace fs = std::filesystem;

namespace {

#if BIGSMALL_HAVE_CUDA
struct Input {
  const TensorCoding* coding;
  const uint8_t* payload;
  uint64_t payload_size;
};

#define CUDA_CHECK(x) ASSERT_EQ((x), cudaSuccess) << #x

// Decodes every input in one enqueue; payloads are packed back to back at odd offsets so that
// no alignment of the compressed bytes is assumed. `flip_at` damages one byte of input 0 (the
// host and device copies alike, as a damaged file would be).
// mode: 0 shared tables, 1..3 global tables with 2..4 blocks per SM.
// window: the decoder's table bytes per launch (0: its default).
void gpu_decode(const std::vector<Input>& in, int mode, bool verify, Status* st, std::vector<std::vector<uint8_t>>* outs,
                size_t flip_at = SIZE_MAX, size_t out_misalign = 0, size_t window = 0) {
  uint64_t total = 1, out_total = 0;
  std::vector<uint64_t> poff, ooff;
  for (const Input& x : in) {
    poff.push_back(total);
    total += x.payload_size + 1;
    ooff.push_back(out_total);
    out_total += (x.coding->nbytes + 255) / 256 * 256;
  }
  std::vector<uint8_t> host(total, 0xa5);
  for (size_t k = 0; k < in.size(); ++k)
    if (in[k].payload_size) std::memcpy(host.data() + poff[k], in[k].payload, in[k].payload_size);
  if (flip_at != SIZE_MAX && !in.empty()) host[poff[0] + flip_at] ^= 0x20;
  uint8_t *dp = nullptr, *dout = nullptr;
  CUDA_CHECK(cudaMalloc(&dp, total));
  CUDA_CHECK(cudaMalloc(&dout, out_total + 256));
  CUDA_CHECK(cudaMemcpy(dp, host.data(), total, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(dout, 0x5a, out_total + 256));  // poison: every byte must be written
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreate(&s));
  {
    cuda::Decoder dec;
    dec.set_shared_tables(mode == 0);
    dec.set_blocks_per_sm(mode + 1);
    dec.set_window_table_bytes(window);
    std::vector<cuda::Job> jobs;
    for (size_t k = 0; k < in.size(); ++k)
      jobs.push_back({in[k].coding, host.data() + poff[k], in[k].payload_size, dp + poff[k], dout + ooff[k] + out_misalign,
                      in[k].coding->nbytes});
    *st = dec.enqueue(jobs, s, verify);
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (st->is_ok()) *st = dec.finish();
  }
  outs->clear();
  for (size_t k = 0; k < in.size(); ++k) {
    // The tensor and the poison after it, up to the next tensor: nothing may be written past its end.
    const uint64_t room = (in[k].coding->nbytes + 255) / 256 * 256 - out_misalign;
    std::vector<uint8_t> all(room);
    CUDA_CHECK(cudaMemcpy(all.data(), dout + ooff[k] + out_misalign, room, cudaMemcpyDeviceToHost));
    for (uint64_t b = in[k].coding->nbytes; b < room; ++b) ASSERT_EQ(all[b], 0x5a) << "written past the end of tensor " << k;
    all.resize(in[k].coding->nbytes);
    outs->push_back(std::move(all));
  }
  CUDA_CHECK(cudaFree(dp));
  CUDA_CHECK(cudaFree(dout));
  CUDA_CHECK(cudaStreamDestroy(s));
}

// Bytes drawn from a geometric distribution (p = 0.05), capped at 255.
std::vector<uint8_t> skewed_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::geometric_distribution<int> g(0.05);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(std::min(255, g(rng)));
  return v;
}
#endif

}  // namespace

// Skipped without a device, except where BIGSMALL_REQUIRE_GPU is set (bench/gpu_check.sh on the
// device machine): there a decoder that cannot start (a driver older than the runtime, a build
// without CUDA) must fail the check, not pass it by skipping every test.
#define BIGSMALL_NEED_GPU()                                                                      \
  do {                                                                                           \
    if (!cuda::available()) {                                                                    \
      const char* req = std::getenv("BIGSMALL_REQUIRE_GPU");                                     \
      if (req && *req && std::string(req) != "0") FAIL() << "BIGSMALL_REQUIRE_GPU: no usable CUDA device"; \
      GTEST_SKIP() << "no CUDA device";                                                          \
    }                                                                                            \
  } while (0)

TEST(Cuda, MatchesReferenceOnEveryDtypeAwkwardSizesAndSpecialValues) {
  BIGSMALL_NEED_GPU();
#if BIGSMALL_HAVE_CUDA
  std::vector<std::vector<uint8_t>> datas;
  std::vector<EncodedTensor> encs;
  std::vector<std::string> what;
  for (int d = 0; d < static_cast<int>(DType::kCount); ++d) {
    const DType dt = static_cast<DType>(d);
    // 300 and 3000 units get 4 and 16 lanes from the encoder; 3001 and 9001 4 and 8, as earlier
    // encoders gave them.
    for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{31}, uint64_t{33}, uint64_t{300}, uint64_t{3000}, uint64_t{3001},
                       uint64_t{9001}, uint64_t{20000}, uint64_t{65535}, uint64_t{65536}, uint64_t{65537}, uint64_t{200001}}) {
      std::optional<bstest::LanesBySizeOnly> earlier;
      if (n == 3001 || n == 9001) earlier.emplace();
      const uint64_t nbytes = dtype_nbytes(dt, n).value_or(0);
      // Integer tensors with skewed bytes, so that the byte coder (not a stored copy) handles them.
      const auto data = has_float_model(dt) ? bstest::weights(dt, n, static_cast<uint32_t>(n) + d)
                                            : skewed_bytes(nbytes, static_cast<uint32_t>(n) + 3);
      if (data.size() != nbytes) continue;
      auto e = encode_tensor(dt, data.data(), data.size());
      ASSERT_TRUE(e.is_ok()) << e.status().message();
      datas.push_back(data);
      encs.push_back(std::move(e.value()));
      what.push_back(std::string(dtype_info(dt).safetensors_name) + " n=" + std::to_string(n));
    }
  }
  for (int mode = 0; mode < 4; ++mode) {
    const std::string how = " mode " + std::to_string(mode);
    // One launch for all of them (many models in one grid), then each on its own.
    std::vector<Input> all;
    for (const auto& e : encs) all.push_back({&e.coding, e.payload.data(), e.payload.size()});
    Status st;
    std::vector<std::vector<uint8_t>> outs;
    gpu_decode(all, mode, true, &st, &outs);
    ASSERT_TRUE(st.is_ok()) << st.message();
    for (size_t k = 0; k < encs.size(); ++k) EXPECT_EQ(outs[k], datas[k]) << what[k] << how;
    for (size_t k = 0; k < encs.size(); ++k) {
      gpu_decode({all[k]}, mode, true, &st, &outs);
      ASSERT_TRUE(st.is_ok()) << what[k] << ": " << st.message();
      EXPECT_EQ(outs[0], datas[k]) << what[k] << how;
    }
  }
#endif
}

TEST(Cuda, TensorsDecodeAcrossTableWindows) {
  // A launch takes tensors until their tables pass the window's bytes; with a window of one byte
  // every tensor is its own launch, each releasing its tables while the status array spans them
  // all. Float, byte-coded and zstd tensors (decoded on the host) alike.
  BIGSMALL_NEED_GPU();
#if BIGSMALL_HAVE_CUDA
  std::vector<std::vector<uint8_t>> datas;
  std::vector<EncodedTensor> encs;
  const auto add = [&](DType dt, std::vector<uint8_t> data) {
    auto e = encode_tensor(dt, data.data(), data.size());
    ASSERT_TRUE(e.is_ok()) << e.status().message();
    datas.push_back(std::move(data));
    encs.push_back(std::move(e.value()));
  };
  uint32_t seed = 40;
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32})
    for (uint64_t n : {uint64_t{3000}, uint64_t{65537}, uint64_t{200001}}) add(dt, bstest::weights(dt, n, ++seed));
  add(DType::kI32, skewed_bytes(4 * 9000, 7));
  std::vector<uint8_t> tiled(4 * 100000);
  for (size_t k = 0; k < tiled.size(); ++k) tiled[k] = static_cast<uint8_t>(k % 400 / 4);
  add(DType::kF32, tiled);
  ASSERT_EQ(encs.back().coding.codec, Codec::kZstd);
  std::vector<Input> all;
  for (const auto& e : encs) all.push_back({&e.coding, e.payload.data(), e.payload.size()});
  for (size_t window : {size_t{1}, size_t{100000}, size_t{0}}) {
    for (int mode : {0, 1}) {
      Status st;
      std::vector<std::vector<uint8_t>> outs;
      gpu_decode(all, mode, true, &st, &outs, SIZE_MAX, 0, window);
      ASSERT_TRUE(st.is_ok()) << "window " << window << ": " << st.message();
      for (size_t k = 0; k < encs.size(); ++k) EXPECT_EQ(outs[k], datas[k]) << "tensor " << k << ", window " << window << ", mode " << mode;
    }
  }
  // Damage in tensor 0 (a 200001-weight BF16 tensor), checksums off: one launch per tensor must
  // find what one launch for all finds (each window writes its own part of the status array).
  std::vector<Input> damaged(all.begin() + 2, all.end());
  const TensorCoding& c0 = *damaged[0].coding;
  int caught = 0;
  for (int k = 0; k < 24; ++k) {
    const size_t at = c0.model_size + (damaged[0].payload_size - c0.model_size) * k / 24;
    Status one, many;
    std::vector<std::vector<uint8_t>> out_one, out_many;
    gpu_decode(damaged, 1, false, &one, &out_one, at, 0, 0);
    gpu_decode(damaged, 1, false, &many, &out_many, at, 0, 1);
    EXPECT_EQ(one.code(), many.code()) << "flip at " << at << ": " << one.message() << " / " << many.message();
    EXPECT_EQ(one.message(), many.message());
    if (one.is_ok() && many.is_ok()) {
      EXPECT_EQ(out_one, out_many) << "flip at " << at;
    }
    caught += !one.is_ok();
  }
  EXPECT_GT(caught, 0) << "no flip caught: the comparison above proves nothing";
#endif
}

TEST(Cuda, DamagedChunksAreReportedNotDecodedWrongly) {
  BIGSMALL_NEED_GPU();
#if BIGSMALL_HAVE_CUDA
  for (DType dt : {DType::kBF16, DType::kF32, DType::kF16}) {
    const auto data = bstest::weights(dt, 3 * 65536 + 11, 5);
    auto e = encode_tensor(dt, data.data(), data.size());
    ASSERT_TRUE(e.is_ok());
    const Input in{&e->coding, e->payload.data(), e->payload.size()};
    int caught = 0, total = 0;
    for (size_t at = e->coding.model_size; at < e->payload.size(); at += e->payload.size() / 97 + 1) {
      Status st;
      std::vector<std::vector<uint8_t>> outs;
      // Without host checksums most damage is still caught on the device by the rANS state and
      // word-count checks; a flip in a raw mantissa bit cannot be, which is why callers check
      // the tensor checksum of what comes out.
      gpu_decode({in}, 1, /*verify=*/false, &st, &outs, at);
      ++total;
      if (!st.is_ok()) ++caught;
      // With checksums the damage is found before any launch.
      gpu_decode({in}, 1, /*verify=*/true, &st, &outs, at);
      EXPECT_FALSE(st.is_ok()) << "flip at " << at;
    }
    // Most of an F32 payload is the raw mantissa plane, which nothing but a checksum can check.
    EXPECT_GT(caught, 0) << dtype_info(dt).safetensors_name;
    std::printf("%s: %d of %d flips caught on the device without checksums\n", std::string(dtype_info(dt).safetensors_name).c_str(),
                caught, total);
  }
#endif
}

TEST(Cuda, MisalignedOutputIsAnError) {
  BIGSMALL_NEED_GPU();
#if BIGSMALL_HAVE_CUDA
  const auto data = bstest::weights(DType::kF32, 1000, 9);
  auto e = encode_tensor(DType::kF32, data.data(), data.size());
  ASSERT_TRUE(e.is_ok());
  Status st;
  std::vector<std::vector<uint8_t>> outs;
  gpu_decode({{&e->coding, e->payload.data(), e->payload.size()}}, 1, true, &st, &outs, SIZE_MAX, 2);
  EXPECT_EQ(st.code(), Error::kInvalidArgument) << st.message();
#endif
}

TEST(Cuda, JobsAreCheckedBeforeAnythingReachesTheDevice) {
  // No device needed: a job's buffers are checked against its coding first, so a buffer too
  // small for the tensor is refused before any launch could write past its end.
#if BIGSMALL_HAVE_CUDA
  const auto data = bstest::weights(DType::kF32, 1000, 9);
  auto e = encode_tensor(DType::kF32, data.data(), data.size());
  ASSERT_TRUE(e.is_ok());
  alignas(64) static uint8_t fake_device[8192];  // never written: every job below is refused
  const cuda::Job good{&e->coding, e->payload.data(), e->payload.size(), fake_device, fake_device, data.size()};
  auto refused = [&](cuda::Job j, const std::string& why) {
    cuda::Decoder dec;
    const Status st = dec.enqueue({good, j}, nullptr, true);
    EXPECT_EQ(st.code(), Error::kInvalidArgument) << why;
    EXPECT_NE(st.message().find("tensor #1: " + why), std::string::npos) << st.message();
  };
  cuda::Job small = good;
  small.device_out_size = data.size() - 1;
  refused(small, "output buffer has 3999 bytes, tensor has 4000");
  cuda::Job null_out = good;
  null_out.device_out = nullptr;
  refused(null_out, "output buffer has");
  cuda::Job no_coding = good;
  no_coding.coding = nullptr;
  refused(no_coding, "no coding");
  cuda::Job short_payload = good;
  short_payload.payload_size = 3;
  cuda::Decoder dec;
  EXPECT_NE(dec.enqueue({short_payload}, nullptr, true).code(), Error::kOk);
  // A job that carries its tensor's name is named by it, as the CPU path names tensors.
  cuda::Job named = small;
  named.name = "model.embed.weight";
  cuda::Decoder dec2;
  const Status st = dec2.enqueue({good, named}, nullptr, true);
  EXPECT_NE(st.message().find("tensor 'model.embed.weight': output buffer has 3999 bytes"), std::string::npos) << st.message();
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

// Every tensor of every real checkpoint: BIGSMALL_GPU_CORPUS (a folder of .bs or .safetensors
// files, for the device machine, which has no ../shared) or the corpus beside the checkout.
TEST(Cuda, CorpusFilesMatchTheReferenceDecoder) {
  BIGSMALL_NEED_GPU();
#if BIGSMALL_HAVE_CUDA
  const char* env = std::getenv("BIGSMALL_GPU_CORPUS");
  const fs::path dir = env ? fs::path(env) : fs::path(BIGSMALL_CORPUS_DIR);
  if (!fs::is_directory(dir)) GTEST_SKIP() << dir << " not present";
  const fs::path tmp = fs::temp_directory_path() / ("bigsmall-gpu-" + std::to_string(::getpid()) + ".bs");
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string path = entry.path().string();
    if (entry.path().extension() == ".safetensors") {
      CompressOptions co;
      co.overwrite = true;
      ASSERT_TRUE(compress_file(path, tmp.string(), co).is_ok()) << path;
      path = tmp.string();
    } else if (entry.path().extension() != ".bs") {
      continue;
    }
    auto f = BsFile::open(path);
    ASSERT_TRUE(f.is_ok()) << f.status().message();
    std::vector<Input> in;
    std::vector<std::vector<uint8_t>> want;
    for (size_t i = 0; i < f->tensors().size(); ++i) {
      const TensorCoding& c = f->coding(i);
      const uint64_t stored = f->tensors()[i].stored_bytes;
      in.push_back({&c, f->payload(i), stored});
      want.emplace_back(c.nbytes);
      ASSERT_TRUE(reference_decode_tensor(c, f->payload(i), stored, want.back().data(), c.nbytes).is_ok());
    }
    for (int mode = 0; mode < 4; ++mode) {
      Status st;
      std::vector<std::vector<uint8_t>> outs;
      gpu_decode(in, mode, true, &st, &outs);
      ASSERT_TRUE(st.is_ok()) << entry.path() << ": " << st.message();
      for (size_t i = 0; i < in.size(); ++i)
        EXPECT_EQ(outs[i], want[i]) << entry.path() << " tensor " << f->tensors()[i].name << " mode " << mode;
    }
    ++files;
  }
  fs::remove(tmp);
  EXPECT_GT(files, 0) << dir << " holds no .bs or .safetensors file";
#endif
}
