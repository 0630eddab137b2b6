// One side of an A/B comparison (bench/compare.sh): median and fastest seconds of 5
// compress_file and of 5 verify calls (or, with MODE restore, 5 decompress_file calls to a file)
// on one file, with a given thread count, printed as
// "compress_median decode_median compress_min decode_min".
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bigsmall/container.hpp"

using namespace bigsmall;

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: ab_run FILE.safetensors SCRATCH.bs THREADS [verify|restore]\n");
    return 2;
  }
  const int threads = std::atoi(argv[3]);
  const bool restore = argc == 5 && std::string(argv[4]) == "restore";
  const std::string restored = std::string(argv[2]) + ".safetensors";
  std::vector<double> c, d;
  for (int r = 0; r < 5; ++r) {
    CompressOptions co;
    co.threads = threads;
    co.overwrite = true;
    co.sync = false;
    std::remove(argv[2]);  // as bigsmall bench: replacing the last output is not compression work
    auto t0 = std::chrono::steady_clock::now();
    if (Status st = compress_file(argv[1], argv[2], co); !st.is_ok()) {
      std::fprintf(stderr, "ab_run: %s\n", st.message().c_str());
      return 1;
    }
    c.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    auto f = BsFile::open(argv[2]);
    if (!f) return 1;
    DecompressOptions o;
    o.threads = threads;
    o.overwrite = true;
    o.sync = false;
    std::remove(restored.c_str());
    t0 = std::chrono::steady_clock::now();
    if (!(restore ? f->restore(restored, o) : f->verify(o)).is_ok()) return 1;
    d.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(c.begin(), c.end());
  std::sort(d.begin(), d.end());
  std::printf("%.6f %.6f %.6f %.6f\n", c[2], d[2], c[0], d[0]);
  return 0;
}
