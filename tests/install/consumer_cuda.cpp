#include <bigsmall/cuda.hpp>

#include <cstdio>

int main() {
  std::printf("consumer_cuda: GPU decoding %s\n", bigsmall::cuda::available() ? "available" : "not available here");
  return 0;
}
