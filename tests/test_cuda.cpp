// GPU decoder against the reference decoder, bit for bit. Without a CUDA device every test here
// is reported as skipped, never as passed.
#include <gtest/gtest.h>

#include "bigsmall/cuda.hpp"
#include "testutil.hpp"

#if BIGSMALL_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace bigsmall;

namespace {

#if BIGSMALL_HAVE_CUDA
std::vector<uint8_t> gpu_decode(const EncodedTensor& e, Status* st, bool flip = false) {
  auto payload = e.payload;
  if (flip && !payload.empty()) payload[payload.size() / 2] ^= 0x20;
  uint8_t *dp = nullptr, *dout = nullptr;
  cudaMalloc(&dp, std::max<size_t>(1, payload.size()));
  cudaMalloc(&dout, std::max<size_t>(1, e.coding.nbytes));
  cudaMemcpy(dp, payload.data(), payload.size(), cudaMemcpyHostToDevice);
  cudaStream_t s;
  cudaStreamCreate(&s);
  cuda::Decoder dec;
  *st = dec.enqueue({{&e.coding, payload.data(), dp, dout}}, s, /*verify=*/!flip);
  cudaStreamSynchronize(s);
  if (st->is_ok()) *st = dec.finish();
  std::vector<uint8_t> out(e.coding.nbytes);
  cudaMemcpy(out.data(), dout, out.size(), cudaMemcpyDeviceToHost);
  cudaFree(dp);
  cudaFree(dout);
  cudaStreamDestroy(s);
  return out;
}
#endif

}  // namespace

TEST(Cuda, MatchesReferenceOnAwkwardSizesAndSpecialValues) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
#if BIGSMALL_HAVE_CUDA
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8_E4M3, DType::kI32, DType::kU8}) {
    for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{31}, uint64_t{65535}, uint64_t{65536}, uint64_t{65537}, uint64_t{200001}}) {
      const auto data = has_float_model(dt) ? bstest::weights(dt, n, static_cast<uint32_t>(n)) : bstest::random_bytes(n * dtype_info(dt).bits / 8, 3);
      auto e = encode_tensor(dt, data.data(), data.size());
      ASSERT_TRUE(e.is_ok());
      Status st;
      const auto out = gpu_decode(e.value(), &st);
      ASSERT_TRUE(st.is_ok()) << st.message();
      EXPECT_EQ(out, data) << dtype_info(dt).safetensors_name << " n=" << n;
    }
  }
#endif
}

TEST(Cuda, DamagedChunksAreReportedNotDecodedWrongly) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
#if BIGSMALL_HAVE_CUDA
  const auto data = bstest::weights(DType::kBF16, 3 * 65536 + 11, 5);
  auto e = encode_tensor(DType::kBF16, data.data(), data.size());
  Status st;
  const auto out = gpu_decode(e.value(), &st, /*flip=*/true);
  EXPECT_TRUE(!st.is_ok() || out != data);  // a flip without host checksums must not pass silently
#endif
}
